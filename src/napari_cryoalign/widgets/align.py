"""Dock widget "Align & average": subtomogram alignment and averaging with live updates.

Inputs: a points layer on a tomogram image layer (boxes are cut around the points) or a
subtomogram STAR file; a reference (image layer, MRC file, or reference-free); the method,
angular step and iterations. While the job iterates, the average is updated in place as an
image layer and the FSC plot is redrawn; each particle's orientation is shown as a vector
on its point, its correlation goes into the points' ``features`` (and the sortable table
below), and a gallery of aligned central slices next to the average's (worst first) helps
find bad particles, which "Remove below" deletes. "Export STAR" writes the poses
(docs/conventions.md). All computation is in :mod:`napari_cryoalign.backend.align`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    PushButton,
    SpinBox,
)
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

from .._layer_geometry import layer_array, voxel_size_from
from ..backend.jobs import Job, Partial
from ..backend.align.extract import FRACTION_INSIDE_COLUMN as FRACTION_INSIDE
from ._base import JobWidget, add_or_update_layer, handler
from ._particles import SCORE, ParticleInputs
from ._plots import FSCPlot

REFERENCES = ("reference-free", "image layer", "MRC file")
METHODS = ("exhaustive", "learned", "learned+refine")
SYMMETRIES = ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "D2", "D3", "D4", "D5", "D6", "D7", "D8", "T", "O", "I")


class AlignWidget(ParticleInputs, JobWidget):
    """Align subtomograms and average them, with live updates."""

    job_name = "Align & average"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        particle_inputs = self._make_particle_inputs()
        self.ref_kind = ComboBox(label="reference", choices=list(REFERENCES), value=REFERENCES[0])
        self.ref_layer = ComboBox(label="reference layer", choices=self._layer_choices("image"))
        self.ref_file = FileEdit(label="reference file", mode="r", filter="*.mrc")
        self.method = ComboBox(label="method", choices=list(METHODS), value="exhaustive")
        self.angular_step = FloatSpinBox(label="angular step (°)", value=30.0, min=3.0, max=90.0, step=5.0)
        self.iterations = SpinBox(label="iterations", value=3, min=1, max=50)
        self.candidates = SpinBox(label="candidates", value=1, min=1, max=64,
                                  tooltip="learned: compare the network's K most probable rotations by correlation")
        self.use_ctf = CheckBox(text="CTF from the STAR file (rlnDefocusU)", value=True,
                                tooltip="score CTF-premultiplied particles and CTF-correct the averages "
                                "(as `cryoalign align --ctf auto`); only for particles from a STAR file")
        self.symmetry = ComboBox(label="symmetry", choices=list(SYMMETRIES), value="C1",
                                 tooltip="point group of the structure: the search covers its asymmetric unit and "
                                 "the averages are symmetrised (as --symmetry)")
        self.threshold = FloatSpinBox(label="remove below", value=0.0, min=-1.0, max=1.0, step=0.01)
        self.remove_button = PushButton(text="Remove particles below")
        self.export_file = FileEdit(label="export to", mode="w", filter="*.star", value=str(Path.cwd() / "aligned.star"))
        self.export_button = PushButton(text="Export STAR")
        self.remove_button.enabled = self.export_button.enabled = False
        self.make_overwrite_box()
        self.form = Container(widgets=[*particle_inputs, self.ref_kind,
                                       self.ref_layer, self.ref_file, self.method, self.angular_step, self.iterations,
                                       self.candidates, self.symmetry, self.use_ctf, *self._make_tilt_range()])
        self.form_layout.addWidget(self.form.native)
        self.fsc_plot = FSCPlot()
        self.form_layout.addWidget(self.fsc_plot)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["particle", "correlation"])
        self.table.setSortingEnabled(True)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setMinimumHeight(120)
        self.table.itemSelectionChanged.connect(self._select_points)
        self.form_layout.addWidget(self.table)
        self.after = Container(widgets=[self.threshold, self.remove_button, self.export_file, self.overwrite,
                                        self.export_button])
        self.form_layout.addWidget(self.after.native)
        self.source.changed.connect(self._show_inputs)
        self.ref_kind.changed.connect(self._show_inputs)
        self.method.changed.connect(self._show_inputs)
        self.remove_button.changed.connect(self.remove_below)
        self.export_button.changed.connect(self.export_star)
        self._show_inputs()
        self.pset = None  # the ParticleSource the running / last job aligned
        self.last_alignment = None
        self.last_result = None

    # -- inputs ----------------------------------------------------------------------------
    def _layer_combos(self) -> tuple:
        return (self.points, self.tomogram, self.ref_layer)

    def _show_inputs(self, *_):
        self._show_particle_inputs()
        self.ref_layer.visible = self.ref_kind.value == "image layer"
        self.ref_file.visible = self.ref_kind.value == "MRC file"
        self.candidates.visible = self.method.value != "exhaustive"
        self.use_ctf.visible = self.source.value != "points on tomogram"

    def input_files(self) -> list[Path]:
        ref = self.ref_file.value if self.ref_kind.value == "MRC file" else None
        star = self.star.value if self.source.value != "points on tomogram" else None
        return [Path(p) for p in (ref, star) if p is not None and str(p) not in ("", ".")]

    def _reference(self, box: int, voxel: float):
        from ..errors import InputError

        if self.ref_kind.value == "reference-free":
            return None
        if self.ref_kind.value == "image layer":
            if not self.ref_layer.value:
                raise InputError("a reference image layer", field="reference", got="none")
            layer = self.viewer.layers[self.ref_layer.value]
            # a layer without a voxel size (added by hand) is taken at the particles' voxel size
            rv = voxel_size_from(layer.metadata, layer.scale) or voxel
            ref, where = np.asarray(layer_array(layer), dtype=np.float32), layer.name
        else:
            from ..io import read_mrc
            from ..io.mrc import voxel_size_isotropic

            vol = read_mrc(self.ref_file.value)
            ref, rv, where = np.asarray(vol.data, dtype=np.float32), voxel_size_isotropic(vol), self.ref_file.value
        if abs(rv - voxel) > 1e-3 * voxel:
            raise InputError(f"the particles' voxel size ({voxel:g} Å)", path=where, field="voxel_size",
                             got=f"{rv:g} Å")
        if ref.shape != (box,) * 3:
            raise InputError(f"a reference of the box size {(box,) * 3}", field="reference", got=f"{ref.shape}")
        return ref

    def particle_ctf(self, pset):
        """The particles' CTF from their STAR file (None from points, without rlnDefocusU, or unticked)."""
        from ..backend.align.extract import particle_ctf

        if not self.use_ctf.value or pset.particle_set is None:
            return None
        return particle_ctf(pset.particle_set)

    def make_job(self) -> Job:
        from ..backend.align.average import align_average_job

        pset = self._load_particles()
        ref = self._reference(pset.box, pset.voxel)
        mask = self._particle_mask(pset.box)
        self.pset = pset
        self.fsc_plot.ax.clear()
        self.fsc_plot.draw_idle()
        return align_average_job(pset.volumes, reference=ref, particle_masks=mask,
                                 method=self.method.value, iterations=int(self.iterations.value),
                                 angular_step_deg=float(self.angular_step.value), voxel_size_angstrom=pset.voxel,
                                 candidates=int(self.candidates.value), ctf=self.particle_ctf(pset),
                                 symmetry=self.symmetry.value, inside_masks=pset.inside_masks)

    # -- live updates ----------------------------------------------------------------------
    def on_partial(self, partial: Partial) -> None:
        if self.pset is None:
            return
        v = self.pset.voxel
        if partial.name == "average":
            add_or_update_layer(self.viewer, (np.asarray(partial.value), {"name": "aligned average", "scale": (v, v, v),
                                                                          "colormap": "gray"}, "image"))
        elif partial.name == "fsc":
            self.fsc_plot.show_report(partial.value)
        elif partial.name == "alignment":
            self._show_alignment(partial.value)
        elif partial.name == "gallery":
            g = np.asarray(partial.value)
            add_or_update_layer(self.viewer, (g, {"name": "aligned gallery (worst first)", "scale": (1.0, v, v),
                                                  "colormap": "gray", "contrast_limits": (-3.0, 3.0)}, "image"))

    def _show_alignment(self, ali) -> None:
        self.last_alignment = ali
        rows = self.pset.rows
        scores = np.asarray(ali.scores, dtype=float)
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for i, (r, s) in enumerate(zip(rows, scores)):
            item = QTableWidgetItem()
            item.setData(0, int(r))
            self.table.setItem(i, 0, item)
            sitem = QTableWidgetItem()
            sitem.setData(0, float(s))
            self.table.setItem(i, 1, sitem)
        self.table.setSortingEnabled(True)
        name = self.pset.points
        if name is None or name not in self.viewer.layers:
            return
        pts = self.viewer.layers[name]
        if len(pts.data) != len(self.pset.zyx):
            return  # the layer changed since the run started
        n = len(pts.data)
        feats = pts.features.copy() if len(pts.features) == n else None
        import pandas as pd

        if feats is None:
            feats = pd.DataFrame(index=range(n))
        eul = np.full((n, 3), np.nan)
        eul[rows] = ali.euler_deg
        ori = np.full((n, 3), np.nan)
        ori[rows] = self.pset.origins_angstrom(ali)
        col = np.full(n, np.nan)
        col[rows] = scores
        for j, c in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
            feats[c] = eul[:, j]
        for j, c in enumerate(("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")):
            feats[c] = ori[:, j]
        feats[SCORE] = col
        if self.pset.fraction_inside is not None:
            frac = np.full(n, np.nan)
            frac[rows] = self.pset.fraction_inside
            feats[FRACTION_INSIDE] = frac
        pts.features = feats
        from .._layers import orientation_vectors

        vec = orientation_vectors(np.asarray(pts.data)[rows], ali.euler_deg, length=self.pset.box / 3)
        add_or_update_layer(self.viewer, (vec, {"name": f"{name} orientations", "scale": tuple(pts.scale),
                                                "edge_color": "cyan", "edge_width": 0.6}, "vectors"))

    def _select_points(self) -> None:
        name = self.pset.points if self.pset else None
        if name is None or name not in self.viewer.layers:
            return
        chosen = {int(self.table.item(i.row(), 0).data(0)) for i in self.table.selectionModel().selectedRows()}
        self.viewer.layers[name].selected_data = chosen

    def on_result(self, result) -> None:
        self.last_result = result
        if self.last_alignment is None or self.last_alignment is not result.alignment:
            self._show_alignment(result.alignment)
        self.remove_button.enabled = self.export_button.enabled = True
        skipped = self.pset.skipped if self.pset else []
        msg = f"averaged {len(result.alignment)} particles; FSC 0.143 at {result.fsc.resolution_0143:.1f} Å"
        if skipped:
            msg += f"; skipped {len(skipped)}: " + "; ".join(f"#{s.row} {s.reason}" for s in skipped[:5])
        self.status.setText(msg)

    # -- actions ---------------------------------------------------------------------------
    @handler
    def remove_below(self, *_) -> int:
        """Delete the points whose correlation is below the threshold; returns how many."""
        name = self.pset.points if self.pset else None
        if name is None or name not in self.viewer.layers:
            self.status.setText("removing needs particles from a points layer")
            return 0
        pts = self.viewer.layers[name]
        if SCORE not in pts.features:
            return 0
        bad = np.flatnonzero(np.nan_to_num(pts.features[SCORE].to_numpy(dtype=float), nan=np.inf)
                             < float(self.threshold.value))
        if len(bad):
            pts.selected_data = {int(i) for i in bad}
            pts.remove_selected()
        self.pset = None
        self.remove_button.enabled = self.export_button.enabled = False
        self.status.setText(f"removed {len(bad)} particles below {self.threshold.value:g}; run again to re-average")
        return len(bad)

    @handler
    def export_star(self, *_) -> Path | None:
        """Write the aligned particles (coordinates, angles, origins, correlation) to a STAR file."""
        if self.last_result is None or self.pset is None:
            return None
        out = Path(self.export_file.value)
        ali = self.last_result.alignment
        return self.export_files([out], lambda overwrite: self.pset.write_star(out, ali, overwrite=overwrite),
                           done=f"wrote {len(ali)} particles to {out}")
