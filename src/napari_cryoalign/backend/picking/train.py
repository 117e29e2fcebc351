"""Training the sparse-label PU picker (a job generator, made for a live widget).

:func:`train_picker_job` trains on crops around the labelled particles of one tomogram:

* each step draws ``batch_size`` crops of ``crop`` input voxels (default 8 x 64 x 64): the
  first centred on a random label (jitter of a quarter crop in y/x, 2 slices in z), the
  others on other labels (80 %) or anywhere (20 %, so that empty regions are seen too);
* the crops are randomly flipped along z, y and x (view A); view B is view A flipped again
  along a random non-empty set of axes. Both views go through the network; view B's outputs
  are flipped back;
* loss = PU focal risk (both views) + ``contrastive_weight`` x (debiased supervised +
  ``unsup_weight`` x unsupervised contrastive, on ``n_anchors`` sampled voxels)
  + ``consistency_weight`` x MSE(heatmap A, heatmap B);
* Adam, learning rate ``lr`` for the first two thirds of the steps, then ``lr / 10``.

Events: ``Progress`` and ``Partial("loss", {...})`` every step; ``Partial("model", picker)``
once at the start (the object trained in place: a cancelled job leaves it usable, in eval
mode); with ``preview_every_s`` set, now and then ``Partial("heatmap", Heatmap)`` and
``Partial("picks", Picks)`` on the training tomogram. Passing ``picker=`` continues training an
existing model (its weights and optimizer state), e.g. after the user added labels.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Generator

import numpy as np
import torch

from ...errors import InputError
from .._tensor import resolve_device
from ..jobs import Event, Partial, Progress, run_job, subjob
from .infer import Picks, find_peaks, predict_heatmap_job
from .losses import consistency_loss, debiased_contrastive_loss, pu_focal_loss
from .model import NetConfig
from .picker import (
    Picker,
    check_labels,
    check_tomogram,
    diameter_voxels,
    normalise_block,
    tomogram_stats,
)
from .targets import heatmap_sigma, input_to_output_zyx, make_targets, mark_negatives

__all__ = ["TrainResult", "train_picker_job", "train_picker", "calibrated_threshold", "DEFAULT_ITERATIONS",
           "DEFAULT_CLASS_PRIOR"]

DEFAULT_ITERATIONS = 600
DEFAULT_CLASS_PRIOR = 0.02


@dataclass(frozen=True)
class TrainResult:
    """Result of a training run.

    Attributes
    ----------
    picker : the trained :class:`~.picker.Picker` (the same object as ``Partial("model")``)
    losses : ``(n_steps,)`` total loss per step of this run
    iterations : steps done in this run
    seconds : wall time of this run
    """

    picker: Picker
    losses: np.ndarray
    iterations: int
    seconds: float


def _flip(t: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(t, axes) if axes else t


def train_picker_job(
    tomogram,
    labels_xyz,
    *,
    diameter_angstrom: float | None = None,
    voxel_size: float = 1.0,
    picker: Picker | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    class_prior: float | None = None,
    lr: float = 1e-3,
    batch_size: int = 2,
    crop: tuple[int, int, int] = (8, 64, 64),
    contrastive_weight: float = 0.1,
    unsup_weight: float = 0.5,
    consistency_weight: float = 1.0,
    temperature: float = 0.07,
    n_anchors: int = 256,
    sigma_fraction: float = 0.125,
    random_crop_fraction: float = 0.2,
    negatives_xyz=None,
    negative_crop_fraction: float = 0.3,
    negative_weight: float = 0.3,
    net_config: NetConfig | None = None,
    preview_every_s: float | None = None,
    preview_threshold: float = 0.5,
    seed: int | None = 0,
    device="cpu",
    path=None,
    labels_path=None,
    negatives_path=None,
) -> Generator[Event, None, TrainResult]:
    """Train (or continue training) a picker on one partially labelled tomogram.

    Parameters
    ----------
    tomogram : ``(z, y, x)`` array or read-only memmap, not modified
    labels_xyz : ``(n, 3)`` 0-based voxel coordinates (x, y, z) of labelled particles, n >= 3
    diameter_angstrom : particle diameter in Å (required for a new picker)
    voxel_size : voxel size of ``tomogram`` in Å
    picker : continue from this picker (weights, optimizer state, diameter, prior); it is
        trained in place
    iterations : optimisation steps of this run
    class_prior : PU class prior ``pi_p`` (default 0.02, or the picker's)
    lr : Adam learning rate (divided by 10 after two thirds of the steps)
    batch_size : crops per step; crop : crop size ``(z, y, x)`` in input voxels (y, x even)
    contrastive_weight, unsup_weight, consistency_weight : ``lambda_1, lambda_2, lambda_3``
    temperature : contrastive temperature; n_anchors : voxels sampled for the contrastive loss
    sigma_fraction : target Gaussian sigma as a fraction of the diameter
    random_crop_fraction : probability that a crop after the first of a batch is taken anywhere
        in the tomogram rather than around a label (so that membranes, gold and empty ice are
        seen as unlabelled data too)
    negatives_xyz : ``(m, 3)`` voxel coordinates (x, y, z) of places that are *not* the
        particle (removed picks: gold, membranes, look-alikes), or None. A ball of a quarter
        diameter around each is a known negative (:func:`.targets.mark_negatives`,
        :func:`.losses.pu_focal_loss`); not in the paper, see docs/picking.md
    negative_crop_fraction : probability that a crop after the first of a batch is centred on
        a known negative (when there are some)
    negative_weight : weight of the known-negative risk (0.3; at 1 the hard negatives dominate
        the loss and every score drops, which breaks the calibrated threshold - docs/picking.md)
    net_config : architecture of a new picker
    preview_every_s : seconds between heatmap/picks previews (None: no previews)
    preview_threshold : score threshold of the preview picks
    seed : random seed (crops, augmentations, initial weights); device : torch device or "auto"
    path, labels_path, negatives_path : file names for error messages

    Returns
    -------
    :class:`TrainResult`

    Raises
    ------
    InputError
        Fewer than 3 labels, labels outside the volume, a diameter not smaller than the
        volume (or < 2 voxels), non-finite voxels, a bad class prior.
    """
    t_start = time.perf_counter()
    shape = check_tomogram(tomogram, path=path)
    labels = check_labels(labels_xyz, shape, path=labels_path)
    negatives = (np.zeros((0, 3)) if negatives_xyz is None or len(negatives_xyz) == 0
                 else check_labels(negatives_xyz, shape, path=negatives_path, min_labels=0))
    if not 0.0 <= float(negative_crop_fraction) <= 1.0:
        raise InputError("a fraction in [0, 1]", field="negative_crop_fraction", got=negative_crop_fraction)
    dev = resolve_device(device)
    if picker is None:
        if diameter_angstrom is None:
            raise InputError("a particle diameter in Å for a new model", path=path, field="diameter", got=None)
        diameter_voxels(diameter_angstrom, voxel_size, shape=shape, path=path)
        prior = DEFAULT_CLASS_PRIOR if class_prior is None else float(class_prior)
        picker = Picker.new(diameter_angstrom=diameter_angstrom, voxel_size=voxel_size, class_prior=prior,
                            net_config=net_config, seed=seed, device=dev)
    else:
        if diameter_angstrom is not None and abs(diameter_angstrom - picker.diameter_angstrom) > 1e-6:
            warnings.warn(f"continuing training: keeping the model's diameter {picker.diameter_angstrom:g} Å "
                          f"(asked {diameter_angstrom:g} Å)", stacklevel=2)
        if abs(voxel_size / picker.voxel_size - 1.0) > 0.1:
            warnings.warn(f"continuing training on a tomogram of {voxel_size:g} Å voxels with a model trained "
                          f"at {picker.voxel_size:g} Å", stacklevel=2)
        if class_prior is not None:
            picker.class_prior = float(class_prior)
        picker.to(dev)
    prior = picker.class_prior
    if not 0.0 < prior < 1.0:
        raise InputError("a class prior in (0, 1)", field="class_prior", got=prior)
    iterations = int(iterations)
    if iterations < 0:
        raise InputError("a number of iterations >= 0", field="iterations", got=iterations)
    if not 0.0 <= float(random_crop_fraction) <= 1.0:
        raise InputError("a fraction in [0, 1]", field="random_crop_fraction", got=random_crop_fraction)
    dvox = diameter_voxels(picker.diameter_angstrom, voxel_size, shape=shape, path=path)

    st = picker.stride
    oshape = (shape[0], -(-shape[1] // st[1]), -(-shape[2] // st[2]))
    centres = input_to_output_zyx(labels, st)
    sigma = heatmap_sigma(dvox, sigma_fraction=sigma_fraction, stride=st)
    target_full = make_targets(oshape, centres, sigma_zyx=sigma)
    if len(negatives):
        r_neg = 0.25 * dvox
        mark_negatives(target_full, input_to_output_zyx(negatives, st),
                       radius_zyx=tuple(r_neg / float(a) for a in st))
    centre_val, scale_val = tomogram_stats(tomogram)

    # crop geometry (input voxels; y/x even so that the output grid stays aligned)
    cz = min(int(crop[0]), shape[0])
    cy = min(int(crop[1]) // 2 * 2, shape[1] // 2 * 2)
    cx = min(int(crop[2]) // 2 * 2, shape[2] // 2 * 2)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))

    def crop_origin(cen_xyz: np.ndarray) -> tuple[int, int, int]:
        x, y, z = cen_xyz
        z0 = int(np.clip(round(z) - cz // 2, 0, shape[0] - cz))
        y0 = int(np.clip(round(y) - cy // 2, 0, shape[1] - cy)) // 2 * 2
        x0 = int(np.clip(round(x) - cx // 2, 0, shape[2] - cx)) // 2 * 2
        return z0, y0, x0

    def crop_at(cen_xyz: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        z0, y0, x0 = crop_origin(cen_xyz)
        blk = normalise_block(tomogram[z0 : z0 + cz, y0 : y0 + cy, x0 : x0 + cx], centre_val, scale_val)
        tgt = target_full[z0 : z0 + cz, y0 // 2 : y0 // 2 + cy // 2, x0 // 2 : x0 // 2 + cx // 2]
        return blk, tgt

    def draw_batch():
        xs, ts = [], []
        for b in range(batch_size):
            if b > 0 and len(negatives) and rng.random() < negative_crop_fraction:
                pool = negatives
            elif b == 0 or rng.random() >= random_crop_fraction:
                pool = labels
            else:
                pool = None
            if pool is not None:  # around a label or a known negative, with jitter
                c = pool[rng.integers(len(pool))].copy()
                c[:2] += rng.uniform(-0.25, 0.25, 2) * np.array([cx, cy])
                c[2] += rng.uniform(-2, 2)
            else:
                c = rng.uniform(0, 1, 3) * np.array(shape[::-1], dtype=np.float64)
            blk, tgt = crop_at(c)
            xs.append(torch.from_numpy(blk))
            ts.append(tgt)
        return torch.stack(xs).to(dev), torch.stack(ts).to(dev)

    net = picker.net
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    if picker.optimizer_state is not None:
        try:
            opt.load_state_dict(picker.optimizer_state)
            for g in opt.param_groups:
                g["lr"] = lr
        except (ValueError, KeyError):
            pass  # another architecture's state: start afresh
    training = dict(picker.training)
    training.update(
        diameter_angstrom=picker.diameter_angstrom, voxel_size_train=float(voxel_size), class_prior=prior,
        lr=lr, batch_size=batch_size, crop=[cz, cy, cx], contrastive_weight=contrastive_weight,
        unsup_weight=unsup_weight, consistency_weight=consistency_weight, temperature=temperature,
        n_anchors=n_anchors, sigma_fraction=sigma_fraction, random_crop_fraction=float(random_crop_fraction), seed=seed,
        n_labels=int(len(labels)), n_negatives=int(len(negatives)), negative_crop_fraction=float(negative_crop_fraction),
        negative_weight=float(negative_weight), tomogram_shape=list(shape),
    )
    picker.training = training
    losses: list[float] = []
    decay_at = int(math.ceil(2 * iterations / 3))
    next_preview = time.monotonic() + (preview_every_s or 0.0)
    yield Partial("model", picker)
    step = 0
    try:
        net.train()
        for step in range(1, iterations + 1):
            if step == decay_at + 1:
                for g in opt.param_groups:
                    g["lr"] = lr * 0.1
            x, tgt = draw_batch()
            fa = tuple(ax for ax in (1, 2, 3) if torch.rand((), generator=gen) < 0.5)
            fb = tuple(ax for ax in (1, 2, 3) if torch.rand((), generator=gen) < 0.5) or (3,)
            xa = _flip(x, fa)
            ta = _flip(tgt, fa)
            xb = _flip(xa, fb)
            logits, feats = net(torch.cat([xa, xb]))
            la, lb = logits[:batch_size], logits[batch_size:]
            feat_a = feats[:batch_size]
            feat_b = _flip(feats[batch_size:], tuple(a + 1 for a in fb))  # (B, C, z, y, x): spatial axes +1
            lb_back = _flip(lb, fb)
            l_pu, parts = pu_focal_loss(torch.cat([la, lb_back]), torch.cat([ta, ta]), prior=prior,
                                        negative_weight=negative_weight)
            l_con, cparts = debiased_contrastive_loss(
                feat_a, feat_b, ta, torch.sigmoid(la), prior=prior, temperature=temperature,
                n_anchors=n_anchors, unsup_weight=unsup_weight, generator=gen)
            l_cons = consistency_loss(la, lb_back)
            loss = l_pu + contrastive_weight * l_con + consistency_weight * l_cons
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lv = float(loss.detach())
            losses.append(lv)
            training["iterations_done"] = int(training.get("iterations_done", 0)) + 1
            yield Progress(step, iterations, f"loss {lv:.4f}")
            yield Partial("loss", {"step": step, "iteration": training["iterations_done"], "loss": lv,
                                   "pu": float(l_pu.detach()), "contrastive": float(l_con.detach()),
                                   "consistency": float(l_cons.detach()), **parts, **cparts})
            if preview_every_s is not None and time.monotonic() >= next_preview:
                t0 = time.monotonic()
                net.eval()
                heat = yield from subjob(predict_heatmap_job(picker, tomogram, stats=(centre_val, scale_val)),
                                         progress=False)
                xyz, sc = find_peaks(heat, min_distance=dvox / 2, threshold=preview_threshold)
                net.train()
                yield Partial("heatmap", heat)
                yield Partial("picks", Picks(xyz, sc))
                cost = time.monotonic() - t0
                next_preview = time.monotonic() + max(preview_every_s, 4.0 * cost)
    finally:
        net.eval()
        picker.optimizer_state = opt.state_dict()
    # calibrate the default score threshold on the labels (only after a complete run)
    label_scores = _label_scores(net, labels, crop_origin, crop_at)
    training["label_scores"] = [round(float(v), 4) for v in label_scores]
    training["suggested_threshold"] = calibrated_threshold(label_scores)
    # the rule of this threshold (the recipe may replace both, fit.py); no earlier run's rule stays behind
    training["threshold_rule"] = "calibrated on the labels"
    training.pop("corrected_count", None)
    return TrainResult(picker=picker, losses=np.asarray(losses, dtype=np.float64), iterations=step,
                       seconds=time.perf_counter() - t_start)


def calibrated_threshold(label_scores, *, floor: float = 0.5) -> float:
    """Default score threshold from the scores of the labelled particles.

    The midpoint between the Bayes cut ``floor`` (0.5) and the weakest labelled particle's
    score: candidates scoring like something the user called a particle pass, and the band
    between 0.5 and that score - where the classifier hesitates and look-alike particles sit -
    is cut in the middle. ``floor`` when there are no labels or the weakest scores below it.
    Measured in ``docs/picking.md`` (benchmark: default-threshold F1 0.82 -> see there).
    """
    v = np.asarray(label_scores, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0 or v.min() <= floor:
        return float(floor)
    return round(float(0.5 * (floor + v.min())), 3)


def _label_scores(net, labels: np.ndarray, crop_origin, crop_at) -> np.ndarray:
    """Heatmap value at each label: the max over a 3 x 3 x 3 neighbourhood of its output voxel."""
    out = np.empty(len(labels))
    dev = next(net.parameters()).device
    with torch.inference_mode():
        for i, c in enumerate(labels):
            blk, _ = crop_at(c)
            prob = torch.sigmoid(net(torch.from_numpy(blk)[None].to(dev), features=False)[0][0]).float().cpu().numpy()
            z0, y0, x0 = crop_origin(c)
            k = (int(round(c[2])) - z0, int(c[1] - y0) // 2, int(c[0] - x0) // 2)
            sl = tuple(slice(max(0, v - 1), min(n, v + 2)) for v, n in zip(k, prob.shape))
            out[i] = float(prob[sl].max())
    return out


def train_picker(tomogram, labels_xyz, *, progress: bool = False, **kwargs) -> TrainResult:
    """Plain-function form of :func:`train_picker_job` (same arguments)."""
    return run_job(train_picker_job(tomogram, labels_xyz, **kwargs), progress=progress, description="train picker")
