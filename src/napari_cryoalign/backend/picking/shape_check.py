"""The shape check: each pick's score weighed by how well its box fits the labels' average.

The picker network sees a few slices at a time, and a look-alike of the target's size and density
(a sub-complex, one ring of a two-ring complex) can score like the target. The look-alike search of
the default recipe (:mod:`.lookalikes`) already aligns boxes to the labels' average to find
negatives on the training tomogram; the shape check does the same at inference, for every pick
that could reach the default threshold, and adds what the fit says to the picker's log-odds::

    score' = sigmoid(logit(score) + weight * clip((fit - centre) / scale, -Z_MIN, Z_MAX))

* ``fit``: the pick's box aligned to the labels' average (the full map, the exhaustive search with
  the missing wedge, one grid optimum refined; :func:`~.lookalikes._box_fit`);
* ``scale``: the standard deviation of the labels' own fits, each label against the half map it is
  *not* in (the search's gold-standard fits);
* ``centre``: chosen on each tomogram so that **as many picks reach the model's default threshold
  after the check as before**: the picker's calibration says how many particles there are, the fit
  says which ones. A fixed centre (the labels' median fit) was tried first and moved the best
  threshold of a fresh held-out test to 0.24: how well a copy fits the full average differs from
  how a label fits a half average by more than the spread of the fits (docs/picking.md). Where no
  pick or every checked pick reaches the threshold, the labels' median fit is the centre;
* the clip keeps one fit from deciding alone: at most ``Z_MAX`` (2) log-odds up - objects of far
  higher contrast than the target (gold) fit any blob better than the target does - and ``Z_MIN``
  (4) down.

Picks scoring below ``sigmoid(-weight * Z_MAX)`` (0.12 at the default weight) cannot reach 0.5 and
are not checked (their score is kept), nor are those beyond the ``CHECK_PER_PICK * n + CHECK_EXTRA``
highest scores, ``n`` the picks at the threshold (a picker unsure of thousands of weak peaks). Nor,
where the check is anchored at a threshold, are picks so sure that no fit could take them below it
(log-odds at least ``weight * Z_MIN`` above the threshold's; :attr:`ShapeReference.ceiling`): which
picks reach the threshold is then the same as if they had been fitted, with fewer fits (a tenth of the
check's time on the ribosome scenario), but their scores above the threshold are not reordered by fit
(``sure=True`` fits them too). The
reference is made by the default recipe (:func:`~.fit.fit_picker_job`) from the look-alike search's
labels' average and kept in the model file (:class:`ShapeReference`); a model without one is not
checked: trained with
``reject_lookalikes=False``, too few labels for an aligned average, or an average whose two half
averages correlate less than :data:`MIN_HALF_MAP_CORRELATION` (too noisy to judge shapes).

Measured in docs/picking.md ("The shape check").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ...errors import InputError
from ..jobs import Job, Progress

__all__ = ["CHECK_EXTRA", "CHECK_PER_PICK", "DEFAULT_WEIGHT", "MIN_HALF_MAP_CORRELATION", "MIN_LABEL_FITS", "Z_MAX",
           "Z_MIN", "ShapeCheck", "ShapeReference", "apply_shape_check", "half_map_correlation", "shape_check_job",
           "shape_reference_from_search"]

#: log-odds per standard deviation of the labels' fits
DEFAULT_WEIGHT = 1.0
#: the clip of the standardised fit: at most this many scales up, and ``Z_MIN`` down
Z_MAX = 2.0
Z_MIN = 4.0
#: at most ``CHECK_PER_PICK * (picks at the threshold) + CHECK_EXTRA`` picks are checked (the highest scores): a
#: picker that puts thousands of weak peaks above the floor would otherwise cost minutes per tomogram
CHECK_PER_PICK = 2
CHECK_EXTRA = 100
#: the least correlation of the labels' two half averages (inside the particle's mask) for a reference: below
#: it the average is too noisy to judge shapes. Set after a held-out target (mTOR, 0.19) lost F1 with the check
#: while CCT (0.46), the ribosome (0.34) and the cellular scenario (0.32) gained; not yet checked on another target
MIN_HALF_MAP_CORRELATION = 0.25
#: labels' fits needed for a reference (their median and spread)
MIN_LABEL_FITS = 5
#: a pick's fit matches a kept one within this distance, voxels (peaks at the same place)
_SAME_PLACE = 0.01


@dataclass(frozen=True, eq=False)
class ShapeReference:
    """What the shape check needs, kept in the picker's model file.

    Attributes
    ----------
    map : ``(N, N, N)`` float32, ``(z, y, x)``: the labels' average on the training tomogram's grid
        (:attr:`~.label_template.LabelTemplate.map`)
    voxel_size : Å per voxel of ``map``
    centre, scale : median and standard deviation of the labels' fits (each against the half map it
        is not in); the centre is used only where a tomogram's own cannot be set (module docstring)
    weight : log-odds per ``scale`` (:data:`DEFAULT_WEIGHT`)
    tilt_range_deg : the missing wedge of the fits, degrees, or None (fully sampled)
    angular_step_deg : the fits' rotation grid, degrees (refined one level)
    half_map_correlation : the correlation of the labels' two half averages inside the mask (NaN: not known)
    """

    map: np.ndarray
    voxel_size: float
    centre: float
    scale: float
    weight: float = DEFAULT_WEIGHT
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0)
    angular_step_deg: float = 30.0
    half_map_correlation: float = float("nan")

    @property
    def floor(self) -> float:
        """The lowest picker score that the check can lift to 0.5: lower scores are not checked."""
        return 1.0 / (1.0 + math.exp(self.weight * Z_MAX))

    def ceiling(self, threshold: float) -> float:
        """The lowest picker score that no fit can take below ``threshold`` (log-odds ``weight * Z_MIN`` above it)."""
        return float(_rescore(np.array([float(threshold)]), np.array([self.weight * Z_MIN]))[0])

    def to_dict(self) -> dict:
        """A plain dict for the model file (``map`` as a float32 tensor: ``torch.load(weights_only=True)``)."""
        import torch

        return {"map": torch.from_numpy(np.ascontiguousarray(self.map, dtype=np.float32)),
                "voxel_size": float(self.voxel_size), "centre": float(self.centre), "scale": float(self.scale),
                "weight": float(self.weight),
                "tilt_range_deg": None if self.tilt_range_deg is None else [float(v) for v in self.tilt_range_deg],
                "angular_step_deg": float(self.angular_step_deg),
                "half_map_correlation": float(self.half_map_correlation)}

    @classmethod
    def from_dict(cls, d: dict, *, path=None) -> "ShapeReference":
        """The inverse of :meth:`to_dict`; a malformed entry raises :class:`InputError` naming ``path``."""
        try:
            m = d["map"]
            m = m.numpy() if hasattr(m, "numpy") else np.asarray(m)
            ref = cls(map=np.asarray(m, dtype=np.float32), voxel_size=float(d["voxel_size"]),
                      centre=float(d["centre"]), scale=float(d["scale"]), weight=float(d.get("weight", DEFAULT_WEIGHT)),
                      tilt_range_deg=None if d.get("tilt_range_deg") is None else tuple(float(v) for v in
                                                                                        d["tilt_range_deg"]),
                      angular_step_deg=float(d.get("angular_step_deg", 30.0)),
                      half_map_correlation=float(d.get("half_map_correlation", float("nan"))))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError("a shape reference with map, voxel_size, centre and scale", path=path,
                             field="shape_reference", got=f"{type(err).__name__}: {err}") from None
        if ref.map.ndim != 3 or len(set(ref.map.shape)) != 1 or not ref.scale > 0 or not np.isfinite(ref.centre):
            raise InputError("a cubic map, a finite centre and a scale > 0", path=path, field="shape_reference",
                             got=f"map {ref.map.shape}, centre {ref.centre}, scale {ref.scale}")
        return ref


@dataclass(frozen=True, eq=False)
class ShapeCheck:
    """The checked picks' fits, so that picks found again at the same places need no new fit.

    Attributes
    ----------
    coordinates_xyz : ``(n, 3)`` the checked picks, voxels (x, y, z)
    fit : ``(n,)`` their fits (NaN: box less than half inside the tomogram: score kept)
    delta : ``(n,)`` the log-odds each pick's score was moved by
    centre : the fit that moves a score by nothing on this tomogram (module docstring)
    threshold : the threshold whose count of picks the check kept (NaN: the labels' centre was used)
    """

    coordinates_xyz: np.ndarray
    fit: np.ndarray
    delta: np.ndarray
    centre: float = float("nan")
    threshold: float = float("nan")


def half_map_correlation(template) -> float:
    """The correlation of a :class:`~.label_template.LabelTemplate`'s two half maps inside its mask (where the
    map is not 0); NaN without half maps."""
    if template is None or getattr(template, "half_maps", None) is None:
        return float("nan")
    m = np.asarray(template.map) != 0
    h1, h2 = (np.asarray(h, dtype=np.float64)[m] for h in template.half_maps)
    if h1.size < 3 or not (h1.std() > 0 and h2.std() > 0):
        return float("nan")
    return float(np.corrcoef(h1, h2)[0, 1])


def shape_reference_from_search(found) -> tuple[ShapeReference | None, str]:
    """The reference of a look-alike search (:class:`~.lookalikes.LookalikeNegatives`): its labels' average, the
    spread of the labels' fits and the fits' settings, and ``""``; or None and why not: no aligned average, fewer than
    :data:`MIN_LABEL_FITS` label fits (or no spread), half averages correlating below
    :data:`MIN_HALF_MAP_CORRELATION`."""
    if found is None or found.template is None:
        return None, "no aligned average of the labels"
    lf = np.asarray(found.label_fit, dtype=np.float64)
    lf = lf[np.isfinite(lf)]
    if lf.size < MIN_LABEL_FITS or not float(np.std(lf)) > 0:
        return None, f"{lf.size} labels' fits: at least {MIN_LABEL_FITS} with a spread are needed"
    t = found.template
    rho = half_map_correlation(t)
    if not rho >= MIN_HALF_MAP_CORRELATION:
        return None, (f"the labels' half averages correlate {rho:.2f} (at least {MIN_HALF_MAP_CORRELATION:g}): too "
                      "noisy to judge shapes")
    return ShapeReference(map=np.asarray(t.map, dtype=np.float32), voxel_size=float(t.voxel_size),
                          centre=float(np.median(lf)), scale=float(np.std(lf)),
                          tilt_range_deg=found.tilt_range_deg, angular_step_deg=float(found.angular_step_deg),
                          half_map_correlation=rho), ""


def _delta(fit: np.ndarray, ref: ShapeReference, centre: float) -> np.ndarray:
    z = np.clip((np.asarray(fit, dtype=np.float64) - centre) / ref.scale, -Z_MIN, Z_MAX)
    return np.where(np.isfinite(z), ref.weight * z, 0.0)


def _count_keeping_centre(scores: np.ndarray, fit: np.ndarray, ref: ShapeReference, threshold: float, *,
                          sure: int = 0) -> float | None:
    """The lowest centre at which no more of ``scores`` (the fitted picks) reach ``threshold`` after the check than
    before (bisection; the count only falls as the centre rises); None where no pick or every pick reaches it,
    counting the ``sure`` picks that were not fitted because they reach it whatever their fit."""
    n = int(np.sum(scores >= threshold))
    ok = np.isfinite(fit)
    if n + sure == 0 or n == len(scores) or not ok.any() or not threshold > ref.floor:
        return None
    lo = float(np.min(fit[ok])) - (Z_MAX + 1.0) * ref.scale
    hi = float(np.max(fit[ok])) + (Z_MIN + 1.0) * ref.scale
    for _ in range(60):
        c = 0.5 * (lo + hi)
        if int(np.sum(_rescore(scores, _delta(fit, ref, c)) >= threshold)) > n:
            lo = c
        else:
            hi = c
    return hi


def _rescore(scores: np.ndarray, delta: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-6, 1 - 1e-6)
    return 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) + delta)))


def apply_shape_check(picks, check: ShapeCheck | None):
    """``picks`` (:class:`~.infer.Picks`) with the scores of those at a checked place moved by their fit, sorted
    again by score; picks at places not in ``check`` keep their score."""
    from .infer import Picks

    if check is None or not len(picks) or not len(check.coordinates_xyz):
        return picks
    d, i = cKDTree(check.coordinates_xyz).query(picks.coordinates_xyz)
    delta = np.where(d <= _SAME_PLACE, check.delta[np.minimum(i, len(check.delta) - 1)], 0.0)
    scores = _rescore(picks.scores, delta)
    order = np.argsort(-scores, kind="stable")
    return Picks(picks.coordinates_xyz[order], scores[order],
                 None if picks.euler_deg is None else picks.euler_deg[order])


def shape_check_job(picks, tomogram, reference: ShapeReference, *, threshold: float | None = 0.5,
                    voxel_size: float | None = None, known: ShapeCheck | None = None, sure: bool = False,
                    device="cpu") -> Job[tuple]:
    """Check ``picks`` against ``reference`` (module docstring): a job.

    Parameters
    ----------
    picks : :class:`~.infer.Picks` on ``tomogram`` (voxels x, y, z), sorted by score
    tomogram : ``(z, y, x)`` array or memmap
    reference : the picker's :class:`ShapeReference`
    threshold : the model's default threshold (:attr:`~.picker.Picker.default_threshold`): as many picks reach
        it after the check as before (None: the labels' median fit is the centre)
    voxel_size : the tomogram's Å per voxel (default: the reference's); more than 10 % off the
        reference's refuses (the fit compares shapes voxel by voxel)
    known : fits already made at some of these places (reused, not fitted again)
    sure : also fit the picks that reach ``threshold`` whatever their fit (scoring at least
        :meth:`ShapeReference.ceiling`): their order above the threshold then follows their fit too, at the
        cost of their fits. False (the default): they keep their scores; which picks reach the threshold is
        the same either way
    device : torch device of the fits

    Returns
    -------
    ``(Picks, ShapeCheck)``: the picks with checked scores (sorted again), and every fit made or reused
    """
    from .infer import Picks
    from .lookalikes import _box_fit

    vs = reference.voxel_size if voxel_size is None else float(voxel_size)
    if abs(vs / reference.voxel_size - 1.0) > 0.1:
        raise InputError(f"a tomogram at the model's voxel size ({reference.voxel_size:g} Å) for the shape check",
                         field="voxel_size", got=vs)
    xyz = np.asarray(picks.coordinates_xyz, dtype=np.float64).reshape(-1, 3)
    scores = np.asarray(picks.scores, dtype=np.float64).copy()
    todo = np.flatnonzero(scores >= reference.floor)
    if threshold is not None:
        limit = CHECK_PER_PICK * int(np.sum(scores >= threshold)) + CHECK_EXTRA
        if len(todo) > limit:
            todo = np.sort(todo[np.argsort(-scores[todo], kind="stable")[:limit]])
    n_sure = 0
    if threshold is not None and not sure:
        above = scores[todo] >= reference.ceiling(float(threshold))
        n_sure, todo = int(above.sum()), todo[~above]
    fit = np.full(len(todo), np.nan)
    need = np.ones(len(todo), dtype=bool)
    if known is not None and len(known.coordinates_xyz) and len(todo):
        d, i = cKDTree(known.coordinates_xyz).query(xyz[todo])
        same = d <= _SAME_PLACE
        fit[same] = known.fit[i[same]]
        need = ~same
    yield Progress(0, 1, f"shape check: fitting {int(need.sum())} picks to the labels' average")
    if need.any():
        fit[need] = yield from _box_fit(tomogram, xyz[todo[need]], reference.map,
                                        tilt_range_deg=reference.tilt_range_deg,
                                        angular_step_deg=reference.angular_step_deg, fit_candidates=1,
                                        device=device, prefix="shape check")
    centre = None if threshold is None else _count_keeping_centre(scores[todo], fit, reference, float(threshold),
                                                                  sure=n_sure)
    check = ShapeCheck(coordinates_xyz=xyz[todo], fit=fit,
                       delta=_delta(fit, reference, reference.centre if centre is None else centre),
                       centre=reference.centre if centre is None else centre,
                       threshold=float("nan") if centre is None else float(threshold))
    scores[todo] = _rescore(scores[todo], check.delta)
    order = np.argsort(-scores, kind="stable")
    out = Picks(xyz[order], scores[order], None if picks.euler_deg is None else picks.euler_deg[order])
    yield Progress(1, 1, f"shape check: {len(todo)} picks checked, {n_sure} sure ones kept (centre {check.centre:.3f})")
    return out, check
