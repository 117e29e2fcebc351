"""From a tomogram and a few labelled particles to class averages, in one job (``cryoalign workflow``).

The chain a user runs on one tomogram, each step the same backend job its own command runs:

1. **pick train**: the positive-unlabelled picker on the labels (:func:`.picking.fit.fit_picker_job`,
   with look-alike rejection, as ``cryoalign pick train`` at its defaults);
2. **pick predict**: every pick at the picker's default threshold (:func:`.picking.infer.pick_job`);
3. **extract**: one box per pick; boxes that cross the tomogram's faces are padded, not dropped
   (:func:`.align.extract.extract_subtomograms`), so no particle is lost at the borders;
4. **average**: a reference-free iterative average of every pick with gold-standard half sets
   (:func:`.align.average.iterative_average_job`);
5. **cluster**: joint alignment and clustering into ``n_classes`` classes
   (:func:`.cluster.classify.cluster_subtomograms_job`, at its defaults);
6. **refine classes**: each class's particles refined locally at full resolution against their
   class average and re-averaged with half sets (the class averages written). A class whose half
   sets stay below :data:`AB_INITIO_BELOW_VOXELS` is rebuilt from an ab-initio initial model of its
   own particles (:mod:`.align.ab_initio`) and keeps the better of the two.

:func:`score_workflow` scores every step against a known truth (picking F1, class accuracy on the
correctly picked particles, FSC of each class average against its true map).

Coordinates are 0-based voxels ``(x, y, z)``; volumes ``(z, y, x)``; the voxel size in Å.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .cluster.refine import AB_INITIO_BELOW_VOXELS, REFERENCE_RESOLUTION, reference_to_box  # noqa: F401 (re-exported)
from .jobs import Partial, Progress, subjob

__all__ = ["ClassScore", "WorkflowResult", "WorkflowScore", "default_box", "pose_errors_deg", "score_workflow",
           "workflow_job"]

#: the box edge, in particle diameters, when none is given (as the picking look-alike search)
BOX_DIAMETERS = 1.5
#: the highest frequency (cycles/voxel) of the reference-free average's searches (the clustering's default band)
SEARCH_FREQUENCY = 0.25


def default_box(diameter_angstrom: float, voxel_size: float, *, minimum: int = 16) -> int:
    """The smallest even box of at least :data:`BOX_DIAMETERS` particle diameters (voxels), >= ``minimum``."""
    if not (diameter_angstrom > 0 and voxel_size > 0):
        raise InputError("a particle diameter and voxel size > 0 Å", field="diameter",
                         got=f"{diameter_angstrom!r}, {voxel_size!r}")
    n = int(math.ceil(BOX_DIAMETERS * float(diameter_angstrom) / float(voxel_size)))
    return max(int(minimum), n + (n % 2))


@dataclass(frozen=True, eq=False)
class WorkflowResult:
    """What every step made.

    Attributes
    ----------
    picker : the trained :class:`~.picking.model.Picker`
    picks : :class:`~.picking.infer.Picks`, every pick (x, y, z voxels, scores), best first
    extraction : :class:`~.align.extract.Extraction` of the picks (``rows`` index ``picks``)
    average : :class:`~.align.average.AverageResult` of all kept picks (reference-free)
    clusters : :class:`~.cluster.common.ClusterResult` (0-based ``classes``, poses against each
        particle's class average, ``averages`` ``(K, N, N, N)``)
    box : the box edge N (voxels)
    voxel_size : Å
    steps : per step ``{"step", "seconds", ...numbers}``, in order
    """

    picker: object
    picks: object
    extraction: object
    average: object
    clusters: object
    box: int
    voxel_size: float
    steps: list = field(default_factory=list)


def workflow_job(
    tomogram,
    labels_xyz,
    *,
    diameter_angstrom: float,
    voxel_size: float,
    n_classes: int,
    box: int | None = None,
    negatives_xyz=None,
    average_iterations: int = 2,
    refine_rounds: int = 2,
    class_references=None,
    ab_initio_below: float | None = None,
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
    picker_options: dict | None = None,
    cluster_options: dict | None = None,
    seed: int = 0,
    device="cpu",
    path=None,
    labels_path=None,
) -> Generator[Progress | Partial, None, WorkflowResult]:
    """Run the chain of the module docstring on one tomogram.

    Parameters
    ----------
    tomogram : ``(z, y, x)`` array (numpy or memory-mapped)
    labels_xyz : ``(n, 3)`` labelled particles, 0-based voxels (x, y, z); all of one kind
        ("particle"): the picker learns what a particle is, clustering then separates the species
    diameter_angstrom : particle diameter, Å
    voxel_size : Å per voxel
    n_classes : K, the number of classes
    box : box edge in voxels (even); default :func:`default_box`
    negatives_xyz : known non-particles (removed picks), ``(m, 3)`` voxels, or None
    average_iterations : rounds of the reference-free average (step 4; its searches, like the
        clustering's, compare frequencies up to :data:`SEARCH_FREQUENCY` on Fourier-cropped boxes)
    refine_rounds : rounds of step 6: each class's particles refined locally (within 10°) against
        their class average at the full band up to its resolution, then re-averaged with half sets
        (the clustering's poses are only as fine as its low-resolution search band); 0 skips it
    class_references : None, or a list of ``(N, N, N)`` maps at the box and voxel size
        (:func:`reference_to_box`), e.g. a related structure's map: each goes to the class it fits best
        (:func:`_assign_references`), whose particles are then searched globally from it (low-passed to
        :data:`REFERENCE_RESOLUTION`, two half-set rounds) before the local rounds. For species too small
        to bootstrap from their own particles (reference-free averages of ~40 particles of a ~300 kDa
        complex stay at random poses; ``docs/workflow.md``)
    ab_initio_below : a class (without a reference) whose half-set FSC 0.143 after the local rounds is worse
        than this (Å) gets an ab-initio initial model from its own particles
        (:func:`.align.ab_initio.ab_initio_job`: all of them together, 4-fold cross-validated searches,
        2 random restarts, a sphere of 0.6 x ``diameter_angstrom``), is searched globally from it (as from a
        reference) and refined again, and keeps the better half-set resolution. Default (None):
        :data:`AB_INITIO_BELOW_VOXELS` voxels; 0 never
    tilt_range_deg : the data's tilt range for the missing-wedge masks; None = fully observed
    picker_options, cluster_options : more keywords of :func:`.picking.fit.fit_picker_job` and
        :func:`.cluster.classify.cluster_subtomograms_job`
    seed : random seed of the picker's training and the clustering
    device : torch device
    path, labels_path : the files, named in messages

    Yields ``Progress`` (steps 1-6 over one bar) and ``Partial``: ``("picks", Picks)``,
    ``("average", (N, N, N))``, ``("class_averages", (K, N, N, N))``. Returns :class:`WorkflowResult`.
    """
    from .align.average import iterative_average_job
    from .align.extract import extract_subtomograms
    from .cluster.classify import cluster_subtomograms_job
    from .cluster.refine import refine_classes_job
    from .picking.fit import fit_picker_job
    from .picking.infer import pick_job
    from .wedge import particle_fourier_mask

    labels = np.asarray(labels_xyz, dtype=np.float64).reshape(-1, 3)
    if int(n_classes) != n_classes or n_classes < 1:
        raise InputError("a number of classes >= 1", field="classes", got=n_classes)
    b = default_box(diameter_angstrom, voxel_size) if box is None else int(box)
    steps: list[dict] = []
    total = 6

    def clock(name, t0, **numbers):
        steps.append({"step": name, "seconds": round(time.perf_counter() - t0, 2), **numbers})

    t0 = time.perf_counter()
    job = fit_picker_job(tomogram, labels, diameter_angstrom=diameter_angstrom, voxel_size=voxel_size,
                         negatives_xyz=negatives_xyz, seed=seed, device=device, path=path, labels_path=labels_path,
                         **(picker_options or {}))
    trained = yield from subjob(job, at=(0, total), prefix="1/6 pick train", partials=False)
    picker = trained.picker
    clock("pick train", t0, labels=int(len(labels)), iterations=int(trained.iterations),
          lookalike_negatives=int(picker.training.get("lookalike_negatives", 0)))

    t0 = time.perf_counter()
    threshold = float(picker.default_threshold)
    picks, _ = yield from subjob(pick_job(picker, tomogram, threshold=threshold, voxel_size=voxel_size, path=path,
                                          device=device),
                                 at=(1, total), prefix="2/6 pick predict", partials=False)
    clock("pick predict", t0, picks=int(len(picks)), threshold=round(threshold, 4))
    yield Partial("picks", picks)
    if len(picks) < max(4, 2 * int(n_classes)):
        raise InputError(f"at least {max(4, 2 * int(n_classes))} picks to average and cluster into {n_classes} "
                         "classes", path=path, field="picks", got=f"{len(picks)} at threshold {threshold:.3f}")

    t0 = time.perf_counter()
    ext = extract_subtomograms(tomogram, picks.coordinates_xyz, b, path=path)
    padded = int(np.sum(ext.fraction_inside < 1.0))
    clock("extract", t0, box=b, kept=int(len(ext.rows)), padded=padded, skipped=len(ext.skipped))
    yield Progress(3, total, f"3/6 extract: {len(ext.rows)} boxes of {b}^3, {padded} padded at the faces")
    masks = None if tilt_range_deg is None else particle_fourier_mask(b, tilt_range_deg=tuple(tilt_range_deg))

    t0 = time.perf_counter()
    inside = ext.inside_masks()
    avg = yield from subjob(iterative_average_job(ext.volumes, particle_masks=masks,
                                                  iterations=int(average_iterations), voxel_size_angstrom=voxel_size,
                                                  inside_masks=inside, max_search_frequency=SEARCH_FREQUENCY,
                                                  crop_to_band=True, device=device),
                            at=(3, total), prefix="4/6 average", partials=False)
    clock("average", t0, particles=int(len(ext.rows)), resolution_0143=round(float(avg.fsc.resolution_0143), 2))
    yield Partial("average", avg.average)

    t0 = time.perf_counter()
    opts = {"seed": seed, **(cluster_options or {})}
    clu = yield from subjob(cluster_subtomograms_job(ext.volumes, n_classes=int(n_classes), particle_masks=masks,
                                                     voxel_size_angstrom=voxel_size, inside_masks=inside,
                                                     device=device, **opts),
                            at=(4, total), prefix="5/6 cluster", partials=False)
    clock("cluster", t0, classes=int(clu.averages.shape[0]),
          sizes=[int(s) for s in np.bincount(clu.classes, minlength=clu.averages.shape[0])])

    t0 = time.perf_counter()
    refs = None if class_references is None or not len(class_references) else list(class_references)
    refined = yield from subjob(refine_classes_job(ext.volumes, clu, particle_masks=masks, inside_masks=inside,
                                                   voxel_size_angstrom=voxel_size, rounds=int(refine_rounds),
                                                   references=refs, ab_initio_below=ab_initio_below,
                                                   mask_radius_voxels=0.6 * float(diameter_angstrom) / voxel_size,
                                                   seed=seed, device=device, at=(5, total), label="6/6 "),
                                partials=False)
    clu, assigned, models = refined.clusters, refined.references, refined.initial_models
    clock("refine classes", t0, rounds=int(refine_rounds),
          resolution_0143=[round(float(r), 2) for r in refined.resolutions],
          **({"references": {str(c + 1): j + 1 for c, j in assigned.items()}} if refs else {}),
          **({"initial_models": {str(c + 1): m for c, m in models.items()}} if models else {}))
    yield Partial("class_averages", clu.averages)
    yield Progress(total, total, "done")
    return WorkflowResult(picker=picker, picks=picks, extraction=ext, average=avg, clusters=clu, box=b,
                          voxel_size=float(voxel_size), steps=steps)


@dataclass(frozen=True)
class ClassScore:
    """One class against the true species it holds most of: its name, how many particles it holds,
    the FSC 0.143 / 0.5 resolution (Å) of the class average against the true map, and (with true
    poses) the angular error of its correctly picked particles of that species (:func:`pose_errors_deg`:
    median, and how many beyond 20°, of ``poses_scored``; C1, so a pseudo-symmetric species shows its
    symmetry mates as errors)."""

    class_number: int
    species: str
    particles: int
    resolution_0143: float
    resolution_05: float
    pose_median_deg: float = float("nan")
    poses_beyond_20deg: int = -1
    poses_scored: int = 0


@dataclass(frozen=True)
class WorkflowScore:
    """Every step against the truth: picking precision / recall / F1 against all particles, the class
    accuracy on the correctly picked particles (Hungarian matching), and each class's FSC."""

    precision: float
    recall: float
    f1: float
    true_particles: int
    class_accuracy: float
    classes: tuple = ()

    def as_dict(self) -> dict:
        return {"picking": {"precision": round(self.precision, 4), "recall": round(self.recall, 4),
                            "f1": round(self.f1, 4), "true_particles": self.true_particles},
                "class_accuracy": round(self.class_accuracy, 4),
                "classes": [c.__dict__ for c in self.classes]}


def pose_errors_deg(estimated, true) -> np.ndarray:
    """Angular errors (°) of estimated rotations against true ones up to the class average's own frame.

    ``estimated``, ``true``: ``(n, 3, 3)`` rotation matrices of the same particles, in the
    ``AlignmentResult`` convention. A reference-free average sits in an arbitrary frame ``G``, so
    ``estimated_i = true_i G``; ``G`` is estimated robustly (the medoid of ``true_i^T estimated_i``,
    then the projected mean of those within 20° of it) and each particle's error is the angle between
    ``true_i^T estimated_i`` and ``G``. Returns ``(n,)``.
    """
    from .geometry import geodesic_angle_deg, nearest_rotation

    est = np.asarray(estimated, dtype=np.float64).reshape(-1, 3, 3)
    tru = np.asarray(true, dtype=np.float64).reshape(-1, 3, 3)
    if len(est) == 0:
        return np.zeros(0)
    d = np.einsum("nji,njk->nik", tru, est)
    pair = np.array([geodesic_angle_deg(np.broadcast_to(di, d.shape), d) for di in d])  # (n, n)
    g = d[int(np.argmin(np.median(pair, axis=1)))]
    near = geodesic_angle_deg(np.broadcast_to(g, d.shape), d) < 20.0
    if near.sum() >= 2:
        g = nearest_rotation(d[near].mean(0)[None])[0]
    return geodesic_angle_deg(np.broadcast_to(g, d.shape), d)


def _fsc_against_map(average, true_map, *, voxel_size, device):
    """FSC resolutions of a class average against a true map after aligning the map onto it (either
    contrast sign: the tomogram's may be inverted)."""
    from .align.average import default_fsc_mask, fsc_report
    from .align.exhaustive import align_exhaustive
    from .geometry import align_particle_to_reference

    best = None
    for sign in (1.0, -1.0):
        vol = (sign * np.asarray(average, dtype=np.float32))[None]
        res = align_exhaustive(vol, true_map, angular_step_deg=20.0, refine_levels=2, device=device)
        if best is None or res.scores[0] > best[1].scores[0]:
            best = (vol, res)
    vol, res = best
    moved = align_particle_to_reference(vol[0], res.rotations[0], res.origins_voxels[0])
    rep = fsc_report(moved, true_map, voxel_size_angstrom=voxel_size, mask=default_fsc_mask(true_map.shape[0]))
    return float(rep.resolution_0143), float(rep.resolution_05)


def score_workflow(result: WorkflowResult, truth_xyz, truth_classes, *, radius_voxels: float,
                   class_maps: dict | None = None, class_names: dict | None = None, truth_rotations=None,
                   device="cpu") -> WorkflowScore:
    """Score a :class:`WorkflowResult` against the truth.

    Parameters
    ----------
    truth_xyz : ``(m, 3)`` true particle centres, voxels (x, y, z)
    truth_classes : ``(m,)`` their species (any integer labels, e.g. ``rlnClassNumber``)
    radius_voxels : a pick within this distance of a true centre is correct (e.g. the radius)
    class_maps : ``{species label: (N, N, N) true map}`` at the result's box and voxel size, or None
        (no FSC)
    class_names : ``{species label: name}`` for the report
    truth_rotations : ``(m, 3, 3)`` true rotations (``AlignmentResult`` convention) or None (no pose errors)
    """
    from .cluster.gmm import clustering_accuracy
    from .picking.metrics import match_picks, precision_recall_f1

    truth_xyz = np.asarray(truth_xyz, dtype=np.float64).reshape(-1, 3)
    truth_classes = np.asarray(truth_classes).reshape(-1)
    picks = result.picks
    prf = precision_recall_f1(picks.coordinates_xyz, picks.scores, truth_xyz, radius=radius_voxels)
    # which true particle each kept (extracted) pick is
    m = match_picks(picks.coordinates_xyz, picks.scores, truth_xyz, radius=radius_voxels)
    truth_of_pick = np.full(len(picks), -1, dtype=np.int64)
    truth_of_pick[m.order] = m.matched_truth
    kept = np.asarray(result.extraction.rows)
    t_kept = truth_of_pick[kept]
    ok = t_kept >= 0
    pred = result.clusters.classes
    acc = float("nan")
    mapping = {}
    if ok.any():
        ca = clustering_accuracy(truth_classes[t_kept[ok]], pred[ok])
        acc, mapping = ca.accuracy, ca.mapping
    scores = []
    for c in range(result.clusters.averages.shape[0]):
        species = mapping.get(c)
        members = int(np.sum(pred == c))
        r1 = r2 = float("nan")
        if species is not None and class_maps and species in class_maps:
            r1, r2 = _fsc_against_map(result.clusters.averages[c], np.asarray(class_maps[species], np.float32),
                                      voxel_size=result.voxel_size, device=device)
        med, beyond, scored = float("nan"), -1, 0
        if species is not None and truth_rotations is not None:
            mine = ok & (pred == c)
            mine[mine] = truth_classes[t_kept[mine]] == species
            if mine.sum() >= 2:
                err = pose_errors_deg(np.asarray(result.clusters.alignment.rotations)[mine],
                                      np.asarray(truth_rotations)[t_kept[mine]])
                med, beyond, scored = float(np.median(err)), int(np.sum(err > 20.0)), int(mine.sum())
        name = (class_names or {}).get(species, str(species)) if species is not None else "-"
        scores.append(ClassScore(c + 1, name, members, r1, r2, med, beyond, scored))
    return WorkflowScore(prf.precision, prf.recall, prf.f1, int(len(truth_xyz)), acc, tuple(scores))
