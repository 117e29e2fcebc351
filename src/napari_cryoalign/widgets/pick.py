"""Dock widget "Pick particles": label a few particles, train a picker live, threshold, export STAR.

Two methods in one widget:

* **Picker (train from labels)** - the user clicks particles into a points layer
  ``"<tomogram> labels"`` (undo/redo with the buttons or Ctrl+Z / Ctrl+Shift+Z; autosaved to
  ``<tomogram stem>_labels.star`` next to the tomogram file and restored when the tomogram is
  chosen again), presses Train, and watches the loss curve, the heatmap (an image layer) and the
  picks (a points layer with ``score`` in ``features``) refresh every few seconds. Pressing Train
  again continues from the current model.
* **Template matching** - FFT cross-correlation of a reference volume over a rotation grid, the
  template filtered by the missing wedge; picks carry Euler angles. The reference is an image
  layer, an MRC file, or the **average of the labels** (:data:`LABEL_AVERAGE`): a template
  averaged from the labelled particles in the job (``backend.picking.label_template``), shown as
  the image layer ``"<tomogram> label template"`` when it is made and saved with "Save label
  template".

Both keep *all* candidate peaks above a low score floor: the score threshold only filters
them here (no inference), and a new minimum distance reruns only the peak finder on the kept
score map. Picks can be accepted (kept at any threshold), removed (also with the layer's
Delete key) or promoted to labels. Export writes RELION 4 and/or 5 STAR files.

The widget computes nothing itself: the backend jobs (``backend.picking.session``) do, in a
worker thread, through :class:`~._base.JobWidget` (the peak finder after a new minimum
distance runs in a second worker, so training goes on). Its parts: the labels and their
autosave (:class:`~._pick_labels.LabelsController`, no Qt), the candidates and their layers
(:class:`~._pick_candidates.CandidateView`), the file actions
(:class:`~._pick_files.PickFileActions`).
"""

from __future__ import annotations

import numpy as np
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

from .._layer_geometry import TomogramGeometry, layer_path, layer_voxel_size, tomogram_geometry, tomogram_name
from ..backend.jobs import Job, Partial, as_job
from ..backend.picking.fit import learns_removed_picks
from ..backend.picking.session import PICKER_SCORE_FLOOR, PickOutcome
from ..backend.picking.train import DEFAULT_CLASS_PRIOR, DEFAULT_ITERATIONS
from ..errors import InputError
from ._base import JobWidget, add_or_update_layer, handler
from ._pick_candidates import CandidateView
from ._pick_files import LABEL_AVERAGE, STAR_FORMS, PickFileActions
from ._pick_labels import LabelsController
from ._pick_review import PickReview
from ._pick_state import ACCEPTED, REJECTED, PickSet, negatives_path_for
from ._plots import LossPlot, ScoreHistogram
from ._runner import JobRunner

__all__ = ["LABEL_AVERAGE", "PICKER", "STAR_FORMS", "TEMPLATE", "PickWidget"]

PICKER = "Picker (train from labels)"
TEMPLATE = "Template matching"
#: image layers the widget makes that are no tomogram
_OWN_IMAGE_SUFFIXES = (" heatmap", " template scores", " label template")
AUTOSAVE_DELAY_MS = 500


class PickWidget(PickFileActions, JobWidget):
    """Pick particles with a picker trained from a few labels, or by template matching."""

    job_name = "Pick particles"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.picker = None  #: the current picker model (trained in place, continued by Train)
        self.template_cutoff = None  # NCC with one expected false alarm in the last template search
        self.label_template = None  #: the last template averaged from the labels (LabelTemplate) or None
        self._tomogram_layer = None
        self._job_layer = None  # the tomogram layer the running job works on
        self.labels = LabelsController(self.viewer, on_change=self._labels_changed, where=self.job_name)
        self.review = PickReview(self)
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(self.flush_autosave)
        self._build()
        self.candidates = CandidateView(self.viewer, threshold=self.threshold, histogram=self.histogram,
                                        info=self.n_picks, tomogram=lambda: self.tomogram_layer,
                                        marker_size=self._marker_size, on_verdicts=self._labels_changed)
        # the peak finder (a new minimum distance) runs in its own worker: training goes on meanwhile
        self.peaks_runner = JobRunner(f"{self.job_name}: peaks", on_done=self._on_candidates, on_error=self.report,
                                      show_progress=False)
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
        self.min_distance = FloatSpinBox(label="min distance (Å, 0 = radius)", value=0.0, min=0.0, max=100_000.0,
                                         step=10.0, tooltip="minimum distance between picks; 0: the particle radius")
        self.device = ComboBox(label="device", choices=["cpu", "auto", "cuda"], value="cpu")
        # picker
        self.class_prior = FloatSpinBox(label="class prior", value=DEFAULT_CLASS_PRIOR, min=0.001, max=0.9, step=0.01)
        self.iterations = SpinBox(label="iterations", value=DEFAULT_ITERATIONS, min=1, max=1_000_000, step=50)
        self.preview_s = FloatSpinBox(label="preview every (s)", value=5.0, min=0.0, max=3600.0, step=1.0)
        self.continue_training = CheckBox(text="continue from the current model", value=True)
        self.learn_negatives = CheckBox(text="learn from removed picks (known negatives)", value=True)
        self.reject_lookalikes = CheckBox(
            text="reject look-alikes (shape of the labels' average)", value=True,
            tooltip="after training, candidates that fit the labels' average clearly worse than the labels are "
                    "learnt as negatives (300 more steps; needs at least 5 labels)")
        self.shape_check = CheckBox(
            text="shape check (fit of each pick to the labels' average)", value=True,
            tooltip="each pick that could reach 0.5 is aligned to the labels' average kept with the model, and its "
                    "score moves by how well it fits compared with the labels (models trained with look-alike "
                    "rejection)")
        self.labels_info = Label(value="labels: 0")
        self.undo_button = PushButton(text="Undo label")
        self.redo_button = PushButton(text="Redo label")
        labels_row = Container(widgets=[self.undo_button, self.redo_button], layout="horizontal", labels=False)
        # template matching
        self.reference = ComboBox(label="reference", choices=self._reference_choices, nullable=True,
                                  tooltip=f"an image layer, or '{LABEL_AVERAGE}': a template averaged from the "
                                  "labelled particles (box 1.5 diameters, aligned, low-passed to 40 Å; a "
                                  "rotational average with fewer than 5 labels)")
        self.reference_file = FileEdit(label="or reference file", mode="r", filter="*.mrc *.map *.rec")
        self.template_file = FileEdit(label="label template file", mode="w", filter="*.mrc")
        self.save_template_button = PushButton(text="Save label template")
        self.angular_step = FloatSpinBox(label="angular step (°)", value=30.0, min=1.0, max=180.0, step=5.0)
        self.wedge = CheckBox(text="missing-wedge-aware scoring", value=True)
        self.tilt_min = FloatSpinBox(label="tilt min (°)", value=-60.0, min=-90.0, max=0.0, step=5.0)
        self.tilt_max = FloatSpinBox(label="tilt max (°)", value=60.0, min=0.0, max=90.0, step=5.0)
        self._picker_widgets = [self.class_prior, self.iterations, self.preview_s, self.continue_training,
                                self.learn_negatives, self.reject_lookalikes, self.shape_check, self.labels_info,
                                labels_row]
        self._template_widgets = [self.reference, self.reference_file, self.angular_step, self.wedge,
                                  self.tilt_min, self.tilt_max, self.template_file, self.save_template_button]
        self._label_widgets = [self.labels_info, labels_row]  # also shown for the average of the labels
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
        self.review_button = PushButton(text="Review uncertain picks")
        self.review_accept_button = PushButton(text="Accept (A)")
        self.review_remove_button = PushButton(text="Remove (X)")
        self.review_skip_button = PushButton(text="Skip (S)")
        review_row = Container(widgets=[self.review_accept_button, self.review_remove_button, self.review_skip_button],
                               layout="horizontal", labels=False)
        self.picks_box = Container(widgets=[self.threshold, self.n_picks, sel_row, self.review_button, review_row])
        self.model_file = FileEdit(label="model file", mode="w", filter="*.pt")
        self.save_model_button = PushButton(text="Save model")
        self.load_model_button = PushButton(text="Load model")
        self.pick_button = PushButton(text="Pick with model")
        model_row = Container(widgets=[self.save_model_button, self.load_model_button, self.pick_button],
                              layout="horizontal", labels=False)
        self.star_file = FileEdit(label="picks STAR", mode="w", filter="*.star")
        self.star_form = ComboBox(label="STAR form", choices=list(STAR_FORMS), value="RELION 4 and 5")
        self.export_button = PushButton(text="Export picks")
        self.labels_star = FileEdit(label="labels STAR", mode="r", filter="*.star")
        self.import_button = PushButton(text="Import labels")
        self.files_box = Container(widgets=[self.model_file, model_row, self.star_file, self.star_form,
                                            self.make_overwrite_box(), self.export_button, self.labels_star,
                                            self.import_button])
        from ._pick_batch import BatchRun

        self.batch = BatchRun(self)
        outer = self.layout()
        at = outer.count() - 1  # before the final stretch
        for w in (self.loss_plot, self.histogram, self.picks_box.native, self.files_box.native,
                  self.batch.box.native):
            outer.insertWidget(at, w)
            at += 1

        self.method.changed.connect(self._show_method)
        self.reference.changed.connect(self._show_method)
        self.tomogram.changed.connect(self._on_tomogram_changed)
        self.diameter.changed.connect(self._update_diameter_info)
        self.threshold.changed.connect(self._on_threshold)
        self.min_distance.changed.connect(self._on_min_distance)
        self.undo_button.changed.connect(self.undo_labels)
        self.redo_button.changed.connect(self.redo_labels)
        self.accept_button.changed.connect(lambda *_: self.set_selected_status(ACCEPTED))
        self.remove_button.changed.connect(lambda *_: self.set_selected_status(REJECTED))
        self.promote_button.changed.connect(self.promote_selected)
        self.review_button.changed.connect(self.start_review)
        self.review_accept_button.changed.connect(lambda *_: self.review_verdict(ACCEPTED))
        self.review_remove_button.changed.connect(lambda *_: self.review_verdict(REJECTED))
        self.review_skip_button.changed.connect(lambda *_: self.review_verdict(None))
        self.save_model_button.changed.connect(self.save_model)
        self.load_model_button.changed.connect(self.load_model)
        self.pick_button.changed.connect(self.pick_with_model)
        self.export_button.changed.connect(self.export_picks)
        self.import_button.changed.connect(self.import_labels)
        self.save_template_button.changed.connect(self.save_label_template)

    def _volume_choices(self, *_):
        from napari.layers import Image

        return [lay.name for lay in self.viewer.layers
                if isinstance(lay, Image) and lay.ndim == 3 and not lay.rgb
                and not lay.name.endswith(_OWN_IMAGE_SUFFIXES)]

    def _reference_choices(self, *_):
        from napari.layers import Image

        # the label templates made here may serve as references again
        return [LABEL_AVERAGE] + [lay.name for lay in self.viewer.layers
                                  if isinstance(lay, Image) and lay.ndim == 3 and not lay.rgb
                                  and not lay.name.endswith((" heatmap", " template scores"))]

    def _show_method(self, *_):
        template = self.method.value == TEMPLATE
        for w in self._picker_widgets:
            w.visible = not template
        for w in self._template_widgets:
            w.visible = template
        from_labels = template and self.reference.value == LABEL_AVERAGE
        for w in self._label_widgets:
            w.visible = not template or from_labels
        self.template_file.visible = self.save_template_button.visible = from_labels
        self.loss_plot.setVisible(not template)
        if not self.runner.running:
            self.run_button.setText(self._run_text())

    def _run_text(self) -> str:
        return "Match" if self.method.value == TEMPLATE else "Train"

    # ------------------------------------------------------------------ the tomogram
    def _on_layers_changed(self, *_):
        if self.labels.layer is not None and self.labels.layer not in self.viewer.layers:
            # the user deleted the labels layer: make it again (from the autosave file, if any)
            self.flush_autosave()
            self.labels.layer = None
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

    def tomogram_geometry(self) -> TomogramGeometry:
        """The chosen tomogram (InputError when there is none)."""
        layer = self.tomogram_layer
        if layer is None:
            raise InputError("a 3D image layer (the tomogram)", field="tomogram", got="none")
        return tomogram_geometry(layer)

    @property
    def voxel_size(self) -> float:
        layer = self.tomogram_layer
        return 1.0 if layer is None else layer_voxel_size(layer)

    def _on_tomogram_changed(self, *_):
        layer = self.tomogram_layer
        if layer is self._tomogram_layer:
            return
        self.flush_autosave()
        self._tomogram_layer = layer
        self.candidates.reset()
        self.labels.attach(layer, marker_size=self._marker_size())
        if layer is None:
            return
        negs = self.labels.restore(negatives_path_for, "removed picks")
        if len(negs):
            self.candidates.reset(PickSet(negs, np.zeros(len(negs)), None,
                                          np.full(len(negs), REJECTED, dtype=np.int8)))
        self._update_label_info()
        self._update_diameter_info()
        if self.star_file.value is None or str(self.star_file.value) in (".", ""):
            p = layer_path(layer)
            if p is not None:
                self.star_file.value = p.with_name(f"{tomogram_name(layer)}_picks.star")

    def _marker_size(self) -> float:
        return max(3.0, float(self.diameter.value) / self.voxel_size)

    def _update_diameter_info(self, *_):
        if self.tomogram_layer is None:
            self.diameter_info.value = ""
            return
        vs = self.voxel_size
        self.diameter_info.value = f"= {float(self.diameter.value) / vs:.1f} voxels of {vs:g} Å"
        self.labels.set_marker_size(self._marker_size())
        self.candidates.set_marker_size(self._marker_size())

    # ------------------------------------------------------------------ labels
    @property
    def labels_layer(self):
        return self.labels.layer

    @property
    def autosave_path(self):
        """Where the labels are autosaved (``<tomogram>_labels.star``), or None."""
        return self.labels.autosave_path

    @property
    def negatives_path(self):
        """Where the removed picks are autosaved (``<tomogram>_negatives.star``), or None."""
        return self.labels.negatives_path

    @property
    def last_autosave(self):
        return self.labels.last_autosave

    def labels_xyz(self) -> np.ndarray:
        """Current labels as ``(n, 3)`` 0-based voxel coordinates (x, y, z)."""
        return self.labels.xyz()

    def add_labels(self, coordinates_xyz) -> None:
        """Append labels (0-based voxel x, y, z) to the labels layer (undoable, autosaved)."""
        self.labels.add(coordinates_xyz)

    @handler
    def undo_labels(self, *_) -> bool:
        return self.labels.undo()

    @handler
    def redo_labels(self, *_) -> bool:
        return self.labels.redo()

    def _labels_changed(self):
        self._update_label_info()
        self._autosave_timer.start()

    def _update_label_info(self):
        where = self.labels.autosave_path
        tail = f" (autosaved to {where.name})" if where is not None else " (not saved: the tomogram has no file)"
        n_neg = int(np.sum(self.picks.status == REJECTED))
        self.labels_info.value = f"labels: {len(self.labels)}" + (f", removed picks: {n_neg}" if n_neg else "") + tail
        self.undo_button.enabled = self.labels.history.can_undo
        self.redo_button.enabled = self.labels.history.can_redo

    @handler
    def flush_autosave(self, *_):
        """Write the labels (and the removed picks) now (normally done :data:`AUTOSAVE_DELAY_MS`
        after the last change). Returns the labels file written, or None."""
        self._autosave_timer.stop()
        return self.labels.flush(self.picks.rejected_xyz())

    # ------------------------------------------------------------------ candidates
    @property
    def picks(self) -> PickSet:
        """Every candidate with the user's verdict."""
        return self.candidates.picks

    @property
    def score_map(self):
        return self.candidates.score_map

    def shown_indices(self) -> np.ndarray:
        """Indices into :attr:`picks` of the picks shown at the current threshold (by score)."""
        return self.candidates.shown_indices()

    def refresh_picks(self) -> None:
        self.candidates.refresh()

    def _on_threshold(self, value):
        self.candidates.on_threshold(value)

    def _min_distance_angstrom(self) -> float | None:
        md = float(self.min_distance.value)
        return md if md > 0 else None

    def _min_distance_voxels(self) -> float:
        md = self._min_distance_angstrom()
        if md is None:
            d = self.picker.diameter_angstrom if (self.picker is not None and self.method.value == PICKER) \
                else float(self.diameter.value)
            md = 0.5 * d
        return md / self.voxel_size

    def _on_min_distance(self, *_):
        if self.score_map is not None:
            self.recompute_candidates()

    def recompute_candidates(self, *, method: str | None = None) -> int | None:
        """Rerun only the peak finder on the kept score map (after a new minimum distance), in a worker."""
        from ..backend.picking.session import find_candidates

        view = self.candidates
        if view.score_map is None:
            return None
        method = method or view.method or "picker"
        self._peaks_method = method
        return self.peaks_runner.start(as_job(find_candidates, view.score_map, method=method,
                                              min_distance_voxels=self._min_distance_voxels(),
                                              best_rotation=view.best_rotation, euler_grid=view.euler_grid,
                                              shape_check=view.shape_check, message="finding peaks"))

    def _on_candidates(self, picks) -> None:
        self._set_candidates(picks, self._peaks_method)

    def _set_candidates(self, picks, method: str) -> None:
        radius = max(1.0, 0.25 * float(self.diameter.value) / self.voxel_size)
        self.candidates.set_candidates(picks, method, match_radius=radius)

    @handler
    def set_selected_status(self, status: int) -> int:
        """Accept (``ACCEPTED``) or remove (``REJECTED``) the picks selected in the picks layer."""
        return self.candidates.set_status(self.candidates.selected_candidates(), status)

    @handler
    def promote_selected(self, *_) -> int:
        """Add the selected picks to the labels (for the next Train) and accept them."""
        cand = self.candidates.selected_candidates()
        if cand.size:
            self.add_labels(self.picks.coordinates_xyz[cand])
            self.picks.set_status(cand, ACCEPTED)
            self.refresh_picks()
        return int(cand.size)

    @handler
    def start_review(self, *_) -> int:
        """Show the uncertain picks one by one (A accept as a label, X remove, S skip); returns how many."""
        return self.review.start()

    @handler
    def review_verdict(self, status) -> int | None:
        """Judge the pick under review (``ACCEPTED``, ``REJECTED`` or None to skip) and go to the next."""
        return self.review.verdict(status)

    # ------------------------------------------------------------------ jobs
    def make_job(self) -> Job:
        from ..backend.picking.picker import check_labels, diameter_voxels
        from ..backend.picking.session import (
            label_template_candidates_job,
            template_candidates_job,
            train_and_pick_job,
        )

        tomo = self.tomogram_geometry()
        diameter_voxels(float(self.diameter.value), tomo.voxel_size, shape=tomo.shape, path=tomo.path)
        if self.method.value == TEMPLATE and self.reference.value == LABEL_AVERAGE:
            # the template is averaged from the labels in the job (off the GUI thread), then matched
            self.flush_autosave()
            labels = self.labels_xyz()
            if len(labels) == 0:
                raise InputError(f"labelled particles to average a template from (click them into "
                                 f"'{self.labels_layer.name if self.labels_layer is not None else 'labels'}')",
                                 field="labels", got="none")
            tilt = (float(self.tilt_min.value), float(self.tilt_max.value)) if self.wedge.value else None
            job = label_template_candidates_job(
                tomo.data, labels, voxel_size=tomo.voxel_size, diameter_angstrom=float(self.diameter.value),
                angular_step_deg=float(self.angular_step.value), tilt_range_deg=tilt,
                min_distance_angstrom=self._min_distance_angstrom(), device=self.device.value, path=tomo.path,
                labels_path=self.autosave_path)
        elif self.method.value == TEMPLATE:
            template, tvs, tpath = self._reference()
            tilt = (float(self.tilt_min.value), float(self.tilt_max.value)) if self.wedge.value else None
            job = template_candidates_job(tomo.data, template, voxel_size=tomo.voxel_size, template_voxel_size=tvs,
                                          angular_step_deg=float(self.angular_step.value), tilt_range_deg=tilt,
                                          min_distance_angstrom=self._min_distance_angstrom(),
                                          device=self.device.value, path=tomo.path, template_path=tpath)
        else:
            self.flush_autosave()
            labels = check_labels(self.labels_xyz(), tomo.shape, path=self.autosave_path)
            picker = self.picker if (self.continue_training.value and self.picker is not None) else None
            if picker is None:
                self.loss_plot.clear()
            negatives = self.picks.rejected_xyz() if self.learn_negatives.value else np.zeros((0, 3))
            job = train_and_pick_job(
                tomo.data, labels, picker=picker, negatives_xyz=negatives if len(negatives) else None,
                negatives_path=self.negatives_path, min_distance_angstrom=self._min_distance_angstrom(),
                voxel_size=tomo.voxel_size, path=tomo.path,
                diameter_angstrom=None if picker is not None else float(self.diameter.value),
                class_prior=float(self.class_prior.value), iterations=int(self.iterations.value),
                preview_every_s=float(self.preview_s.value), preview_threshold=PICKER_SCORE_FLOOR,
                device=self.device.value, reject_lookalikes=bool(self.reject_lookalikes.value),
                shape_check=bool(self.shape_check.value))
        self._job_layer = self.tomogram_layer
        return job

    @handler
    def pick_with_model(self, *_) -> int | None:
        """Apply the current model to the chosen tomogram (tiled inference) without training."""
        return self.start(self._pick_with_model_job)

    def _pick_with_model_job(self) -> Job:
        from ..backend.picking.session import pick_with_model_job

        tomo = self.tomogram_geometry()
        if self.picker is None:
            raise InputError("a trained or loaded model (press Train or Load model first)", field="model", got="none")
        self._job_layer = self.tomogram_layer
        return pick_with_model_job(self.picker, tomo.data, min_distance_angstrom=self._min_distance_angstrom(),
                                   voxel_size=tomo.voxel_size, path=tomo.path, device=self.device.value,
                                   shape_check=bool(self.shape_check.value))

    def _reference(self):
        from pathlib import Path

        from ..io import read_mrc

        fpath = self.reference_file.value
        if fpath is not None and str(fpath) not in ("", ".") and Path(fpath).is_file():
            vol = read_mrc(fpath)
            return np.asarray(vol.data, dtype=np.float32), float(vol.voxel_size[0]), Path(fpath)
        name = self.reference.value
        if name is None or name not in self.viewer.layers or name == self.tomogram.value:
            raise InputError("a reference volume (an image layer other than the tomogram, or an MRC file)",
                             field="reference", got=name or "none")
        ref = tomogram_geometry(self.viewer.layers[name])
        return np.asarray(ref.data, dtype=np.float32), ref.voxel_size, ref.path

    # ------------------------------------------------------------------ results
    def _show_label_template(self, template) -> None:
        """Keep the template averaged from the labels and show it as ``"<tomogram> label template"``
        (at the tomogram's origin, on its voxel grid)."""
        from napari.utils.notifications import show_info

        from ._base import add_or_update_layer

        self.label_template = template
        show_info(f"{self.job_name}: label template: {template.describe()}")
        tomo = self._job_layer
        if tomo is None:
            return
        add_or_update_layer(self.viewer, (template.map, {
            "name": f"{tomo.name} label template", "scale": tuple(tomo.scale), "translate": tuple(tomo.translate),
            "colormap": "gray", "metadata": {"napari_cryoalign": {"role": "label template", "tomogram": tomo.name,
                                                                  "made": template.describe()}},
        }, "image"))
        if self.template_file.value is None or str(self.template_file.value) in (".", ""):
            p = layer_path(tomo)
            if p is not None:
                self.template_file.value = p.with_name(f"{tomogram_name(tomo)}_label_template.mrc")

    def on_partial(self, partial: Partial) -> None:
        name, value = partial.name, partial.value
        if name == "model":
            self.picker = value
        elif name == "loss":
            self.loss_plot.add(value["iteration"], value["loss"])
        elif name == "heatmap":
            self.candidates.show_score_map("picker", value, self._job_layer)
        elif name == "lookalikes":
            self._show_lookalikes(value)
        elif name == "label_template":
            self._show_label_template(value)
        elif name == "picks" and self.score_map is not None and self.method.value == PICKER:
            default_md = None if self.picker is None else 0.5 * self.picker.diameter_voxels
            wanted = self._min_distance_voxels()
            if default_md is not None and abs(default_md - wanted) < 1e-6:
                self._set_candidates(value, "picker")
            else:
                self.recompute_candidates(method="picker")

    def _show_lookalikes(self, found) -> None:
        """The look-alikes the training found on the tomogram (learnt as negatives) as a points layer."""
        tomo = self._job_layer
        if tomo is None:
            return
        pts = np.asarray(found.negatives_xyz, dtype=np.float64).reshape(-1, 3)[:, ::-1]
        add_or_update_layer(self.viewer, (pts, {
            "name": f"{tomo.name} look-alikes", "ndim": 3, "scale": tuple(tomo.scale),
            "translate": tuple(tomo.translate), "size": self._marker_size(), "symbol": "x",
            "face_color": "magenta", "border_color": "magenta", "visible": bool(len(pts)),
            "metadata": {"napari_cryoalign": {"role": "look-alikes", "tomogram": tomo.name}}}, "points"))
        note = found.reason or (f"{len(pts)} of {len(found.candidates_xyz)} candidates fit the labels' average "
                                "unlike the labels (worse, or far better: gold)")
        self.status.setText(f"look-alike rejection: {note}")

    def on_result(self, result: PickOutcome) -> None:
        self.loss_plot.flush()
        if result.picker is not None:
            self.picker = result.picker
        self.candidates.show_score_map(result.method, result.score_map, self._job_layer,
                                       best_rotation=result.best_rotation, euler_grid=result.euler_grid,
                                       shape_check=result.shape_check)
        calibrated = ""
        if result.method == "picker" and result.picker is not None:
            # the model's threshold, calibrated on its labels at the end of training
            self.threshold.range = (0.0, 1.0)
            self.threshold.value = round(result.picker.default_threshold, 2)
            how = ("the count your corrections imply" if "corrected_count" in result.picker.training
                   else "calibrated on the labels")
            calibrated = f" (threshold {self.threshold.value:.2f}, {how})"
            if result.shape_check is not None:
                calibrated += f"; shape-checked {len(result.shape_check.coordinates_xyz)} picks"
            elif result.picker.training.get("shape_check_reason"):
                calibrated += f"; no shape check: {result.picker.training['shape_check_reason']}"
            if result.picker.training.get("removed_picks_not_learnt"):
                calibrated += f"; {result.picker.training['removed_picks_not_learnt']}"
            elif not learns_removed_picks(result.picker)[0]:  # the rule Train again will apply (fit.py)
                calibrated += " (removed picks will stay removed but not be learnt: on such data that made the " \
                              "picker worse in our tests, docs/picking.md)"
        self._set_candidates(result.picks, result.method)
        thr = self.template_cutoff = result.suggested_threshold
        if result.method == "template" and thr is not None and np.isfinite(thr):
            # one expected false alarm in the whole search (pytom-match-pick's default cut-off)
            self.threshold.value = float(np.clip(np.ceil(thr * 100) / 100, self.threshold.min, self.threshold.max))
            calibrated = f" (threshold {self.threshold.value:.2f}: one expected false alarm from noise)"
        what = "trained and picked" if result.method == "picker" else "template matched"
        if result.method == "template" and self.reference.value == LABEL_AVERAGE and self.label_template is not None:
            what = f"label template ({self.label_template.describe()}) matched"
        self.status.setText(f"{what}: {len(self.picks)} candidates, {len(self.shown_indices())} shown{calibrated}")
