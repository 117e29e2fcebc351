"""The picker's default training recipe: PU training on the labels, then look-alike rejection.

:func:`fit_picker_job` is what ``cryoalign pick train`` and the "Pick particles" widget run:

1. :func:`~.train.train_picker_job` on the labels (and any known negatives: removed picks);
2. unless ``reject_lookalikes=False``: :func:`~.lookalikes.lookalike_negatives_job` finds the
   high-scoring candidates of the training tomogram that fit the labels' average clearly worse
   than the labels do;
3. training continues ``lookalike_steps`` steps with them as known negatives (as if the user had
   removed them);
4. the labels' average of step 2 and the spread of the labels' fits to it are kept with the model
   (``picker.shape_reference``) for the shape check at inference (:mod:`.shape_check`).

**Continuing** a model that has been through steps 2-3 on the same tomogram (``picker=``, what Train
does again in the widget after the user removed picks) reuses the look-alikes found then
(``picker.training["lookalike_negatives_xyz"]``) as known negatives, together with the removed
picks, and trains once (``iterations`` steps): no second search. A second search would look at
the candidates of a model that has already pushed the look-alikes down, so its candidates are
mostly targets, and without the first negatives the model forgets them (on the cellular scenario
a removal round that searched again lost much of its recall at the default threshold).

**Train again keeps the count the user's corrections imply.** Before continuing, the model's picks on the
training tomogram at its default threshold are counted (what the user reviewed): less the removed picks
among them, plus the labels none of them found. After training, the default threshold is set so that
the retrained model gives that many picks there. A few removed picks can otherwise shift every score:
on the ribosome look-alike scenario 4 removed picks moved the best threshold to 0.29 and the recall at
0.5 from 0.98 to 0.84; on the dengue scenario 10 removed picks took it from 0.97 to 0.71 (docs/picking.md,
the removal round). It costs two more passes of the network over the training tomogram.

**Removed picks are not learnt where the labels' average is too noisy** (half averages correlating below the
shape check's gate, :func:`learns_removed_picks`): there they are kept out of the picks and the count, and the
model continues without them (on the mTOR and dengue scenarios learning them made it rank every particle worse).

With the recipe, a model trained with known negatives - found here or removed by the user - has
learnt from both classes (positive, unlabelled and known negative data: PNU), so its default
threshold is the Bayes cut 0.5 rather than the labels-only calibration
(:func:`~.train.calibrated_threshold`, which the labels' own, trained-on scores push too high
once look-alikes are pushed down; measured best thresholds 0.41-0.53 after the recipe). Without
the recipe (``reject_lookalikes=False``) the labels-only calibration stays: a few removed picks
leave the scores high (best thresholds 0.77-0.83 on the cellular scenario). docs/picking.md.

Measured in docs/picking.md (the look-alike scenario): see there for what it gains and costs.
"""

from __future__ import annotations

import time

import numpy as np

from ..jobs import Job, Partial, subjob
from . import shape_check
from .lookalikes import LookalikeNegatives, lookalike_negatives_job
from .shape_check import half_map_correlation, shape_reference_from_search
from .train import TrainResult, train_picker_job

__all__ = ["BAYES_CUT", "COUNT_FLOOR", "DEFAULT_LOOKALIKE_STEPS", "fit_picker_job", "learns_removed_picks"]

#: training steps with the look-alikes found as known negatives
DEFAULT_LOOKALIKE_STEPS = 300
#: the default threshold of a model the recipe trained with known negatives (found or removed)
BAYES_CUT = 0.5
#: the lowest default threshold the count rule of Train again sets (and the lowest score it counts)
COUNT_FLOOR = 0.02


def fit_picker_job(tomogram, labels_xyz, *, reject_lookalikes: bool = True,
                   lookalike_steps: int = DEFAULT_LOOKALIKE_STEPS, lookalike_options: dict | None = None,
                   negatives_xyz=None, voxel_size: float = 1.0, seed: int | None = 0, device="cpu", path=None,
                   **train_kwargs) -> Job[TrainResult]:
    """Train a picker on labels, then reject look-alikes of the labelled particles (module docstring).

    Parameters
    ----------
    tomogram : ``(z, y, x)`` the training tomogram
    labels_xyz : ``(n, 3)`` labelled particles, voxels (x, y, z)
    reject_lookalikes : run steps 2-3 (False: plain :func:`~.train.train_picker_job`)
    lookalike_steps : training steps of step 3
    lookalike_options : keyword arguments of :func:`~.lookalikes.lookalike_negatives_job`
    negatives_xyz : known negatives (removed picks), ``(m, 3)`` voxels, or None
    voxel_size, seed, device, path : as :func:`~.train.train_picker_job`
    train_kwargs : the other options of :func:`~.train.train_picker_job` (diameter, picker, iterations, ...)

    Yields the training jobs' events and ``Partial("lookalikes", LookalikeNegatives)``; returns a
    :class:`~.train.TrainResult` over both training runs (the picker's ``training`` records
    ``lookalike_negatives``, ``lookalike_cut``, ``lookalike_cut_above`` and ``lookalike_candidates``).
    """
    t0 = time.perf_counter()
    common = {"voxel_size": voxel_size, "device": device, "path": path}
    earlier = _earlier_lookalikes(train_kwargs.get("picker"), tomogram, labels_xyz) if reject_lookalikes else None
    if earlier is not None:  # continuing: the look-alikes found before are known negatives, no new search
        learn, why_not = learns_removed_picks(train_kwargs["picker"])
        removed = None if negatives_xyz is None or not len(negatives_xyz) else negatives_xyz
        known = _merge(removed if learn else None, earlier)
        count = yield from _corrected_count(train_kwargs["picker"], tomogram, labels_xyz, negatives_xyz,
                                            voxel_size=voxel_size, device=device)
        result = yield from train_picker_job(tomogram, labels_xyz, negatives_xyz=known if len(known) else None,
                                             seed=seed, **common, **train_kwargs)
        yield Partial("lookalikes", LookalikeNegatives(earlier, reason=f"{len(earlier)} look-alikes found by an "
                                                                       "earlier training of this model, reused"))
        result.picker.training.update(lookalike_negatives_xyz=earlier.round(2).tolist(), lookalike_reused=True)
        result.picker.training.pop("removed_picks_not_learnt", None)
        if removed is not None and not learn:
            result.picker.training["removed_picks_not_learnt"] = why_not
        # the count rule sets the default threshold (not the Bayes cut of _with_threshold)
        yield from _keep_corrected_count(result.picker, tomogram, count, negatives_xyz=removed,
                                         voxel_size=voxel_size, device=device)
        return result
    first = yield from train_picker_job(tomogram, labels_xyz, negatives_xyz=negatives_xyz, seed=seed, **common,
                                        **train_kwargs)
    if not reject_lookalikes or lookalike_steps <= 0:
        return first
    picker = first.picker
    found = yield from subjob(lookalike_negatives_job(picker, tomogram, labels_xyz, negatives_xyz=negatives_xyz,
                                                      **common, **(lookalike_options or {})),
                              prefix="look-alikes")
    yield Partial("lookalikes", found)
    picker.training.update(lookalike_negatives=int(len(found.negatives_xyz)), lookalike_cut=found.cut,
                           lookalike_cut_above=found.cut_above, lookalike_candidates=int(len(found.candidates_xyz)),
                           lookalike_reason=found.reason, lookalike_reused=False)
    if found.template is not None:  # a search ran (not skipped for too few labels): Train again reuses its result
        picker.training["lookalike_negatives_xyz"] = np.asarray(found.negatives_xyz).round(2).tolist()
    else:
        picker.training.pop("lookalike_negatives_xyz", None)
    picker.shape_reference, why_not = shape_reference_from_search(found)
    rho = half_map_correlation(found.template)  # Train again reads it (removed picks); NaN without half maps
    if np.isfinite(rho):
        picker.training["half_map_correlation"] = round(float(rho), 4)
    else:
        picker.training.pop("half_map_correlation", None)
    picker.training["shape_check"] = picker.shape_reference is not None
    picker.training["shape_check_reason"] = why_not
    if not len(found.negatives_xyz):
        return _with_threshold(first, negatives_xyz)
    known = _merge(negatives_xyz, found.negatives_xyz)
    keep = {k: v for k, v in train_kwargs.items() if k not in ("diameter_angstrom", "picker", "iterations")}
    second = yield from train_picker_job(tomogram, labels_xyz, picker=picker, iterations=int(lookalike_steps),
                                         negatives_xyz=known, seed=None if seed is None else seed + 1, **common,
                                         **keep)
    return _with_threshold(TrainResult(picker=picker, losses=np.concatenate([first.losses, second.losses]),
                                       iterations=first.iterations + second.iterations,
                                       seconds=time.perf_counter() - t0), known)


def _merge(negatives_xyz, more) -> np.ndarray:
    a = np.zeros((0, 3)) if negatives_xyz is None else np.asarray(negatives_xyz, dtype=np.float64).reshape(-1, 3)
    return np.concatenate([a, np.asarray(more, dtype=np.float64).reshape(-1, 3)])


def _earlier_lookalikes(picker, tomogram, labels_xyz) -> np.ndarray | None:
    """The look-alikes a search found for ``picker`` on a tomogram of this shape (``(m, 3)``, maybe empty),
    less any the user has since labelled (within half a diameter of a label); None: no picker, or none
    searched there (a model from before this was recorded: search anew)."""
    if picker is None or "lookalike_negatives_xyz" not in picker.training:
        return None
    if list(picker.training.get("tomogram_shape") or []) != [int(v) for v in np.shape(tomogram)]:
        return None
    earlier = np.asarray(picker.training["lookalike_negatives_xyz"], dtype=np.float64).reshape(-1, 3)
    labels = np.asarray(labels_xyz, dtype=np.float64).reshape(-1, 3)
    if len(earlier) and len(labels):
        from scipy.spatial import cKDTree

        earlier = earlier[cKDTree(labels).query(earlier)[0] > 0.5 * picker.diameter_voxels]
    return earlier


def learns_removed_picks(picker) -> tuple[bool, str]:
    """Whether Train again learns the removed picks as known negatives, and why not: not where the labels' half
    averages correlate below the shape check's gate (:data:`.shape_check.MIN_HALF_MAP_CORRELATION`). On the two
    such targets measured (mTOR, then dengue E-Fab, docs/picking.md) the removed picks - other species of the same
    size, as a user removes them - made the network rank every particle worse (best F1 0.554 -> 0.404 on dengue)
    while the same training without them changed little; above the gate they changed little either way."""
    rho = picker.training.get("half_map_correlation")
    if rho is None:  # a model from before this was recorded: the shape check's reason says it
        too_noisy = "too noisy" in str(picker.training.get("shape_check_reason") or "")
        what = "too noisy"
    else:
        too_noisy = not float(rho) >= shape_check.MIN_HALF_MAP_CORRELATION
        what = f"its half averages correlate {float(rho):.2f}, below {shape_check.MIN_HALF_MAP_CORRELATION:g}"
    if not too_noisy:
        return True, ""
    return False, (f"removed picks kept out of the picks but not learnt as negatives: the labels' average is {what}, "
                   "and on such data learning them made the picker worse in our tests (docs/picking.md)")


def _picks(picker, tomogram, threshold: float, *, voxel_size, device, prefix: str) -> Job:
    """The network's picks (no shape check) on the training tomogram at ``threshold``."""
    from .infer import pick_job

    picks, _ = yield from subjob(pick_job(picker, tomogram, threshold=float(threshold), voxel_size=voxel_size,
                                          device=device, shape_check=False), prefix=prefix, partials=False)
    return picks


def _corrected_count(picker, tomogram, labels_xyz, negatives_xyz, *, voxel_size, device) -> Job[dict]:
    """Before Train again: the picks the model gives on its training tomogram at its default threshold (what the
    user reviewed), less the removed picks among them, plus the labels none of them found: how many picks the
    retrained model should give there (:func:`_keep_corrected_count`)."""
    from scipy.spatial import cKDTree

    thr = picker.default_threshold
    picks = yield from _picks(picker, tomogram, thr, voxel_size=voxel_size, device=device,
                              prefix="picks before training")
    xyz = np.asarray(picks.coordinates_xyz, dtype=np.float64).reshape(-1, 3)
    near = 0.5 * picker.diameter_voxels
    removed = added = 0
    if negatives_xyz is not None and len(negatives_xyz) and len(xyz):
        d, _ = cKDTree(np.asarray(negatives_xyz, dtype=np.float64).reshape(-1, 3)).query(xyz)
        removed = int(np.sum(d <= near))  # picks the user removed
    labels = np.asarray(labels_xyz, dtype=np.float64).reshape(-1, 3)
    if len(labels):
        added = int(np.sum(cKDTree(xyz).query(labels)[0] > near)) if len(xyz) else len(labels)  # particles missed
    return {"before": int(len(xyz)), "threshold_before": float(thr), "removed": removed, "added": added,
            "target": max(1, int(len(xyz)) - removed + added)}


def _keep_corrected_count(picker, tomogram, count: dict, *, negatives_xyz=None, voxel_size, device) -> Job[None]:
    """Set the retrained model's default threshold so that it gives ``count["target"]`` picks on its training
    tomogram: the count the user's corrections imply (module docstring, "Train again"). Picks at the removed
    places (``negatives_xyz``, within half a diameter) are not counted: the user has removed them for good."""
    from scipy.spatial import cKDTree

    picks = yield from _picks(picker, tomogram, COUNT_FLOOR, voxel_size=voxel_size, device=device,
                              prefix="picks after training")
    scores = np.asarray(picks.scores, dtype=np.float64)
    xyz = np.asarray(picks.coordinates_xyz, dtype=np.float64).reshape(-1, 3)
    if negatives_xyz is not None and len(negatives_xyz) and len(xyz):
        d, _ = cKDTree(np.asarray(negatives_xyz, dtype=np.float64).reshape(-1, 3)).query(xyz)
        scores = scores[d > 0.5 * picker.diameter_voxels]
    scores = np.sort(scores)[::-1]
    n = int(count["target"])
    if len(scores) <= n:  # fewer picks than the count above the floor: all of them
        thr = COUNT_FLOOR
    else:
        thr = 0.5 * (scores[n - 1] + scores[n])
    thr = float(np.clip(thr, COUNT_FLOOR, 1.0 - COUNT_FLOOR))
    picker.training.update(suggested_threshold=thr, corrected_count=dict(count, threshold=thr),
                           threshold_rule=f"the count the corrections imply: {count['before']} picks at "
                                          f"{count['threshold_before']:.2f} before, {count['removed']} removed, "
                                          f"{count['added']} labels added -> {n} picks")


def _with_threshold(result: TrainResult, negatives_xyz) -> TrainResult:
    """A model that learnt from known negatives (removed picks, look-alikes found) has seen both classes
    (positive, unlabelled and negative data: PNU): its Bayes cut is its default threshold."""
    if negatives_xyz is not None and len(negatives_xyz):
        result.picker.training["suggested_threshold"] = BAYES_CUT
        result.picker.training["threshold_rule"] = "Bayes cut: trained with known negatives"
    return result
