"""Picking sessions: the jobs behind the "Pick particles" widget, as compositions of the picking jobs.

An interactive session keeps *all* candidate peaks above a low score floor
(:data:`PICKER_SCORE_FLOOR`, :data:`TEMPLATE_SCORE_FLOOR`; at most :data:`MAX_CANDIDATES`), so
that moving the score threshold only filters them and a new minimum distance only reruns the
peak finder on the kept score map (:func:`find_candidates`). Each job returns a
:class:`PickOutcome`:

* :func:`train_and_pick_job` - train (or continue training) the picker on the labels with the
  default recipe (:func:`~.fit.fit_picker_job`: look-alike rejection after the PU training),
  then tiled inference, peaks and the shape check (:mod:`.shape_check`) on the whole tomogram;
* :func:`pick_with_model_job` - inference, peaks and the shape check with a given (loaded) picker;
* :func:`template_candidates_job` - template matching, with the rotation of each peak;
* :func:`label_template_candidates_job` - a template averaged from the labels
  (:func:`~.label_template.label_template_job`), then template matching with it.

No computation of their own beyond bookkeeping; nothing here knows about Qt or napari.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..jobs import Job, Partial, Progress, subjob
from .infer import Picks, find_peaks, pick_job

__all__ = [
    "MAX_CANDIDATES",
    "PICKER_SCORE_FLOOR",
    "TEMPLATE_SCORE_FLOOR",
    "PickOutcome",
    "find_candidates",
    "label_template_candidates_job",
    "pick_with_model_job",
    "template_candidates_job",
    "train_and_pick_job",
]

#: candidates below these scores are not kept (heatmap probability / normalised cross-correlation)
PICKER_SCORE_FLOOR = 0.02
TEMPLATE_SCORE_FLOOR = 0.0
#: at most this many candidates are kept (highest first)
MAX_CANDIDATES = 50_000


@dataclass(frozen=True)
class PickOutcome:
    """What a picking session's job produced.

    Attributes
    ----------
    method : "picker" or "template"
    picks : candidate :class:`~.infer.Picks` (down to the score floor), sorted by decreasing score
    score_map : :class:`~.infer.Heatmap` (picker) or the ``(z, y, x)`` NCC volume (template)
    best_rotation : ``(z, y, x)`` rotation index per voxel (template) or None
    euler_grid : ``(n_rotations, 3)`` RELION angles (degrees) of the rotation grid (template) or None
    picker : the trained / used :class:`~.picker.Picker` or None
    suggested_threshold : template: the NCC that noise exceeds once in the search, else None
    shape_check : picker: the fits of the shape check (:class:`~.shape_check.ShapeCheck`; the picks'
        scores include it), or None (no reference in the model)
    """

    method: str
    picks: Any
    score_map: Any
    best_rotation: np.ndarray | None = None
    euler_grid: np.ndarray | None = None
    picker: Any = None
    suggested_threshold: float | None = None
    shape_check: Any = None


def _picker_candidates_job(picker, tomogram, *, min_distance_angstrom, voxel_size, path, device=None,
                           shape_check: bool = True):
    """Every candidate above the floor (``Partial("heatmap")`` as soon as the network has run), then the shape
    check of those that could reach 0.5 (when the picker has a reference): ``(Picks, Heatmap, ShapeCheck or None)``."""
    picks, heat = yield from subjob(pick_job(picker, tomogram, threshold=PICKER_SCORE_FLOOR, voxel_size=voxel_size,
                                             min_distance_angstrom=min_distance_angstrom, max_picks=MAX_CANDIDATES,
                                             path=path, device=device, shape_check=False), partials=False)
    yield Partial("heatmap", heat)
    check = None
    if shape_check and picker.shape_reference is not None:
        from .shape_check import shape_check_job

        picks, check = yield from shape_check_job(picks, tomogram, picker.shape_reference,
                                                  threshold=picker.default_threshold, voxel_size=voxel_size,
                                                  device=picker.device if device is None else device)
    return picks, heat, check


def train_and_pick_job(tomogram, labels_xyz, *, picker=None, min_distance_angstrom: float | None = None,
                       voxel_size: float, path=None, shape_check: bool = True, **train_kwargs) -> Job[PickOutcome]:
    """Train the picker on ``labels_xyz`` (or continue ``picker``), then find every candidate in ``tomogram``.

    Parameters
    ----------
    tomogram : ``(z, y, x)`` array or memmap
    labels_xyz : ``(n, 3)`` labelled particles, 0-based voxels (x, y, z)
    picker : a picker to continue training, or None for a new one
    min_distance_angstrom : minimum distance between candidates in Å (None: the particle radius)
    voxel_size : Å per voxel of the tomogram
    path : the tomogram's file, for messages
    shape_check : weigh the candidates by their fit to the labels' average when the trained model has one
        (:mod:`.shape_check`)
    train_kwargs : the options of :func:`~.fit.fit_picker_job` (look-alike rejection) and
        :func:`~.train.train_picker_job` (diameter, iterations, device, ...)

    Yields the training jobs' events (with ``Partial("lookalikes")``), ``Partial("heatmap")`` once the
    network has run on the whole tomogram (before the shape check); returns a :class:`PickOutcome`.
    """
    from .fit import fit_picker_job

    res = yield from fit_picker_job(tomogram, labels_xyz, picker=picker, voxel_size=voxel_size, path=path,
                                    **train_kwargs)
    yield Progress(0, None, "picking with the trained model")
    picks, heat, check = yield from _picker_candidates_job(res.picker, tomogram, voxel_size=voxel_size, path=path,
                                                           min_distance_angstrom=min_distance_angstrom,
                                                           shape_check=shape_check)
    return PickOutcome("picker", picks, heat, picker=res.picker, shape_check=check)


def pick_with_model_job(picker, tomogram, *, min_distance_angstrom: float | None = None, voxel_size: float,
                        path=None, device=None, shape_check: bool = True) -> Job[PickOutcome]:
    """Tiled inference of ``picker`` on ``tomogram`` and every candidate above the floor (no training), shape-checked
    when the model has a reference and ``shape_check``."""
    picks, heat, check = yield from _picker_candidates_job(picker, tomogram, voxel_size=voxel_size, path=path,
                                                           min_distance_angstrom=min_distance_angstrom, device=device,
                                                           shape_check=shape_check)
    return PickOutcome("picker", picks, heat, picker=picker, shape_check=check)


def template_candidates_job(tomogram, template, **kwargs) -> Job[PickOutcome]:
    """Template matching (:func:`~.template.template_match_job`, same options), every peak above the floor."""
    from .template import template_match_job

    res = yield from template_match_job(tomogram, template, threshold=TEMPLATE_SCORE_FLOOR, max_picks=MAX_CANDIDATES,
                                        **kwargs)
    return PickOutcome("template", res.picks, res.scores, best_rotation=res.best_rotation, euler_grid=res.euler_deg,
                       suggested_threshold=res.suggested_threshold)


def label_template_candidates_job(tomogram, labels_xyz, *, voxel_size: float, diameter_angstrom: float,
                                  template_options: dict | None = None, path=None, labels_path=None,
                                  **match_kwargs) -> Job[PickOutcome]:
    """Average a template from ``labels_xyz``, then match it (:func:`template_candidates_job`).

    Parameters
    ----------
    tomogram : ``(z, y, x)`` array or memmap
    labels_xyz : ``(n, 3)`` labelled particles, 0-based voxels (x, y, z)
    voxel_size : Å per voxel of the tomogram (the template is made on the tomogram's grid)
    diameter_angstrom : particle diameter in Å
    template_options : more options of :func:`~.label_template.label_template_job` (``box``,
        ``lowpass_angstrom``, ``iterations``, ...); ``tilt_range_deg`` and ``device`` default to the matching's
    path, labels_path : the tomogram's and the labels' files, for messages
    match_kwargs : the options of :func:`~.template.template_match_job` (angular step, tilt range, device, ...);
        ``mask_radius`` defaults to the template's (:attr:`~.label_template.LabelTemplate.mask_radius_voxels`)

    Yields both jobs' progress (prefixed "label template" and "template matching") and
    ``Partial("label_template", LabelTemplate)`` when the template is made; returns the matching's
    :class:`PickOutcome`.
    """
    from .label_template import label_template_job

    opts = {"tilt_range_deg": match_kwargs.get("tilt_range_deg", (-60.0, 60.0)),
            "device": match_kwargs.get("device", "cpu"), **(template_options or {})}
    tmpl = yield from subjob(label_template_job(tomogram, labels_xyz, voxel_size=voxel_size,
                                                diameter_angstrom=diameter_angstrom, path=path,
                                                labels_path=labels_path, **opts),
                             prefix="label template", partials=False)
    yield Partial("label_template", tmpl)
    match_kwargs.setdefault("mask_radius", tmpl.mask_radius_voxels)
    outcome = yield from subjob(template_candidates_job(tomogram, tmpl.map, voxel_size=voxel_size,
                                                        template_voxel_size=tmpl.voxel_size, path=path,
                                                        **match_kwargs),
                                prefix="template matching")
    return outcome


def find_candidates(score_map, *, method: str, min_distance_voxels: float, best_rotation=None,
                    euler_grid=None, shape_check=None) -> Picks:
    """The candidates of a kept score map at a new minimum distance (only the peak finder reruns).

    Parameters
    ----------
    score_map : :class:`~.infer.Heatmap` (``method="picker"``) or the ``(z, y, x)`` NCC volume ("template")
    min_distance_voxels : minimum distance between candidates, tomogram voxels
    best_rotation, euler_grid : template matching's rotation index per voxel and grid angles, to give
        each candidate its orientation
    shape_check : picker: the session's :class:`~.shape_check.ShapeCheck`; candidates at places it checked get
        their checked scores (a peak that a shorter distance brings up afresh keeps the network's score)
    """
    floor = PICKER_SCORE_FLOOR if method == "picker" else TEMPLATE_SCORE_FLOOR
    xyz, sc = find_peaks(score_map, min_distance=min_distance_voxels, threshold=floor, max_picks=MAX_CANDIDATES)
    if method == "picker":
        from .shape_check import apply_shape_check

        return apply_shape_check(Picks(xyz, sc), shape_check)
    if best_rotation is None:
        return Picks(xyz, sc)
    ii = np.round(xyz).astype(np.int64).reshape(-1, 3)
    return Picks(xyz, sc, np.asarray(euler_grid)[best_rotation[ii[:, 2], ii[:, 1], ii[:, 0]]].reshape(-1, 3))
