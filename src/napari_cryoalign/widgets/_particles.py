"""Particle inputs shared by the subtomogram widgets ("Align & average", "Cluster").

A particle set comes either from a points layer on a tomogram image layer (boxes of ``box``
voxels are cut around the points) or from a subtomogram STAR file (one MRC per particle).
:class:`ParticleInputs` makes the five input widgets, keeps the layer choices current,
shows the inputs of the chosen source, and loads the particles into a
:class:`ParticleSource`, which also writes the particles' STAR file after a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, SpinBox

from .._layer_geometry import TomogramGeometry, points_in_voxels_zyx, tomogram_geometry

__all__ = ["SOURCES", "ParticleInputs", "ParticleSource"]

SOURCES = ("points on tomogram", "subtomogram STAR file")
#: STAR column of the per-particle correlation after alignment (= backend.align.extract.SCORE_COLUMN)
SCORE = "cryoalignCorrelation"


@dataclass(frozen=True, eq=False)
class ParticleSource:
    """The particles of one run and where they came from.

    Attributes
    ----------
    volumes : ``(m, N, N, N)`` float32, the particles kept
    rows : ``(m,)`` their rows in the points layer (or the STAR file)
    skipped : list of ``backend.align.extract.Skipped`` (boxes outside the tomogram, empty files)
    voxel : Å per voxel
    residual_origins : ``(m, 3)`` (x, y, z) sub-voxel remainder of the extraction (voxels, RELION sign)
    points : the points layer's name, or None (STAR file)
    zyx : ``(n, 3)`` every point of the layer in tomogram voxels ``(z, y, x)``, or None
    tomogram : the tomogram's :class:`~napari_cryoalign._layer_geometry.TomogramGeometry`, or None
    particle_set : ``backend.align.extract.ParticleSet`` of a STAR file, or None
    fraction_inside : ``(m,)`` fraction of each box inside the tomogram (boxes crossing its faces are
        padded), or None (all 1)
    inside_masks : ``(m, N, N, N)`` real-space masks of those boxes for the averages, or None (none padded)
    """

    volumes: np.ndarray
    rows: np.ndarray
    skipped: list
    voxel: float
    residual_origins: np.ndarray
    points: str | None = None
    zyx: np.ndarray | None = None
    tomogram: TomogramGeometry | None = None
    particle_set: object = None
    fraction_inside: np.ndarray | None = None
    inside_masks: np.ndarray | None = None

    @property
    def box(self) -> int:
        return int(self.volumes.shape[-1])

    @property
    def files(self) -> list[Path]:
        """The input files behind the particles (never written over)."""
        paths = [None if self.tomogram is None else self.tomogram.path]
        if self.particle_set is not None:
            paths.append(getattr(self.particle_set.table, "path", None))
        return [Path(p) for p in paths if p is not None]

    def origins_angstrom(self, alignment, keep=None) -> np.ndarray:
        """``(k, 3)`` RELION origins (Å) of the aligned particles (``keep``: indices into the kept ones)."""
        keep = slice(None) if keep is None else keep
        from ..backend.align.extract import relion_origins_angstrom

        return relion_origins_angstrom(np.asarray(alignment.origins_voxels)[keep], self.residual_origins[keep],
                                       self.voxel)

    def write_star(self, out, alignment, *, keep=None, extra_columns: dict | None = None,
                   overwrite: bool = False) -> Path:
        """Write the particles ``keep`` (indices into the kept ones; default all) with their poses.

        Points on a tomogram: their coordinates (0-based voxels), angles, origins (Å),
        ``cryoalignCorrelation`` and ``extra_columns``, with the tomogram's name, shape and
        voxel size (RELION 4 and 5 forms). A STAR file: every input column kept, the poses set
        (``backend.align.extract.write_aligned_star``).
        """
        from ..backend.align.types import AlignmentResult

        keep = np.arange(len(self.rows)) if keep is None else np.asarray(keep, dtype=np.int64)
        ali = AlignmentResult(np.asarray(alignment.rotations)[keep], np.asarray(alignment.origins_voxels)[keep],
                              np.asarray(alignment.scores)[keep], alignment.method)
        extra = {k: np.asarray(v).reshape(-1) for k, v in (extra_columns or {}).items()}
        if self.particle_set is not None:
            from ..backend.align.extract import write_aligned_star

            ps = self.particle_set
            sub = dataclasses.replace(ps, rows=ps.rows[keep],
                                      extraction_origins_voxels=ps.extraction_origins_voxels[keep])
            return write_aligned_star(out, sub, ali, overwrite=overwrite, extra_columns=extra)
        from ..io import write_particles

        tomo = self.tomogram
        return write_particles(out, coordinates_xyz=self.zyx[self.rows[keep]][:, ::-1], euler_deg=ali.euler_deg,
                               origins_angstrom=self.origins_angstrom(alignment, keep), tomo_name=tomo.name,
                               voxel_size=self.voxel, tomogram_shape=tomo.shape,
                               extra_columns={**extra, SCORE: np.asarray(ali.scores)}, overwrite=overwrite)


class ParticleInputs:
    """Mixin for a :class:`~._base.JobWidget` (it needs ``self.viewer``)."""

    def _make_particle_inputs(self) -> list:
        """Create ``source``, ``points``, ``tomogram``, ``box``, ``star``; return them in form order."""
        self.source = ComboBox(label="particles from", choices=list(SOURCES), value=SOURCES[0])
        self.points = ComboBox(label="points", choices=self._layer_choices("points"))
        self.tomogram = ComboBox(label="tomogram", choices=self._layer_choices("image"))
        self.box = SpinBox(label="box (voxels)", value=32, min=8, max=256, step=2)
        self.star = FileEdit(label="STAR file", mode="r", filter="*.star")
        self.viewer.layers.events.inserted.connect(self._refresh_choices)
        self.viewer.layers.events.removed.connect(self._refresh_choices)
        return [self.source, self.points, self.tomogram, self.box, self.star]

    def _make_tilt_range(self) -> list:
        """Create ``tilt_min``, ``tilt_max``: the tilt range of the data, for the particles' missing wedge."""
        self.tilt_min = FloatSpinBox(label="tilt min (°)", value=-60.0, min=-90.0, max=0.0)
        self.tilt_max = FloatSpinBox(label="tilt max (°)", value=60.0, min=0.0, max=90.0)
        return [self.tilt_min, self.tilt_max]

    def _particle_mask(self, box: int):
        """The particles' observed Fourier mask (fftshift-ed ``(box,)*3``) for the chosen tilt range."""
        from ..backend.wedge import particle_fourier_mask

        return particle_fourier_mask(box, tilt_range_deg=(self.tilt_min.value, self.tilt_max.value))

    def _layer_choices(self, kind: str):
        def choices(_=None):
            return [layer.name for layer in self.viewer.layers if layer._type_string == kind]
        return choices

    def _layer_combos(self) -> tuple:
        """The combo boxes listing layers (a widget with more extends this)."""
        return (self.points, self.tomogram)

    def _refresh_choices(self, event=None):
        for w in self._layer_combos():
            w.reset_choices()
        layer = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if layer is not None:
            self._prefer_new_picks(layer)

    def _prefer_new_picks(self, layer) -> None:
        """A picks layer made by *Pick particles* becomes this widget's input (and its tomogram the
        tomogram), so that averaging the picks is one click: no export/import step."""
        from .._layer_geometry import plugin_metadata, tomogram_name

        info = plugin_metadata(getattr(layer, "metadata", None))
        if layer._type_string != "points" or info.get("role") != "picks":
            return
        self.source.value = SOURCES[0]
        self.points.value = layer.name
        tomo = info.get("tomogram")
        for im in self.viewer.layers:
            if im._type_string == "image" and im.ndim == 3 and tomogram_name(im) == tomo:
                self.tomogram.value = im.name
                break

    def _show_particle_inputs(self) -> None:
        from_points = self.source.value == SOURCES[0]
        for w in (self.points, self.tomogram, self.box):
            w.visible = from_points
        self.star.visible = not from_points

    def _load_particles(self) -> ParticleSource:
        """The particles (cheap: cuts boxes or reads files) and where they came from."""
        from ..backend.align.extract import extract_subtomograms, load_particle_set
        from ..errors import InputError

        if self.source.value == SOURCES[0]:
            if not self.points.value or not self.tomogram.value:
                raise InputError("a points layer and a tomogram image layer", field="particles", got="none chosen")
            pts, layer = self.viewer.layers[self.points.value], self.viewer.layers[self.tomogram.value]
            if layer.ndim != 3 or pts.ndim != 3:
                raise InputError("a 3D tomogram and 3D points", field="particles", got=f"{layer.ndim}D / {pts.ndim}D")
            tomo = tomogram_geometry(layer)
            zyx = points_in_voxels_zyx(pts, layer)
            ext = extract_subtomograms(np.asarray(tomo.data), zyx[:, ::-1], int(self.box.value),
                                       path=tomo.path or tomo.layer_name)
            if len(ext.rows) == 0:
                raise InputError("at least one particle centred inside the tomogram", field="particles",
                                 got="; ".join(s.reason for s in ext.skipped[:2]))
            return ParticleSource(volumes=ext.volumes, rows=ext.rows, skipped=list(ext.skipped), voxel=tomo.voxel_size,
                                  residual_origins=ext.residual_origins_voxels, points=pts.name, zyx=zyx,
                                  tomogram=tomo, fraction_inside=ext.fraction_inside,
                                  inside_masks=ext.inside_masks())
        if not self.star.value or not Path(self.star.value).is_file():
            raise InputError("an existing subtomogram STAR file", path=self.star.value, field="STAR file")
        ps = load_particle_set(self.star.value)
        return ParticleSource(volumes=ps.volumes, rows=ps.rows, skipped=list(ps.skipped), voxel=ps.voxel_size,
                              residual_origins=ps.extraction_origins_voxels, particle_set=ps)
