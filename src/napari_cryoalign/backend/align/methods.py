"""One job for the three alignment methods, with one set of settings for every front end.

:func:`align_job` is what ``cryoalign align`` and the "Align & average" widget
(:func:`.average.align_average_job`) run, so that a method's name means the same computation
everywhere:

* ``"exhaustive"`` -- :func:`.exhaustive.align_exhaustive_job`: a global rotation grid of
  ``angular_step_deg``, then ``refine_levels`` local levels;
* ``"learned"`` -- :func:`.learned.align_learned_job` (Gum-Net, one forward pass per particle);
* ``"learned+refine"`` -- the learned alignment, then the exhaustive search in which the network's
  pose takes the place of the grid's last (third) candidate start where it scores better than
  that candidate on the coarse problem (``extra_replaces_last``), and is dropped elsewhere: the
  starts are refined side by side and the best-scoring basin wins. A network that knows the
  structure adds the right basin where the grid misses it (pseudo-symmetric mates, low SNR);
  an unsure one (chance-level poses on a structure it never saw) leaves the exhaustive search
  exactly as it was. Cost: one exhaustive search plus the network's pass and one coarse score
  per particle (issue 18: "never worse than exhaustive at the same cost"; measured in
  docs/align.md). Until 2026-12-07 the network's pose always replaced the third candidate,
  which lost 3 of 300 particles to the plain search at SNR 0.03 and 0.01, where the network is
  at chance.

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
from .exhaustive import DEFAULT_CANDIDATES, align_exhaustive_job
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
    voxel_size: float | None = None,
    device="cpu",
) -> Generator[Progress | Partial, None, AlignmentResult]:
    """Align subtomograms to a reference by ``method`` (a job: yields Progress, returns the result).

    Parameters
    ----------
    particles : ``(n, N, N, N)`` (z, y, x), N even (the learned methods: the model's box, 32 for
        the default, unless ``voxel_size`` is given and the model has a working voxel size)
    reference : ``(N, N, N)``, same box and voxel size
    method : ``"exhaustive"``, ``"learned"`` or ``"learned+refine"`` (module docstring)
    particle_masks : observed Fourier masks, fftshift-ed (DC at ``N // 2``), ``(N, N, N)`` shared
        or ``(n, N, N, N)``; None = fully observed
    angular_step_deg : exhaustive and learned+refine: global grid step (degrees)
    refine_levels : exhaustive: local levels after the grid; learned+refine: the same (0 counts
        as 1: the network's start needs at least one level to compete)
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
    voxel_size : Å per voxel of the particles; the learned methods resample them to the model's
        working voxel size when it has one (:func:`.learned.align_learned`), so any box works
    device : torch device

    Yields
    ------
    Progress of the running stage (``"learned: ..."``, ``"search: ..."`` for the learned
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
                                                         model=model, candidates=candidates, voxel_size=voxel_size,
                                                         device=device),
                               prefix="learned")
    if method == "learned+refine":
        # the network's pose takes the place of the grid's last candidate start where it scores better
        # there (the same number of starts, so the same cost); where it does not (an unsure or wrong
        # network) the search is the plain exhaustive one
        t0 = time.perf_counter()
        job = align_exhaustive_job(scored, reference, particle_masks=particle_masks,
                                   angular_step_deg=angular_step_deg, refine_levels=max(1, int(refine_levels)),
                                   max_shift_voxels=max_shift_voxels, max_frequency=max_frequency,
                                   candidates=DEFAULT_CANDIDATES, symmetry=symmetry,
                                   extra_candidates=result.rotations, extra_replaces_last=True, device=device)
        searched = yield from subjob(job, prefix="search")
        seconds = (result.seconds if np.isfinite(result.seconds) else 0.0) + time.perf_counter() - t0
        result = AlignmentResult(searched.rotations, searched.origins_voxels, searched.scores, "learned+refine",
                                 seconds=seconds)
    return result
