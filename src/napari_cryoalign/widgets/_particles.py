"""Particle inputs shared by the subtomogram widgets ("Align & average", "Cluster").

A particle set comes either from a points layer on a tomogram image layer (boxes of ``box``
voxels are cut around the points) or from a subtomogram STAR file (one MRC per particle).
:class:`ParticleInputs` makes the five input widgets, keeps the layer choices current,
shows the inputs of the chosen source, and loads the particles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, SpinBox

__all__ = ["SOURCES", "ParticleInputs"]

SOURCES = ("points on tomogram", "subtomogram STAR file")


class ParticleInputs:
    """Mixin for a :class:`~._base.JobWidget` (it needs ``self.viewer``)."""

    def _make_particle_inputs(self) -> list:
        """Create ``source``, ``points``, ``tomogram``, ``box``, ``star``; return them in form order."""
        self.source = ComboBox(label="particles from", choices=list(SOURCES), value=SOURCES[0])
        self.points = ComboBox(label="points", choices=self._layer_choices("points"))
        self.tomogram = ComboBox(label="tomogram", choices=self._layer_choices("image"))
        self.box = SpinBox(label="box (voxels)", value=32, min=8, max=256, step=2)
        self.star = FileEdit(label="STAR file", mode="r", filter="*.star")
        return [self.source, self.points, self.tomogram, self.box, self.star]

    def _layer_choices(self, kind: str):
        def choices(_=None):
            return [layer.name for layer in self.viewer.layers if layer._type_string == kind]
        return choices

    def _layer_combos(self) -> tuple:
        """The combo boxes listing layers (a widget with more extends this)."""
        return (self.points, self.tomogram)

    def _refresh_choices(self, *_):
        for w in self._layer_combos():
            w.reset_choices()

    def _show_particle_inputs(self) -> None:
        from_points = self.source.value == SOURCES[0]
        for w in (self.points, self.tomogram, self.box):
            w.visible = from_points
        self.star.visible = not from_points

    @staticmethod
    def _voxel_size(layer) -> float:
        meta = layer.metadata.get("napari_cryoalign", {}) if hasattr(layer, "metadata") else {}
        return float(meta.get("voxel_size_angstrom", layer.scale[-1]))

    def _load_particles(self) -> dict:
        """The particles (cheap: cuts boxes or reads files) and where they came from."""
        from ..backend.align.extract import extract_subtomograms, load_particle_set
        from ..errors import InputError

        if self.source.value == SOURCES[0]:
            if not self.points.value or not self.tomogram.value:
                raise InputError("a points layer and a tomogram image layer", field="particles", got="none chosen")
            pts, tomo = self.viewer.layers[self.points.value], self.viewer.layers[self.tomogram.value]
            if tomo.ndim != 3 or pts.ndim != 3:
                raise InputError("a 3D tomogram and 3D points", field="particles", got=f"{tomo.ndim}D / {pts.ndim}D")
            world = np.asarray(pts.data, dtype=float) * np.asarray(pts.scale) + np.asarray(pts.translate)
            zyx = (world - np.asarray(tomo.translate)) / np.asarray(tomo.scale)
            ext = extract_subtomograms(np.asarray(tomo.data), zyx[:, ::-1], int(self.box.value), path=tomo.name)
            if len(ext.rows) == 0:
                raise InputError("at least one box inside the tomogram", field="particles",
                                 got="; ".join(s.reason for s in ext.skipped[:2]))
            return {"volumes": ext.volumes, "rows": ext.rows, "skipped": ext.skipped, "points": pts.name, "zyx": zyx,
                    "voxel": self._voxel_size(tomo), "resid": ext.residual_origins_voxels, "initial": None,
                    "tomo_name": tomo.name, "shape": tuple(tomo.data.shape)}
        if not self.star.value or not Path(self.star.value).is_file():
            raise InputError("an existing subtomogram STAR file", path=self.star.value, field="STAR file")
        ps = load_particle_set(self.star.value)
        return {"volumes": ps.volumes, "rows": ps.rows, "skipped": ps.skipped, "points": None, "zyx": None,
                "voxel": ps.voxel_size, "resid": ps.extraction_origins_voxels, "initial": None, "pset": ps}
