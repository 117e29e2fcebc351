"""Training the pose network with symmetric targets, confidence weights and the 2-fold gold standard.

Targets (CESPED / I2S): for a particle with true pose ``A`` and point group ``G``, the target
distribution puts ``1/|G|`` on the grid rotation nearest to each symmetry mate ``A g``
(:mod:`..symmetry`), mixed with label smoothing ``ε`` (``(1-ε) t + ε/n_grid``). The loss is the
cross-entropy with the network's softmax over the grid, averaged over a batch with the
particles' confidences as weights (``rlnMaxValueProbDistribution``; 1 when absent).

Augmentation: a random in-plane rotation by ``α`` of the image turns its pose ``A`` into
``Q A`` (``Q`` = rotation by ``α`` about z; :func:`..geometry.rotate_image` convention), so
training sees every in-plane angle; the architecture is equivariant to exactly this
(:mod:`.model`), the augmentation covers what the CNN encoder breaks.

Gold standard (CESPED's protocol): with ``halves=(1, 2)`` one network is trained on each half
set (``rlnRandomSubset``) and :mod:`.predict` predicts every particle with the network that
never saw it. ``halves="auto"`` (:func:`choose_halves`; the CLI's default ``--half both``) does
that where the file has both half sets, and otherwise trains one network on what is there:
the one half set present (CESPED's one-direction protocol: train on half 1, predict half 2 with
it), or every particle when the file has no ``rlnRandomSubset`` column. ``PoseModel.training``
records the choice (``trained_on``: ``"both"``, ``"1"``, ``"2"`` or ``"all"``, and ``half_choice``). Each network is stored with the reconstruction of its own training half from
the true poses, which prediction uses for the in-plane shift search and optional local
refinement.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from ..geometry import rotate_image
from ..jobs import Partial, Progress, run_job, subjob
from ..symmetry import normalize_symmetry, point_group
from .data import (
    ParticleData,
    fourier_resize,
    normalize_outside_circle,
    preprocess_images,
)
from .model import PoseNet, PoseNetConfig
from .reconstruct import reconstruct_half_maps_job

__all__ = [
    "PoseModel",
    "choose_halves",
    "default_image_size",
    "downsample_particles",
    "pose_loss",
    "target_indices",
    "train_pose_model",
    "train_pose_model_job",
]


@dataclass(frozen=True, eq=False)
class PoseModel:
    """Trained pose networks with what prediction needs.

    Attributes
    ----------
    nets : {training half: PoseNet}; half 1 / 2 (gold standard) or 0 (all particles)
    references : {training half: ndarray (S, S, S)} reconstruction of the training particles
        from their true poses, at the model's pixel size (for shift search / refinement)
    config : PoseNetConfig
    symmetry : point group of the training targets
    pixel_size_angstrom : pixel size of the model's ``S x S`` images (Å)
    box : particle box the model was trained on (pixels, before resizing)
    training : dict (epochs, losses, seconds, particles per half, ...)
    cache : what prediction derives from the references (projection tables of the map search),
        kept so that repeated predictions with one model build them once; not saved
    """

    nets: dict
    references: dict
    config: PoseNetConfig
    symmetry: str
    pixel_size_angstrom: float
    box: int
    training: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def halves(self) -> list[int]:
        return sorted(self.nets)

    def to(self, device) -> PoseModel:
        for net in self.nets.values():
            net.to(device)
        return self


def default_image_size(box: int) -> int:
    """The model's image size for a box: the box itself up to 64, else 64 (Fourier-cropped)."""
    return int(min(64, box - box % 4))


def has_subset_column(data: ParticleData) -> bool:
    """Whether the particles carry half sets of their own: the STAR file has ``rlnRandomSubset`` (simulated
    data always does). Without it :func:`.data.load_particle_data` alternates 1, 2, 1, ... ."""
    table = getattr(data, "table", None)
    return table is None or "rlnRandomSubset" in table.data.columns


def choose_halves(data: ParticleData) -> tuple[tuple[int, ...], str]:
    """The networks ``halves="auto"`` trains, and why (one sentence).

    * both half sets present (``rlnRandomSubset`` 1 and 2): ``(1, 2)``, the gold standard;
    * one half set only (every row 1, or every row 2): ``(h,)``, one network on it (predict the
      other half, or any other particles, with it);
    * no ``rlnRandomSubset`` column: ``(0,)``, one network on every particle (the file does not
      say which particles belong together; an alternating split would halve the training set).
    """
    if not has_subset_column(data):
        return (0,), (f"no rlnRandomSubset column: one network on all {data.n} particles (as --half all); "
                      "add rlnRandomSubset 1/2 for a gold-standard pair")
    present = sorted(set(np.unique(data.half).tolist()))
    if present == [1, 2]:
        return (1, 2), "half sets 1 and 2: one network per half (gold standard)"
    if len(present) == 1:
        h = present[0]
        return (h,), (f"only half set {h} (rlnRandomSubset = {h} for all {data.n} particles): one network on it "
                      f"(as --half {h}); `pose predict` uses it for every particle, e.g. half set {3 - h}")
    raise InputError("rlnRandomSubset values 1 or 2", path=data.path, field="rlnRandomSubset", got=present)


def target_indices(rotations: torch.Tensor, group: torch.Tensor, grid_flat: torch.Tensor) -> torch.Tensor:
    """Grid index nearest to every symmetry mate ``A g``: ``(B, |G|)`` int64.

    ``rotations`` ``(B, 3, 3)``, ``group`` ``(|G|, 3, 3)``, ``grid_flat`` ``(n_grid, 9)`` flattened grid matrices.
    """
    mates = torch.einsum("bij,gjk->bgik", rotations, group).reshape(-1, 9)
    return (mates @ grid_flat.T).argmax(dim=1).reshape(rotations.shape[0], group.shape[0])


def pose_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None, *,
              label_smoothing: float = 0.1) -> torch.Tensor:
    """Confidence-weighted cross-entropy with symmetric targets and label smoothing.

    ``logits`` ``(B, n_grid)``; ``targets`` ``(B, |G|)`` grid indices (``1/|G|`` each);
    ``weights`` ``(B,)`` or None. Returns a scalar.
    """
    logp = F.log_softmax(logits, dim=1)
    on_target = logp.gather(1, targets).mean(dim=1)  # sum_g (1/|G|) log p(A g)
    loss = -((1.0 - label_smoothing) * on_target + label_smoothing * logp.mean(dim=1))
    if weights is None:
        return loss.mean()
    w = weights.to(loss.dtype)
    return (loss * w).sum() / w.sum().clamp(min=1e-12)


def downsample_particles(data: ParticleData, image_size: int) -> ParticleData:
    """The particles normalised (outside-circle statistics) and Fourier-resized to ``image_size``; poses, CTFs,
    origins (Å) kept, the pixel size scaled."""
    imgs = []
    for s in range(0, data.n, 512):
        x = normalize_outside_circle(torch.as_tensor(np.ascontiguousarray(data.images[s:s + 512]), dtype=torch.float32))
        imgs.append(fourier_resize(x, image_size).numpy())
    return replace(data, images=np.concatenate(imgs) if imgs else data.images[:0],
                   pixel_size_angstrom=data.pixel_size_angstrom * data.box / image_size, table=None)


def _inplane(alpha_deg: torch.Tensor) -> torch.Tensor:
    a = torch.deg2rad(alpha_deg)
    c, s = torch.cos(a), torch.sin(a)
    q = torch.zeros(a.shape[0], 3, 3)
    q[:, 0, 0], q[:, 0, 1], q[:, 1, 0], q[:, 1, 1], q[:, 2, 2] = c, -s, s, c, 1.0
    return q


def _check(data: ParticleData, epochs, batch_size, lr):
    if data.rotations is None:
        raise InputError("particles with poses (rlnAngleRot/Tilt/Psi) to train on", path=data.path,
                         field="rlnAngleRot", got="none")
    if int(epochs) != epochs or epochs < 1:
        raise InputError("an integer number of epochs >= 1", field="epochs", got=epochs)
    if int(batch_size) != batch_size or batch_size < 2:
        raise InputError("a batch size >= 2", field="batch_size", got=batch_size)
    if not lr > 0:
        raise InputError("a learning rate > 0", field="lr", got=lr)


def _train_one(net: PoseNet, images: torch.Tensor, rotations: torch.Tensor, conf: torch.Tensor, *, group, epochs,
               batch_size, lr, label_smoothing, augment, seed, device, label, step0, total_steps):
    grid_flat = _grid_flat(net).to(device)
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    n = images.shape[0]
    steps_per_epoch = max(1, n // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15, anneal_strategy="cos")
    history = []
    step = step0
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            x = images[idx].to(device)
            rot = rotations[idx]
            if augment:
                alpha = torch.rand(len(idx), generator=gen) * 360.0
                x = rotate_image(x, alpha.to(device), padding="zeros")
                rot = _inplane(alpha) @ rot
            tgt = target_indices(rot.to(device), group, grid_flat)
            logits = net.grid_logits(net(x))
            loss = pose_loss(logits, tgt, conf[idx].to(device), label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            step += 1
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            yield Partial("loss", (step, float(loss.detach())))
            yield Progress(step, total_steps, f"{label} epoch {epoch + 1}/{epochs}: loss {float(loss.detach()):.3f}")
        history.append({"epoch": epoch + 1, "loss": total / max(count, 1)})
        yield Partial("epoch", {"half": label, **history[-1]})
    net.eval()
    return history


def _grid_flat(net: PoseNet) -> torch.Tensor:
    from ..geometry import euler_to_matrix

    return torch.as_tensor(euler_to_matrix(net.grid()[1]).reshape(-1, 9), dtype=torch.float32)


def train_pose_model_job(data: ParticleData, *, symmetry: str = "C1", halves=(1, 2), epochs: int = 20,
                         batch_size: int = 32, lr: float = 2e-3, label_smoothing: float = 0.1, augment: bool = True,
                         config: PoseNetConfig | None = None, image_size: int | None = None,
                         grid_level: int | None = None, seed: int = 0, threads: int | None = None,
                         device="cpu") -> Generator[Progress | Partial, None, PoseModel]:
    """Train pose networks on particles with known poses.

    Parameters
    ----------
    data : ParticleData with ``rotations`` (true poses), CTFs, half sets and confidences
    symmetry : point group of the structure (targets on every mate ``A g``)
    halves : ``(1, 2)``: gold standard, one network per half set (``rlnRandomSubset``);
        ``(1,)`` or ``(2,)``: one network on that half; ``(0,)``: one network on all particles;
        ``"auto"``: :func:`choose_halves` (both where both half sets exist, else what is there)
    epochs, batch_size, lr, label_smoothing : optimisation (AdamW, one-cycle cosine schedule,
        gradient clipping at 5)
    augment : random in-plane rotations (pose ``A -> Q A``)
    config : network hyper-parameters (default :class:`PoseNetConfig` with ``image_size`` /
        ``grid_level`` when given; image size default :func:`default_image_size`)
    seed : initialisation, shuffling and augmentation
    device : torch device

    Yields ``Progress`` per batch, ``Partial("loss", (step, loss))`` per batch,
    ``Partial("epoch", {...})`` per epoch and ``Partial("reference", map)`` per network.
    Returns a :class:`PoseModel`.
    """
    _check(data, epochs, batch_size, lr)
    sym = normalize_symmetry(symmetry)
    if isinstance(halves, str):
        if halves != "auto":
            raise InputError('halves "auto", (1, 2), (1,), (2,) or (0,) for all particles', field="halves",
                             got=repr(halves))
        halves, choice = choose_halves(data)
    else:
        choice = None
    halves = tuple(int(h) for h in halves)
    if not halves or any(h not in (0, 1, 2) for h in halves) or (0 in halves and len(halves) > 1):
        raise InputError("halves (1, 2), (1,), (2,) or (0,) for all particles", field="halves", got=halves)
    trained_on = {(1, 2): "both", (2, 1): "both", (1,): "1", (2,): "2", (0,): "all"}.get(halves, str(halves))
    if choice is None:
        choice = {"both": "one network per half set (gold standard)", "all": f"one network on all {data.n} particles",
                  }.get(trained_on, f"one network on half set {trained_on} only")
    if config is None:
        kw = {"image_size": image_size or default_image_size(data.box)}
        if grid_level is not None:
            kw["grid_level"] = int(grid_level)
        config = PoseNetConfig(**kw)
    config = config.check()
    if config.image_size > data.box:
        raise InputError(f"a model image size <= the particle box ({data.box} px)", field="image_size",
                         got=config.image_size)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    try:
        group = torch.as_tensor(point_group(sym), dtype=torch.float32, device=device)
        sets = {h: (np.arange(data.n) if h == 0 else np.flatnonzero(data.half == h)) for h in halves}
        for h, idx in sets.items():
            if idx.size < batch_size:
                raise InputError(_too_small(h, batch_size, len(sets) == 2, data),
                                 path=data.path, field="rlnRandomSubset" if h else "particles", got=f"{idx.size}")
        total_steps = sum(epochs * max(1, idx.size // batch_size) for idx in sets.values())
        yield Progress(0, total_steps, "preprocessing")
        small = downsample_particles(data, config.image_size)
        nets, refs, history = {}, {}, {}
        step = 0
        for k, (h, idx) in enumerate(sets.items()):
            torch.manual_seed(int(seed) + 1000 * h)
            images = torch.cat([preprocess_images(data, idx[s:s + 512], image_size=config.image_size)
                                for s in range(0, idx.size, 512)])
            rot = torch.as_tensor(data.rotations[idx], dtype=torch.float32)
            conf = torch.as_tensor(data.confidence[idx], dtype=torch.float32)
            net = PoseNet(config).to(device)
            label = "all particles" if h == 0 else f"half {h}"
            hist = yield from _train_one(net, images, rot, conf, group=group, epochs=int(epochs),
                                         batch_size=int(batch_size), lr=float(lr), label_smoothing=label_smoothing,
                                         augment=augment, seed=seed + h, device=device, label=label, step0=step,
                                         total_steps=total_steps)
            step += int(epochs) * max(1, idx.size // batch_size)
            nets[h], history[h] = net, hist
            rec = yield from subjob(reconstruct_half_maps_job(small.subset(idx), symmetry=sym, half_maps=False,
                                                              device=device),
                                    prefix="reference map", partials=False)
            rec = rec.volume
            refs[h] = rec
            yield Partial("reference", rec)
    finally:
        if threads:
            torch.set_num_threads(old_threads)
    training = {"trained_on": trained_on, "half_choice": choice, "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
                "label_smoothing": float(label_smoothing), "augment": bool(augment), "seed": int(seed),
                "particles": {str(h): int(sets[h].size) for h in sets},
                "loss": {str(h): [e["loss"] for e in history[h]] for h in history},
                "seconds": time.perf_counter() - t0}
    return PoseModel(nets=nets, references=refs, config=config, symmetry=sym,
                     pixel_size_angstrom=small.pixel_size_angstrom, box=data.box, training=training)


def _too_small(h: int, batch_size: int, pair: bool, data: ParticleData) -> str:
    """What a too-small training set expected, with the way out (train on the other half, or on everything)."""
    if h == 0:
        return f"at least batch_size = {batch_size} particles (--batch-size)"
    other = 3 - h
    n_other = int((data.half == other).sum())
    hint = (f"; train one network on half set {other} alone with --half {other} (halves=({other},)), "
            f"which `pose predict` then uses for every particle" if n_other >= batch_size else "")
    counts = f"half set 1: {int((data.half == 1).sum())}, half set 2: {int((data.half == 2).sum())}"
    pair_note = " for the gold-standard pair" if pair else ""
    return (f"at least batch_size = {batch_size} particles in half set {h}{pair_note} ({counts}){hint}, "
            "or all particles with --half all, or a smaller --batch-size")


def train_pose_model(data: ParticleData, **kwargs) -> PoseModel:
    """Plain-function version of :func:`train_pose_model_job`."""
    return run_job(train_pose_model_job(data, **kwargs), progress=False)



