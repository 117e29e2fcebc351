"""Look-alike rejection from the labels alone: known negatives found by the shape of the labelled particles.

The PU picker learns "particle-like" from a few labels, and particles of similar size and
density - a sub-complex of the target, another complex of the same size - score almost as
high as the target (measured: a free large ribosomal subunit scored 0.83-0.99 against 0.93-0.99
for ribosomes). A user fixes that by removing such picks and training again (known negatives,
:func:`~.train.train_picker_job` ``negatives_xyz=``). This module finds such negatives without
the user, from what the labels say about the particle's *shape*:

1. **The labels' average.** The labelled particles are averaged into a template
   (:func:`~.label_template.label_template_job`: reference-free alignment, low-passed).
2. **Candidates.** The trained picker's peaks on the *training* tomogram scoring at least
   ``candidate_threshold`` (at most ``max_candidates``, highest first), away from every label
   and known negative.
3. **Fit.** Every candidate's box, and every label's, is aligned to an average by the
   exhaustive search (:func:`~..align.methods.align_job`, missing-wedge aware); its score is
   the constrained cross-correlation at its best pose. A label is scored against the half
   map it is not in, and the candidates against one half map: a label scored against an
   average it is part of would fit its own noise and look better than any unlabelled copy
   of the same particle (gold standard, as for an FSC).
4. **Negatives.** Candidates that fit clearly worse than the labels do: score below
   ``fit_fraction`` times the labels' 10th-percentile score. Look-alikes of another shape fall
   there even when the picker scores them like the target; the target's own heterogeneous
   copies (another conformation, a missing subunit) mostly stay above it.

Boxes reaching outside the tomogram are left out (no score: never a negative). The caller
continues training with the negatives (:func:`~.fit.fit_picker_job`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ...errors import InputError
from ..jobs import Job, Progress, subjob
from .label_template import ALIGNED, MIN_ALIGNED, LabelTemplate, label_template_job

__all__ = ["LookalikeNegatives", "lookalike_negatives_job"]


@dataclass(frozen=True, eq=False)
class LookalikeNegatives:
    """What the look-alike search found.

    Attributes
    ----------
    negatives_xyz : ``(m, 3)`` voxel coordinates (x, y, z) of the candidates taken as negatives
    candidates_xyz : ``(k, 3)`` every candidate examined, highest picker score first
    candidate_scores : ``(k,)`` their picker scores
    candidate_fit : ``(k,)`` their fit to the labels' template (NaN: box outside the tomogram)
    label_fit : ``(l,)`` the labels' own fit (labels whose box fits in the tomogram)
    cut : the fit below which a candidate is a negative (NaN when the search was skipped)
    template : the labels' :class:`~.label_template.LabelTemplate`, or None (too few labels)
    reason : why no search was made, or ""
    """

    negatives_xyz: np.ndarray
    candidates_xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    candidate_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    candidate_fit: np.ndarray = field(default_factory=lambda: np.zeros(0))
    label_fit: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cut: float = float("nan")
    template: LabelTemplate | None = None
    reason: str = ""


def _skipped(reason: str) -> LookalikeNegatives:
    return LookalikeNegatives(np.zeros((0, 3)), reason=reason)


def _box_fit(tomogram, xyz, reference: np.ndarray, *, tilt_range_deg, angular_step_deg, device,
             prefix: str) -> Job[np.ndarray]:
    """The aligned correlation of the box around each point with ``reference`` (NaN outside the volume)."""
    from ..align.extract import extract_subtomograms
    from ..align.methods import align_job
    from ..wedge import particle_fourier_mask

    fit = np.full(len(xyz), np.nan)
    box = reference.shape[0]
    if not len(xyz):
        return fit
    ext = extract_subtomograms(tomogram, xyz, box)
    if len(ext.rows):
        mask = particle_fourier_mask(box, tilt_range_deg=tilt_range_deg)
        res = yield from subjob(align_job(ext.volumes, reference, method="exhaustive", particle_masks=mask,
                                          angular_step_deg=angular_step_deg, refine_levels=1, device=device),
                                prefix=prefix, partials=False)
        fit[ext.rows] = np.asarray(res.scores, dtype=np.float64)
    return fit


def _label_fit(tomogram, labels, template: LabelTemplate, **kwargs) -> Job[np.ndarray]:
    """Each averaged label's fit to the half map it is *not* in (its own noise is not in that reference)."""
    used = labels[template.rows]
    fit = np.full(len(used), np.nan)
    for half, other in ((1, 1), (2, 0)):  # labels of half 1 against half map 2, of half 2 against half map 1
        sel = np.flatnonzero(template.label_half == half)
        fit[sel] = yield from _box_fit(tomogram, used[sel], template.half_maps[other], prefix=f"labels of half {half}",
                                       **kwargs)
    return fit


def lookalike_negatives_job(
    picker,
    tomogram,
    labels_xyz,
    *,
    voxel_size: float,
    negatives_xyz=None,
    candidate_threshold: float = 0.5,
    max_candidates: int = 150,
    fit_fraction: float = 0.9,
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
    angular_step_deg: float = 30.0,
    device="cpu",
    path=None,
) -> Job[LookalikeNegatives]:
    """Find look-alikes of the labelled particles on the training tomogram (a job; module docstring).

    Parameters
    ----------
    picker : the trained :class:`~.picker.Picker`
    tomogram : ``(z, y, x)`` the training tomogram
    labels_xyz : ``(n, 3)`` the labels, voxels (x, y, z)
    voxel_size : Å per voxel
    negatives_xyz : ``(m, 3)`` negatives already known (removed picks), excluded from the candidates
    candidate_threshold : lowest picker score of a candidate
    max_candidates : candidates examined at most (highest scores first)
    fit_fraction : a candidate is a negative when its fit is below this fraction of the labels'
        10th-percentile fit
    tilt_range_deg : the tomogram's tilt range, for the missing wedge (None: fully sampled)
    angular_step_deg : rotation grid of the fits, degrees (refined one level)
    device : torch device

    Returns
    -------
    :class:`LookalikeNegatives` (no negatives, with ``reason``, when fewer than
    :data:`~.label_template.MIN_ALIGNED` labels give a box: a rotational average knows no shape)
    """
    from .infer import pick_job

    if not 0.0 < float(fit_fraction) <= 1.0:
        raise InputError("a fraction in (0, 1]", field="fit_fraction", got=fit_fraction)
    labels = np.asarray(labels_xyz, dtype=np.float64).reshape(-1, 3)
    if len(labels) < MIN_ALIGNED:
        return _skipped(f"{len(labels)} labels: at least {MIN_ALIGNED} are needed to know the particle's shape")
    yield Progress(0, 4, "averaging the labels")
    template = yield from subjob(label_template_job(tomogram, labels, voxel_size=voxel_size,
                                                    diameter_angstrom=picker.diameter_angstrom,
                                                    tilt_range_deg=tilt_range_deg, device=device, path=path),
                                 prefix="labels' average", partials=False)
    if template.method != ALIGNED or template.half_maps is None:
        return _skipped(f"only {template.n_used} labels fit in the tomogram: no aligned average")
    yield Progress(1, 4, "candidates on the training tomogram")
    picks, _ = yield from subjob(pick_job(picker, tomogram, threshold=candidate_threshold, voxel_size=voxel_size,
                                          path=path, device=device), progress=False, partials=False)
    xyz, scores = picks.coordinates_xyz, picks.scores
    known = labels if negatives_xyz is None or not len(negatives_xyz) else \
        np.concatenate([labels, np.asarray(negatives_xyz, dtype=np.float64).reshape(-1, 3)])
    if len(xyz):
        far = cKDTree(known).query(xyz)[0] > 0.5 * picker.diameter_voxels
        xyz, scores = xyz[far][:max_candidates], scores[far][:max_candidates]
    yield Progress(2, 4, f"fitting {len(xyz)} candidates to the labels' average")
    fit_options = {"tilt_range_deg": tilt_range_deg, "angular_step_deg": angular_step_deg, "device": device}
    label_fit = yield from _label_fit(tomogram, labels, template, **fit_options)
    # candidates against one half map: as noisy a reference as the labels' (the labels' own half is excluded)
    fit = yield from _box_fit(tomogram, xyz, template.half_maps[0], prefix="candidates", **fit_options)
    label_fit = label_fit[np.isfinite(label_fit)]
    yield Progress(3, 4, "choosing negatives")
    cut = float(fit_fraction * np.percentile(label_fit, 10)) if len(label_fit) else float("nan")
    neg = np.isfinite(fit) & (fit < cut)
    yield Progress(4, 4, f"{int(neg.sum())} look-alikes of {len(xyz)} candidates")
    return LookalikeNegatives(negatives_xyz=xyz[neg], candidates_xyz=xyz, candidate_scores=scores, candidate_fit=fit,
                              label_fit=label_fit, cut=cut, template=template)
