"""Dock widget "Pick particles": label a few particles, train a picker live, threshold, export STAR.

Two methods in one widget:

* **Picker (train from labels)** - the user clicks particles into a points layer
  ``"<tomogram> labels"`` (undo/redo with the buttons or Ctrl+Z / Ctrl+Shift+Z; autosaved to
  ``<tomogram stem>_labels.star`` next to the tomogram file and restored when the tomogram is
  chosen again), presses Train, and watches the loss curve, the heatmap (an image layer) and the
  picks (a points layer with ``score`` in ``features``) refresh every few seconds. Pressing Train
  again continues from the current model.
* **Template matching** - FFT cross-correlation of a reference volume over a rotation grid, the
  template filtered by the missing wedge; picks carry Euler angles.

Both keep *all* candidate peaks above a low score floor: the score threshold only filters
them here (no inference), and a new minimum distance reruns only the peak finder on the kept
score map. Picks can be accepted (kept at any threshold), removed (also with the layer's
Delete key) or promoted to labels. Export writes RELION 4 and/or 5 STAR files.

The widget computes nothing itself: the backend jobs (``backend.picking``) do, in a worker
thread, through :class:`~._base.JobWidget`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QTimer

from ..backend.jobs import Job, Partial, Progress
from ..backend.picking.train import DEFAULT_CLASS_PRIOR, DEFAULT_ITERATIONS
from ..errors import CryoAlignError, InputError
from ._base import JobWidget, add_or_update_layer, show_particles_in_thick_slices
from ._pick_state import (
    ACCEPTED,
    AUTO,
    REJECTED,
    LabelHistory,
    PickSet,
    labels_path_for,
    negatives_path_for,
)
from ._plots import LossPlot, ScoreHistogram

__all__ = ["PICKER", "STAR_FORMS", "TEMPLATE", "PickWidget"]

log = logging.getLogger(__name__)

PICKER = "Picker (train from labels)"
TEMPLATE = "Template matching"
STAR_FORMS = {"RELION 4 and 5": "both", "RELION 4": "relion4", "RELION 5": "relion5"}
#: candidates below these scores are not kept (heatmap probability / normalised cross-correlation)
PICKER_SCORE_FLOOR = 0.02
TEMPLATE_SCORE_FLOOR = 0.0
#: at most this many candidates are kept (highest first)
MAX_CANDIDATES = 50_000
AUTOSAVE_DELAY_MS = 500
_STATUS_NAMES = {AUTO: "auto", ACCEPTED: "accepted", REJECTED: "rejected"}


@dataclass(frozen=True)
class PickOutcome:
    """What a run of the widget's job produced (the widget's own small result record).

    Attributes
    ----------
    method : "picker" or "template"
    picks : candidate :class:`~napari_cryoalign.backend.picking.Picks` (down to the score floor)
    score_map : :class:`~napari_cryoalign.backend.picking.Heatmap` (picker) or the ``(z, y, x)``
        NCC volume (template)
    best_rotation : ``(z, y, x)`` rotation index per voxel (template) or None
    euler_grid : ``(n_rotations, 3)`` RELION angles of the rotation grid (template) or None
    picker : the trained / used :class:`~napari_cryoalign.backend.picking.Picker` or None
    suggested_threshold : template: the NCC that noise exceeds once in the search (the
        slider starts there), else None
    """

    method: str
    picks: Any
    score_map: Any
    best_rotation: np.ndarray | None = None
    euler_grid: np.ndarray | None = None
    picker: Any = None
    suggested_threshold: float | None = None


# ------------------------------------------------------------------------------ jobs
# Compositions of backend jobs (no computation of their own).
def _train_then_pick_job(tomogram, labels_xyz, *, picker, floor, min_distance_angstrom, voxel_size, path,
                         **train_kwargs) -> Job:
    from ..backend.picking import pick_job, train_picker_job

    res = yield from train_picker_job(tomogram, labels_xyz, picker=picker, voxel_size=voxel_size, path=path,
                                      **train_kwargs)
    yield Progress(0, None, "picking with the trained model")
    picks, heat = yield from _drop_picks(pick_job(res.picker, tomogram, threshold=floor, voxel_size=voxel_size,
                                      min_distance_angstrom=min_distance_angstrom, max_picks=MAX_CANDIDATES,
                                      path=path))
    yield Partial("heatmap", heat)
    return PickOutcome("picker", picks, heat, picker=res.picker)


def _drop_picks(job) -> Job:
    """Forward a job's events except ``Partial("picks")`` (the final result carries them with the heatmap)."""
    try:
        while True:
            ev = next(job)
            if not (isinstance(ev, Partial) and ev.name == "picks"):
                yield ev
    except StopIteration as stop:
        return stop.value


def _pick_only_job(picker, tomogram, *, floor, min_distance_angstrom, voxel_size, path, device) -> Job:
    from ..backend.picking import pick_job

    picks, heat = yield from _drop_picks(pick_job(picker, tomogram, threshold=floor, voxel_size=voxel_size,
                                      min_distance_angstrom=min_distance_angstrom, max_picks=MAX_CANDIDATES,
                                      path=path, device=device))
    yield Partial("heatmap", heat)
    return PickOutcome("picker", picks, heat, picker=picker)


def _template_job(tomogram, template, **kwargs) -> Job:
    from ..backend.picking.template import template_match_job

    res = yield from template_match_job(tomogram, template, threshold=TEMPLATE_SCORE_FLOOR,
                                        max_picks=MAX_CANDIDATES, **kwargs)
    return PickOutcome("template", res.picks, res.scores, best_rotation=res.best_rotation,
                       euler_grid=res.euler_deg, suggested_threshold=res.suggested_threshold)


# ------------------------------------------------------------------------------ helpers
def _layer_voxel_size(layer) -> float:
    meta = (layer.metadata or {}).get("napari_cryoalign", {})
    v = meta.get("voxel_size_angstrom")
    if isinstance(v, (list, tuple)):
        v = v[0]
    if v is None:
        v = float(layer.scale[-1])
    v = float(v)
    return v if v > 0 and np.isfinite(v) else 1.0


def _layer_path(layer) -> Path | None:
    p = (layer.metadata or {}).get("napari_cryoalign", {}).get("path")
    return Path(p) if p else None


def _layer_array(layer):
    """The full-resolution data of an image layer (numpy array or memmap, not copied)."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return data


def _tomo_name(layer) -> str:
    meta = (layer.metadata or {}).get("napari_cryoalign", {})
    if meta.get("tomo_name"):
        return str(meta["tomo_name"])
    p = _layer_path(layer)
    if p is not None:
        return labels_path_for(p).name[: -len("_labels.star")]
    return str(layer.name)


class PickWidget(JobWidget):
    """Pick particles with a picker trained from a few labels, or by template matching."""

    job_name = "Pick particles"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.runner.on_error = self._on_job_error
        self.picker = None  #: the current picker model (trained in place, continued by Train)
        self.picks = PickSet.empty()
        self.score_map = None  # Heatmap (picker) or NCC volume (template) of the current candidates
        self.template_cutoff = None  # NCC with one expected false alarm in the last template search
        self._best_rotation = None
        self._euler_grid = None
        self._method_of_candidates = None
        self._tomogram_layer = None
        self._labels_layer = None
        self._history = LabelHistory()
        self._updating_labels = False
        self._updating_picks = False
        self._connected = set()
        self._autosave_blocked: set[str] = set()
        self.last_autosave: Path | None = None
        self._job = None  # the generator of the last job started (see _stop_previous_job)
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(self.flush_autosave)
        self._build()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._on_layers_changed)
        self._on_layers_changed()
        self._show_method()

    # ------------------------------------------------------------------ building the form
    def _build(self) -> None:
        self.method = ComboBox(label="method", choices=[PICKER, TEMPLATE], value=PICKER)
        self.tomogram = ComboBox(label="tomogram", choices=self._volume_choices, nullable=True)
        self.diameter = FloatSpinBox(label="diameter (Å)", value=200.0, min=1.0, max=100_000.0, step=10.0)
        self.diameter_info = Label(value="")
        self.min_distance = FloatSpinBox(label="min distance (Å, 0 = radius)", value=0.0, min=0.0, max=100_000.0, step=10.0,
                                         tooltip="minimum distance between picks; 0: the particle radius")
        self.device = ComboBox(label="device", choices=["cpu", "auto", "cuda"], value="cpu")
        # picker
        self.class_prior = FloatSpinBox(label="class prior", value=DEFAULT_CLASS_PRIOR, min=0.001, max=0.9, step=0.01)
        self.iterations = SpinBox(label="iterations", value=DEFAULT_ITERATIONS, min=1, max=1_000_000, step=50)
        self.preview_s = FloatSpinBox(label="preview every (s)", value=5.0, min=0.0, max=3600.0, step=1.0)
        self.continue_training = CheckBox(text="continue from the current model", value=True)
        self.learn_negatives = CheckBox(text="learn from removed picks (known negatives)", value=True)
        self.labels_info = Label(value="labels: 0")
        self.undo_button = PushButton(text="Undo label")
        self.redo_button = PushButton(text="Redo label")
        labels_row = Container(widgets=[self.undo_button, self.redo_button], layout="horizontal", labels=False)
        # template matching
        self.reference = ComboBox(label="reference layer", choices=self._volume_choices, nullable=True)
        self.reference_file = FileEdit(label="or reference file", mode="r", filter="*.mrc *.map *.rec")
        self.angular_step = FloatSpinBox(label="angular step (°)", value=30.0, min=1.0, max=180.0, step=5.0)
        self.wedge = CheckBox(text="missing-wedge-aware scoring", value=True)
        self.tilt_min = FloatSpinBox(label="tilt min (°)", value=-60.0, min=-90.0, max=0.0, step=5.0)
        self.tilt_max = FloatSpinBox(label="tilt max (°)", value=60.0, min=0.0, max=90.0, step=5.0)
        self._picker_widgets = [self.class_prior, self.iterations, self.preview_s, self.continue_training,
                                self.learn_negatives, self.labels_info, labels_row]
        self._template_widgets = [self.reference, self.reference_file, self.angular_step, self.wedge,
                                  self.tilt_min, self.tilt_max]
        self.params = Container(widgets=[self.method, self.tomogram, self.diameter, self.diameter_info,
                                         self.min_distance, self.device] + self._picker_widgets
                                + self._template_widgets)
        self.form_layout.addWidget(self.params.native)

        # below the Train row: plots, picks, files
        self.loss_plot = LossPlot()
        self.threshold = FloatSlider(label="score threshold", value=0.5, min=0.0, max=1.0, step=0.01)
        self.histogram = ScoreHistogram(title="candidate scores")
        self.n_picks = Label(value="no picks yet")
        self.accept_button = PushButton(text="Accept selected")
        self.remove_button = PushButton(text="Remove selected")
        self.promote_button = PushButton(text="Selected → labels")
        sel_row = Container(widgets=[self.accept_button, self.remove_button, self.promote_button],
                            layout="horizontal", labels=False)
        self.picks_box = Container(widgets=[self.threshold, self.n_picks, sel_row])
        self.model_file = FileEdit(label="model file", mode="w", filter="*.pt")
        self.save_model_button = PushButton(text="Save model")
        self.load_model_button = PushButton(text="Load model")
        self.pick_button = PushButton(text="Pick with model")
        model_row = Container(widgets=[self.save_model_button, self.load_model_button, self.pick_button],
                              layout="horizontal", labels=False)
        self.star_file = FileEdit(label="picks STAR", mode="w", filter="*.star")
        self.star_form = ComboBox(label="STAR form", choices=list(STAR_FORMS), value="RELION 4 and 5")
        self.overwrite = CheckBox(text="overwrite existing files", value=False)
        self.export_button = PushButton(text="Export picks")
        self.labels_star = FileEdit(label="labels STAR", mode="r", filter="*.star")
        self.import_button = PushButton(text="Import labels")
        self.files_box = Container(widgets=[self.model_file, model_row, self.star_file, self.star_form,
                                            self.overwrite, self.export_button, self.labels_star, self.import_button])
        outer = self.layout()
        at = outer.count() - 1  # before the final stretch
        for w in (self.loss_plot, self.histogram, self.picks_box.native, self.files_box.native):
            outer.insertWidget(at, w)
            at += 1

        self.method.changed.connect(self._show_method)
        self.tomogram.changed.connect(self._on_tomogram_changed)
        self.diameter.changed.connect(self._update_diameter_info)
        self.threshold.changed.connect(self._on_threshold)
        self.min_distance.changed.connect(self._on_min_distance)
        self.undo_button.changed.connect(self.undo_labels)
        self.redo_button.changed.connect(self.redo_labels)
        self.accept_button.changed.connect(lambda *_: self.set_selected_status(ACCEPTED))
        self.remove_button.changed.connect(lambda *_: self.set_selected_status(REJECTED))
        self.promote_button.changed.connect(self.promote_selected)
        self.save_model_button.changed.connect(self.save_model)
        self.load_model_button.changed.connect(self.load_model)
        self.pick_button.changed.connect(self.pick_with_model)
        self.export_button.changed.connect(self.export_picks)
        self.import_button.changed.connect(self.import_labels)

    def _volume_choices(self, *_):
        from napari.layers import Image

        return [lay.name for lay in self.viewer.layers
                if isinstance(lay, Image) and lay.ndim == 3 and not lay.rgb
                and not lay.name.endswith((" heatmap", " template scores"))]

    def _show_method(self, *_):
        template = self.method.value == TEMPLATE
        for w in self._picker_widgets:
            w.visible = not template
        for w in self._template_widgets:
            w.visible = template
        self.loss_plot.setVisible(not template)
        self.run_button.setText(self._run_text())

    def _run_text(self) -> str:
        return "Match" if self.method.value == TEMPLATE else "Train"

    # ------------------------------------------------------------------ layers
    def _on_layers_changed(self, *_):
        if self._labels_layer is not None and self._labels_layer not in self.viewer.layers:
            # the user deleted the labels layer: make it again (from the autosave file, if any)
            self.flush_autosave()
            self._labels_layer = None
            self._tomogram_layer = None
            QTimer.singleShot(0, self._on_tomogram_changed)
            return
        before = self.tomogram.value
        self.tomogram.reset_choices()
        self.reference.reset_choices()
        names = [c for c in self.tomogram.choices if c is not None]
        if self.tomogram.value is None and names:
            self.tomogram.value = names[0]
        if self.tomogram.value != before or self._tomogram_layer is None:
            self._on_tomogram_changed()

    @property
    def tomogram_layer(self):
        name = self.tomogram.value
        return self.viewer.layers[name] if name is not None and name in self.viewer.layers else None

    @property
    def labels_layer(self):
        return self._labels_layer

    @property
    def voxel_size(self) -> float:
        layer = self.tomogram_layer
        return 1.0 if layer is None else _layer_voxel_size(layer)

    def _on_tomogram_changed(self, *_):
        layer = self.tomogram_layer
        if layer is self._tomogram_layer:
            return
        self.flush_autosave()
        self._tomogram_layer = layer
        self.picks = PickSet.empty()
        self.score_map = None
        self._method_of_candidates = None
        self.histogram.set_scores([])
        self.n_picks.value = "no picks yet"
        self._labels_layer = None
        if layer is None:
            return
        self._labels_layer = self._ensure_labels_layer(layer)
        self._history.reset(self._labels_layer.data)
        negs = self._restore_points(layer, negatives_path_for, "removed picks")
        if len(negs):
            self.picks = PickSet(negs, np.zeros(len(negs)), None, np.full(len(negs), REJECTED, dtype=np.int8))
        self._update_label_info()
        self._update_diameter_info()
        if self.star_file.value is None or str(self.star_file.value) in (".", ""):
            p = _layer_path(layer)
            if p is not None:
                self.star_file.value = p.with_name(f"{_tomo_name(layer)}_picks.star")

    def _ensure_labels_layer(self, tomo):
        name = f"{tomo.name} labels"
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
        else:
            restored = self._restore_labels(tomo)
            layer = self.viewer.add_points(
                restored[:, ::-1] if len(restored) else np.zeros((0, 3)), ndim=3, name=name,
                scale=tuple(tomo.scale), translate=tuple(tomo.translate), size=self._marker_size(),
                face_color="transparent", border_color="#00ff7f", border_width=0.12,
                projection_mode="rescale_spherical",
                metadata={"napari_cryoalign": {"role": "labels", "tomogram": tomo.name}},
            )
            self.viewer.layers.selection.active = layer
            layer.mode = "add"
        if id(layer) not in self._connected:
            layer.events.data.connect(self._on_labels_data)
            layer.bind_key("Control-z", lambda _l: self.undo_labels(), overwrite=True)
            layer.bind_key("Control-Shift-z", lambda _l: self.redo_labels(), overwrite=True)
            layer.bind_key("Control-y", lambda _l: self.redo_labels(), overwrite=True)
            self._connected.add(id(layer))
        return layer

    def _marker_size(self) -> float:
        return max(3.0, float(self.diameter.value) / self.voxel_size)

    def _update_diameter_info(self, *_):
        layer = self.tomogram_layer
        if layer is None:
            self.diameter_info.value = ""
            return
        d = float(self.diameter.value) / self.voxel_size
        self.diameter_info.value = f"= {d:.1f} voxels of {self.voxel_size:g} Å"
        for lay in (self._labels_layer, self._picks_layer()):
            if lay is not None and len(lay.data):
                lay.size = np.full(len(lay.data), max(3.0, d))
            if lay is not None:
                lay.current_size = max(3.0, d)

    # ------------------------------------------------------------------ labels: history, autosave
    def labels_xyz(self) -> np.ndarray:
        """Current labels as ``(n, 3)`` 0-based voxel coordinates (x, y, z)."""
        if self._labels_layer is None:
            return np.zeros((0, 3))
        return np.asarray(self._labels_layer.data, dtype=np.float64).reshape(-1, 3)[:, ::-1].copy()

    def _on_labels_data(self, event):
        if self._updating_labels or event.source is not self._labels_layer:
            return
        action = str(getattr(event, "action", "changed"))
        if action not in ("added", "removed", "changed"):
            return
        if self._history.record(self._labels_layer.data):
            self._labels_changed()

    def _labels_changed(self):
        self._update_label_info()
        self._autosave_timer.start()

    def _set_labels(self, data_zyx) -> None:
        with _flag(self, "_updating_labels"):
            self._labels_layer.data = np.asarray(data_zyx, dtype=np.float64).reshape(-1, 3)
            if len(self._labels_layer.data):
                self._labels_layer.size = np.full(len(self._labels_layer.data), self._marker_size())

    def add_labels(self, coordinates_xyz) -> None:
        """Append labels (0-based voxel x, y, z) to the labels layer (undoable, autosaved)."""
        if self._labels_layer is None:
            return
        new = np.asarray(coordinates_xyz, dtype=np.float64).reshape(-1, 3)[:, ::-1]
        self._set_labels(np.concatenate([np.asarray(self._labels_layer.data).reshape(-1, 3), new]))
        self._history.record(self._labels_layer.data)
        self._labels_changed()

    def undo_labels(self, *_) -> bool:
        snap = self._history.undo()
        if snap is None or self._labels_layer is None:
            return False
        self._set_labels(snap)
        self._labels_changed()
        return True

    def redo_labels(self, *_) -> bool:
        snap = self._history.redo()
        if snap is None or self._labels_layer is None:
            return False
        self._set_labels(snap)
        self._labels_changed()
        return True

    def _update_label_info(self):
        n = 0 if self._labels_layer is None else len(self._labels_layer.data)
        where = self.autosave_path
        tail = f" (autosaved to {where.name})" if where is not None else " (not saved: the tomogram has no file)"
        n_neg = int(np.sum(self.picks.status == REJECTED))
        self.labels_info.value = f"labels: {n}" + (f", removed picks: {n_neg}" if n_neg else "") + tail
        self.undo_button.enabled = self._history.can_undo
        self.redo_button.enabled = self._history.can_redo

    @property
    def autosave_path(self) -> Path | None:
        """Where the labels are autosaved (``<tomogram>_labels.star``), or None."""
        return self._autosave_file(labels_path_for)

    def _autosave_file(self, path_for) -> Path | None:
        layer = self._tomogram_layer
        p = None if layer is None else _layer_path(layer)
        if p is None:
            return None
        out = path_for(p)
        return None if str(out) in self._autosave_blocked else out

    def _restore_labels(self, tomo) -> np.ndarray:
        return self._restore_points(tomo, labels_path_for, "labels")

    def _restore_points(self, tomo, path_for, what: str) -> np.ndarray:
        """Coordinates (x, y, z) autosaved next to the tomogram's file (``path_for``), or none."""
        p = _layer_path(tomo)
        if p is None:
            return np.zeros((0, 3))
        path = path_for(p)
        if not path.is_file():
            return np.zeros((0, 3))
        from napari.utils.notifications import show_info, show_warning

        from ..io import coordinates_xyz, read_particles

        try:
            table = read_particles(path, tomogram_shape=tuple(_layer_array(tomo).shape),
                                   voxel_size=_layer_voxel_size(tomo), require=())
            xyz = coordinates_xyz(table) if table.coordinates_from else np.zeros((0, 3))
        except (CryoAlignError, ValueError, OSError) as exc:
            self._autosave_blocked.add(str(path))
            show_warning(f"Pick particles: could not restore {what} ({exc}); that file is kept and "
                         f"{what} of this session are not autosaved over it")
            return np.zeros((0, 3))
        show_info(f"Pick particles: restored {len(xyz)} {what} from {path.name}")
        return np.asarray(xyz, dtype=np.float64).reshape(-1, 3)

    def flush_autosave(self, *_) -> Path | None:
        """Write the labels (and the removed picks) now (normally done :data:`AUTOSAVE_DELAY_MS`
        after the last change). Returns the labels file written, or None."""
        self._autosave_timer.stop()
        layer = self._tomogram_layer
        if layer is None:
            return None
        self._write_autosave(self.negatives_path, self.picks.rejected_xyz(), layer, "removed picks")
        if self._labels_layer is None:
            return None
        path = self._write_autosave(self.autosave_path, self.labels_xyz(), layer, "labels")
        if path is not None:
            self.last_autosave = path
        return path

    @property
    def negatives_path(self) -> Path | None:
        """Where the removed picks are autosaved (``<tomogram>_negatives.star``), or None."""
        return self._autosave_file(negatives_path_for)

    def _write_autosave(self, path: Path | None, xyz: np.ndarray, layer, what: str) -> Path | None:
        """Write coordinates ``xyz`` next to the tomogram (nothing when there are none and no file yet)."""
        if path is None or (not len(xyz) and not path.exists()):
            return None
        from napari.utils.notifications import show_error

        from ..io import ensure_not_input, write_particles

        try:
            ensure_not_input(path, _layer_path(layer))
            write_particles(path, coordinates_xyz=xyz, tomo_name=_tomo_name(layer),
                            tomogram_shape=tuple(_layer_array(layer).shape), voxel_size=self.voxel_size,
                            overwrite=True)
        except (CryoAlignError, OSError, ValueError) as exc:
            show_error(f"Pick particles: could not autosave {what}: {exc}")
            return None
        return path

    # ------------------------------------------------------------------ jobs
    def _check_common(self):
        layer = self.tomogram_layer
        if layer is None:
            raise InputError("a 3D image layer (the tomogram)", field="tomogram", got="none")
        return layer, _layer_array(layer), _layer_path(layer)

    def run(self) -> int | None:
        """Start Train / Match with the current parameters (stopping a running job first)."""
        self._stop_previous_job()
        return super().run()

    def _stop_previous_job(self, timeout_s: float = 300.0) -> None:
        """Cancel the running job and close its generator before a new one starts.

        Cancelling stops a job at its next yield, and its ``finally`` (the picker back in eval
        mode, the optimizer state saved) runs only when its generator is closed. A new
        training run continues the *same* model, so the old generator must be closed first, or
        its clean-up would land in the middle of the new run. Waits at most one training step
        or one preview (the job's code between two yields).
        """
        job, self._job = self._job, None
        if job is None:
            return
        self.runner.cancel(quiet=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not job.gi_running:
                try:
                    job.close()
                    return
                except ValueError:  # the worker thread resumed it at this very moment
                    pass
            time.sleep(0.005)
        log.warning("%s: the previous job did not stop within %.0f s", self.job_name, timeout_s)

    def make_job(self) -> Job:
        job = self._make_job()
        self._job = job
        return job

    def _make_job(self) -> Job:
        from ..backend.picking.picker import check_labels, diameter_voxels

        layer, data, path = self._check_common()
        vs = self.voxel_size
        shape = tuple(int(s) for s in data.shape)
        diameter_voxels(float(self.diameter.value), vs, shape=shape, path=path)
        self._pending = layer.name
        if self.method.value == TEMPLATE:
            template, tvs, tpath = self._reference()
            tilt = (float(self.tilt_min.value), float(self.tilt_max.value)) if self.wedge.value else None
            return _template_job(data, template, voxel_size=vs, template_voxel_size=tvs,
                                 angular_step_deg=float(self.angular_step.value), tilt_range_deg=tilt,
                                 min_distance_angstrom=self._min_distance_angstrom(), device=self.device.value,
                                 path=path, template_path=tpath)
        self.flush_autosave()
        labels = check_labels(self.labels_xyz(), shape, path=self.autosave_path)
        picker = self.picker if (self.continue_training.value and self.picker is not None) else None
        if picker is None:
            self.loss_plot.clear()
        negatives = self.picks.rejected_xyz() if self.learn_negatives.value else np.zeros((0, 3))
        return _train_then_pick_job(
            data, labels, picker=picker, floor=PICKER_SCORE_FLOOR,
            negatives_xyz=negatives if len(negatives) else None, negatives_path=self.negatives_path,
            min_distance_angstrom=self._min_distance_angstrom(), voxel_size=vs, path=path,
            diameter_angstrom=None if picker is not None else float(self.diameter.value),
            class_prior=float(self.class_prior.value), iterations=int(self.iterations.value),
            preview_every_s=float(self.preview_s.value), preview_threshold=PICKER_SCORE_FLOOR,
            device=self.device.value)

    def pick_with_model(self, *_) -> int | None:
        """Apply the current model to the chosen tomogram (tiled inference) without training."""
        from napari.utils.notifications import show_error

        try:
            layer, data, path = self._check_common()
            if self.picker is None:
                raise InputError("a trained or loaded model (press Train or Load model first)", field="model",
                                 got="none")
        except CryoAlignError as exc:
            show_error(f"{self.job_name}: {exc}")
            self.status.setText(f"error: {exc}")
            return None
        self._stop_previous_job()
        self._pending = layer.name
        self._job = _pick_only_job(self.picker, data, floor=PICKER_SCORE_FLOOR,
                                   min_distance_angstrom=self._min_distance_angstrom(),
                                   voxel_size=self.voxel_size, path=path, device=self.device.value)
        return self.runner.start(self._job)

    def _reference(self):
        from ..io import read_mrc

        fpath = self.reference_file.value
        if fpath is not None and str(fpath) not in ("", ".") and Path(fpath).is_file():
            vol = read_mrc(fpath)
            return np.asarray(vol.data, dtype=np.float32), float(vol.voxel_size[0]), Path(fpath)
        name = self.reference.value
        if name is None or name not in self.viewer.layers or name == self.tomogram.value:
            raise InputError("a reference volume (an image layer other than the tomogram, or an MRC file)",
                             field="reference", got=name or "none")
        ref = self.viewer.layers[name]
        return np.asarray(_layer_array(ref), dtype=np.float32), _layer_voxel_size(ref), _layer_path(ref)

    def _min_distance_angstrom(self) -> float | None:
        md = float(self.min_distance.value)
        return md if md > 0 else None

    def _on_job_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        if isinstance(exc, CryoAlignError):
            msg = str(exc)
        else:
            log.error("%s failed", self.job_name, exc_info=exc)
            msg = f"{type(exc).__name__}: {exc}"
        show_error(f"{self.job_name}: {msg}")
        self.status.setText(f"error: {msg}")

    def _show_state(self, state) -> None:
        msg = self.status.text()  # keep a failure message visible
        super()._show_state(state)
        if not state.running:
            self.run_button.setText(self._run_text())
            if state.message == "failed" and msg.startswith("error:"):
                self.status.setText(msg)

    # ------------------------------------------------------------------ results
    def on_partial(self, partial: Partial) -> None:
        name, value = partial.name, partial.value
        if name == "model":
            self.picker = value
        elif name == "loss":
            self.loss_plot.add(value["iteration"], value["loss"])
        elif name == "heatmap":
            self.score_map = value
            self._best_rotation = self._euler_grid = None
            self._show_score_map("picker")
        elif name == "picks" and self.score_map is not None and self.method.value == PICKER:
            default_md = None if self.picker is None else 0.5 * self.picker.diameter_voxels
            wanted = self._min_distance_voxels()
            if default_md is not None and abs(default_md - wanted) < 1e-6:
                self._set_candidates(value, "picker")
            else:
                self.recompute_candidates(method="picker")

    def on_result(self, result: PickOutcome) -> None:
        self.loss_plot.flush()
        if result.picker is not None:
            self.picker = result.picker
        self.score_map = result.score_map
        self._best_rotation, self._euler_grid = result.best_rotation, result.euler_grid
        self._show_score_map(result.method)
        calibrated = ""
        if result.method == "picker" and result.picker is not None:
            # the model's threshold, calibrated on its labels at the end of training
            self.threshold.range = (0.0, 1.0)
            self.threshold.value = round(result.picker.default_threshold, 2)
            calibrated = f" (threshold {self.threshold.value:.2f}, calibrated on the labels)"
        self._set_candidates(result.picks, result.method)
        thr = self.template_cutoff = result.suggested_threshold
        if result.method == "template" and thr is not None and np.isfinite(thr):
            # one expected false alarm in the whole search (pytom-match-pick's default cut-off)
            self.threshold.value = float(np.clip(np.ceil(thr * 100) / 100, self.threshold.min, self.threshold.max))
            calibrated = f" (threshold {self.threshold.value:.2f}: one expected false alarm from noise)"
        what = "trained and picked" if result.method == "picker" else "template matched"
        self.status.setText(f"{what}: {len(self.picks)} candidates, {len(self.shown_indices())} shown{calibrated}")

    def _score_layer_name(self, method: str) -> str:
        tomo = self._pending if getattr(self, "_pending", None) else self.tomogram.value
        return f"{tomo} heatmap" if method == "picker" else f"{tomo} template scores"

    def _show_score_map(self, method: str) -> None:
        layer = self.tomogram_layer
        if layer is None or self.score_map is None:
            return
        vs = np.asarray(layer.scale, dtype=np.float64)
        tr = np.asarray(layer.translate, dtype=np.float64)
        if method == "picker":
            st = np.asarray(self.score_map.stride, dtype=np.float64)
            data = self.score_map.data
            scale, translate, limits, cmap = vs * st, tr + (st - 1) / 2 * vs, (0.0, 1.0), "inferno"
        else:
            data = self.score_map
            hi = float(np.max(data)) if data.size else 1.0
            scale, translate, limits, cmap = vs, tr, (0.0, max(hi, 1e-3)), "viridis"
        add_or_update_layer(self.viewer, (data, {
            "name": self._score_layer_name(method), "scale": tuple(scale), "translate": tuple(translate),
            "colormap": cmap, "contrast_limits": limits, "blending": "additive", "opacity": 0.5,
            "metadata": {"napari_cryoalign": {"role": "score map", "tomogram": layer.name}},
        }, "image"))

    def _min_distance_voxels(self) -> float:
        md = self._min_distance_angstrom()
        if md is None:
            d = self.picker.diameter_angstrom if (self.picker is not None and self.method.value == PICKER) \
                else float(self.diameter.value)
            md = 0.5 * d
        return md / self.voxel_size

    def recompute_candidates(self, *, method: str | None = None) -> None:
        """Rerun only the peak finder on the kept score map (after a new minimum distance)."""
        from ..backend.picking import Picks, find_peaks

        if self.score_map is None:
            return
        method = method or self._method_of_candidates or "picker"
        md = self._min_distance_voxels()
        if method == "picker":
            xyz, sc = find_peaks(self.score_map, min_distance=md, threshold=PICKER_SCORE_FLOOR,
                                 max_picks=MAX_CANDIDATES)
            picks = Picks(xyz, sc)
        else:
            xyz, sc = find_peaks(self.score_map, min_distance=md, threshold=TEMPLATE_SCORE_FLOOR,
                                 max_picks=MAX_CANDIDATES)
            eul = np.zeros((0, 3))
            if len(sc) and self._best_rotation is not None:
                ii = np.round(xyz).astype(np.int64)
                eul = self._euler_grid[self._best_rotation[ii[:, 2], ii[:, 1], ii[:, 0]]]
            picks = Picks(xyz, sc, eul)
        self._set_candidates(picks, method)

    def _set_candidates(self, picks, method: str) -> None:
        radius = max(1.0, 0.25 * float(self.diameter.value) / self.voxel_size)
        if method == self._method_of_candidates:
            self.picks = self.picks.replaced_by(picks, match_radius=radius)
        else:  # other scores: verdicts do not carry over, except removed picks (known negatives)
            rej = self.picks.status == REJECTED
            keep = PickSet(self.picks.coordinates_xyz[rej], self.picks.scores[rej], None, self.picks.status[rej])
            self.picks = keep.replaced_by(picks, match_radius=radius)
        self._method_of_candidates = method
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
        self.refresh_picks()

    def _on_threshold(self, value):
        self.histogram.set_threshold(float(value))
        self.refresh_picks()

    def _on_min_distance(self, *_):
        if self.score_map is not None:
            self.recompute_candidates()

    # ------------------------------------------------------------------ picks layer
    def _picks_layer_name(self) -> str | None:
        name = self.tomogram.value
        return None if name is None else f"{name} picks"

    def _picks_layer(self):
        name = self._picks_layer_name()
        return self.viewer.layers[name] if name is not None and name in self.viewer.layers else None

    def shown_indices(self) -> np.ndarray:
        """Indices into :attr:`picks` of the picks shown at the current threshold (by score)."""
        return self.picks.shown(float(self.threshold.value))

    def refresh_picks(self) -> None:
        """Show the candidates that pass the threshold (or were accepted) in ``"<tomogram> picks"``."""
        tomo = self.tomogram_layer
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
        colors = self._score_colors(self.picks.scores[idx])
        face = np.zeros((len(idx), 4))
        face[self.picks.status[idx] == ACCEPTED] = (0.2, 1.0, 0.4, 0.35)
        size = self._marker_size()
        layer = self._picks_layer()
        with _flag(self, "_updating_picks"):
            if layer is None:
                layer = self.viewer.add_points(
                    data, ndim=3, name=self._picks_layer_name(), features=feats, scale=tuple(tomo.scale),
                    translate=tuple(tomo.translate), size=size, border_width=0.1,
                    projection_mode="rescale_spherical",
                    metadata={"napari_cryoalign": {"role": "picks", "tomogram": tomo.name}})
                layer.events.data.connect(self._on_picks_data)
            else:
                layer.selected_data = set()
                layer.data = data
                layer.features = feats
            # a point the user adds to this layer is a pick placed by hand (see _on_picks_data)
            defaults = {"score": 1.0, "candidate": -1, "status": "accepted"}
            if self.picks.euler_deg is not None:
                defaults.update(rlnAngleRot=0.0, rlnAngleTilt=0.0, rlnAnglePsi=0.0)
            layer.feature_defaults = defaults
            if len(data):
                layer.border_color = colors
                layer.face_color = face
                layer.size = np.full(len(data), size)
                # draw every pick that the current slice cuts (as its disc), not only those centred on it
                show_particles_in_thick_slices(self.viewer, layer)
        n_acc = int(np.sum(self.picks.status[idx] == ACCEPTED))
        self.n_picks.value = (f"{len(idx)} picks shown (score ≥ {float(self.threshold.value):.2f}"
                              f"{f', {n_acc} accepted' if n_acc else ''}) of {len(self.picks)} candidates")

    def _score_colors(self, scores) -> np.ndarray:
        from matplotlib import colormaps

        lo, hi = float(self.threshold.min), float(self.threshold.max)
        t = np.clip((np.asarray(scores) - lo) / max(hi - lo, 1e-9), 0, 1)
        return colormaps["viridis"](t)

    def _on_picks_data(self, event):
        if self._updating_picks:
            return
        layer = event.source
        action = str(getattr(event, "action", ""))
        if action == "removed":
            # points the user deleted from the layer (Delete key): rejected candidates
            remaining = {int(c) for c in layer.features["candidate"] if int(c) >= 0}
            shown = {int(i) for i in self._last_shown}
            self.picks.set_status(sorted(shown - remaining), REJECTED)
            QTimer.singleShot(0, self.refresh_picks)
            self._labels_changed()  # info line and autosave (removed picks are known negatives)
        elif action == "added":
            new = np.asarray(layer.features["candidate"]) < 0
            if new.any():
                self.picks.add(np.asarray(layer.data)[new][:, ::-1], 1.0, status=ACCEPTED)
                QTimer.singleShot(0, self.refresh_picks)

    @property
    def _last_shown(self) -> np.ndarray:
        layer = self._picks_layer()
        return np.zeros(0, dtype=int) if layer is None else np.asarray(self.shown_indices())

    def _selected_candidates(self) -> np.ndarray:
        layer = self._picks_layer()
        if layer is None or not layer.selected_data:
            return np.zeros(0, dtype=np.int64)
        rows = sorted(layer.selected_data)
        cand = np.asarray(layer.features["candidate"], dtype=np.int64)[rows]
        return cand[cand >= 0]

    def set_selected_status(self, status: int) -> int:
        """Accept (``ACCEPTED``) or remove (``REJECTED``) the picks selected in the picks layer."""
        cand = self._selected_candidates()
        self.picks.set_status(cand, status)
        self.refresh_picks()
        self._labels_changed()  # info line and autosave (removed picks are known negatives)
        return int(cand.size)

    def promote_selected(self, *_) -> int:
        """Add the selected picks to the labels (for the next Train) and accept them."""
        cand = self._selected_candidates()
        if cand.size:
            self.add_labels(self.picks.coordinates_xyz[cand])
            self.picks.set_status(cand, ACCEPTED)
            self.refresh_picks()
        return int(cand.size)

    # ------------------------------------------------------------------ files
    def _notify(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        msg = str(exc).replace("pass overwrite=True to replace it", "tick 'overwrite existing files' to replace it")
        show_error(f"{self.job_name}: {msg}")
        self.status.setText(f"error: {msg}")

    def _file(self, edit) -> Path | None:
        v = edit.value
        return None if v is None or str(v) in ("", ".") else Path(v)

    def export_picks(self, *_) -> Path | None:
        """Write the shown picks (sorted by score) as a RELION STAR file; returns its path."""
        from napari.utils.notifications import show_info

        from ..io import ensure_not_input, write_particles

        try:
            layer, data, tpath = self._check_common()
            out = self._file(self.star_file)
            if out is None:
                raise InputError("an output STAR file name", field="picks STAR", got="none")
            idx = self.shown_indices()
            ensure_not_input(out, tpath, self.autosave_path)
            path = write_particles(
                out, coordinates_xyz=self.picks.coordinates_xyz[idx], scores=self.picks.scores[idx],
                euler_deg=None if self.picks.euler_deg is None else self.picks.euler_deg[idx],
                tomo_name=_tomo_name(layer), tomogram_shape=tuple(int(s) for s in data.shape),
                voxel_size=self.voxel_size, form=STAR_FORMS[self.star_form.value], sort_by_score=True,
                overwrite=bool(self.overwrite.value))
        except (CryoAlignError, OSError, ValueError) as exc:
            self._notify(exc)
            return None
        show_info(f"{self.job_name}: wrote {len(idx)} picks to {path}")
        self.status.setText(f"exported {len(idx)} picks to {Path(path).name}")
        return Path(path)

    def import_labels(self, *_) -> int:
        """Add the particles of a STAR file to the labels (undoable); returns how many."""
        from ..io import coordinates_xyz, read_particles

        try:
            _layer, data, _ = self._check_common()
            src = self._file(self.labels_star)
            if src is None:
                raise InputError("a STAR file to import", field="labels STAR", got="none")
            table = read_particles(src, tomogram_shape=tuple(int(s) for s in data.shape), voxel_size=self.voxel_size)
            xyz = coordinates_xyz(table)
        except (CryoAlignError, OSError, ValueError) as exc:
            self._notify(exc)
            return 0
        self.add_labels(xyz)
        self.status.setText(f"imported {len(xyz)} labels from {src.name}")
        return len(xyz)

    def save_model(self, *_) -> Path | None:
        from ..backend.picking import save_picker

        try:
            if self.picker is None:
                raise InputError("a model to save (press Train first)", field="model", got="none")
            out = self._file(self.model_file)
            if out is None:
                raise InputError("a model file name", field="model file", got="none")
            path = save_picker(out, self.picker, overwrite=bool(self.overwrite.value))
        except (CryoAlignError, OSError, ValueError) as exc:
            self._notify(exc)
            return None
        self.status.setText(f"saved model to {Path(path).name}")
        return Path(path)

    def load_model(self, *_) -> bool:
        from ..backend.picking import load_picker

        try:
            src = self._file(self.model_file)
            if src is None:
                raise InputError("a model file name", field="model file", got="none")
            picker = load_picker(src, device=self.device.value if self.device.value != "auto" else "cpu")
        except (CryoAlignError, OSError, ValueError) as exc:
            self._notify(exc)
            return False
        self.picker = picker
        self.diameter.value = float(picker.diameter_angstrom)
        self.class_prior.value = float(picker.class_prior)
        done = picker.training.get("iterations_done", 0)
        self.status.setText(f"loaded model ({picker.diameter_angstrom:g} Å, {done} iterations trained)")
        return True


class _flag:
    """``with _flag(obj, "attr"):`` sets ``obj.attr = True`` for the block (re-entrancy guard)."""

    def __init__(self, obj, attr: str):
        self.obj, self.attr = obj, attr

    def __enter__(self):
        self.old = getattr(self.obj, self.attr)
        setattr(self.obj, self.attr, True)

    def __exit__(self, *exc):
        setattr(self.obj, self.attr, self.old)
        return False
