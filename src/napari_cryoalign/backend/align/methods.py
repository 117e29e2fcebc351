"""One job for the three alignment methods, with one set of settings for every front end.

:func:`align_job` is what ``cryoalign align`` and the "Align & average" widget
(:func:`.average.align_average_job`) run, so that a method's name means the same computation
everywhere:

* ``"exhaustive"`` -- :func:`.exhaustive.align_exhaustive_job`: a global rotation grid of
  ``angular_step_deg``, then ``refine_levels`` local levels;
* ``"learned"`` -- :func:`.learned.align_learned_job` (Gum-Net, one forward pass per particle);
* ``"learned+refine"`` -- the learned alignment, then :func:`.exhaustive.refine_alignment_job`
  around it: local search within ``max(angular_step_deg, 15) * 0.67`` degrees (about the
  learned aligner's typical error at a 30 degree grid step), ``refine_levels`` levels (0: one);
  then a second opinion from the exhaustive search's global grid (:func:`_second_opinion`):
  where the two disagree by more than a grid step, the particle gets the full exhaustive search
  and the better correlation wins, so an unsure or wrong network falls back to the exhaustive answer.

The learned aligner is optional: :func:`learned_aligner` gives its module, or an
:class:`~napari_cryoalign.errors.InputError` naming the method when it is not installed.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from types import ModuleType

import numpy as np

from ...errors import InputError
from ..ctf import ctf_premultiply
from ..jobs import Partial, Progress, subjob
from ..symmetry import symmetric_angle_deg
from .exhaustive import align_exhaustive_job, refine_alignment_job
from .types import AlignmentResult

__all__ = ["METHODS", "align_job", "learned_aligner"]

#: the alignment methods, in the order the front ends offer them
METHODS = ("exhaustive", "learned", "learned+refine")


def learned_aligner() -> ModuleType:
    """The learned aligner's module (:mod:`.learned`).

    Raises
    ------
    InputError
        ``field="method"``: the optional learned aligner is not installed.
    """
    try:
        from . import learned
    except ImportError as exc:  # the optional learned aligner is absent
        raise InputError("the learned aligner is not installed", field="method", got=str(exc)) from None
    return learned


def align_job(
    particles,
    reference,
    *,
    method: str = "exhaustive",
    particle_masks=None,
    angular_step_deg: float = 30.0,
    refine_levels: int = 2,
    max_shift_voxels: float | None = None,
    max_frequency: float = 0.5,
    model=None,
    candidates: int = 1,
    ctf=None,
    symmetry: str = "C1",
    device="cpu",
) -> Generator[Progress | Partial, None, AlignmentResult]:
    """Align subtomograms to a reference by ``method`` (a job: yields Progress, returns the result).

    Parameters
    ----------
    particles : ``(n, N, N, N)`` (z, y, x), N even (the learned methods: the model's box, 32 for
        the default)
    reference : ``(N, N, N)``, same box and voxel size
    method : ``"exhaustive"``, ``"learned"`` or ``"learned+refine"`` (module docstring)
    particle_masks : observed Fourier masks, fftshift-ed (DC at ``N // 2``), ``(N, N, N)`` shared
        or ``(n, N, N, N)``; None = fully observed
    angular_step_deg : exhaustive: global grid step (degrees); learned+refine: sets the local
        search range ``max(angular_step_deg, 15) * 0.67`` degrees
    refine_levels : exhaustive: local levels after the grid; learned+refine: local levels
        (0 counts as 1)
    max_shift_voxels : largest shift searched by the exhaustive search and the refinement
        (voxels; default N / 4); the learned aligner searches ``model.config.max_shift``
    max_frequency : highest frequency compared by the exhaustive search and the refinement,
        cycles/voxel (0.5: Nyquist)
    model : the learned methods: a :class:`~.gumnet.GumNet` (``learned_aligner().load_model``);
        None = the shipped default
    candidates : the learned methods: grid rotations compared per particle
        (:func:`.learned.align_learned`)
    ctf : :class:`~..ctf.ParticleCTF` of the particles, or None: the exhaustive search and the
        refinement score CTF-premultiplied particles (:func:`~..ctf.ctf_premultiply`; every
        frequency band then adds to the score), the network sees the particles as they are
    symmetry : point group of the reference (the exhaustive search covers its asymmetric unit)
    device : torch device

    Yields
    ------
    Progress of the running stage (``"learned: ..."``, ``"refine: ..."`` for the learned
    methods); closing the job stops it between batches.

    Returns
    -------
    AlignmentResult with ``method`` = the method run.

    Raises
    ------
    InputError
        An unknown ``method``; the learned methods when the learned aligner is not installed;
        the stages' own input errors.
    """
    if method not in METHODS:
        raise InputError(f"method {', '.join(repr(m) for m in METHODS)}", field="method", got=method)
    scored = particles
    if ctf is not None:
        yield Progress(0, None, "CTF premultiplication")
        scored = ctf_premultiply(particles, ctf, device=device)
    if method == "exhaustive":
        return (yield from align_exhaustive_job(scored, reference, particle_masks=particle_masks,
                                                angular_step_deg=angular_step_deg, refine_levels=refine_levels,
                                                max_shift_voxels=max_shift_voxels, max_frequency=max_frequency,
                                                symmetry=symmetry, device=device))
    learned = learned_aligner()
    result = yield from subjob(learned.align_learned_job(particles, reference, particle_masks=particle_masks,
                                                         model=model, candidates=candidates, device=device),
                               prefix="learned")
    if method == "learned+refine":
        job = refine_alignment_job(scored, reference, result, particle_masks=particle_masks,
                                   max_angle_deg=max(float(angular_step_deg), 15.0) * 0.67,
                                   levels=refine_levels or 1, max_shift_voxels=max_shift_voxels,
                                   max_frequency=max_frequency, device=device)
        result = yield from subjob(job, prefix="refine")
        result = yield from _second_opinion(scored, reference, result, particle_masks=particle_masks,
                                            angular_step_deg=angular_step_deg, refine_levels=refine_levels,
                                            max_shift_voxels=max_shift_voxels, max_frequency=max_frequency,
                                            symmetry=symmetry, device=device)
    return result


def _second_opinion(particles, reference, refined: AlignmentResult, *, particle_masks, angular_step_deg, refine_levels,
                    max_shift_voxels, max_frequency, symmetry, device):
    """``learned+refine``'s safety net: never worse than the exhaustive search where the network is wrong.

    The exhaustive search's global grid (on 2x binned volumes: the cheap part) gives each
    particle a second pose. Where it agrees with the refined network pose (within one grid step,
    up to the symmetry) the refined pose stands. Where it does not, those particles get the full
    exhaustive search (its candidates and refinement) and the pose of higher constrained
    correlation wins. A network that has never seen
    the structure (chance-level poses) thus costs about one exhaustive search, not a wrong answer.
    Returns the merged :class:`AlignmentResult` (``method="learned+refine"``).
    """
    t0 = time.perf_counter()
    grid = yield from subjob(align_exhaustive_job(particles, reference, particle_masks=particle_masks,
                                                  angular_step_deg=angular_step_deg, refine_levels=0,
                                                  max_shift_voxels=max_shift_voxels, max_frequency=max_frequency,
                                                  symmetry=symmetry, device=device), prefix="check")
    off = np.flatnonzero(symmetric_angle_deg(grid.rotations, refined.rotations, symmetry) > float(angular_step_deg))
    rot = np.array(refined.rotations, dtype=np.float64)
    ori = np.array(refined.origins_voxels, dtype=np.float64)
    score = np.array(refined.scores, dtype=np.float64)
    if len(off):
        p = particles[off]
        mk = particle_masks
        if mk is not None and np.ndim(mk) == 4 and np.shape(mk)[0] == np.shape(particles)[0]:
            mk = mk[off]
        other = yield from subjob(align_exhaustive_job(p, reference, particle_masks=mk,
                                                       angular_step_deg=angular_step_deg, refine_levels=refine_levels,
                                                       max_shift_voxels=max_shift_voxels,
                                                       max_frequency=max_frequency, symmetry=symmetry, device=device),
                                  prefix="check")
        better = np.asarray(other.scores) > score[off]
        rot[off[better]] = other.rotations[better]
        ori[off[better]] = other.origins_voxels[better]
        score[off[better]] = np.asarray(other.scores)[better]
    seconds = (refined.seconds if np.isfinite(refined.seconds) else 0.0) + time.perf_counter() - t0
    return AlignmentResult(rot, ori, score, refined.method, seconds=seconds)
