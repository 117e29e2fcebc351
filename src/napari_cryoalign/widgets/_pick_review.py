"""The review loop of the "Pick particles" widget: the uncertain picks one by one, one key each.

"Review uncertain picks" queues the picks a threshold can get wrong (not yet judged, scoring
near the threshold; :class:`~._pick_state.ReviewQueue`), the highest-scoring first, and shows
them one at a time: the viewer moves to the pick's slice and centres on it, a ring marks it
(layer ``"<tomogram> review"``), and the status says how far the review is. One key decides
and moves on - **A** accept (the pick becomes a label: a positive for the next training),
**X** remove (a known negative for the next training), **S** skip - or the buttons of the same
names. Train again learns from the verdicts. About 30 picks: a minute's work.
"""

from __future__ import annotations

import numpy as np

from ._pick_state import ACCEPTED, REJECTED, ReviewQueue

__all__ = ["PickReview"]

REVIEW_BAND = 0.25  #: picks within this fraction of the score range around the threshold are uncertain
REVIEW_LIMIT = 30  #: picks per review


class PickReview:
    """The review loop of a :class:`~.pick.PickWidget` (``widget``: its candidates, labels and viewer)."""

    def __init__(self, widget):
        self.widget = widget
        self.queue: ReviewQueue | None = None
        self.accepted = self.removed = 0

    @property
    def active(self) -> bool:
        return self.queue is not None and self.queue.current is not None

    def start(self) -> int:
        """Queue the uncertain picks and show the first; returns how many are queued."""
        w = self.widget
        lo, hi = float(w.threshold.min), float(w.threshold.max)
        self.queue = ReviewQueue(w.picks, float(w.threshold.value), band=REVIEW_BAND * max(hi - lo, 1e-9),
                                 limit=REVIEW_LIMIT)
        self.accepted = self.removed = 0
        self._show()
        return len(self.queue)

    def verdict(self, status: int | None) -> int | None:
        """Judge the pick under review (``ACCEPTED``, ``REJECTED`` or None to skip) and show the next.

        Returns the next pick's index, or None when the review is over.
        """
        if not self.active:
            return None
        w = self.widget
        i = self.queue.current
        if status == ACCEPTED:
            w.labels.add(w.picks.coordinates_xyz[i : i + 1])
            self.accepted += 1
        elif status == REJECTED:
            self.removed += 1
        if status is not None:
            w.candidates.set_status([i], status)
        self.queue.advance()
        self._show()
        return self.queue.current

    def _layer(self):
        tomo = self.widget.tomogram_layer
        name = None if tomo is None else f"{tomo.name} review"
        return tomo, name

    def _show(self) -> None:
        w = self.widget
        tomo, name = self._layer()
        if tomo is None or self.queue is None:
            return
        i = self.queue.current
        if i is None:
            if name in w.viewer.layers:
                w.viewer.layers.remove(name)
            w.status.setText(f"review done: {self.accepted} accepted (now labels), {self.removed} removed; "
                             "press Train to learn from them")
            return
        zyx = w.picks.coordinates_xyz[i][::-1]
        if name in w.viewer.layers:
            layer = w.viewer.layers[name]
            layer.data = zyx[None]
        else:
            layer = w.viewer.add_points(zyx[None], ndim=3, name=name, scale=tuple(tomo.scale),
                                        translate=tuple(tomo.translate), size=1.6 * w._marker_size(),
                                        face_color="transparent", border_color="white", border_width=0.08,
                                        projection_mode="rescale_spherical",
                                        metadata={"napari_cryoalign": {"role": "review", "tomogram": tomo.name}})
            for key, status in (("a", ACCEPTED), ("x", REJECTED), ("s", None)):
                layer.bind_key(key, lambda _l, s=status: self.verdict(s), overwrite=True)
        world = zyx * np.asarray(tomo.scale) + np.asarray(tomo.translate)
        axis = w.viewer.dims.ndim - 3
        w.viewer.dims.set_point(axis, float(world[0]))
        scene = getattr(w.viewer, "scene", None)  # napari >= 0.9; older: viewer.camera
        (scene.camera if scene is not None else w.viewer.camera).center = tuple(float(v) for v in world)
        w.viewer.layers.selection.active = layer
        w.status.setText(f"review {self.queue.position + 1} of {len(self.queue)}: score {w.picks.scores[i]:.2f} - "
                         "A accept (label), X remove, S skip")
