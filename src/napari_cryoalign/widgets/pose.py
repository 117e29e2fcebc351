"""Dock widget "Pose inference": train or load a pose network, predict poses, reconstruct, FSC, export.

Load a particle STAR file (its image stack becomes an image layer to browse), then either
train networks on its poses (gold standard where the file has half sets 1 and 2; with one
half set, or no ``rlnRandomSubset``, one network on what is there, as ``pose train --half
both`` does; live loss plot) or load a model file, and run:
the poses are predicted for every particle, the map is reconstructed from them (image layer
"pose reconstruction", next to the model's training-half map "pose training reference"), the
half-map FSC is plotted, the viewing directions are drawn on a Mollweide map coloured by
confidence, and each particle's confidence and angles go into the ``features`` of a points
layer on the stack. A threshold selects the particles that "Export STAR" writes. All
computation is in :mod:`napari_cryoalign.backend.pose`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    LineEdit,
    PushButton,
    SpinBox,
)

from ..backend.jobs import Job, Partial
from .._layer_geometry import layer_path, plugin_metadata
from ._base import JobWidget, add_or_update_layer, handler
from ._plots import FSCPlot, LossPlot, OrientationPlot, ScoreHistogram

MODES = ("train on these particles", "model file")


class PoseWidget(JobWidget):
    """Pose inference for particle images."""

    job_name = "Pose inference"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.star = FileEdit(label="particles STAR", mode="r", filter="*.star")
        self.load_button = PushButton(text="Load particles")
        self.mode = ComboBox(label="poses from", choices=list(MODES), value=MODES[0])
        self.model_file = FileEdit(label="model file", mode="r", filter="*.pt")
        self.symmetry = LineEdit(label="symmetry", value="C1")
        self.epochs = SpinBox(label="epochs", value=10, min=1, max=500)
        self.grid_level = SpinBox(label="grid level", value=2, min=0, max=4)
        self.map_search = CheckBox(text="search the training half's map (accurate)", value=True,
                                   tooltip="combine the network with each image's likelihood under the map "
                                           "reconstructed from the training half, over the whole SO(3) grid")
        self.refine = CheckBox(text="refine by projection matching", value=False)
        self.threshold = FloatSlider(label="confidence ≥", value=0.0, min=0.0, max=1.0, step=0.01)
        self.export_file = FileEdit(label="export to", mode="w", filter="*.star", value=str(Path.cwd() / "poses.star"))
        self.export_button = PushButton(text="Export STAR")
        self.make_overwrite_box()
        self.save_model_file = FileEdit(label="save model", mode="w", filter="*.pt", value=str(Path.cwd() / "pose_model.pt"))
        self.save_model_button = PushButton(text="Save model")
        self.export_button.enabled = self.save_model_button.enabled = False
        self.form = Container(widgets=[self.star, self.load_button, self.mode, self.model_file, self.symmetry,
                                       self.epochs, self.grid_level, self.map_search, self.refine])
        self.form_layout.addWidget(self.form.native)
        self.loss_plot = LossPlot()
        self.fsc_plot = FSCPlot()
        self.orientation_plot = OrientationPlot()
        self.histogram = ScoreHistogram(title="confidence")
        for w in (self.loss_plot, self.fsc_plot, self.orientation_plot, self.histogram):
            self.form_layout.addWidget(w)
        self.after = Container(widgets=[self.threshold, self.export_file, self.export_button, self.save_model_file,
                                        self.save_model_button, self.overwrite])
        self.form_layout.addWidget(self.after.native)
        self.load_button.changed.connect(self.load_particles)
        self.mode.changed.connect(self._show_inputs)
        self.threshold.changed.connect(self._apply_threshold)
        self.export_button.changed.connect(self.export_star)
        self.save_model_button.changed.connect(self.save_model)
        self.viewer.layers.events.inserted.connect(self._take_opened_particles)
        self._show_inputs()
        self.data = None
        self.last_run = None
        self._take_opened_particles()

    def _show_inputs(self, *_):
        training = self.mode.value == MODES[0]
        self.model_file.visible = not training
        self.epochs.visible = self.grid_level.visible = training

    # -- loading ---------------------------------------------------------------------------
    def _opened_particle_sets(self) -> dict:
        """STAR files of particle images opened in the viewer (File > Open): path -> layer."""
        return {str(layer_path(layer)): layer for layer in self.viewer.layers
                if plugin_metadata(layer.metadata).get("role") == "particle images" and layer_path(layer)}

    def _take_opened_particles(self, *_):
        """A particle STAR file the user opened becomes the input, unless one is chosen already."""
        opened = self._opened_particle_sets()
        if opened and str(self.star.value) in ("", "."):
            self.star.value = next(reversed(list(opened)))

    @handler
    def load_particles(self, *_):
        """Read the STAR file and its stack (synchronously: reading is fast); show the stack."""
        from ..backend.pose.data import load_particle_data

        self.data = None
        self.data = load_particle_data(Path(self.star.value))
        px = self.data.pixel_size_angstrom
        if str(Path(self.star.value).resolve()) not in self._opened_particle_sets():  # else they are shown already
            add_or_update_layer(self.viewer, (self.data.images, {"name": "particle images", "scale": (1.0, px, px)},
                                              "image"))
        self.status.setText(f"loaded {self.data.n} particles, {self.data.box}² px at {px:g} Å"
                            + ("" if self.data.rotations is None else " (with poses)"))
        return self.data

    def input_files(self) -> list[Path]:
        files = [self.star.value] + ([self.model_file.value] if self.mode.value != MODES[0] else [])
        return [Path(p) for p in files if p is not None and str(p) not in ("", ".")]

    # -- the job ---------------------------------------------------------------------------
    def make_job(self) -> Job:
        from ..backend.pose.predict import pose_pipeline_job
        from ..errors import InputError

        if self.data is None and self.load_particles() is None:
            raise InputError("a particle STAR file that loads", field="particles STAR", got=str(self.star.value))
        self.loss_plot.clear()
        predict = {"projection_refine": bool(self.refine.value),
                   "map_search": None if self.map_search.value else False}
        if self.mode.value == MODES[0]:
            # the CLI's `--half both`: a network per half set where both exist, else one on what is there
            train = {"symmetry": self.symmetry.value, "epochs": int(self.epochs.value),
                     "grid_level": int(self.grid_level.value), "halves": "auto"}
            return pose_pipeline_job(self.data, train=train, predict=predict)
        from ..backend.pose.modelio import load_pose_model

        model = load_pose_model(Path(self.model_file.value))
        return pose_pipeline_job(self.data, model=model, predict=predict, symmetry=self.symmetry.value)

    def on_partial(self, partial: Partial) -> None:
        if partial.name == "loss":
            step, loss = partial.value
            self.loss_plot.add(step, loss)
        elif partial.name == "reference":
            self._show_map(partial.value, "pose training reference")
        elif partial.name == "volume":
            self._show_map(partial.value, "pose reconstruction")

    def _show_map(self, volume, name):
        px = self.data.pixel_size_angstrom * (self.data.box / volume.shape[-1])
        add_or_update_layer(self.viewer, (np.asarray(volume), {"name": name, "scale": (px, px, px)}, "image"))

    def on_result(self, result) -> None:
        self.loss_plot.flush()
        self.last_run = result
        pred, rec = result.prediction, result.reconstruction
        self._show_map(rec.volume, "pose reconstruction")
        ref = next(iter(result.model.references.values()), None)
        if ref is not None:
            self._show_map(ref, "pose training reference")
        if rec.fsc is not None:
            self.fsc_plot.show_report(rec.fsc)
        self.orientation_plot.show(pred.rotations, pred.confidence)
        self.histogram.set_scores(pred.confidence, value_range=(0.0, float(max(pred.confidence.max(), 1e-3))))
        self.threshold.max = float(max(pred.confidence.max(), 1e-3))
        n, box = self.data.n, self.data.box
        features = {"confidence": pred.confidence, "rot": pred.euler_deg[:, 0], "tilt": pred.euler_deg[:, 1],
                    "psi": pred.euler_deg[:, 2], "half": self.data.half}
        if pred.log_likelihood is not None:
            features["log_likelihood"] = pred.log_likelihood  # the map search's fit: low = junk or poor particle
        pts = np.column_stack([np.arange(n), np.full(n, box // 2), np.full(n, box // 2)]).astype(float)
        px = self.data.pixel_size_angstrom
        add_or_update_layer(self.viewer, (pts, {"name": "particle confidence", "features": features,
                                                "scale": (1.0, px, px), "size": box * 0.8, "face_color": "transparent",
                                                "border_color": "confidence"}, "points"))
        self.export_button.enabled = self.save_model_button.enabled = True
        self._apply_threshold()
        training = result.model.training
        note = ""
        if training.get("half_choice") and training.get("trained_on", "both") != "both" and self.mode.value == MODES[0]:
            from napari.utils.notifications import show_info

            note = f"; {training['half_choice']}"
            show_info(f"{self.job_name}: {self.data.path.name if self.data.path else 'particles'}: "
                      f"{training['half_choice']}")
        self.status.setText(f"predicted {n} poses ({pred.particles_per_second:.0f}/s); mean confidence "
                            f"{pred.confidence.mean():.3f}" + (f"; half-map FSC {rec.fsc.resolution_0143:.1f} Å"
                                                                 if rec.fsc is not None else "") + note)

    # -- after a run -----------------------------------------------------------------------
    def selected(self) -> np.ndarray:
        """Indices of the particles at or above the confidence threshold."""
        if self.last_run is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.last_run.prediction.confidence >= float(self.threshold.value))

    def _apply_threshold(self, *_):
        self.histogram.set_threshold(float(self.threshold.value))
        if self.last_run is not None and "particle confidence" in self.viewer.layers:
            layer = self.viewer.layers["particle confidence"]
            shown = np.zeros(len(layer.data), dtype=bool)
            shown[self.selected()] = True
            layer.shown = shown

    @handler
    def export_star(self, *_):
        """Write the particles at or above the confidence threshold with their poses (STAR)."""
        from ..backend.pose.export import write_predicted_star

        if self.last_run is None:
            return None
        keep = self.selected()
        sub = _rows(self.last_run.prediction, keep)
        data, out = self.data.subset(keep), Path(self.export_file.value)
        return self.export_files([out], lambda overwrite: write_predicted_star(out, data, sub, overwrite=overwrite),
                                 done=f"wrote {len(keep)} poses to {out}")

    @handler
    def save_model(self, *_):
        """Write the trained (or loaded) pose networks to the model file."""
        from ..backend.pose.modelio import save_pose_model

        if self.last_run is None:
            return None
        out = Path(self.save_model_file.value)
        return self.export_files([out], lambda overwrite: save_pose_model(out, self.last_run.model,
                                                                          overwrite=overwrite),
                                 done=f"saved the pose model to {out}")


def _rows(prediction, keep):
    """The prediction of the particles ``keep`` only: every per-particle array indexed, the rest kept."""
    n = len(prediction.confidence)
    per_particle = {f.name: getattr(prediction, f.name) for f in dataclasses.fields(prediction)}
    return dataclasses.replace(prediction, **{k: v[keep] for k, v in per_particle.items()
                                              if isinstance(v, np.ndarray) and v.ndim and len(v) == n})
