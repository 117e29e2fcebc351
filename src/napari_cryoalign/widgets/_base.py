"""Shared pieces of the dock widgets: a Run/Cancel/progress row and layer updates in place."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..backend.jobs import Job, Partial
from ._runner import JobRunner, RunState

__all__ = ["JobWidget", "add_or_update_layer", "show_particles_in_thick_slices"]


def add_or_update_layer(viewer, layer_data: tuple) -> Any:
    """Add a napari LayerData tuple, or update the layer of the same name and type in place.

    Updating keeps the user's view settings (contrast, colormap, visibility) while a job
    refreshes its result, which is what live updates need.
    """
    data, kwargs, layer_type = (tuple(layer_data) + ({}, "image"))[:3]
    name = kwargs.get("name")
    if name is not None and name in viewer.layers:
        layer = viewer.layers[name]
        if layer._type_string == layer_type and getattr(layer, "ndim", None) == _ndim(data, layer_type):
            if layer_type == "points" and "features" in kwargs:
                # set data and features together so their lengths match
                layer.data = data
                layer.features = kwargs["features"]
            else:
                layer.data = data
            for key in ("scale", "translate", "metadata"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            return layer
        viewer.layers.remove(layer)
    adder = getattr(viewer, f"add_{layer_type}")
    return adder(data, **kwargs)


def show_particles_in_thick_slices(viewer, layer) -> None:
    """Let a 3D points layer of particles show every particle that the current slice cuts.

    Sets the viewer's slice margins along the first (z) axis to the largest particle radius
    (in world units); points layers with ``projection_mode="rescale_spherical"`` then draw
    each particle as the disc its sphere cuts from the slice. Images keep
    ``projection_mode="none"`` and are unaffected.
    """
    import numpy as np

    if layer.ndim != 3 or not len(layer.data):
        return
    radius = 0.5 * float(np.max(layer.size)) * float(layer.scale[0])
    axis = viewer.dims.ndim - 3
    left, right = list(viewer.dims.margin_left), list(viewer.dims.margin_right)
    left[axis] = max(left[axis], radius)
    right[axis] = max(right[axis], radius)
    viewer.dims.margin_left, viewer.dims.margin_right = tuple(left), tuple(right)


def _ndim(data, layer_type: str) -> int:
    import numpy as np

    if layer_type in ("points", "vectors"):
        arr = np.asarray(data)
        return arr.shape[-1]
    return np.ndim(data) if not hasattr(data, "ndim") else data.ndim


class JobWidget(QWidget):
    """Base of the dock widgets that run one backend job at a time.

    Subclasses put their parameter widgets into ``self.form_layout``, implement
    :meth:`make_job` (returns a backend job generator) and :meth:`on_result`, and may
    override :meth:`on_partial`. Pressing Run starts a job (cancelling a running one:
    the newest request wins); Cancel stops it at its next yield.
    """

    job_name = "job"

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.runner = JobRunner(
            self.job_name,
            on_partial=self._handle_partial,
            on_done=self._handle_done,
            on_state=self._show_state,
        )
        outer = QVBoxLayout(self)
        self.form_layout = QVBoxLayout()
        outer.addLayout(self.form_layout)
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.setObjectName("run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        outer.addLayout(row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        outer.addWidget(self.progress_bar)
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        outer.addStretch(1)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(lambda: self.runner.cancel())

    # -- to override -----------------------------------------------------------------------
    def make_job(self) -> Job:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_partial(self, partial: Partial) -> None:
        """Main thread: show a partial result (default: nothing)."""

    def on_result(self, result) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- machinery -------------------------------------------------------------------------
    def run(self) -> int | None:
        """Start the job with the current parameters; returns its token (None if the parameters are bad)."""
        from napari.utils.notifications import show_error

        from ..errors import CryoAlignError

        try:
            job = self.make_job()
        except (CryoAlignError, ValueError) as exc:
            show_error(f"{self.job_name}: {exc}")
            self.status.setText(f"error: {exc}")
            return None
        return self.runner.start(job)

    def _handle_partial(self, partial: Partial) -> None:
        self.on_partial(partial)

    def _handle_done(self, result) -> None:
        self.on_result(result)

    def _show_state(self, state: RunState) -> None:
        self.run_button.setText("Restart" if state.running else "Run")
        self.cancel_button.setEnabled(state.running)
        if state.total:
            self.progress_bar.setRange(0, int(state.total))
            self.progress_bar.setValue(int(state.step))
        elif state.running:
            self.progress_bar.setRange(0, 0)  # busy indicator
        else:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(1 if state.message == "done" else 0)
        self.status.setText(state.message or ("running" if state.running else "ready"))
