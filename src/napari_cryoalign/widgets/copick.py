"""The "Copick project" dock widget: browse a copick project's runs, open a run's tomogram at a chosen
resolution level with its picks, and save picks back to the run (issue 21).

* **Open project**: a copick configuration (filesystem projects, :mod:`..io.copick_project`); the runs,
  their voxel spacings and tomogram types fill the choices.
* **Open run** (the Run button): the tomogram at the chosen level as an image layer (world units Å; its
  metadata names the run as ``rlnTomoName`` and the level's voxel size, so "Pick particles" and the other
  widgets take it as they take an MRC file) and one points layer per (object, user, session), as
  napari-copick shows them. Loading runs in the widget's job runner.
* **Save picks to run**: a points layer's points (any layer in world units: picks, labels, accepted
  candidates) written to the run as (object, user ``cryoalign``, session), replacing what that writer
  stored before (copick does not lock picks files: one writer per run, user, session and object).
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, PushButton, SpinBox

from .._layers import copick_picks_layer_name
from ..backend.jobs import as_job
from ..errors import InputError
from ._base import JobWidget, handler

__all__ = ["CopickWidget", "picks_layer_name"]


picks_layer_name = copick_picks_layer_name


class CopickWidget(JobWidget):
    """Browse a copick project, open runs, save picks back."""

    job_name = "Copick project"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.root = None
        self.config = FileEdit(label="copick config", mode="r", filter="*.json")
        self.open_button = PushButton(text="Open project")
        self.run = ComboBox(label="run", choices=[])
        self.voxel_spacing = ComboBox(label="voxel spacing (Å)", choices=[])
        self.tomo_type = ComboBox(label="tomogram", choices=[])
        self.level = SpinBox(label="resolution level", value=0, min=0, max=8,
                             tooltip="0: full resolution; each level halves the sampling")
        self.points = ComboBox(label="points to save", choices=self._points_choices, nullable=True)
        self.object = ComboBox(label="object", choices=[])
        self.session = LineEdit(label="session id", value="0")
        self.save_button = PushButton(text="Save picks to run")
        form = Container(widgets=[self.config, self.open_button, self.run, self.voxel_spacing, self.tomo_type,
                                  self.level])
        save = Container(widgets=[self.points, self.object, self.session, self.save_button])
        self.form_layout.addWidget(form.native)
        outer = self.layout()
        outer.insertWidget(outer.count() - 1, save.native)
        self.run_button.setText("Open run")
        self.open_button.changed.connect(self.open_project)
        self.run.changed.connect(self._run_changed)
        self.voxel_spacing.changed.connect(self._spacing_changed)
        self.save_button.changed.connect(self.save_picks)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(lambda *_: self.points.reset_choices())

    def _points_choices(self, *_):
        return [layer.name for layer in self.viewer.layers if layer._type_string == "points"]

    # ------------------------------------------------------------------ project
    @handler
    def open_project(self, *_) -> int:
        """Open the configuration; returns the number of runs."""
        from ..io.copick_project import open_copick

        v = self.config.value
        if v is None or str(v) in ("", "."):
            raise InputError("a copick configuration file (.json)", field="copick config", got="none")
        self.root = open_copick(v)
        runs = [r.name for r in self.root.runs]
        self.object.choices = [o.name for o in self.root.config.pickable_objects]
        self.run.choices = runs
        if runs:
            self.run.value = runs[0]
            self._run_changed()
        self.status.setText(f"{len(runs)} runs, {len(self.object.choices)} objects")
        return len(runs)

    def _run_changed(self, *_):
        if self.root is None or self.run.value is None:
            return
        run = self.root.get_run(self.run.value)
        spacings = sorted(float(vs.voxel_size) for vs in run.voxel_spacings)
        self.voxel_spacing.choices = spacings
        if spacings:
            self.voxel_spacing.value = spacings[0]
        self._spacing_changed()

    def _spacing_changed(self, *_):
        if self.root is None or self.run.value is None or self.voxel_spacing.value is None:
            self.tomo_type.choices = []
            return
        vs = self.root.get_run(self.run.value).get_voxel_spacing(float(self.voxel_spacing.value))
        types = sorted({t.tomo_type for t in vs.tomograms}) if vs is not None else []
        self.tomo_type.choices = types
        if types:
            self.tomo_type.value = "wbp" if "wbp" in types else types[0]

    def ref(self):
        """The chosen run's tomogram (:class:`~..io.copick_project.CopickTomogramRef`)."""
        from ..io.copick_project import CopickTomogramRef

        if self.root is None:
            raise InputError("an opened copick project (Open project)", field="copick config", got="none")
        if self.run.value is None or self.voxel_spacing.value is None or self.tomo_type.value is None:
            raise InputError("a run with a tomogram", field="run", got=str(self.run.value))
        return CopickTomogramRef(str(self.config.value), str(self.run.value), float(self.voxel_spacing.value),
                                 str(self.tomo_type.value))

    # ------------------------------------------------------------------ open a run (the job)
    def make_job(self):
        from ..io.copick_project import load_copick_run

        return as_job(load_copick_run, self.ref(), level=int(self.level.value), message="reading the run")

    def on_result(self, data) -> None:
        from .._layers import copick_run_layers
        from ._base import add_or_update_layer

        for layer_data in copick_run_layers(data, self.root.config.pickable_objects):
            add_or_update_layer(self.viewer, layer_data)
        ref = data.ref
        self.status.setText(f"{ref.run}: {ref.tomo_type} at {data.voxel_size:g} Å (level {data.level}), "
                            f"{len(data.picks)} pick sets")

    # ------------------------------------------------------------------ save back
    @handler
    def save_picks(self, *_) -> int:
        """Write the chosen points layer to the chosen run as (object, user cryoalign, session); returns the count."""
        from ..io.copick_project import COPICK_USER, write_copick_picks

        ref = self.ref()
        name = self.points.value
        if name is None or name not in self.viewer.layers:
            raise InputError("a points layer to save", field="points to save", got="none")
        if self.object.value is None:
            raise InputError("a pickable object of the project", field="object", got="none")
        session = str(self.session.value).strip()
        if not session:
            raise InputError("a session id", field="session id", got="empty")
        layer = self.viewer.layers[name]
        world = np.asarray(layer.data, dtype=np.float64).reshape(-1, 3) * np.asarray(layer.scale) \
            + np.asarray(layer.translate)
        xyz = world[:, ::-1] / ref.voxel_size  # voxels of the run's voxel spacing, (x, y, z)
        scores = None
        if "score" in getattr(layer, "features", {}):
            scores = np.asarray(layer.features["score"], dtype=float)
        elif "rlnAutopickFigureOfMerit" in getattr(layer, "features", {}):
            scores = np.asarray(layer.features["rlnAutopickFigureOfMerit"], dtype=float)
        write_copick_picks(ref, xyz, object_name=str(self.object.value), session_id=session, scores=scores)
        self.status.setText(f"saved {len(xyz)} picks to run {ref.run} as {self.object.value} "
                            f"({COPICK_USER}/{session})")
        return len(xyz)
