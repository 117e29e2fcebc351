"""Per-particle quantities of a STAR file as arrays, and the particle-file writer.

The accessors read one quantity out of a :class:`~.star.ParticleTable` (or its DataFrame):
:func:`coordinates_xyz` (0-based voxels, x, y, z), :func:`euler_deg` (RELION ZYZ, degrees),
:func:`origins_angstrom` (Å, RELION sign), :func:`classes` (1-based), :func:`scores`,
:func:`tomo_names`, :func:`image_names`. :func:`write_particles` writes such arrays as the
RELION columns (docs/conventions.md), in the RELION 4 and/or 5 form.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ._atomic import check_output_path
from .star import (
    ANGLE_COLUMNS,
    CENTERED_COLUMNS,
    CLASS_COLUMN,
    COORDINATE_COLUMNS,
    IMAGE_COLUMN,
    OPTICS_GROUP_COLUMN,
    ORIGIN_COLUMNS,
    ORIGIN_PIXEL_COLUMNS,
    SCORE_COLUMN,
    TOMO_COLUMN,
    ParticleTable,
    _check_bounds,
    _has,
    _numeric,
    _positive,
    voxels_to_centered_angstrom,
    write_star,
)

__all__ = [
    "coordinates_xyz",
    "euler_deg",
    "origins_angstrom",
    "classes",
    "scores",
    "tomo_names",
    "image_names",
    "write_particles",
]


# ----------------------------------------------------------------------------- accessors
def _df(table) -> pd.DataFrame:
    return table.data if isinstance(table, ParticleTable) else table


def _path(table):
    return table.path if isinstance(table, ParticleTable) else None


def coordinates_xyz(table: ParticleTable | pd.DataFrame) -> np.ndarray:
    """``(n, 3)`` float64 0-based voxel coordinates ``(x, y, z)``; z is 0 for 2D files.

    Raises
    ------
    InputError
        No ``rlnCoordinateX/Y`` columns.
    """
    df = _df(table)
    if not _has(df, COORDINATE_COLUMNS[:2]):
        raise InputError("columns rlnCoordinateX, rlnCoordinateY[, rlnCoordinateZ]",
                         path=_path(table), field="coordinates",
                         got="columns " + ", ".join(map(str, df.columns)))
    cols = [c for c in COORDINATE_COLUMNS if c in df.columns]
    out = np.zeros((len(df), 3))
    out[:, :len(cols)] = _numeric(df, cols, _path(table))
    return out


def euler_deg(table: ParticleTable | pd.DataFrame) -> np.ndarray:
    """``(n, 3)`` float64 ``(rot, tilt, psi)`` in degrees (RELION ZYZ); a missing column
    gives zeros."""
    df = _df(table)
    out = np.zeros((len(df), 3))
    for j, c in enumerate(ANGLE_COLUMNS):
        if c in df.columns:
            out[:, j] = _numeric(df, [c], _path(table))[:, 0]
    return out


def _row_pixel_size(table) -> np.ndarray | None:
    """Per-row pixel size (Å) for pixel-unit origins, or None."""
    df = _df(table)
    if isinstance(table, ParticleTable):
        optics = table.optics
        if (optics is not None and OPTICS_GROUP_COLUMN in df.columns
                and OPTICS_GROUP_COLUMN in optics.columns and "rlnImagePixelSize" in optics.columns):
            m = dict(zip(optics[OPTICS_GROUP_COLUMN], optics["rlnImagePixelSize"].astype(float)))
            vals = df[OPTICS_GROUP_COLUMN].map(m).to_numpy(dtype=float, na_value=np.nan)
            if np.isfinite(vals).all():
                return vals
        if table.voxel_size is not None:
            return np.full(len(df), float(table.voxel_size))
    if _has(df, ("rlnDetectorPixelSize", "rlnMagnification")):
        return (_numeric(df, ["rlnDetectorPixelSize"], None)[:, 0] * 1e4
                / _numeric(df, ["rlnMagnification"], None)[:, 0])
    return None


def origins_angstrom(table: ParticleTable | pd.DataFrame) -> np.ndarray:
    """``(n, 3)`` float64 shifts ``(x, y, z)`` in Å (RELION sign: the true centre is at
    ``coordinate - origin / voxel_size``).

    From ``rlnOriginX/Y/ZAngst``; for RELION <= 3.0 files from ``rlnOriginX/Y/Z`` (pixels)
    times the pixel size (optics group, table voxel size, or detector pixel size /
    magnification). Missing columns give zeros.

    Raises
    ------
    InputError
        Pixel origins without any pixel size.
    """
    df = _df(table)
    out = np.zeros((len(df), 3))
    if any(c in df.columns for c in ORIGIN_COLUMNS):
        for j, c in enumerate(ORIGIN_COLUMNS):
            if c in df.columns:
                out[:, j] = _numeric(df, [c], _path(table))[:, 0]
        return out
    present = [c for c in ORIGIN_PIXEL_COLUMNS if c in df.columns]
    if present:
        px = _row_pixel_size(table)
        if px is None:
            raise InputError("a pixel size to convert rlnOriginX/Y/Z (pixels) to Angstrom "
                             "(optics rlnImagePixelSize or rlnDetectorPixelSize and "
                             "rlnMagnification)", path=_path(table), field="voxel_size")
        for j, c in enumerate(ORIGIN_PIXEL_COLUMNS):
            if c in df.columns:
                out[:, j] = _numeric(df, [c], _path(table))[:, 0] * px
    return out


def classes(table: ParticleTable | pd.DataFrame, *, default: int | None = None) -> np.ndarray | None:
    """``(n,)`` int64 ``rlnClassNumber`` (1-based); None (or ``default`` for every row)
    when the column is absent."""
    df = _df(table)
    if CLASS_COLUMN not in df.columns:
        return None if default is None else np.full(len(df), int(default), dtype=np.int64)
    return _numeric(df, [CLASS_COLUMN], _path(table))[:, 0].astype(np.int64)


def scores(table: ParticleTable | pd.DataFrame) -> np.ndarray | None:
    """``(n,)`` float64 ``rlnAutopickFigureOfMerit`` (higher = more likely a particle), or
    None when absent."""
    df = _df(table)
    if SCORE_COLUMN not in df.columns:
        return None
    return _numeric(df, [SCORE_COLUMN], _path(table))[:, 0]


def tomo_names(table: ParticleTable | pd.DataFrame) -> np.ndarray | None:
    """``(n,)`` object array of ``rlnTomoName`` strings, or None when absent."""
    df = _df(table)
    if TOMO_COLUMN not in df.columns:
        return None
    return df[TOMO_COLUMN].astype(str).to_numpy(dtype=object)


def image_names(table: ParticleTable | pd.DataFrame) -> np.ndarray | None:
    """``(n,)`` object array of ``rlnImageName`` strings, or None when absent."""
    df = _df(table)
    if IMAGE_COLUMN not in df.columns:
        return None
    return df[IMAGE_COLUMN].astype(str).to_numpy(dtype=object)


# ----------------------------------------------------------------------------- writing
def _as_shape(shape, path, name="tomogram_shape") -> tuple[int, int, int]:
    try:
        vals = tuple(int(v) for v in shape)
        if len(vals) != 3 or any(v <= 0 for v in vals):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError("a tomogram shape (z, y, x) of three positive voxel counts", path=path,
                         field=name, got=repr(shape)) from None
    return vals  # type: ignore[return-value]


def _rows(name, value, n, ncols, path) -> np.ndarray | None:
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("numbers", path=path, field=name, got=type(value).__name__) from None
    want = (n, ncols) if ncols > 1 else (n,)
    if ncols > 1 and arr.ndim == 2 and arr.shape[0] == n and arr.shape[1] == 2 and name == "coordinates_xyz":
        arr = np.column_stack([arr, np.zeros(n)])
    if arr.shape != want:
        raise InputError(f"an array of shape {want}", path=path, field=name, got=f"shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("finite numbers", path=path, field=name, got="NaN or inf")
    return arr


def _n_rows(path, **arrays) -> int:
    n = None
    for name, v in arrays.items():
        if v is None or isinstance(v, str):
            continue
        length = len(v)
        if n is None:
            n = length
        elif length != n:
            raise InputError(f"{n} rows like the other per-particle inputs", path=path,
                             field=name, got=f"{length} rows")
    if n is None:
        raise InputError("at least one per-particle input (coordinates_xyz, euler_deg, "
                         "image_names, ...)", path=path, field="coordinates_xyz", got="none")
    return n


def write_particles(path: str | os.PathLike, *, coordinates_xyz=None, euler_deg=None,
                    origins_angstrom=None, classes=None, scores=None,
                    image_names: Sequence[str] | None = None,
                    tomo_name: str | Sequence[str] | None = None,
                    tomogram_shape: Sequence[int] | None = None, voxel_size: float | None = None,
                    extra_columns: Mapping[str, Any] | pd.DataFrame | None = None,
                    form: str = "both", sort_by_score: bool = False, overwrite: bool = False,
                    optics: Mapping[str, Any] | None = None, image_size: int | None = None) -> Path:
    """Write a particle STAR file, atomically.

    Parameters
    ----------
    path : path-like
    coordinates_xyz : (n, 3) array, optional
        0-based voxel coordinates (x, y, z) in the tomogram (``rlnCoordinateX/Y/Z``).
    euler_deg : (n, 3) array, optional
        (rot, tilt, psi), RELION ZYZ, degrees.
    origins_angstrom : (n, 3) array, optional
        ``rlnOriginX/Y/ZAngst``.
    classes : (n,) ints, optional
        ``rlnClassNumber`` (1-based).
    scores : (n,) floats, optional
        ``rlnAutopickFigureOfMerit``.
    image_names : (n,) str, optional
        ``rlnImageName`` (``"3@stack.mrcs"`` or a subtomogram path relative to the STAR file).
    tomo_name : str or (n,) str, optional
        ``rlnTomoName``.
    tomogram_shape : (z, y, x), optional
        Tomogram size in voxels; with ``voxel_size`` needed for the centered form, and
        written as ``rlnTomoSizeX/Y/Z`` in the general block (RELION 5 form).
    voxel_size : float, optional
        Å; written to the optics block (``rlnImagePixelSize``,
        ``rlnTomoTiltSeriesPixelSize``).
    extra_columns : dict or DataFrame, optional
        More particle columns (n values each); may not repeat a column written above.
    form : {"both", "relion4", "relion5"}
        "relion4": ``rlnCoordinateX/Y/Z`` + optics block. "relion5": centered Å
        coordinates, general + optics blocks (needs ``tomogram_shape`` and
        ``voxel_size``). "both": all of these, the centered form only when shape and voxel
        size are given.
    sort_by_score : bool
        Order rows by decreasing score (needs ``scores``; stable).
    overwrite : bool
        Replace an existing file. Default False.
    optics : dict, optional
        More optics values (e.g. ``rlnVoltage``), written in the one optics group.
    image_size : int, optional
        Box size for ``rlnImageSize``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InputError
        Wrong shapes or lengths (``field`` = the argument), non-finite values, centered form
        requested without shape/voxel size, existing output without ``overwrite``.
    """
    path = check_output_path(path, overwrite=overwrite)
    if form not in ("both", "relion4", "relion5"):
        raise InputError("form 'both', 'relion4' or 'relion5'", path=path, field="form", got=form)
    extra_df = None
    if extra_columns is not None:
        extra_df = pd.DataFrame(extra_columns).reset_index(drop=True)
    n = _n_rows(path, coordinates_xyz=coordinates_xyz, euler_deg=euler_deg,
                origins_angstrom=origins_angstrom, classes=classes, scores=scores,
                image_names=image_names,
                tomo_name=None if isinstance(tomo_name, str) else tomo_name,
                extra_columns=None if extra_df is None or extra_df.shape[1] == 0 else extra_df)
    coords = _rows("coordinates_xyz", coordinates_xyz, n, 3, path)
    eul = _rows("euler_deg", euler_deg, n, 3, path)
    ori = _rows("origins_angstrom", origins_angstrom, n, 3, path)
    cls = _rows("classes", classes, n, 1, path)
    sco = _rows("scores", scores, n, 1, path)
    vs = _positive(voxel_size, path) if voxel_size is not None else None
    shape = _as_shape(tomogram_shape, path) if tomogram_shape is not None else None
    want_centered = form == "relion5" or (form == "both" and shape is not None and vs is not None)
    if form == "relion5" and coords is not None and (shape is None or vs is None):
        raise InputError("tomogram_shape and voxel_size for the RELION 5 centered coordinates",
                         path=path, field="tomogram_shape" if shape is None else "voxel_size",
                         got="none")
    if cls is not None and (np.any(cls != np.round(cls)) or np.any(cls < 1)):
        raise InputError("integer class numbers >= 1 (1-based)", path=path, field="classes",
                         got=f"min {cls.min():g}")
    if sort_by_score and sco is None:
        raise InputError("scores to sort by", path=path, field="scores", got="none")
    if coords is not None and shape is not None:
        _check_bounds(coords, np.tile(np.array(shape[::-1], dtype=float), (n, 1)), path)

    cols: dict[str, Any] = {}
    if tomo_name is not None:
        cols[TOMO_COLUMN] = [tomo_name] * n if isinstance(tomo_name, str) else [str(t) for t in tomo_name]
    if coords is not None:
        if form in ("both", "relion4"):
            for j, c in enumerate(COORDINATE_COLUMNS):
                cols[c] = coords[:, j]
        if want_centered:
            cen = voxels_to_centered_angstrom(coords, tomogram_shape=shape, voxel_size=vs)
            for j, c in enumerate(CENTERED_COLUMNS):
                cols[c] = cen[:, j]
    if eul is not None:
        for j, c in enumerate(ANGLE_COLUMNS):
            cols[c] = eul[:, j]
    if ori is not None:
        for j, c in enumerate(ORIGIN_COLUMNS):
            cols[c] = ori[:, j]
    if cls is not None:
        cols[CLASS_COLUMN] = cls.astype(np.int64)
    if sco is not None:
        cols[SCORE_COLUMN] = sco
    if image_names is not None:
        cols[IMAGE_COLUMN] = [str(s) for s in image_names]
    cols[OPTICS_GROUP_COLUMN] = np.ones(n, dtype=np.int64)
    df = pd.DataFrame(cols)
    if extra_df is not None and extra_df.shape[1]:
        clash = [c for c in extra_df.columns if c in df.columns]
        if clash:
            raise InputError("extra columns that are not written from the other arguments",
                             path=path, field="extra_columns", got=", ".join(map(str, clash)))
        df = pd.concat([df, extra_df], axis=1)
    if sort_by_score:
        df = df.iloc[np.argsort(-sco, kind="stable")].reset_index(drop=True)

    opt: dict[str, Any] = {OPTICS_GROUP_COLUMN: [1], "rlnOpticsGroupName": ["opticsGroup1"]}
    if vs is not None:
        opt["rlnImagePixelSize"] = [vs]
        if form != "relion4":
            opt["rlnTomoTiltSeriesPixelSize"] = [vs]
    if image_size is not None:
        opt["rlnImageSize"] = [int(image_size)]
        opt["rlnImageDimensionality"] = [3]  # subtomograms; stacks pass 2 via ``optics``
    for k, v in (optics or {}).items():
        opt[k] = [v]
    blocks: dict[str, Any] = {}
    if form != "relion4":
        general: dict[str, Any] = {"rlnTomoSubTomosAre2DStacks": 0}
        if shape is not None:
            general.update(rlnTomoSizeX=shape[2], rlnTomoSizeY=shape[1], rlnTomoSizeZ=shape[0])
        blocks["general"] = general
    blocks["optics"] = pd.DataFrame(opt)
    blocks["particles"] = df
    return write_star(path, blocks, overwrite=overwrite)
