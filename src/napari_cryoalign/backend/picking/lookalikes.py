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
   exhaustive search (:func:`~..align.exhaustive.align_exhaustive_job`, missing-wedge aware; the
   three best grid optima refined one level); its score is the constrained cross-correlation at its
   best pose. A label is scored against the half map it is not in, and the candidates against one
   half map: a label scored against an average it is part of would fit its own noise and look
   better than any unlabelled copy of the same particle (gold standard, as for an FSC).
4. **Negatives.** The candidates' fits are split in two groups where the split explains most of
   their spread (a two-component Gaussian mixture); when the groups are apart (Ashman's D >=
   ``min_separation``) and the lower group fits, on average, worse than the labels'
   ``label_quantile``-th percentile (a look-alike population, not the low tail of the target's),
   the candidates of the lower group that also fit worse than that percentile are negatives. Look-alikes
   of another shape fall there even when the picker scores them like the target; the target's
   own heterogeneous copies (another conformation, a missing subunit) mostly stay above it.
   Developed on the look-alike scenario's training tomogram (seed 11; docs/picking.md).
5. **Too good a fit.** Before step 4, the same split is made for a group that fits far *better*
   than the labels (its mean above the labels' ``100 - label_quantile``-th percentile): objects of
   much higher contrast than the target - gold fiducials, dense aggregates - correlate with any
   blob of the right size better than a noisy copy of the target can. Those candidates are
   negatives too, and step 4 runs on the rest. Found on the cellular scenario's training
   tomogram (seed 11), where every gold bead at the ice surfaces fitted better than every
   ribosome and label (tests/backend/picking/test_lookalikes.py plants such beads); the
   look-alike scenarios have no such group, so their rule is unchanged.

Boxes that cross the tomogram's faces are padded with their mean (thin tomograms put most
particles near a face: gold beads sit on the ice surfaces); a box less than ``MIN_INSIDE``
inside the tomogram gets no score (never a negative). The caller continues training with the
negatives (:func:`~.fit.fit_picker_job`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ...errors import InputError
from ..jobs import Job, Progress, subjob
from .label_template import ALIGNED, MIN_ALIGNED, LabelTemplate, label_template_job

__all__ = ["DEFAULT_FIT_CANDIDATES", "LookalikeNegatives", "lookalike_negatives_job"]

#: the least fraction of a box inside the tomogram for its fit to count (the rest is padded)
MIN_INSIDE = 0.5
#: grid optima of the exhaustive search refined per box in the fits (the search's own default). With 1 the
#: fits take a third to two fifths of the time and their AUC (targets against the rest) is about the same,
#: but the negatives chosen differ and the picker lost F1 on the ribosome look-alike scenario (docs/picking.md)
DEFAULT_FIT_CANDIDATES = 3


@dataclass(frozen=True, eq=False)
class LookalikeNegatives:
    """What the look-alike search found.

    Attributes
    ----------
    negatives_xyz : ``(m, 3)`` voxel coordinates (x, y, z) of the candidates taken as negatives
    candidates_xyz : ``(k, 3)`` every candidate examined, highest picker score first
    candidate_scores : ``(k,)`` their picker scores
    candidate_fit : ``(k,)`` their fit to the labels' template (NaN: box less than :data:`MIN_INSIDE`
        inside the tomogram)
    label_fit : ``(l,)`` the labels' own fit (labels whose box is at least :data:`MIN_INSIDE` inside)
    cut : the fit below which a candidate is a negative (NaN: no such negatives, see ``reason``)
    separation : Ashman's D of the candidates' two groups of fits (NaN when not computed), after
        the ones above ``cut_above`` are set aside
    cut_above : the fit above which a candidate is a negative (module docstring, step 5; NaN: none)
    template : the labels' :class:`~.label_template.LabelTemplate`, or None (too few labels)
    reason : why no search was made, or ""
    tilt_range_deg, angular_step_deg : the fits' missing wedge (None: fully sampled) and rotation grid, degrees
    """

    negatives_xyz: np.ndarray
    candidates_xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    candidate_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    candidate_fit: np.ndarray = field(default_factory=lambda: np.zeros(0))
    label_fit: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cut: float = float("nan")
    separation: float = float("nan")
    cut_above: float = float("nan")
    template: LabelTemplate | None = None
    reason: str = ""
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0)
    angular_step_deg: float = 30.0


def _skipped(reason: str) -> LookalikeNegatives:
    return LookalikeNegatives(np.zeros((0, 3)), reason=reason)


def _box_fit(tomogram, xyz, reference: np.ndarray, *, tilt_range_deg, angular_step_deg, fit_candidates, device,
             prefix: str) -> Job[np.ndarray]:
    """The aligned correlation of the box around each point with ``reference`` (NaN for a box less than
    :data:`MIN_INSIDE` inside the volume; boxes crossing its faces are padded with their mean)."""
    from ..align.exhaustive import align_exhaustive_job
    from ..align.extract import extract_subtomograms
    from ..wedge import particle_fourier_mask

    fit = np.full(len(xyz), np.nan)
    box = reference.shape[0]
    if not len(xyz):
        return fit
    ext = extract_subtomograms(tomogram, xyz, box, pad=True)
    keep = np.flatnonzero(np.asarray(ext.fraction_inside) >= MIN_INSIDE)
    if len(keep):
        mask = particle_fourier_mask(box, tilt_range_deg=tilt_range_deg)
        res = yield from subjob(align_exhaustive_job(ext.volumes[keep], reference, particle_masks=mask,
                                                     angular_step_deg=angular_step_deg, refine_levels=1,
                                                     candidates=int(fit_candidates), device=device),
                                prefix=prefix, partials=False)
        fit[np.asarray(ext.rows)[keep]] = np.asarray(res.scores, dtype=np.float64)
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
    min_separation: float = 2.0,
    label_quantile: float = 10.0,
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
    angular_step_deg: float = 30.0,
    fit_candidates: int = DEFAULT_FIT_CANDIDATES,
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
    min_separation : Ashman's D the candidates' two groups of fits need for negatives
    label_quantile : percentile of the labels' fits that a negative must fit worse than (and
        ``100 - label_quantile``: the percentile a too-good fit must exceed, step 5)
    tilt_range_deg : the tomogram's tilt range, for the missing wedge (None: fully sampled)
    angular_step_deg : rotation grid of the fits, degrees (refined one level)
    fit_candidates : grid optima refined per box (:data:`DEFAULT_FIT_CANDIDATES`)
    device : torch device

    Returns
    -------
    :class:`LookalikeNegatives` (no negatives, with ``reason``, when fewer than
    :data:`~.label_template.MIN_ALIGNED` labels give a box: a rotational average knows no shape)
    """
    from .infer import pick_job

    if not 0.0 <= float(label_quantile) <= 100.0:
        raise InputError("a percentile in [0, 100]", field="label_quantile", got=label_quantile)
    if int(fit_candidates) < 1:
        raise InputError("at least 1 grid optimum per box", field="fit_candidates", got=fit_candidates)
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
                                          path=path, device=device, shape_check=False), progress=False,
                                 partials=False)
    xyz, scores = picks.coordinates_xyz, picks.scores
    known = labels if negatives_xyz is None or not len(negatives_xyz) else \
        np.concatenate([labels, np.asarray(negatives_xyz, dtype=np.float64).reshape(-1, 3)])
    if len(xyz):
        far = cKDTree(known).query(xyz)[0] > 0.5 * picker.diameter_voxels
        xyz, scores = xyz[far][:max_candidates], scores[far][:max_candidates]
    yield Progress(2, 4, f"fitting {len(xyz)} candidates to the labels' average")
    fit_options = {"tilt_range_deg": tilt_range_deg, "angular_step_deg": angular_step_deg,
                   "fit_candidates": int(fit_candidates), "device": device}
    label_fit = yield from _label_fit(tomogram, labels, template, **fit_options)
    # candidates against one half map: as noisy a reference as the labels' (the labels' own half is excluded)
    fit = yield from _box_fit(tomogram, xyz, template.half_maps[0], prefix="candidates", **fit_options)
    label_fit = label_fit[np.isfinite(label_fit)]
    yield Progress(3, 4, "choosing negatives")
    reason, cut_above = "", float("nan")
    low = float(np.percentile(label_fit, label_quantile)) if len(label_fit) else float("nan")
    high = float(np.percentile(label_fit, 100.0 - label_quantile)) if len(label_fit) else float("nan")
    finite = fit[np.isfinite(fit)]
    split, separation, lower_mean, upper_mean = _two_groups(finite)
    if separation >= min_separation and upper_mean > high:  # step 5: far too good a fit
        cut_above = max(split, high)
        finite = finite[finite <= cut_above]
        split, separation, lower_mean, _ = _two_groups(finite)
    if not len(label_fit):
        cut, reason = float("nan"), "no label box fits in the tomogram"
    elif not separation >= min_separation:
        cut, reason = float("nan"), f"the candidates' fits form one group (Ashman's D {separation:.2f})"
    elif not lower_mean < low:
        cut, reason = float("nan"), (f"the candidates' lower group (mean fit {lower_mean:.3f}) fits like the labels "
                                     f"(their {label_quantile:g}th percentile {low:.3f})")
    else:
        cut = min(split, low)
    neg = np.isfinite(fit) & ((fit < cut) | (fit > cut_above))
    if np.isfinite(cut_above):
        above = f"{int(np.sum(fit > cut_above))} fit far better than the labels (above {cut_above:.3f})"
        reason = above if not reason else f"{above}; {reason}"
    yield Progress(4, 4, f"{int(neg.sum())} look-alikes of {len(xyz)} candidates")
    return LookalikeNegatives(negatives_xyz=xyz[neg], candidates_xyz=xyz, candidate_scores=scores, candidate_fit=fit,
                              label_fit=label_fit, cut=cut, separation=separation, cut_above=cut_above,
                              template=template, reason=reason,
                              tilt_range_deg=None if tilt_range_deg is None else tuple(tilt_range_deg),
                              angular_step_deg=float(angular_step_deg))


def _two_groups(values) -> tuple[float, float, float, float]:
    """Two Gaussian groups fitted to 1-D ``values``: the cut between them, their separation, the lower and
    the upper mean.

    A two-component Gaussian mixture (EM, started from Otsu's split: the cut that maximises the
    between-group variance); the cut is where both components are equally likely, between the
    means; the separation is Ashman's D of the fitted components,
    ``sqrt(2) |m1 - m2| / sqrt(s1² + s2²)`` (about 1 or less for one normal population, > 2 for two
    clearly apart; EM on a few dozen values of one normal population can reach 2.5). All NaN for
    fewer than 6 values.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size < 6:
        return float("nan"), float("nan"), float("nan"), float("nan")
    i = np.arange(3, x.size - 2)  # Otsu's split, at least 3 values in each group
    csum = np.cumsum(x)
    m1, m2 = csum[i - 1] / i, (csum[-1] - csum[i - 1]) / (x.size - i)
    k = int(i[np.argmax(i * (x.size - i) * (m1 - m2) ** 2)])
    mu = np.array([x[:k].mean(), x[k:].mean()])
    floor = 1e-6 * max(float(np.ptp(x)), 1e-12) ** 2
    var = np.array([x[:k].var(), x[k:].var()]) + floor
    w = np.array([k, x.size - k], dtype=np.float64) / x.size
    for _ in range(200):
        dens = w / np.sqrt(2 * np.pi * var) * np.exp(-0.5 * (x[:, None] - mu) ** 2 / var)
        r = dens / np.maximum(dens.sum(1, keepdims=True), 1e-300)
        nk = np.maximum(r.sum(0), 1e-12)
        w, mu = nk / x.size, (r * x[:, None]).sum(0) / nk
        var = (r * (x[:, None] - mu) ** 2).sum(0) / nk + floor
    lo, hi = np.argsort(mu)
    grid = np.linspace(mu[lo], mu[hi], 512)
    dens = w / np.sqrt(2 * np.pi * var) * np.exp(-0.5 * (grid[:, None] - mu) ** 2 / var)
    cut = float(grid[np.argmin(np.abs(dens[:, lo] - dens[:, hi]))])
    d = np.sqrt(2.0) * abs(mu[hi] - mu[lo]) / np.sqrt(var[lo] + var[hi])
    return cut, float(d), float(mu[lo]), float(mu[hi])
