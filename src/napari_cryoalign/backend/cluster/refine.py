"""After clustering: each class refined on its own, to the resolution its particles support.

The joint clustering aligns and sorts in a low band (:data:`.classify.SEARCH_FREQUENCY`) to stay fast;
its class averages are therefore coarse. :func:`refine_classes_job` takes a :class:`.common.ClusterResult`
and, class by class:

1. with a user's **class reference** (any related map: another conformation, a homologue, a low-passed
   model) that went to this class, searches the class's particles globally against it, low-passed to
   :data:`REFERENCE_RESOLUTION`, with gold-standard half sets (two rounds);
2. refines every particle locally (±10°, two levels) against the class's half-set average low-passed to
   its own FSC 0.143 resolution, ``rounds`` times, and averages the half sets again;
3. when the class's half-set resolution is still worse than ``ab_initio_below`` (default
   :data:`AB_INITIO_BELOW_VOXELS` voxels) and it has no reference, builds an **ab-initio initial model**
   from its own particles (:func:`..align.ab_initio.ab_initio_job`: all particles together, 4-fold
   cross-validated, 2 random restarts), searches globally from it as from a reference, refines again, and
   keeps whichever half-set resolution is better (the poses are restored otherwise).

Which references go to which classes: every class's particles are searched against every reference and
against their own average; references go to the classes they fit best relative to the class's own
average (Hungarian assignment, either contrast sign).

Arrays are numpy: particles ``(n, N, N, N)`` (z, y, x); Fourier masks fftshift-ed; resolutions in Å.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError
from ..jobs import Partial, Progress, subjob
from .classify import SEARCH_FREQUENCY
from .common import ClusterResult

__all__ = ["AB_INITIO_BELOW_VOXELS", "REFERENCE_RESOLUTION", "RefinedClasses", "read_class_references",
           "reference_to_box", "refine_classes", "refine_classes_job"]

#: the low-pass (Å) of a user's class reference before the global search: coarse enough that a related
#: structure or another conformation still leads the search, fine enough to orient a ~300 kDa complex
REFERENCE_RESOLUTION = 60.0
#: a class whose half-set FSC 0.143 is worse than this many voxels gets an ab-initio initial model (40 Å at
#: 10 Å/voxel; in the workflow benchmark the ribosome and CCT classes reach 2.6-3.5 voxels, a class at random
#: poses ~5)
AB_INITIO_BELOW_VOXELS = 4.0


@dataclass(frozen=True, eq=False)
class RefinedClasses:
    """Classes after :func:`refine_classes_job`.

    Attributes
    ----------
    clusters : the input :class:`.common.ClusterResult` with the refined poses (``alignment``) and the
        half-set class averages (``averages``, ``(K, N, N, N)``); classes and confidences unchanged
    resolutions : ``(K,)`` each class's half-set FSC 0.143 resolution (Å); NaN for a class of < 4 particles
        (left as it was) or whose FSC never crosses 0.143
    references : ``{class: reference index}`` (0-based) for the user's references
    initial_models : ``{class: {"resolution_before", "resolution_after", "kept", "restarts", "seconds"}}``
        for every class that went through an ab-initio initial model
    seconds : wall time
    """

    clusters: ClusterResult
    resolutions: np.ndarray
    references: dict = field(default_factory=dict)
    initial_models: dict = field(default_factory=dict)
    seconds: float = 0.0


def reference_to_box(volume, *, voxel_size: float, box: int, map_voxel_size: float | None = None) -> np.ndarray:
    """A user's map at the particles' voxel size and box: resampled (Fourier) from ``map_voxel_size``
    (Å; None = already at ``voxel_size``), then centre-cropped or zero-padded to ``box`` voxels. ``(box,)*3``."""
    from ..fourier import pad_or_crop, resample_voxel_size

    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise InputError("a cubic map (z, y, x)", field="reference", got=f"{v.shape}")
    if map_voxel_size is not None and abs(float(map_voxel_size) - float(voxel_size)) > 1e-3 * float(voxel_size):
        v = np.asarray(resample_voxel_size(v, from_voxel_angstrom=float(map_voxel_size),
                                           to_voxel_angstrom=float(voxel_size))[0], dtype=np.float32)
    return np.asarray(pad_or_crop(v, (int(box),) * 3), dtype=np.float32)


def read_class_references(paths, *, voxel_size: float, box: int, field: str = "class references"):
    """Users' maps (MRC files, any cubic box and voxel size) at the particles' ``voxel_size`` and ``box``
    (:func:`reference_to_box`); None when ``paths`` is empty. A bad map's error names its file and ``field``
    (the CLI flag or the widget input)."""
    if not paths:
        return None
    from ...io import read_mrc
    from ...io.mrc import voxel_size_isotropic

    refs = []
    for path in paths:
        m = read_mrc(path)
        try:
            refs.append(reference_to_box(m.data, voxel_size=voxel_size, box=box,
                                         map_voxel_size=voxel_size_isotropic(m)))
        except InputError as exc:
            raise InputError(exc.expected, path=path, field=field, got=exc.got) from exc
    return refs


def _assign_references(volumes, clu, masks, references, *, voxel_size, device):
    """Which class each reference belongs to: every class's particles are searched against every reference
    (low-passed to :data:`REFERENCE_RESOLUTION`) and against their own class average; a pair's affinity is
    the mean score against the reference over the mean score against the class's own average (particles of
    a big species score higher against anything); references go to classes by the best affinities (Hungarian),
    one class per reference. Each reference is tried with both contrast signs (maps are made protein-white,
    tomograms often protein-dark). Returns ``{class: reference index}``, the affinity matrix ``(K, R)`` and
    each reference's sign ``(R,)``."""
    from scipy.optimize import linear_sum_assignment

    from ..align.exhaustive import align_exhaustive
    from ..fourier import lowpass

    k, box = clu.averages.shape[0], volumes.shape[-1]
    fmax = min(SEARCH_FREQUENCY, voxel_size / REFERENCE_RESOLUTION + 2.0 / box)
    refs = [lowpass(r, REFERENCE_RESOLUTION, voxel_size_angstrom=voxel_size) for r in references]
    aff = np.zeros((k, len(refs), 2))
    for c in range(k):
        idx = np.flatnonzero(clu.classes == c)
        if len(idx) == 0:
            continue
        own = align_exhaustive(volumes[idx], lowpass(clu.averages[c], REFERENCE_RESOLUTION,
                                                     voxel_size_angstrom=voxel_size),
                               particle_masks=masks, max_frequency=fmax, crop_to_band=True, device=device)
        base = max(float(np.mean(own.scores)), 1e-6)
        for j, ref in enumerate(refs):
            for si, sign in enumerate((1.0, -1.0)):
                got = align_exhaustive(volumes[idx], sign * ref, particle_masks=masks, max_frequency=fmax,
                                       crop_to_band=True, device=device)
                aff[c, j, si] = float(np.mean(got.scores)) / base
    signs = np.where(aff[:, :, 0].max(0) >= aff[:, :, 1].max(0), 1.0, -1.0)
    best = aff.max(2)
    rows, cols = linear_sum_assignment(-best)
    return {int(c): int(j) for c, j in zip(rows, cols)}, best, signs


def refine_classes_job(
    volumes,
    clusters: ClusterResult,
    *,
    particle_masks=None,
    inside_masks=None,
    voxel_size_angstrom: float,
    rounds: int = 2,
    references=None,
    ab_initio_below: float | None = None,
    mask_radius_voxels: float | None = None,
    seed: int = 0,
    device="cpu",
    at: tuple[int, int] | None = None,
    label: str = "",
) -> Generator[Progress | Partial, None, RefinedClasses]:
    """Job version of :func:`refine_classes`. Yields :class:`Progress` (one step per class, or every record
    at the outer job's ``at = (step, total)``, messages after ``label``) and ``Partial("averages",
    (K, N, N, N))`` after each class."""
    from ..align.ab_initio import ab_initio_job
    from ..align.average import _checked_inside, average_particles, iterative_average_job
    from ..align.exhaustive import refine_alignment_job
    from ..align.types import AlignmentResult
    from ..fourier import lowpass

    t_all = time.perf_counter()
    vols = np.asarray(volumes, dtype=np.float32)
    if vols.ndim != 4 or len(set(vols.shape[1:])) != 1:
        raise InputError("particles (n, N, N, N)", field="volumes", got=f"{vols.shape}")
    n, box = vols.shape[0], vols.shape[-1]
    classes = np.asarray(clusters.classes)
    if classes.shape != (n,):
        raise InputError(f"one class per particle ({n})", field="clusters.classes", got=f"{classes.shape}")
    if int(rounds) != rounds or rounds < 0:
        raise InputError("an integer >= 0", field="rounds", got=rounds)
    vox = float(voxel_size_angstrom)
    if not vox > 0:
        raise InputError("a voxel size > 0 Å", field="voxel_size_angstrom", got=voxel_size_angstrom)
    below = AB_INITIO_BELOW_VOXELS * vox if ab_initio_below is None else float(ab_initio_below)
    if not below >= 0:
        raise InputError("a resolution >= 0 Å (0: never)", field="ab_initio_below", got=ab_initio_below)
    refs = None
    if references is not None and len(references):
        refs = [np.asarray(r, dtype=np.float32) for r in references]
        for r in refs:
            if r.shape != (box,) * 3:
                raise InputError(f"class references of the box {(box,) * 3}", field="references", got=f"{r.shape}")
    inside = None if inside_masks is None else np.asarray(_checked_inside(inside_masks, vols))
    masks = particle_masks

    k = clusters.averages.shape[0]
    step = (lambda c: at) if at is not None else (lambda c: (c, k))
    rot = np.asarray(clusters.alignment.rotations, dtype=np.float64).copy()
    ori = np.asarray(clusters.alignment.origins_voxels, dtype=np.float64).copy()
    sc = np.asarray(clusters.alignment.scores, dtype=np.float64).copy()
    avgs = np.asarray(clusters.averages, dtype=np.float32).copy()
    resolutions = np.full(k, np.nan)
    assigned, initial_models = {}, {}
    if refs:
        yield Progress(*step(0), f"{label}matching {len(refs)} class reference(s) to the classes")
        assigned, _, signs = _assign_references(vols, clusters, masks, refs, voxel_size=vox, device=device)
        refs = [s * r for s, r in zip(signs, refs)]

    def seeded(c, idx, sub_inside, reference, what):  # global half-set searches from a map, low-passed
        job = iterative_average_job(vols[idx], reference=reference, particle_masks=masks, iterations=2,
                                    voxel_size_angstrom=vox, start_resolution_angstrom=REFERENCE_RESOLUTION,
                                    inside_masks=sub_inside, max_search_frequency=SEARCH_FREQUENCY, crop_to_band=True,
                                    device=device)
        got = yield from subjob(job, at=step(c), prefix=f"{label}class {c + 1} {what}", partials=False)
        rot[idx], ori[idx], sc[idx] = got.alignment.rotations, got.alignment.origins_voxels, got.alignment.scores

    def refined(c, idx, sub_inside):  # the local rounds from the current poses; the half-set average
        def average():
            ali = AlignmentResult(rot[idx], ori[idx], sc[idx], "refine classes")
            return average_particles(vols[idx], ali, particle_masks=masks, half_maps=True,
                                     voxel_size_angstrom=vox, inside_masks=sub_inside, device=device)

        res = average()
        for r in range(int(rounds)):
            reso = max(float(res.fsc.resolution_0143), 2.0 * vox)
            ref = lowpass(res.average, reso, voxel_size_angstrom=vox)
            fmax = min(0.5, vox / reso + 2.0 / box)
            job = refine_alignment_job(vols[idx], ref, AlignmentResult(rot[idx], ori[idx], sc[idx], "refine classes"),
                                       particle_masks=masks, max_angle_deg=10.0, levels=2, max_frequency=fmax,
                                       device=device)
            ali = yield from subjob(job, at=step(c), prefix=f"{label}refine class {c + 1}, round {r + 1}",
                                    partials=False)
            rot[idx], ori[idx], sc[idx] = ali.rotations, ali.origins_voxels, ali.scores
            res = average()
        return res

    for c in range(k):
        idx = np.flatnonzero(classes == c)
        if len(idx) < 4:
            continue
        sub_inside = None if inside is None else inside[idx]
        if c in assigned:  # global searches from the user's reference, then the local rounds
            yield from seeded(c, idx, sub_inside, refs[assigned[c]], f"from reference {assigned[c] + 1}")
        res = yield from refined(c, idx, sub_inside)
        before = float(res.fsc.resolution_0143)
        if (c not in assigned and below > 0 and len(idx) >= 8
                and not before <= below):  # NaN (no crossing) counts as worse
            t0 = time.perf_counter()
            kept = (rot[idx].copy(), ori[idx].copy(), sc[idx].copy())
            job = ab_initio_job(vols[idx], particle_masks=masks, inside_masks=sub_inside, voxel_size_angstrom=vox,
                                mask_radius_voxels=mask_radius_voxels, restarts=2, folds=4, seed=seed,
                                device=device)
            model = yield from subjob(job, at=step(c), prefix=f"{label}class {c + 1} initial model", partials=False)
            yield from seeded(c, idx, sub_inside, model.reference, "from its initial model")
            again = yield from refined(c, idx, sub_inside)
            after = float(again.fsc.resolution_0143)
            better = not after > before  # NaN before: any number is better
            if better:
                res = again
            else:
                rot[idx], ori[idx], sc[idx] = kept
            initial_models[c] = {"resolution_before": round(before, 2), "resolution_after": round(after, 2),
                                 "kept": bool(better), "restarts": list(model.restarts),
                                 "seconds": round(time.perf_counter() - t0, 1)}
        avgs[c] = res.average
        resolutions[c] = float(res.fsc.resolution_0143)
        yield Partial("averages", avgs.copy())
        yield Progress(*(at if at is not None else (c + 1, k)),
                       f"{label}class {c + 1}: {len(idx)} particles, FSC 0.143 at {resolutions[c]:.1f} Å")
    ali = dataclasses.replace(clusters.alignment, rotations=rot, origins_voxels=ori, scores=sc)
    return RefinedClasses(clusters=dataclasses.replace(clusters, alignment=ali, averages=avgs),
                          resolutions=resolutions, references=assigned, initial_models=initial_models,
                          seconds=time.perf_counter() - t_all)


def refine_classes(volumes, clusters: ClusterResult, **kwargs) -> RefinedClasses:
    """Refine each class of a clustering on its own (see the module docstring).

    Parameters
    ----------
    volumes : ``(n, N, N, N)`` (z, y, x) the particles that were clustered, in the same order
    clusters : :class:`.common.ClusterResult` of them (classes, poses against the class averages)
    particle_masks : Fourier masks (missing wedge), fftshift-ed, ``(N, N, N)`` or ``(n, N, N, N)``; None =
        fully observed
    inside_masks : ``(n, N, N, N)`` real-space masks of the voxels inside the tomogram (boxes padded at its
        faces), or None
    voxel_size_angstrom : Å per voxel
    rounds : local refinement rounds per class (default 2; 0 = only the half-set averages)
    references : user maps ``(N, N, N)`` (already at the particles' box and voxel size:
        :func:`reference_to_box`), each going to the class it fits best; None = reference-free
    ab_initio_below : a class without a reference whose half-set FSC 0.143 is worse than this (Å) gets an
        ab-initio initial model; default :data:`AB_INITIO_BELOW_VOXELS` voxels; 0 = never
    mask_radius_voxels : the initial model's spherical mask (voxels); default: the box less a soft edge
        (give 0.6 x the particle's diameter)
    seed : the initial models' random starts
    device : torch device

    Returns
    -------
    :class:`RefinedClasses`
    """
    from ..jobs import run_job

    return run_job(refine_classes_job(volumes, clusters, **kwargs), progress=False)
