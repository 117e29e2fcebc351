"""What a napari layer says about the data behind it: voxel size, file, tomogram name, array, geometry.

The one place that reads the metadata this plugin's reader, sample data and widgets put on
layers (``layer.metadata["napari_cryoalign"]``), shared by every dock widget and the STAR
writer. Nothing here imports napari or Qt: the functions take any object with napari's
layer attributes (``data``, ``scale``, ``translate``, ``metadata``, ``name``), or, for the
writer, the plain ``metadata`` dict and ``scale``.

The metadata's ``voxel_size_angstrom`` is either one number (the STAR reader, the
simulators) or the MRC header's record ``(x, y, z)`` in Å (the MRC reader); the voxel size
used for computation is the x value (CONVENTIONS.md: a layer's scale is ``(vz, vy, vx)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io._kinds import file_stem

__all__ = [
    "TomogramGeometry",
    "layer_array",
    "layer_path",
    "layer_voxel_size",
    "plugin_metadata",
    "points_in_voxels_zyx",
    "tomogram_geometry",
    "tomogram_name",
    "voxel_size_from",
]

def plugin_metadata(metadata) -> dict:
    """This plugin's part of a layer's ``metadata`` (``{}`` when there is none)."""
    if not isinstance(metadata, dict):
        return {}
    info = metadata.get("napari_cryoalign")
    return info if isinstance(info, dict) else {}


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def voxel_size_from(metadata, scale=None) -> float | None:
    """The voxel size in Å from a layer's ``metadata`` and ``scale``, or None when neither tells.

    The plugin's ``voxel_size_angstrom`` wins (a number, or ``(x, y, z)``: x is used); else the
    last entry of ``scale`` when it is not napari's default 1.
    """
    v = plugin_metadata(metadata).get("voxel_size_angstrom")
    if isinstance(v, (list, tuple, np.ndarray)):
        v = v[0] if len(v) else None
    v = _positive(v)
    if v is not None:
        return v
    if scale is not None and len(scale):
        s = _positive(scale[-1])
        if s is not None and s != 1.0:
            return s
    return None


def layer_voxel_size(layer) -> float:
    """A layer's voxel (or pixel) size in Å: :func:`voxel_size_from`, else 1.0."""
    return voxel_size_from(getattr(layer, "metadata", None), getattr(layer, "scale", None)) or 1.0


def layer_path(layer) -> Path | None:
    """The file a layer was read from (the reader's ``path``), or None."""
    p = plugin_metadata(getattr(layer, "metadata", None)).get("path")
    return Path(p) if p else None


def layer_array(layer) -> Any:
    """The full-resolution data of an image layer (numpy array or memmap, not copied)."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return data


def tomogram_name(layer) -> str:
    """``rlnTomoName`` for a tomogram layer: its metadata's ``tomo_name``, else its file's stem, else its name."""
    info = plugin_metadata(getattr(layer, "metadata", None))
    if info.get("tomo_name"):
        return str(info["tomo_name"])
    p = layer_path(layer)
    return file_stem(p) if p is not None else str(layer.name)


@dataclass(frozen=True)
class TomogramGeometry:
    """A tomogram image layer as the backend needs it.

    Attributes
    ----------
    data : the ``(z, y, x)`` array (not copied; a memmap for large files)
    voxel_size : Å per voxel (:func:`layer_voxel_size`)
    shape : ``(z, y, x)`` in voxels
    path : the file it was read from, or None
    name : ``rlnTomoName`` (:func:`tomogram_name`)
    layer_name : the layer's name in the viewer
    """

    data: Any
    voxel_size: float
    shape: tuple[int, ...]
    path: Path | None
    name: str
    layer_name: str


def tomogram_geometry(layer) -> TomogramGeometry:
    """The :class:`TomogramGeometry` of an image layer."""
    data = layer_array(layer)
    return TomogramGeometry(data=data, voxel_size=layer_voxel_size(layer), shape=tuple(int(s) for s in data.shape),
                            path=layer_path(layer), name=tomogram_name(layer), layer_name=str(layer.name))


def points_in_voxels_zyx(points, image) -> np.ndarray:
    """``(n, 3)`` coordinates ``(z, y, x)`` of a points layer's points in voxels of an image layer.

    Goes through world coordinates (each layer's ``scale`` and ``translate``), so points drawn
    on a tomogram, read from a STAR file with its own scale, or placed on a binned copy all
    land on the right voxels.
    """
    world = np.asarray(points.data, dtype=np.float64).reshape(-1, len(points.scale)) * np.asarray(points.scale) \
        + np.asarray(points.translate)
    return (world - np.asarray(image.translate)) / np.asarray(image.scale)
