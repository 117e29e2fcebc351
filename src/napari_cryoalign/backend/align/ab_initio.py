"""Ab-initio initial model of one species from its subtomograms (no reference, no half split).

Reference-free averaging with gold-standard half sets (:func:`.average.iterative_average_job`) starts
each half from one particle and keeps the halves apart from the first round. That works for large
complexes, but ~20 particles per half of a ~300 kDa complex never get going: the poses stay random
(``docs/workflow.md``, ``benchmarks/diag_class_poses.py``). Initial-model programs (RELION's
``InitialModel``, cryoSPARC's ab-initio) therefore build the first low-resolution map from **all**
particles together, inside a **particle mask**, coarse to fine, from **several random starts**, and
only then refine the half sets independently from that map low-passed far below the resolution of
interest. This module does the same with the exhaustive search:

1. every restart begins at uniformly random poses (the average is then a blurred blob whose noise
   breaks the symmetry differently per restart);
2. each round averages all particles (wedge- and coverage-compensated), low-passes the average to the
   round's resolution, multiplies it by a soft sphere of the particle's size, and searches every
   particle globally against it (``align_exhaustive``, several candidate basins per particle);
3. with ``folds`` > 1 (the default 4) the particles are split into folds and each fold is searched
   against the average of the *other* folds, so no particle's own noise is in its reference;
4. after the ``schedule`` rounds the restart with the highest mean (cross-validated) score is kept and
   continues through ``final_schedule``.

Why cross-validated: on ~40 mTOR particles at SNR 0.05 (``benchmarks/bench_workflow.py``, development
seeds 101-103) the plain self-consistency score -- particles re-aligned to their own average -- is
*higher* for wrong solutions than for the true poses (seed 102: 0.170 vs 0.143 at 40 Å), because a
wrong solution's average is mostly the particles' own noise, which they match again. Scored against
the other folds' average the truth ranks first (0.116 vs 0.108 wrong vs 0.092 at random poses), and
the restarts without folds converged to wrong solutions on two of the three seeds (median pose error
112 deg and 87 deg) where 4 folds reached 8-18 deg.

The result is an initial model for :func:`.average.iterative_average_job` (``reference=``), whose
half sets then start from it low-passed (e.g. to 60 Å), so the half-set FSC stays independent beyond that.

Volumes are ``(z, y, x)``; Fourier masks fftshift-ed (DC at ``N // 2``); resolutions in Å.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InputError
from ..fourier import lowpass, sphere_mask
from ..geometry import random_rotations
from ..jobs import Partial, Progress, run_job, subjob
from .average import _checked_inside, _prepare, wedge_compensated_average
from .exhaustive import align_exhaustive_job
from .types import AlignmentResult

__all__ = ["AB_INITIO_SCHEDULE", "AB_INITIO_FINAL", "AbInitioResult", "ab_initio", "ab_initio_job"]

#: resolutions (Å) of the rounds every restart runs (coarse to fine)
AB_INITIO_SCHEDULE = (80.0, 60.0, 50.0, 40.0, 40.0)
#: resolutions (Å) of the rounds the best restart continues with
AB_INITIO_FINAL = (30.0, 30.0)


@dataclass(frozen=True, eq=False)
class AbInitioResult:
    """An initial model and the poses that make it.

    Attributes
    ----------
    reference : ``(N, N, N)`` float32, the (wedge-compensated) average of all particles under
        ``alignment``, not low-passed and not masked
    alignment : :class:`AlignmentResult` of every particle against the last round's reference
    score : mean alignment score of the last round
    restarts : per restart ``{"restart", "seed", "score"}`` (the mean score after ``schedule``); the
        chosen one is ``chosen``
    chosen : index of the restart that continued
    seconds : wall time
    """

    reference: np.ndarray
    alignment: AlignmentResult
    score: float
    restarts: tuple
    chosen: int
    seconds: float


def _rows(masks, idx):
    """Per-particle masks ``(n, N, N, N)`` restricted to ``idx``; a shared ``(N, N, N)`` mask or None as is."""
    return masks if masks is None or masks.ndim == 3 else masks[idx]


def _clamped(resolutions, voxel_size: float) -> list[float]:
    """The schedule's resolutions, none finer than 2.5 voxels (a 20 Å map cannot be 30 Å-filtered finer)."""
    given = [float(r) for r in resolutions]
    if not given or any(not np.isfinite(r) or r <= 0 for r in given):
        raise InputError("resolutions > 0 Å", field="schedule", got=f"{list(resolutions)}")
    return [max(r, 2.5 * float(voxel_size)) for r in given]


def ab_initio_job(
    particles,
    *,
    particle_masks=None,
    inside_masks=None,
    voxel_size_angstrom: float,
    mask_radius_voxels: float | None = None,
    restarts: int = 2,
    schedule=AB_INITIO_SCHEDULE,
    final_schedule=AB_INITIO_FINAL,
    max_frequency: float = 0.35,
    angular_step_deg: float = 30.0,
    candidates: int = 3,
    folds: int | None = None,
    seed: int = 0,
    device="cpu",
) -> Generator[Progress | Partial, None, AbInitioResult]:
    """Job version of :func:`ab_initio`: yields a :class:`Progress` per round and
    ``Partial("average", (N, N, N))`` after each round of the continued restart."""
    t0 = time.perf_counter()
    with torch.no_grad():
        p, m = _prepare(particles, particle_masks, device)
        inside = _checked_inside(inside_masks, p)
    n, box = int(p.shape[0]), int(p.shape[-1])
    if n < 4:
        raise InputError("at least 4 particles for an initial model", field="particles", got=n)
    if int(restarts) != restarts or restarts < 1:
        raise InputError("an integer >= 1", field="restarts", got=restarts)
    if not voxel_size_angstrom > 0:
        raise InputError("a voxel size > 0 Å", field="voxel_size_angstrom", got=voxel_size_angstrom)
    if folds is None:
        folds = max(1, min(4, n // 4))
    if int(folds) != folds or not 1 <= folds <= n // 2:
        raise InputError(f"an integer in [1, {n // 2}] (each fold needs 2 particles)", field="folds", got=folds)
    vox = float(voxel_size_angstrom)
    first, last = _clamped(schedule, vox), (_clamped(final_schedule, vox) if len(final_schedule) else [])
    edge = max(2.0, 0.075 * box)
    radius = 0.5 * box - edge if mask_radius_voxels is None else float(mask_radius_voxels)
    if not 0 < radius <= 0.5 * box:
        raise InputError(f"a mask radius in (0, {0.5 * box:g}] voxels", field="mask_radius_voxels", got=radius)
    sphere = sphere_mask((box,) * 3, radius=min(radius, 0.5 * box - 1.0), soft_edge=edge).numpy()
    pn = p.cpu().numpy()
    mn = None if m is None else (m[0] if m.shape[0] == 1 else m).cpu().numpy()
    ins = None if inside is None else np.asarray(inside)
    total = int(restarts) * len(first) + len(last)
    step = 0

    fold = np.arange(n) % int(folds)

    def rounds(ali, resolutions, label):
        nonlocal step
        for lp in resolutions:
            fmax = min(float(max_frequency), vox / lp + 2.0 / box)
            rot, ori, sc = ali.rotations.copy(), ali.origins_voxels.copy(), np.zeros(n)
            for f in range(int(folds)):
                # with folds: every particle searched against the average of the other folds (its own noise
                # is not in its reference, so the score it reaches is a cross-validated one)
                held = np.flatnonzero(fold == f)
                src = np.flatnonzero(fold != f) if folds > 1 else held
                sub = AlignmentResult(ali.rotations[src], ali.origins_voxels[src], ali.scores[src], "ab-initio")
                avg = wedge_compensated_average(pn[src], sub, particle_masks=_rows(mn, src),
                                                inside_masks=None if ins is None else ins[src], device=device)
                ref = lowpass(avg, lp, voxel_size_angstrom=vox) * sphere
                job = align_exhaustive_job(pn[held], ref, particle_masks=_rows(mn, held), max_frequency=fmax,
                                           crop_to_band=True, angular_step_deg=angular_step_deg,
                                           candidates=candidates, device=device)
                got = yield from subjob(job, at=(step, total), prefix=f"{label}, {lp:.3g} Å", partials=False)
                rot[held], ori[held], sc[held] = got.rotations, got.origins_voxels, got.scores
            ali = AlignmentResult(rot, ori, sc, "ab-initio")
            step += 1
            yield Progress(step, total, f"{label}, {lp:.3g} Å: mean score {np.mean(sc):.4f}")
        return ali

    runs, record = [], []
    for r in range(int(restarts)):
        rs = int(seed) + r
        ali = AlignmentResult(random_rotations(n, seed=rs), np.zeros((n, 3)), np.zeros(n), "random")
        ali = yield from rounds(ali, first, f"initial model, start {r + 1}/{int(restarts)}")
        runs.append(ali)
        record.append({"restart": r, "seed": rs, "score": round(float(np.mean(ali.scores)), 5)})
    chosen = int(np.argmax([rec["score"] for rec in record]))
    ali = runs[chosen]
    if last:
        ali = yield from rounds(ali, last, f"initial model, start {chosen + 1} continued")
    avg = wedge_compensated_average(pn, ali, particle_masks=mn, inside_masks=ins, device=device)
    yield Partial("average", avg)
    return AbInitioResult(reference=np.asarray(avg, dtype=np.float32), alignment=ali,
                          score=float(np.mean(ali.scores)), restarts=tuple(record), chosen=chosen,
                          seconds=time.perf_counter() - t0)


def ab_initio(particles, **kwargs) -> AbInitioResult:
    """An initial model from subtomograms of one species, without a reference (see the module docstring).

    Parameters
    ----------
    particles : ``(n, N, N, N)`` (z, y, x), N even, n >= 4
    particle_masks : Fourier masks (missing wedge), fftshift-ed, ``(N, N, N)`` or ``(n, N, N, N)``; None =
        fully observed
    inside_masks : ``(n, N, N, N)`` real-space masks of the voxels inside the tomogram (boxes padded at its
        faces), or None
    voxel_size_angstrom : Å per voxel
    mask_radius_voxels : radius of the soft spherical mask on every round's reference (voxels; a cosine
        edge of ``max(2, 0.075 N)`` voxels outside it); default: the box, less the edge. Give the
        particle's radius plus a margin (``cryoalign workflow`` uses 0.6 x its diameter)
    restarts : random starts (default 2); each runs ``schedule``, the best continues
    schedule, final_schedule : resolutions (Å) of the rounds (defaults :data:`AB_INITIO_SCHEDULE`,
        :data:`AB_INITIO_FINAL`); each is kept >= 2.5 voxels
    max_frequency : highest frequency any search compares (cycles/voxel, default 0.35)
    angular_step_deg, candidates : of every global search (``align_exhaustive``)
    folds : cross-validation folds (each fold searched against the average of the others); default 4
        (fewer below 16 particles: ``n // 4``, at least 1); 1 = every particle against the average of all
    seed : the restarts use ``seed``, ``seed + 1``, ...
    device : torch device

    Returns
    -------
    :class:`AbInitioResult`
    """
    return run_job(ab_initio_job(particles, **kwargs), progress=False)
