"""Training and fine-tuning of the learned subtomogram aligner (Gum-Net, :mod:`.learned`).

* :func:`train_job` -- unsupervised training / fine-tuning on the user's own subtomograms
  (pairs of subtomograms, or subtomograms against references; loss ``1 - r`` between the
  warped, missing-wedge-imputed moving volume and the fixed one; no poses needed), or, with
  the simulator's poses, the supervised pre-training of the shipped default weights;
* :func:`grid_targets` -- the soft targets of a grid-head model over its rotation grid.

The losses are those :func:`.learned.align_learned` ranks rotations by; the trained model is
saved with :func:`.learned.save_model`. See ``docs/align_learned.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import InputError
from ..geometry import transform_reference_to_particle
from ..jobs import Partial, Progress, run_job
from .gumnet import GumNet, GumNetConfig, standardize
from .learned import (
    _align_batch,
    _grid_candidate_losses,
    _hypothesis_losses,
    _mask_to_model_box,
    _masks,
    _pick,
    _resampling,
    _volumes,
    model_box,
    resampled_to_model,
)

__all__ = ["GRID_TARGET_SIGMA", "VALIDATION_MIN_T", "TrainResult", "grid_targets", "train", "train_job",
           "turned_references"]

#: width of the soft grid targets, in grid steps (a Gaussian in the geodesic angle)
GRID_TARGET_SIGMA = 0.6

#: an epoch replaces the starting weights only where the held-out particles' scores rose by this many
#: standard errors of the paired (per-particle) difference: a handful of held-out particles is noisy
VALIDATION_MIN_T = 2.0


def turned_references(references, rotations, turns) -> tuple[np.ndarray, np.ndarray]:
    """Supervised training pairs without the fixed-reference shortcut (issue 18).

    With each structure's reference always in its canonical pose, the reference is the same in
    every pair of that structure, so a network can read the pose off the particle alone and never
    compare the two inputs (it learns identities: docs/align_learned.md). Turning each pair's
    reference by its own rotation ``G`` makes the comparison the only way to the answer.

    Parameters
    ----------
    references : ``(n, N, N, N)`` (z, y, x), each pair's reference in its canonical pose
    rotations : ``(n, 3, 3)`` the particles' poses ``A`` (reference -> particle)
    turns : ``(n, 3, 3)`` the rotations ``G`` applied to the references

    Returns
    -------
    The turned references ``(n, N, N, N)`` float32 and the targets ``A G^T`` ``(n, 3, 3)``:
    ``transform_reference_to_particle(turned, A G^T)`` is ``transform_reference_to_particle(ref, A)``
    (the order is pinned in tests/backend/test_geometry.py).
    """
    turns = np.asarray(turns, dtype=np.float64)
    turned = transform_reference_to_particle(np.asarray(references, np.float32), turns.astype(np.float32))
    return np.asarray(turned, np.float32), np.asarray(rotations) @ np.transpose(turns, (0, 2, 1))


def grid_targets(grid: torch.Tensor, rotations: torch.Tensor, sigma_deg: float) -> torch.Tensor:
    """Soft classification targets over a rotation grid: ``softmax(-theta^2 / (2 sigma^2))``.

    ``grid`` ``(M, 3, 3)``, ``rotations`` ``(B, 3, 3)`` (the true ``A``), ``theta`` the geodesic
    angle between each grid rotation and the truth. Returns ``(B, M)``, rows summing to 1.
    """
    tr = torch.einsum("mij,bij->bm", grid, rotations.to(grid))
    ang = torch.arccos(((tr - 1.0) / 2.0).clamp(-1.0, 1.0))
    return torch.softmax(-(ang ** 2) / (2.0 * math.radians(sigma_deg) ** 2), dim=1)


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
    validation_scores : ``(n_epochs_done + 1,)`` mean wedge-aware score (correlation with the
        reference, or the partner, over the Fourier region both measured; no poses) of the held-out
        particles aligned by the network, before training and after each epoch; empty without
        validation
    best_epoch : the epoch whose weights the model has (0 = the weights it started with: no epoch
        raised the held-out score); None without validation (the last epoch's weights)
    """

    model: GumNet
    losses: np.ndarray
    epoch_losses: np.ndarray
    steps: int
    seconds: float
    settings: dict = field(default_factory=dict)
    validation_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    best_epoch: int | None = None


def _grid_loss(model, moving, fixed, mmask, truth, *, loss_box, candidates: int, correlation_weight: float,
               supervised_weight: float, correlation: str, fixed_mask) -> torch.Tensor:
    """Training loss of a grid-head model (see :func:`train_job`)."""
    logits = model(moving, fixed)
    logp = torch.log_softmax(logits, 1)
    loss = logits.new_zeros(())
    if correlation_weight > 0:
        idx, lk = _grid_candidate_losses(model, moving, fixed, mmask, logits.detach(), candidates, loss_box=loss_box,
                                         correlation=correlation, fixed_mask=fixed_mask)
        p = torch.softmax(logp.gather(1, idx), 1)  # the candidates' probabilities, renormalised
        loss = loss + correlation_weight * (p * lk).sum(1).mean()
    if truth is not None:
        tgt = grid_targets(model.grid, truth, GRID_TARGET_SIGMA * model.config.grid_step_deg)
        loss = loss + supervised_weight * -(tgt * logp).sum(1).mean()
    return loss


def _validation_scores(model, parts, refs, pm, val_idx, *, loss_box, device, batch: int = 32) -> np.ndarray:
    """The wedge-aware scores ``(len(val_idx),)`` of the held-out particles ``val_idx`` aligned by the network alone
    (:func:`.learned.align_learned`'s score, ``candidates=1``), each against its reference, or, without
    references, against the next held-out particle (with that particle's mask). Truth-free."""
    partners = np.roll(val_idx, -1)
    was = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(val_idx), batch):
                idx, pidx = val_idx[i:i + batch], partners[i:i + batch]
                if refs is None:
                    fixed = parts[pidx]
                else:
                    fixed = refs[0][None] if refs.shape[0] == 1 else refs[idx]
                fixed = standardize(fixed.to(device))
                mm = _pick(pm, idx)
                rm = None if refs is not None or pm is None else _pick(pm, pidx).to(device)
                _, _, sc = _align_batch(model, parts[idx].to(device), fixed, None if mm is None else mm.to(device), rm,
                                        candidates=1, search_box=loss_box)
                out.append(sc.double().cpu().numpy())
    finally:
        model.train(was)
    return np.concatenate(out)


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
    max_seconds: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    voxel_size: float | None = None,
    correlation: str = "constrained",
    validation: float | None = None,
    patience: int | None = None,
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
    correlation : the correlation the unsupervised term maximises: ``"constrained"`` (default: over
        the Fourier region both volumes measured, :func:`.gumnet.constrained_correlation_map`) or
        ``"imputed"`` (Gum-Net's: the moving volume's missing region filled from the fixed one).
        Against a clean reference the imputed correlation rewards rotations that hide the
        reference's strong components in the particle's missing wedge, and unsupervised
        fine-tuning learned exactly that (docs/align_learned.md)
    validation : fraction of the particles held out of training (seeded) to choose the epoch: after
        each epoch the held-out particles are aligned by the network and scored as
        :func:`.learned.align_learned` scores them (no poses), and the model ends with the weights of
        the best-scoring epoch whose rise over the starting weights is significant (a paired t of at
        least ``VALIDATION_MIN_T`` over the held-out particles), else with the starting weights.
        0 = none (all particles train; the last epoch's weights). None (default) = 0.2 for
        unsupervised training, 0 with ``true_rotations`` (supervised pre-training is judged on its
        own held-out structures). Skipped when fewer than 2 particles would be held out or fewer
        than 2 left to train
    patience : with validation, stop after this many epochs without a higher mean held-out score
        (None = run all epochs)
    true_rotations : optional ``(n, 3, 3)`` RELION matrices ``A`` of each particle relative to its
        reference (simulated data, ``references`` given): adds ``supervised_weight`` times the
        squared Frobenius distance ``|A_k - A|^2 / 8`` (0..1) of the closest hypothesis - a
        supervised pre-training of the default weights on simulated data; without it the
        training is unsupervised, as in the paper
    supervised_weight : weight of that term
    correlation_weight : head ``"grid"``: weight of the unsupervised expected-correlation term
    grid_candidates : head ``"grid"``: candidates of that term per pair
    max_steps : stop after this many steps (None = run all epochs)
    max_seconds : stop after the step that passes this wall time (None = no limit); the result
        is returned as after the last epoch
    optimizer : an optimiser over ``model``'s parameters to continue with (keeps Adam's
        moments across calls); None = a new Adam with ``lr``
    voxel_size : Å per voxel of the particles (and references); with a ``model`` that has a working
        voxel size (``model.config.voxel_size``) they are resampled to it first, as
        :func:`.learned.align_learned` does, so that the model is tuned on what it will see
    device : torch device
    seed : seeds the pairing, batch order and a new model's initialisation

    Yields
    ------
    Progress per step; ``Partial("loss", {"epoch", "step", "loss"})`` per step;
    ``Partial("model", model)`` once at the start (cancelling leaves it usable, with the best
    held-out epoch's weights); with validation, ``Partial("validation", {"epoch", "score", "t",
    "best_epoch", "best_score"})`` before training (epoch 0) and after each epoch.

    Returns
    -------
    TrainResult
    """
    resample, why = _resampling(model, voxel_size)
    parts = _volumes(particles, "particles", ndim=4, box=None if model is None or resample else model.config.box,
                     why=why)
    n, box = parts.shape[0], parts.shape[-1]
    if n < 2:
        raise InputError("at least 2 particles", field="particles", got=n)
    refs = None
    if references is not None:
        r_arr = references.detach().cpu().numpy() if isinstance(references, torch.Tensor) else np.asarray(references)
        refs = _volumes(r_arr[None] if r_arr.ndim == 3 else r_arr, "references", ndim=4, box=box,
                        why="the particles' box")
        if refs.shape[0] not in (1, n):
            raise InputError(f"one reference (z, y, x) or one per particle ({n}, z, y, x)", field="references",
                             got=f"shape {tuple(refs.shape)}")
    pm = _masks(particle_masks, "particle_masks", n, box)
    m = model_box(box, voxel_size, model.config) if resample else box
    if resample and not m == box == model.config.box:
        box = model.config.box
        parts = resampled_to_model(parts, m, box)
        refs = None if refs is None else resampled_to_model(refs, m, box)
        pm = None if pm is None else _mask_to_model_box(pm, m, box)
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
    if correlation not in ("imputed", "constrained"):
        raise InputError("'imputed' or 'constrained'", field="correlation", got=correlation)
    if loss_box is not None and not (8 <= int(loss_box) <= box):
        raise InputError(f"a loss box between 8 and {box} voxels, or None", field="loss_box", got=loss_box)
    loss_box = None if loss_box is None or int(loss_box) == box else int(loss_box)
    if validation is None:
        validation = 0.2 if truth is None else 0.0
    if not (0.0 <= float(validation) < 1.0):
        raise InputError("a fraction in [0, 1)", field="validation", got=validation)
    if patience is not None and int(patience) < 1:
        raise InputError("an integer >= 1, or None", field="patience", got=patience)
    n_val = int(round(float(validation) * n))
    if n_val < 2 or n - n_val < 2:
        n_val = 0
    val_idx = np.sort(np.random.default_rng([seed, 7]).permutation(n)[:n_val]) if n_val else np.zeros(0, int)
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    n_fit = len(train_idx)
    rng = np.random.default_rng(seed)
    if model is None:
        torch.manual_seed(seed)
        model = GumNet(GumNetConfig(box=box))
    model.to(device)
    opt = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr)
    batch_size = int(min(batch_size, n_fit))
    steps_per_epoch = n_fit // batch_size
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "loss_box": loss_box or box,
                "all_hypotheses_weight": all_hypotheses_weight, "seed": seed, "n_particles": n,
                "pairs": "references" if refs is not None else "random particle pairs",
                "imputation": pm is not None, "correlation": correlation, "validation": float(validation),
                "n_validation": n_val, "patience": patience,
                "supervised_weight": supervised_weight if truth is not None else 0.0,
                "head": model.config.head if model is not None else "hypotheses"}
    if model is not None and model.config.head == "grid":
        settings.update(correlation_weight=correlation_weight, grid_candidates=int(grid_candidates))
        if not 1 <= int(grid_candidates) <= len(model.grid):
            raise InputError(f"between 1 and {len(model.grid)} (the grid size)", field="grid_candidates",
                             got=grid_candidates)
    losses, epoch_losses, val_scores = [], [], []
    t0 = time.perf_counter()
    step = 0
    best_epoch, best_state, first = None, None, None
    yield Partial("model", model)

    def validate(epoch: int):
        nonlocal best_epoch, best_state, first
        sc = _validation_scores(model, parts, refs, pm, val_idx, loss_box=loss_box, device=device)
        val_scores.append(float(sc.mean()))
        if first is None:
            first = sc
        # the weights kept are the highest-scoring epoch whose rise over the start is significant
        # (paired t >= VALIDATION_MIN_T), else the start
        d = sc - first
        t = float(d.mean() / max(d.std(ddof=1) / math.sqrt(d.size), 1e-12)) if epoch else 0.0
        if best_epoch is None or (t >= VALIDATION_MIN_T and val_scores[-1] > val_scores[best_epoch]):
            best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return Partial("validation", {"epoch": epoch, "score": val_scores[-1], "t": t, "best_epoch": best_epoch,
                                      "best_score": val_scores[best_epoch]})

    if n_val:
        yield Progress(0, total, f"scoring {n_val} held-out particles")
        yield validate(0)
    yield Progress(0, total, "training Gum-Net")
    try:
        model.train()
        for epoch in range(epochs):
            order = train_idx[rng.permutation(n_fit)]
            partner = train_idx[rng.permutation(n_fit)]
            ep = []
            for s in range(steps_per_epoch):
                if step >= total or (max_seconds is not None and time.perf_counter() - t0 >= max_seconds):
                    break
                idx = order[s * batch_size:(s + 1) * batch_size]
                moving = standardize(parts[idx].to(device))
                if refs is None:
                    pidx = partner[s * batch_size:(s + 1) * batch_size]
                    pidx = np.where(pidx == idx, train_idx[(np.searchsorted(train_idx, pidx) + 1) % n_fit], pidx)
                    fixed = parts[pidx]
                else:
                    fixed = refs[0].expand(len(idx), -1, -1, -1) if refs.shape[0] == 1 else refs[idx]
                fixed = standardize(fixed.to(device))
                mm = _pick(pm, idx)
                mm = None if mm is None else mm.to(device)
                fm = None if refs is not None or pm is None else _pick(pm, pidx).to(device)  # the partner's wedge
                if model.config.head == "grid":
                    loss = _grid_loss(model, moving, fixed, mm, None if truth is None else truth[idx].to(device),
                                      loss_box=loss_box, candidates=grid_candidates,
                                      correlation_weight=correlation_weight, supervised_weight=supervised_weight,
                                      correlation=correlation, fixed_mask=fm)
                else:
                    rot, _, lk = _hypothesis_losses(model, moving, fixed, mm, loss_box=loss_box,
                                                    correlation=correlation, fixed_mask=fm)
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
                if n_val:
                    yield validate(len(epoch_losses))
            if step >= total or (max_seconds is not None and time.perf_counter() - t0 >= max_seconds):
                break
            # patience counts the epochs since the highest mean (the first of equal ones)
            if n_val and patience is not None and len(val_scores) - 1 - int(np.argmax(val_scores)) >= int(patience):
                break
    finally:
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
    return TrainResult(model=model, losses=np.asarray(losses), epoch_losses=np.asarray(epoch_losses), steps=step,
                       seconds=time.perf_counter() - t0, settings=settings, validation_scores=np.asarray(val_scores),
                       best_epoch=best_epoch)


def train(particles, **kwargs) -> TrainResult:
    """Plain-function version of :func:`train_job` (drains it without a progress bar)."""
    return run_job(train_job(particles, **kwargs), progress=False)
