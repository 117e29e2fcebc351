"""The labels of the "Pick particles" widget: a points layer per tomogram, undo/redo, autosave, restore.

:class:`LabelsController` owns the ``"<tomogram> labels"`` points layer of the chosen
tomogram: it restores the labels autosaved next to the tomogram's file
(``<stem>_labels.star``, and the removed picks ``<stem>_negatives.star``), records every
change for undo/redo (napari's points layer has none), binds Ctrl+Z / Ctrl+Shift+Z / Ctrl+Y
on the layer, and writes both files when asked (:meth:`flush`). A file that could not be
read is never written over in that session. No Qt here: the widget owns the debounce timer
and calls :meth:`flush`; the controller calls ``on_change`` after every edit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .._layer_geometry import layer_array, layer_path, layer_voxel_size, tomogram_name
from ..errors import CryoAlignError
from ._pick_state import LabelHistory, labels_path_for, negatives_path_for

__all__ = ["LabelsController"]


class LabelsController:
    """Labels of one tomogram at a time (see the module docstring).

    Parameters
    ----------
    viewer : the napari viewer
    on_change : called after every change of the labels (a click, undo/redo, an import)
    where : the name shown in notifications
    """

    def __init__(self, viewer, *, on_change: Callable[[], None], where: str = "Pick particles"):
        self.viewer = viewer
        self.on_change = on_change
        self.where = where
        self.tomogram = None  #: the tomogram image layer the labels belong to
        self.layer = None  #: the labels points layer
        self.history = LabelHistory()
        self.last_autosave: Path | None = None
        self._blocked: set[str] = set()
        self._connected: set[int] = set()
        self._updating = False
        self.marker_size = 10.0

    # ------------------------------------------------------------------ the layer
    def attach(self, tomogram, *, marker_size: float):
        """Show the labels of ``tomogram`` (an image layer): its labels layer, made and restored if needed."""
        self.tomogram, self.layer, self.marker_size = tomogram, None, float(marker_size)
        if tomogram is None:
            return None
        name = f"{tomogram.name} labels"
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
        else:
            restored = self.restore(labels_path_for, "labels")
            layer = self.viewer.add_points(
                restored[:, ::-1] if len(restored) else np.zeros((0, 3)), ndim=3, name=name,
                scale=tuple(tomogram.scale), translate=tuple(tomogram.translate), size=marker_size,
                face_color="transparent", border_color="#00ff7f", border_width=0.12,
                projection_mode="rescale_spherical",
                metadata={"napari_cryoalign": {"role": "labels", "tomogram": tomogram.name}},
            )
            self.viewer.layers.selection.active = layer
            layer.mode = "add"
        if id(layer) not in self._connected:
            layer.events.data.connect(self._on_data)
            layer.bind_key("Control-z", lambda _layer: self.undo(), overwrite=True)
            layer.bind_key("Control-Shift-z", lambda _layer: self.redo(), overwrite=True)
            layer.bind_key("Control-y", lambda _layer: self.redo(), overwrite=True)
            self._connected.add(id(layer))
        self.layer = layer
        self.history.reset(layer.data)
        return layer

    def xyz(self) -> np.ndarray:
        """The labels as ``(n, 3)`` 0-based voxel coordinates (x, y, z)."""
        if self.layer is None:
            return np.zeros((0, 3))
        return np.asarray(self.layer.data, dtype=np.float64).reshape(-1, 3)[:, ::-1].copy()

    def __len__(self) -> int:
        return 0 if self.layer is None else len(self.layer.data)

    def set_marker_size(self, size: float) -> None:
        """Draw the labels at ``size`` (data units of the layer: voxels)."""
        self.marker_size = float(size)
        if self.layer is not None:
            if len(self.layer.data):
                self.layer.size = np.full(len(self.layer.data), size)
            self.layer.current_size = size

    # ------------------------------------------------------------------ edits
    def _on_data(self, event) -> None:
        if self._updating or event.source is not self.layer:
            return
        if str(getattr(event, "action", "changed")) not in ("added", "removed", "changed"):
            return
        if self.history.record(self.layer.data):
            self.on_change()

    def _set(self, data_zyx) -> None:
        self._updating = True
        try:
            self.layer.data = np.asarray(data_zyx, dtype=np.float64).reshape(-1, 3)
            if len(self.layer.data):
                self.layer.size = np.full(len(self.layer.data), self.marker_size)
        finally:
            self._updating = False

    def add(self, coordinates_xyz) -> None:
        """Append labels (0-based voxel x, y, z): undoable, autosaved."""
        if self.layer is None:
            return
        new = np.asarray(coordinates_xyz, dtype=np.float64).reshape(-1, 3)[:, ::-1]
        self._set(np.concatenate([np.asarray(self.layer.data).reshape(-1, 3), new]))
        self.history.record(self.layer.data)
        self.on_change()

    def undo(self) -> bool:
        return self._restore_snapshot(self.history.undo())

    def redo(self) -> bool:
        return self._restore_snapshot(self.history.redo())

    def _restore_snapshot(self, snapshot) -> bool:
        if snapshot is None or self.layer is None:
            return False
        self._set(snapshot)
        self.on_change()
        return True

    # ------------------------------------------------------------------ files
    def _file(self, path_for) -> Path | None:
        p = None if self.tomogram is None else layer_path(self.tomogram)
        if p is None:
            return None
        out = path_for(p)
        return None if str(out) in self._blocked else out

    @property
    def autosave_path(self) -> Path | None:
        """Where the labels are autosaved (``<tomogram>_labels.star``), or None (no file, or blocked)."""
        return self._file(labels_path_for)

    @property
    def negatives_path(self) -> Path | None:
        """Where the removed picks are autosaved (``<tomogram>_negatives.star``), or None."""
        return self._file(negatives_path_for)

    def restore(self, path_for, what: str) -> np.ndarray:
        """Coordinates (x, y, z) autosaved next to the tomogram's file (``path_for``), or none."""
        from napari.utils.notifications import show_info, show_warning

        from ..io import coordinates_xyz, read_particles

        p = None if self.tomogram is None else layer_path(self.tomogram)
        path = None if p is None else path_for(p)
        if path is None or not path.is_file():
            return np.zeros((0, 3))
        try:
            table = read_particles(path, tomogram_shape=tuple(layer_array(self.tomogram).shape),
                                   voxel_size=layer_voxel_size(self.tomogram), require=())
            xyz = coordinates_xyz(table) if table.coordinates_from else np.zeros((0, 3))
        except (CryoAlignError, ValueError, OSError) as exc:
            self._blocked.add(str(path))
            show_warning(f"{self.where}: could not restore {what} ({exc}); that file is kept and "
                         f"{what} of this session are not autosaved over it")
            return np.zeros((0, 3))
        show_info(f"{self.where}: restored {len(xyz)} {what} from {path.name}")
        return np.asarray(xyz, dtype=np.float64).reshape(-1, 3)

    def flush(self, negatives_xyz) -> Path | None:
        """Write the labels and the removed picks ``negatives_xyz`` now; returns the labels file written, or None."""
        if self.tomogram is None:
            return None
        self._write(self.negatives_path, negatives_xyz, "removed picks")
        if self.layer is None:
            return None
        path = self._write(self.autosave_path, self.xyz(), "labels")
        if path is not None:
            self.last_autosave = path
        return path

    def _write(self, path: Path | None, xyz, what: str) -> Path | None:
        """Write coordinates next to the tomogram (nothing when there are none and no file yet)."""
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        if path is None or (not len(xyz) and not path.exists()):
            return None
        from napari.utils.notifications import show_error

        from ..io import ensure_not_input, write_particles

        tomo = self.tomogram
        try:
            ensure_not_input(path, layer_path(tomo))
            write_particles(path, coordinates_xyz=xyz, tomo_name=tomogram_name(tomo),
                            tomogram_shape=tuple(layer_array(tomo).shape), voxel_size=layer_voxel_size(tomo),
                            overwrite=True)
        except (CryoAlignError, OSError, ValueError) as exc:
            show_error(f"{self.where}: could not autosave {what}: {exc}")
            return None
        return path
