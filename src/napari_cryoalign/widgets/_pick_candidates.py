"""The candidates of the "Pick particles" widget: kept peaks, the user's verdicts, the picks and score layers.

:class:`CandidateView` holds every candidate peak of the last run (down to a low score floor,
:mod:`napari_cryoalign.backend.picking.session`) with the user's verdict on each
(:class:`~._pick_state.PickSet`), and shows

* the candidates that pass the score threshold (or were accepted) in the points layer
  ``"<tomogram> picks"`` (``score``, ``candidate``, ``status`` and angles in ``features``,
  border colour by score, accepted ones filled);
* the score map as an image layer (``"<tomogram> heatmap"`` on the heatmap's grid, or
  ``"<tomogram> template scores"``);
* the score histogram with the threshold.

Moving the threshold only filters; deleting points in the layer (its Delete key) rejects
them, points added by hand are accepted picks. Nothing here computes more than a filter.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ..backend.picking.session import TEMPLATE_SCORE_FLOOR
from ._base import add_or_update_layer, show_particles_in_thick_slices
from ._pick_state import ACCEPTED, AUTO, REJECTED, PickSet

__all__ = ["CandidateView"]

_STATUS_NAMES = {AUTO: "auto", ACCEPTED: "accepted", REJECTED: "rejected"}


class CandidateView:
    """Candidates and their layers for one widget (see the module docstring).

    Parameters
    ----------
    viewer : the napari viewer
    threshold : the score threshold slider (``value``, ``min``, ``max``, ``range``)
    histogram : the :class:`~._plots.ScoreHistogram`
    info : a label for the "n picks shown" line
    tomogram : returns the chosen tomogram image layer (or None)
    marker_size : returns the size to draw a pick at (voxels)
    on_verdicts : called after the user accepted or rejected picks (labels info, autosave)
    """

    def __init__(self, viewer, *, threshold, histogram, info, tomogram: Callable, marker_size: Callable[[], float],
                 on_verdicts: Callable[[], None]):
        self.viewer = viewer
        self.threshold, self.histogram, self.info = threshold, histogram, info
        self._tomogram, self._marker_size, self._on_verdicts = tomogram, marker_size, on_verdicts
        self.picks = PickSet.empty()
        self.score_map = None  #: Heatmap (picker) or NCC volume (template) of the current candidates
        self.best_rotation = None  #: template: rotation index per voxel
        self.euler_grid = None  #: template: angles of the rotation grid
        self.method = None  #: "picker" or "template": what made the current candidates
        self.shape_check = None  #: picker: the shape check's fits (ShapeCheck), reused when the peaks are found again
        self._updating = False

    def reset(self, picks: PickSet | None = None) -> None:
        """Forget the candidates and the score map (a new tomogram); ``picks``: known verdicts to keep."""
        self.picks = PickSet.empty() if picks is None else picks
        self.score_map = self.best_rotation = self.euler_grid = self.method = self.shape_check = None
        self.histogram.set_scores([])
        self.info.value = "no picks yet"

    # ------------------------------------------------------------------ score map
    def show_score_map(self, method: str, score_map, tomogram, *, best_rotation=None, euler_grid=None,
                       shape_check=None) -> None:
        """Keep ``score_map`` (and the picker's ``shape_check``) and show it on ``tomogram`` (the layer the job ran
        on)."""
        self.score_map, self.best_rotation, self.euler_grid = score_map, best_rotation, euler_grid
        self.shape_check = shape_check
        if tomogram is None or score_map is None:
            return
        vs = np.asarray(tomogram.scale, dtype=np.float64)
        tr = np.asarray(tomogram.translate, dtype=np.float64)
        if method == "picker":
            st = np.asarray(score_map.stride, dtype=np.float64)
            data = score_map.data
            scale, translate, limits, cmap = vs * st, tr + (st - 1) / 2 * vs, (0.0, 1.0), "inferno"
            name = f"{tomogram.name} heatmap"
        else:
            data = score_map
            hi = float(np.max(data)) if data.size else 1.0
            scale, translate, limits, cmap = vs, tr, (0.0, max(hi, 1e-3)), "viridis"
            name = f"{tomogram.name} template scores"
        add_or_update_layer(self.viewer, (data, {
            "name": name, "scale": tuple(scale), "translate": tuple(translate),
            "colormap": cmap, "contrast_limits": limits, "blending": "additive", "opacity": 0.5,
            "metadata": {"napari_cryoalign": {"role": "score map", "tomogram": tomogram.name}},
        }, "image"))

    # ------------------------------------------------------------------ candidates
    def set_candidates(self, picks, method: str, *, match_radius: float) -> None:
        """Replace the candidates by ``picks``; verdicts carry over to candidates within ``match_radius`` voxels."""
        if method == self.method:
            self.picks = self.picks.replaced_by(picks, match_radius=match_radius)
        else:  # other scores: verdicts do not carry over, except removed picks (known negatives)
            rej = self.picks.status == REJECTED
            keep = PickSet(self.picks.coordinates_xyz[rej], self.picks.scores[rej], None, self.picks.status[rej])
            self.picks = keep.replaced_by(picks, match_radius=match_radius)
        self.method = method
        scores = self.picks.scores
        if method == "picker":
            lo, hi = 0.0, 1.0
        else:
            lo = float(min(TEMPLATE_SCORE_FLOOR, scores.min())) if len(scores) else 0.0
            hi = float(max(scores.max(), lo + 0.01)) if len(scores) else 1.0
        lo, hi = np.floor(lo * 100) / 100, np.ceil(hi * 100) / 100  # the slider's resolution
        if (self.threshold.min, self.threshold.max) != (lo, hi):
            t = float(np.clip(np.round(self.threshold.value, 2), lo, hi))
            self.threshold.range = (lo, hi)
            self.threshold.value = t
        self.histogram.set_scores(scores, value_range=(lo, hi))
        self.histogram.set_threshold(float(self.threshold.value))
        self.refresh()

    def on_threshold(self, value) -> None:
        self.histogram.set_threshold(float(value))
        self.refresh()

    def shown_indices(self) -> np.ndarray:
        """Indices into :attr:`picks` of the picks shown at the current threshold (by score)."""
        return self.picks.shown(float(self.threshold.value))

    # ------------------------------------------------------------------ the picks layer
    def layer_name(self) -> str | None:
        tomo = self._tomogram()
        return None if tomo is None else f"{tomo.name} picks"

    def layer(self):
        name = self.layer_name()
        return self.viewer.layers[name] if name is not None and name in self.viewer.layers else None

    def refresh(self) -> None:
        """Show the candidates that pass the threshold (or were accepted) in ``"<tomogram> picks"``."""
        tomo = self._tomogram()
        if tomo is None:
            return
        idx = self.shown_indices()
        data = self.picks.coordinates_xyz[idx][:, ::-1].reshape(-1, 3)
        feats = pd.DataFrame({
            "score": self.picks.scores[idx],
            "candidate": idx.astype(np.int64),
            "status": pd.Categorical([_STATUS_NAMES[int(s)] for s in self.picks.status[idx]],
                                     categories=list(_STATUS_NAMES.values())),
        })
        if self.picks.euler_deg is not None:
            e = self.picks.euler_deg[idx]
            feats["rlnAngleRot"], feats["rlnAngleTilt"], feats["rlnAnglePsi"] = e[:, 0], e[:, 1], e[:, 2]
        face = np.zeros((len(idx), 4))
        face[self.picks.status[idx] == ACCEPTED] = (0.2, 1.0, 0.4, 0.35)
        size = self._marker_size()
        layer = self.layer()
        self._updating = True
        try:
            if layer is None:
                layer = self.viewer.add_points(
                    data, ndim=3, name=self.layer_name(), features=feats, scale=tuple(tomo.scale),
                    translate=tuple(tomo.translate), size=size, border_width=0.1,
                    projection_mode="rescale_spherical",
                    metadata={"napari_cryoalign": {"role": "picks", "tomogram": tomo.name}})
                layer.events.data.connect(self._on_layer_data)
            else:
                layer.selected_data = set()
                layer.data = data
                layer.features = feats
            # a point the user adds to this layer is a pick placed by hand (see _on_layer_data)
            defaults = {"score": 1.0, "candidate": -1, "status": "accepted"}
            if self.picks.euler_deg is not None:
                defaults.update(rlnAngleRot=0.0, rlnAngleTilt=0.0, rlnAnglePsi=0.0)
            layer.feature_defaults = defaults
            if len(data):
                layer.border_color = self._score_colors(self.picks.scores[idx])
                layer.face_color = face
                layer.size = np.full(len(data), size)
                # draw every pick that the current slice cuts (as its disc), not only those centred on it
                show_particles_in_thick_slices(self.viewer, layer)
        finally:
            self._updating = False
        n_acc = int(np.sum(self.picks.status[idx] == ACCEPTED))
        self.info.value = (f"{len(idx)} picks shown (score ≥ {float(self.threshold.value):.2f}"
                           f"{f', {n_acc} accepted' if n_acc else ''}) of {len(self.picks)} candidates")

    def set_marker_size(self, size: float) -> None:
        layer = self.layer()
        if layer is not None:
            if len(layer.data):
                layer.size = np.full(len(layer.data), size)
            layer.current_size = size

    def _score_colors(self, scores) -> np.ndarray:
        from matplotlib import colormaps

        lo, hi = float(self.threshold.min), float(self.threshold.max)
        t = np.clip((np.asarray(scores) - lo) / max(hi - lo, 1e-9), 0, 1)
        return colormaps["viridis"](t)

    def _on_layer_data(self, event) -> None:
        if self._updating:
            return
        from qtpy.QtCore import QTimer

        layer = event.source
        action = str(getattr(event, "action", ""))
        if action == "removed":
            # points the user deleted from the layer (Delete key): rejected candidates
            remaining = {int(c) for c in layer.features["candidate"] if int(c) >= 0}
            shown = {int(i) for i in self.shown_indices()}
            self.picks.set_status(sorted(shown - remaining), REJECTED)
            QTimer.singleShot(0, self.refresh)
            self._on_verdicts()
        elif action == "added":
            new = np.asarray(layer.features["candidate"]) < 0
            if new.any():
                self.picks.add(np.asarray(layer.data)[new][:, ::-1], 1.0, status=ACCEPTED)
                QTimer.singleShot(0, self.refresh)

    # ------------------------------------------------------------------ verdicts
    def selected_candidates(self) -> np.ndarray:
        """Candidate indices of the points selected in the picks layer."""
        layer = self.layer()
        if layer is None or not layer.selected_data:
            return np.zeros(0, dtype=np.int64)
        rows = sorted(layer.selected_data)
        cand = np.asarray(layer.features["candidate"], dtype=np.int64)[rows]
        return cand[cand >= 0]

    def set_status(self, candidates, status: int) -> int:
        """Accept (``ACCEPTED``) or remove (``REJECTED``) ``candidates``; returns how many."""
        candidates = np.asarray(candidates, dtype=np.int64)
        self.picks.set_status(candidates, status)
        self.refresh()
        self._on_verdicts()
        return int(candidates.size)
