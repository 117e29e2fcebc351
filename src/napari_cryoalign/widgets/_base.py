"""Shared pieces of the dock widgets: a Run/Cancel/progress row, the one error reporter, the one
export path, and layer updates in place.

* :func:`report_error` - every failure a widget meets (a job that raised, a button handler
  that raised, bad parameters) becomes a napari notification and the widget's status line;
  unexpected exceptions also go to the log with their traceback. The widget stays usable.
* :func:`handler` - decorator for button handlers and other slots: an exception becomes
  :meth:`JobWidget.report` instead of escaping into Qt.
* :meth:`JobWidget.export_files` - every "Export" / "Save" button writes through it: never over a
  file the viewer has open or the widget reads, never over an existing file unless the
  widget's "overwrite existing files" box is ticked (all outputs are checked before the first
  one is written), writers atomic.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from .._layer_geometry import layer_path
from ..backend.jobs import Job, Partial
from ..errors import CryoAlignError, InputError
from ._errors import OVERWRITE_TEXT, report_error
from ._runner import JobRunner, RunState

__all__ = ["JobWidget", "add_or_update_layer", "handler", "report_error", "show_particles_in_thick_slices"]

T = TypeVar("T")


def handler(method: Callable[..., T]) -> Callable[..., T | None]:
    """Decorate a :class:`JobWidget` method run by a button or signal: an exception is reported, not raised.

    The method returns None when it failed.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shown to the user, the widget keeps running
            self.report(exc)
            return None

    return wrapper


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
    the newest request wins); Cancel stops it at its next yield. Other buttons that start a
    job call :meth:`start` with their own job maker; every failure goes through
    :meth:`report`, every file written through :meth:`export_files` (with ``self.overwrite``, the
    box :meth:`make_overwrite_box` makes).
    """

    job_name = "job"

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.runner = JobRunner(
            self.job_name,
            on_partial=self._handle_partial,
            on_done=self._handle_done,
            on_error=self.report,
            on_state=self._show_state,
        )
        self.overwrite = None  #: the "overwrite existing files" box (see make_overwrite_box)
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

    def input_files(self) -> list[Path]:
        """Files this widget reads besides the viewer's layers (reference maps, angle files...)."""
        return []

    # -- machinery -------------------------------------------------------------------------
    def run(self) -> int | None:
        """Start the job with the current parameters; returns its token (None if the parameters are bad)."""
        return self.start(self.make_job)

    def start(self, make_job: Callable[[], Job]) -> int | None:
        """Make a job with ``make_job()`` and run it (cancelling a running one); None if making it failed."""
        try:
            job = make_job()
        except Exception as exc:  # noqa: BLE001 - bad parameters or a failing set-up: a message, never a crash
            self.report(exc)
            return None
        return self.runner.start(job)

    def report(self, exc: BaseException) -> str:
        """Show a failure (notification, status line, traceback in the log for the unexpected)."""
        return report_error(self.job_name, exc, status=self.status)

    def make_overwrite_box(self):
        """The widget's "overwrite existing files" box (unticked), used by :meth:`export_files`."""
        from magicgui.widgets import CheckBox

        self.overwrite = CheckBox(text=OVERWRITE_TEXT, value=False)
        return self.overwrite

    def protected_files(self) -> list[Path]:
        """Files no export may write over: every file a layer of the viewer was read from, and :meth:`input_files`."""
        paths = [layer_path(layer) for layer in self.viewer.layers]
        return [p for p in paths + list(self.input_files()) if p is not None]

    def export_files(self, outputs: Sequence[str | Path], write: Callable[[bool], T], *, done: str) -> T | None:
        """The one way a widget writes files.

        Parameters
        ----------
        outputs : every file ``write`` will create, or the folder it writes into; checked before anything is
            written (a folder that holds an input is refused when overwriting is allowed)
        write : ``write(overwrite)`` does the writing with the writers of :mod:`napari_cryoalign.io`
            (atomic, refusing an existing file unless ``overwrite``) and returns what to give back
        done : the message shown on success

        Returns what ``write`` returned, or None after reporting why nothing (more) was written.
        """
        from napari.utils.notifications import show_info

        from ..io import check_output_path, ensure_not_input

        overwrite = bool(self.overwrite is not None and self.overwrite.value)
        try:
            protected = self.protected_files()
            for out in outputs:
                if out is None or str(out) in ("", "."):
                    raise CryoAlignError("expected an output file name (got none)")
                ensure_not_input(out, *protected)
                if not Path(out).is_dir():
                    check_output_path(out, overwrite=overwrite)
                elif overwrite:  # files in the folder may be replaced: none of them may be an input
                    inside = [p for p in protected if p.resolve().parent == Path(out).resolve()]
                    if inside:
                        raise InputError("an output folder that holds no input (with the overwrite box ticked, "
                                         "its files may be replaced)", path=out, field="output",
                                         got=f"it holds the input {inside[0].name}")
            result = write(overwrite)
        except Exception as exc:  # noqa: BLE001 - reported; nothing is half-written (writers are atomic)
            self.report(exc)
            return None
        show_info(f"{self.job_name}: {done}")
        self.status.setText(done)
        return result

    def _handle_partial(self, partial: Partial) -> None:
        self.on_partial(partial)

    def _handle_done(self, result) -> None:
        before = self.status.text()
        self.on_result(result)
        after = self.status.text()
        # the summary on_result wrote stays after the run settles (instead of a bare "done")
        self._done_text = after if after != before else None

    def _run_text(self) -> str:
        """The Run button's text while nothing runs."""
        return "Run"

    def _show_state(self, state: RunState) -> None:
        failure = self.status.text()  # a failure message stays visible after the run settles
        self.run_button.setText("Restart" if state.running else self._run_text())
        self.cancel_button.setEnabled(state.running)
        if state.total:
            self.progress_bar.setRange(0, int(state.total))
            self.progress_bar.setValue(int(state.step))
        elif state.running:
            self.progress_bar.setRange(0, 0)  # busy indicator
        else:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(1 if state.message == "done" else 0)
        if state.message == "failed" and failure.startswith("error:"):
            return
        if state.message == "done" and not state.running and getattr(self, "_done_text", None):
            self.status.setText(self._done_text)
            return
        self.status.setText(state.message or ("running" if state.running else "ready"))
