"""npe2 writer: a points layer -> a RELION particle STAR file.

Point ``(z, y, x)`` data coordinates are 0-based tomogram voxels and become
``rlnCoordinateX/Y/Z``; when the tomogram shape and voxel size are known (layer metadata
set by this plugin's reader and widgets, or the layer's scale) the RELION 5
``rlnCentered*Angst`` columns and the general block are written too. Every ``rln*``
column of ``features`` is kept (scores, angles, classes...), so a STAR file read by the
reader and written back keeps its content. The write is atomic and refuses to replace the
file the layer was read from.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._layer_geometry import plugin_metadata, voxel_size_from
from .errors import InputError

_COORD_COLUMNS = {
    "rlnCoordinateX",
    "rlnCoordinateY",
    "rlnCoordinateZ",
    "rlnCenteredCoordinateXAngst",
    "rlnCenteredCoordinateYAngst",
    "rlnCenteredCoordinateZAngst",
}

# columns that io.write_particles writes itself (from its arguments or the optics block)
_WRITTEN_BY_WRITER = {"rlnTomoName", "rlnOpticsGroup"}


def write_points(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for points layers; returns the paths written."""
    path = str(path)
    if not path.lower().endswith(".star"):
        path += ".star"
    points = np.asarray(data, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(
            "a points layer with 3D (z, y, x) coordinates", path=path, field="layer data", got=f"shape {points.shape}"
        )
    info = plugin_metadata(meta.get("metadata"))
    source = info.get("path")
    if source and Path(source).exists() and Path(source).resolve() == Path(path).resolve():
        raise InputError("an output path different from the file the layer was read from", path=path, field="output")
    voxel = voxel_size_from(meta.get("metadata"), meta.get("scale"))
    features = meta.get("features")
    extra = None
    tomo_name = info.get("tomo_name") or meta.get("name")
    if isinstance(features, pd.DataFrame) and len(features.columns):
        if "rlnTomoName" in features.columns and features["rlnTomoName"].notna().all():
            tomo_name = [str(t) for t in features["rlnTomoName"]]
        keep = [
            c
            for c in features.columns
            if str(c).startswith("rln") and c not in _COORD_COLUMNS and c not in _WRITTEN_BY_WRITER
        ]
        if keep:
            extra = features[keep].reset_index(drop=True)
    from .io import write_particles

    write_particles(
        path,
        coordinates_xyz=points[:, ::-1],
        tomo_name=tomo_name,
        tomogram_shape=info.get("tomogram_shape"),
        voxel_size=voxel,
        extra_columns=extra,
        form="both" if info.get("tomogram_shape") and voxel else "relion4",
        overwrite=True,
    )
    return [os.fspath(path)]
