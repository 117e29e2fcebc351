"""The learned, unsupervised subtomogram aligner (Gum-Net) and its shipped default weights.

* :func:`align_learned` -- one forward pass per particle: rotation, shift and a wedge-aware
  score for each particle against a reference (method ``"learned"``);
* :func:`train_job` -- unsupervised training / fine-tuning on the user's own subtomograms
  (pairs of subtomograms, or subtomograms against references; loss ``1 - r`` between the
  warped, missing-wedge-imputed moving volume and the fixed one; no poses needed);
* :func:`load_default_model`, :func:`load_model`, :func:`save_model` -- model files.

The network is :class:`~.gumnet.GumNet`; see ``docs/align_learned.md`` for the architecture,
its deviations from the paper, the training of the default weights and measured accuracy.

Model file format (``torch.save`` of a plain dict, read with ``weights_only=True``)::

    {"format": "napari-cryoalign-gumnet", "version": 1,
     "header": {"architecture": GumNetConfig.to_dict(), "metadata": {...}, "created": "..."},
     "state_dict": {...}}
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ...io.modelfile import read_model_file, write_model_file
from ..geometry import shift_phase_ramp
from ..jobs import Partial, Progress
from ..peaks import find_peak
from .gumnet import (
    GumNet,
    GumNetConfig,
    crop_fourier_mask,
    fourier_crop,
    imputed_correlation_map,
    origin_from_peak,
    pair_correlation,
    standardize,
    warp_and_impute,
)
from .scoring import mask_to_rfft
from .types import AlignmentResult

__all__ = [
    "DEFAULT_WEIGHTS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GRID_TARGET_SIGMA",
    "GumNet",
    "GumNetConfig",
    "TrainResult",
    "align_learned",
    "grid_targets",
    "load_default_model",
    "load_model",
    "save_model",
    "train",
    "train_job",
]

FORMAT_NAME = "napari-cryoalign-gumnet"
FORMAT_VERSION = 1
DEFAULT_WEIGHTS = "gumnet_default.pt"


# --------------------------------------------------------------------------------- model files
def save_model(model: GumNet, path: str | os.PathLike, *, metadata: dict | None = None,
               overwrite: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    model : the network
    path : output file (``.pt``); an existing file is an error unless ``overwrite``
    metadata : JSON-like dict stored in the header (training data, losses, ...); merged over
        ``model.metadata`` when the model has one

    Returns
    -------
    Path of the written file.
    """
    if not isinstance(model, GumNet):
        raise InputError("a GumNet model", field="model", got=type(model).__name__)
    meta = dict(getattr(model, "metadata", None) or {})
    meta.update(metadata or {})
    return write_model_file(path, format_name=FORMAT_NAME, version=FORMAT_VERSION,
                            header={"architecture": model.config.to_dict(), "metadata": meta},
                            state_dict=model.state_dict(), overwrite=overwrite)


def load_model(path: str | os.PathLike, *, device="cpu") -> GumNet:
    """Read a model file written by :func:`save_model`; the model is in eval mode on ``device``.

    ``model.metadata`` holds the header's metadata (training data and the like).

    Raises
    ------
    InputError
        ``field="path"`` missing file; ``"file"`` not a readable torch file (corrupted,
        truncated, or a pickle that ``weights_only`` refuses); ``"format"`` another tool's
        file; ``"version"`` a newer format; ``"architecture"`` / ``"state_dict"`` weights that
        do not fit the described network.
    """
    p = Path(path)
    obj = read_model_file(p, format_name=FORMAT_NAME, max_version=FORMAT_VERSION, what="Gum-Net model")
    header, state = obj["header"], obj["state_dict"]
    try:
        cfg = GumNetConfig.from_dict(header["architecture"])
        model = GumNet(cfg)
    except Exception as err:  # noqa: BLE001
        raise InputError("valid Gum-Net architecture parameters", path=p, field="architecture",
                         got=f"{type(err).__name__}: {err}") from None
    try:
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001
        msg = " ".join(str(err).split())[:200]
        raise InputError("weights matching the architecture in the header", path=p, field="state_dict",
                         got=msg) from None
    model.metadata = dict(header.get("metadata") or {})
    return model.to(device).eval()


def default_weights_path() -> Path:
    """Path of the shipped default weights (``napari_cryoalign/weights/gumnet_default.pt``)."""
    return Path(str(resources.files("napari_cryoalign").joinpath("weights", DEFAULT_WEIGHTS)))


def load_default_model(*, device="cpu") -> GumNet:
    """The shipped default Gum-Net (trained on simulated 32^3 subtomograms at 12 Å/voxel; see
    ``weights/gumnet_default.md``), in eval mode on ``device``."""
    return load_model(default_weights_path(), device=device)


# --------------------------------------------------------------------------------- validation
def _volumes(x, name: str, *, ndim: int, box: int | None = None) -> torch.Tensor:
    arr = x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != ndim or len(set(arr.shape[-3:])) != 1:
        want = "(n, z, y, x)" if ndim == 4 else "(z, y, x)"
        raise InputError(f"an array of shape {want} with a cubic box", field=name, got=f"shape {tuple(arr.shape)}")
    if box is not None and arr.shape[-1] != box:
        raise InputError(f"a box of {box} voxels (the model's input size; resample the volumes first)",
                         field=name, got=f"box {arr.shape[-1]}")
    t = torch.as_tensor(np.asarray(arr, dtype=np.float32)) if not isinstance(arr, torch.Tensor) else arr.float()
    if not torch.isfinite(t).all():
        raise InputError("finite values (no NaN or inf)", field=name, got="non-finite voxels")
    return t


def _masks(m, name: str, n: int, box: int) -> torch.Tensor | None:
    """None, or ``(1 | n, box, box, box)`` float32 in [0, 1]."""
    if m is None:
        return None
    arr = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] not in (1, n) or arr.shape[1:] != (box, box, box):
        raise InputError(f"an fftshift-ed Fourier mask of shape ({box}, {box}, {box}) or ({n}, {box}, {box}, {box})",
                         field=name, got=f"shape {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise InputError("mask values between 0 and 1", field=name, got=f"range [{arr.min()}, {arr.max()}]")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _pick(masks: torch.Tensor | None, idx) -> torch.Tensor | None:
    if masks is None:
        return None
    return masks[0] if masks.shape[0] == 1 else masks[idx]


# --------------------------------------------------------------------------------- inference
def _rotation_losses(moving, fixed, mmask, rot, max_shift: float, *, loss_box: int | None = None):
    """``1 - r`` (imputed correlation at the best shift within ``max_shift``) of ``k`` rotations per pair.

    ``moving`` ``(B, n, n, n)``, ``fixed`` ``(B | 1, n, n, n)``, ``rot`` ``(B, k, 3, 3)``; the warp
    and the correlation run on Fourier-cropped ``loss_box^3`` copies when given. Returns losses
    ``(B, k)`` (differentiable w.r.t. ``rot``) and the peak shifts ``(B * k, 3)`` in voxels of the
    full box.
    """
    b, k = rot.shape[:2]
    box = moving.shape[-1]
    mv, fx, mm, scale = moving, fixed, mmask, 1.0
    if loss_box is not None and loss_box != box:
        mv, fx = fourier_crop(moving, loss_box), fourier_crop(fixed, loss_box)
        mm = None if mmask is None else crop_fourier_mask(mmask, loss_box)
        scale = loss_box / box
    if mm is not None and mm.ndim == 4:
        mm = mm.repeat_interleave(k, 0)
    fx_k = fx.expand(b, -1, -1, -1).repeat_interleave(k, 0)
    rk = rot.reshape(-1, 3, 3)
    zero = torch.zeros((rk.shape[0], 3), dtype=rk.dtype, device=rk.device)
    _, warped, mh = warp_and_impute(mv.repeat_interleave(k, 0), fx_k, rk, zero, moving_mask=mm)
    d, values = find_peak(imputed_correlation_map(warped, fx_k, mh), max_shift=max_shift * scale, window="cube",
                          subpixel=False)
    return (1.0 - values).view(b, k), d / scale


def _hypothesis_losses(model, moving, fixed, mmask, *, loss_box: int | None = None):
    """Forward pass, then for every hypothesis the best imputed correlation over shifts.

    Returns rotations ``(B, K, 3, 3)``, origins ``(B, K, 3)`` (voxels of the full box, from the
    correlation peak) and losses ``(B, K)`` = ``1 - r`` (differentiable w.r.t. the rotations).
    """
    rot = model(moving, fixed)
    losses, d = _rotation_losses(moving, fixed, mmask, rot, model.config.max_shift, loss_box=loss_box)
    origins = origin_from_peak(rot.reshape(-1, 3, 3).detach(), d).view(*rot.shape[:2], 3)
    return rot, origins, losses


def grid_targets(grid: torch.Tensor, rotations: torch.Tensor, sigma_deg: float) -> torch.Tensor:
    """Soft classification targets over a rotation grid: ``softmax(-theta^2 / (2 sigma^2))``.

    ``grid`` ``(M, 3, 3)``, ``rotations`` ``(B, 3, 3)`` (the true ``A``), ``theta`` the geodesic
    angle between each grid rotation and the truth. Returns ``(B, M)``, rows summing to 1.
    """
    tr = torch.einsum("mij,bij->bm", grid, rotations.to(grid))
    ang = torch.arccos(((tr - 1.0) / 2.0).clamp(-1.0, 1.0))
    return torch.softmax(-(ang ** 2) / (2.0 * math.radians(sigma_deg) ** 2), dim=1)


def _grid_mean(grid: torch.Tensor, probs: torch.Tensor, centre: torch.Tensor, radius_deg: float) -> torch.Tensor:
    """Probability-weighted chordal mean of the grid rotations within ``radius_deg`` of ``centre``.

    ``probs`` ``(B, M)``, ``centre`` ``(B,)`` grid indices. The mean matrix is projected onto
    SO(3) (SVD), which places the estimate between grid points. Returns ``(B, 3, 3)``.
    """
    c = grid[centre]  # (B, 3, 3)
    tr = torch.einsum("mij,bij->bm", grid, c)
    near = tr >= 1.0 + 2.0 * math.cos(math.radians(radius_deg))
    w = probs * near
    w = w / w.sum(1, keepdim=True).clamp(min=1e-30)
    mean = torch.einsum("bm,mij->bij", w, grid)
    u, _, vh = torch.linalg.svd(mean)
    d = torch.sign(torch.linalg.det(u @ vh))
    u = torch.cat([u[..., :2], u[..., 2:] * d.view(-1, 1, 1)], dim=-1)
    return u @ vh


def _grid_candidate_losses(model, moving, fixed, mmask, logits, k: int, *, loss_box: int | None = None):
    """The ``k`` most probable grid rotations of each pair and their ``1 - r`` (imputed correlation
    at the best shift, on ``loss_box^3`` copies). Returns indices ``(B, k)``, losses ``(B, k)``
    (no gradient: the grid rotations are constants)."""
    idx = logits.topk(k, dim=1).indices
    with torch.no_grad():
        losses, _ = _rotation_losses(moving, fixed, mmask, model.grid[idx], model.config.max_shift, loss_box=loss_box)
    return idx, losses


def _shift_and_score(moving, fixed, rot, mmask, rmask, max_shift: float):
    """Sub-voxel origin of the chosen rotation (full-box imputed-correlation peak) and the
    wedge-aware score: the correlation of the aligned particle and the reference over the Fourier
    region both measured. One warp and one mask rotation serve both; the shift is applied to
    the warped particle as a Fourier phase. Returns origins ``(B, 3)`` and scores ``(B,)``."""
    zero = torch.zeros((rot.shape[0], 3), dtype=rot.dtype, device=rot.device)
    _, warped, mh = warp_and_impute(moving, fixed, rot, zero, moving_mask=mmask)
    d, _ = find_peak(imputed_correlation_map(warped, fixed, mh), max_shift=max_shift, window="cube")
    if rmask is not None:
        mh = mh * mask_to_rfft(rmask)
    dims = (1, 2, 3)
    s = moving.shape[1:]
    shifted = torch.fft.rfftn(warped, dim=dims) * shift_phase_ramp(s, -d.to(warped.dtype))  # warped(r + d)
    a = torch.fft.irfftn(shifted * mh, s=s, dim=dims)
    b = torch.fft.irfftn(torch.fft.rfftn(fixed, dim=dims) * mh, s=s, dim=dims)
    return origin_from_peak(rot, d), pair_correlation(a, b)


def align_learned(
    particles,
    reference,
    *,
    particle_masks=None,
    reference_mask=None,
    model: GumNet | None = None,
    batch_size: int = 32,
    search_box: int | None = 16,
    candidates: int = 1,
    device="cpu",
) -> AlignmentResult:
    """Align subtomograms to a reference with Gum-Net (one forward pass per particle).

    Parameters
    ----------
    particles : array ``(n, z, y, x)``, cubic boxes of the model's size (32 for the default)
    reference : array ``(z, y, x)``, same box and voxel size
    particle_masks : observed Fourier masks, fftshift-ed (DC at ``N // 2``), ``(z, y, x)``
        shared or ``(n, z, y, x)``; None = fully observed (no missing-wedge imputation)
    reference_mask : the reference's observed Fourier mask (fftshift-ed) or None; used in the score
    model : a :class:`GumNet`; None loads the shipped default (:func:`load_default_model`)
    batch_size : particles per forward pass
    search_box : the ``K`` hypotheses (or ``candidates``) are compared on Fourier-cropped
        ``search_box^3`` copies (fast, and as in training); the chosen one gets its sub-voxel
        shift at the full box. None = compare at the full box
    candidates : head ``"grid"``: 1 (fastest) keeps the most probable grid rotation; ``k > 1``
        compares the ``k`` most probable by the imputed correlation and keeps the best. Either
        way the rotation is the probability-weighted mean of the grid rotations within 1.5 grid
        steps of the chosen one
    device : torch device

    Returns
    -------
    AlignmentResult
        ``rotations`` ``(n, 3, 3)`` RELION ``A`` (reference -> particle), ``origins_voxels``
        ``(n, 3)`` (x, y, z), ``scores`` ``(n,)`` wedge-aware correlation of the aligned particle
        with the reference, ``method="learned"``. Head ``"hypotheses"``: of the model's ``K``
        rotation hypotheses, each particle keeps the one with the highest imputed correlation (no
        ground truth involved); head ``"grid"``: see ``candidates``. The shift is the peak of the
        imputed correlation within ``model.config.max_shift`` voxels.
    """
    t0 = time.perf_counter()
    if model is None:
        model = load_default_model(device=device)
    if not isinstance(model, GumNet):
        raise InputError("a GumNet model (load_model / load_default_model)", field="model", got=type(model).__name__)
    box = model.config.box
    parts = _volumes(particles, "particles", ndim=4, box=box)
    ref = _volumes(reference, "reference", ndim=3, box=box)
    n = parts.shape[0]
    if int(batch_size) < 1:
        raise InputError("an integer >= 1", field="batch_size", got=batch_size)
    if search_box is not None and not 8 <= int(search_box) <= box:
        raise InputError(f"a search box between 8 and {box} voxels, or None", field="search_box", got=search_box)
    search_box = None if search_box is None or int(search_box) == box else int(search_box)
    if int(candidates) != candidates or candidates < 1:
        raise InputError("an integer >= 1", field="candidates", got=candidates)
    candidates = int(candidates)
    if model.config.head == "grid" and candidates > len(model.grid):
        raise InputError(f"at most {len(model.grid)} (the model's rotation grid)", field="candidates", got=candidates)
    pm = _masks(particle_masks, "particle_masks", n, box)
    rm = _masks(reference_mask, "reference_mask", 1, box)
    was_training = model.training
    model.eval()
    rots = np.empty((n, 3, 3))
    origins = np.empty((n, 3))
    scores = np.empty(n)
    fixed_all = standardize(ref[None].to(device))
    rm_d = None if rm is None else rm[0].to(device)
    try:
        with torch.no_grad():
            for start in range(0, n, int(batch_size)):
                idx = slice(start, min(n, start + int(batch_size)))
                moving = standardize(parts[idx].to(device))
                b = moving.shape[0]
                fixed = fixed_all.expand(b, -1, -1, -1)
                mm = _pick(pm, idx)
                mm = None if mm is None else mm.to(device)
                if model.config.head == "grid":
                    logits = model(moving, fixed_all)
                    if candidates > 1:  # the most probable rotations, the best-correlating one kept
                        top, losses = _grid_candidate_losses(model, moving, fixed, mm, logits, candidates,
                                                             loss_box=search_box)
                        centre = top[torch.arange(b, device=top.device), losses.argmin(1)]
                    else:
                        centre = logits.argmax(1)
                    r = _grid_mean(model.grid, torch.softmax(logits, 1), centre, 1.5 * model.config.grid_step_deg)
                else:
                    rot, _, losses = _hypothesis_losses(model, moving, fixed, mm, loss_box=search_box)
                    r = rot[torch.arange(b, device=losses.device), losses.argmin(1)]
                o, sc = _shift_and_score(moving, fixed, r, mm, rm_d, model.config.max_shift)
                scores[idx] = sc.cpu().numpy()
                rots[idx] = r.double().cpu().numpy()
                origins[idx] = o.double().cpu().numpy()
    finally:
        model.train(was_training)
    return AlignmentResult(rotations=rots, origins_voxels=origins, scores=scores, method="learned",
                           seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------- training
@dataclass(frozen=True, eq=False)
class TrainResult:
    """Result of :func:`train_job`.

    Attributes
    ----------
    model : the trained :class:`GumNet` (the object passed in, or a new one), in eval mode
    losses : ``(n_steps,)`` training loss per step (``1 - r`` of the best hypothesis, plus the
        small all-hypotheses term)
    epoch_losses : ``(n_epochs_done,)`` mean loss per epoch
    steps : optimiser steps done
    seconds : wall time
    settings : the training parameters (JSON-like), also stored in saved model files
    """

    model: GumNet
    losses: np.ndarray
    epoch_losses: np.ndarray
    steps: int
    seconds: float
    settings: dict = field(default_factory=dict)


def _grid_loss(model, moving, fixed, mmask, truth, *, loss_box, candidates: int, correlation_weight: float,
               supervised_weight: float) -> torch.Tensor:
    """Training loss of a grid-head model (see :func:`train_job`)."""
    logits = model(moving, fixed)
    logp = torch.log_softmax(logits, 1)
    loss = logits.new_zeros(())
    if correlation_weight > 0:
        idx, lk = _grid_candidate_losses(model, moving, fixed, mmask, logits.detach(), candidates, loss_box=loss_box)
        p = torch.softmax(logp.gather(1, idx), 1)  # the candidates' probabilities, renormalised
        loss = loss + correlation_weight * (p * lk).sum(1).mean()
    if truth is not None:
        tgt = grid_targets(model.grid, truth, GRID_TARGET_SIGMA * model.config.grid_step_deg)
        loss = loss + supervised_weight * -(tgt * logp).sum(1).mean()
    return loss


#: width of the soft grid targets, in grid steps (a Gaussian in the geodesic angle)
GRID_TARGET_SIGMA = 0.6


def train_job(
    particles,
    *,
    references=None,
    particle_masks=None,
    model: GumNet | None = None,
    epochs: int = 5,
    batch_size: int = 16,
    lr: float = 1e-3,
    loss_box: int | None = 16,
    all_hypotheses_weight: float = 0.05,
    true_rotations=None,
    supervised_weight: float = 1.0,
    correlation_weight: float = 1.0,
    grid_candidates: int = 4,
    max_steps: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    device="cpu",
    seed: int = 0,
) -> Generator[Progress | Partial, None, TrainResult]:
    """Train or fine-tune Gum-Net without labels (a job: yields progress, returns the result).

    Each step takes a batch of pairs ``(moving, fixed)``, predicts ``K`` transforms per pair,
    warps the moving subtomogram with each, fills its missing Fourier region from the fixed
    volume (missing-wedge imputation), and minimises ``1 - r`` (Pearson correlation with the
    fixed volume) of the best hypothesis plus ``all_hypotheses_weight`` times the mean over all
    hypotheses. No poses are used.

    A ``"grid"``-head model instead minimises ``correlation_weight`` times the expected ``1 - r``
    over its ``grid_candidates`` most probable grid rotations (their probabilities renormalised;
    the gradient moves probability towards the better-correlating ones), plus, with
    ``true_rotations``, ``supervised_weight`` times the cross-entropy with soft targets
    (:func:`grid_targets`, width ``GRID_TARGET_SIGMA`` grid steps).

    Parameters
    ----------
    particles : array ``(n, z, y, x)``, cubic boxes (the moving volumes)
    references : None (pairs of particles: each particle is paired with a random other one per
        epoch, as in the paper), a single reference ``(z, y, x)``, or one reference per particle
        ``(n, z, y, x)`` (e.g. the class average each particle belongs to)
    particle_masks : observed Fourier masks of the particles, fftshift-ed, ``(z, y, x)`` or
        ``(n, z, y, x)``; None = no imputation
    model : network to fine-tune (trained in place); None = a new :class:`GumNet` for this box
    epochs : passes over the particles
    batch_size : pairs per step
    lr : Adam learning rate
    loss_box : the warp and loss are computed on Fourier-cropped ``loss_box^3`` copies (faster,
        and the low-pass widens the basin of the correlation); None = full box
    all_hypotheses_weight : weight of the mean loss over all hypotheses (keeps all of them learning)
    true_rotations : optional ``(n, 3, 3)`` RELION matrices ``A`` of each particle relative to its
        reference (simulated data, ``references`` given): adds ``supervised_weight`` times the
        squared Frobenius distance ``|A_k - A|^2 / 8`` (0..1) of the closest hypothesis - a
        supervised pre-training of the default weights on simulated data; without it the
        training is unsupervised, as in the paper
    supervised_weight : weight of that term
    correlation_weight : head ``"grid"``: weight of the unsupervised expected-correlation term
    grid_candidates : head ``"grid"``: candidates of that term per pair
    max_steps : stop after this many steps (None = run all epochs)
    optimizer : an optimiser over ``model``'s parameters to continue with (keeps Adam's
        moments across calls); None = a new Adam with ``lr``
    device : torch device
    seed : seeds the pairing, batch order and a new model's initialisation

    Yields
    ------
    Progress per step; ``Partial("loss", {"epoch", "step", "loss"})`` per step;
    ``Partial("model", model)`` once at the start (cancelling leaves it usable).

    Returns
    -------
    TrainResult
    """
    parts = _volumes(particles, "particles", ndim=4, box=None if model is None else model.config.box)
    n, box = parts.shape[0], parts.shape[-1]
    if n < 2:
        raise InputError("at least 2 particles", field="particles", got=n)
    refs = None
    if references is not None:
        r_arr = references.detach().cpu().numpy() if isinstance(references, torch.Tensor) else np.asarray(references)
        refs = _volumes(r_arr[None] if r_arr.ndim == 3 else r_arr, "references", ndim=4, box=box)
        if refs.shape[0] not in (1, n):
            raise InputError(f"one reference (z, y, x) or one per particle ({n}, z, y, x)", field="references",
                             got=f"shape {tuple(refs.shape)}")
    pm = _masks(particle_masks, "particle_masks", n, box)
    truth = None
    if true_rotations is not None:
        truth = torch.as_tensor(np.asarray(true_rotations, dtype=np.float32))
        if refs is None or tuple(truth.shape) != (n, 3, 3):
            raise InputError(f"({n}, 3, 3) rotations of the particles relative to given references",
                             field="true_rotations", got=f"shape {tuple(truth.shape)}, references "
                             f"{'given' if refs is not None else 'missing'}")
    for name, val, ok in (("epochs", epochs, epochs >= 1), ("batch_size", batch_size, batch_size >= 1),
                          ("lr", lr, lr > 0 and math.isfinite(lr))):
        if not ok:
            raise InputError("a positive value", field=name, got=val)
    if loss_box is not None and not (8 <= int(loss_box) <= box):
        raise InputError(f"a loss box between 8 and {box} voxels, or None", field="loss_box", got=loss_box)
    loss_box = None if loss_box is None or int(loss_box) == box else int(loss_box)
    rng = np.random.default_rng(seed)
    if model is None:
        torch.manual_seed(seed)
        model = GumNet(GumNetConfig(box=box))
    model.to(device)
    opt = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr)
    batch_size = int(min(batch_size, n))
    steps_per_epoch = n // batch_size
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "loss_box": loss_box or box,
                "all_hypotheses_weight": all_hypotheses_weight, "seed": seed, "n_particles": n,
                "pairs": "references" if refs is not None else "random particle pairs",
                "imputation": pm is not None,
                "supervised_weight": supervised_weight if truth is not None else 0.0,
                "head": model.config.head if model is not None else "hypotheses"}
    if model is not None and model.config.head == "grid":
        settings.update(correlation_weight=correlation_weight, grid_candidates=int(grid_candidates))
        if not 1 <= int(grid_candidates) <= len(model.grid):
            raise InputError(f"between 1 and {len(model.grid)} (the grid size)", field="grid_candidates",
                             got=grid_candidates)
    losses, epoch_losses = [], []
    t0 = time.perf_counter()
    step = 0
    yield Partial("model", model)
    yield Progress(0, total, "training Gum-Net")
    try:
        model.train()
        for epoch in range(epochs):
            order = rng.permutation(n)
            partner = rng.permutation(n)
            ep = []
            for s in range(steps_per_epoch):
                if step >= total:
                    break
                idx = order[s * batch_size:(s + 1) * batch_size]
                moving = standardize(parts[idx].to(device))
                if refs is None:
                    pidx = partner[s * batch_size:(s + 1) * batch_size]
                    pidx = np.where(pidx == idx, (pidx + 1) % n, pidx)
                    fixed = parts[pidx]
                else:
                    fixed = refs[0].expand(len(idx), -1, -1, -1) if refs.shape[0] == 1 else refs[idx]
                fixed = standardize(fixed.to(device))
                mm = _pick(pm, idx)
                mm = None if mm is None else mm.to(device)
                if model.config.head == "grid":
                    loss = _grid_loss(model, moving, fixed, mm, None if truth is None else truth[idx].to(device),
                                      loss_box=loss_box, candidates=grid_candidates,
                                      correlation_weight=correlation_weight, supervised_weight=supervised_weight)
                else:
                    rot, _, lk = _hypothesis_losses(model, moving, fixed, mm, loss_box=loss_box)
                    loss = lk.min(1).values.mean() + all_hypotheses_weight * lk.mean()
                    if truth is not None:
                        chord = ((rot - truth[idx].to(rot)[:, None]) ** 2).sum(dim=(-2, -1)) / 8.0  # (B, K)
                        loss = loss + supervised_weight * (chord.min(1).values.mean()
                                                           + all_hypotheses_weight * chord.mean())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                lv = float(loss.detach())
                losses.append(lv)
                ep.append(lv)
                step += 1
                yield Partial("loss", {"epoch": epoch, "step": step, "loss": lv})
                yield Progress(step, total, f"epoch {epoch + 1}/{epochs} loss {lv:.4f}")
            if ep:
                epoch_losses.append(float(np.mean(ep)))
            if step >= total:
                break
    finally:
        model.eval()
    return TrainResult(model=model, losses=np.asarray(losses), epoch_losses=np.asarray(epoch_losses), steps=step,
                       seconds=time.perf_counter() - t0, settings=settings)


def train(particles, **kwargs) -> TrainResult:
    """Plain-function version of :func:`train_job` (drains it without a progress bar)."""
    from ..jobs import run_job

    return run_job(train_job(particles, **kwargs), progress=False)
