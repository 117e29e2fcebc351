"""STAR particle files (RELION conventions): tables, coordinates, RELION 3.0 - 5 forms.

Read with :func:`read_particles` (any RELION 3.0 - 5 particle file); :func:`read_star` and
:func:`write_star` read and write the blocks of any STAR file. The per-particle quantities as
arrays and :func:`~.star_columns.write_particles` are in :mod:`.star_columns`. Column meanings
follow docs/conventions.md and docs/io.md:

* ``rlnCoordinateX/Y/Z``: 0-based voxels of the tomogram the particle was picked in
  (RELION <= 4 form);
* ``rlnCenteredCoordinateX/Y/ZAngst``: ``(coordinate - N/2) * voxel_size`` in Å with
  ``N`` the tomogram size along that axis and ``N/2`` a float (RELION 5 form);
* ``rlnAngleRot/Tilt/Psi``: RELION ZYZ Euler angles in degrees;
* ``rlnOriginX/Y/ZAngst``: shifts in Å (RELION >= 3.1), ``rlnOriginX/Y/Z``: shifts in
  pixels (RELION <= 3.0);
* ``rlnClassNumber`` (1-based), ``rlnAutopickFigureOfMerit`` (score),
  ``rlnTomoName``, ``rlnImageName`` (``index@stack.mrcs`` with a 1-based index, or the
  path of one subtomogram volume; the images themselves are read and written by
  :mod:`.star_images`).

All columns of the file are kept in :attr:`ParticleTable.data`; reading adds the
``rlnCoordinateX/Y/Z`` columns when only the centered form is present.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import starfile

from ..errors import InputError
from ._atomic import _existing_input, atomic_path, check_output_path

__all__ = [
    "ParticleTable",
    "read_star",
    "write_star",
    "read_particles",
    "particle_table",
    "particle_block",
    "read_tomograms_star",
    "centered_angstrom_to_voxels",
    "voxels_to_centered_angstrom",
    "COORDINATE_COLUMNS",
    "CENTERED_COLUMNS",
    "ANGLE_COLUMNS",
    "ORIGIN_COLUMNS",
    "ORIGIN_PIXEL_COLUMNS",
    "CLASS_COLUMN",
    "SCORE_COLUMN",
    "TOMO_COLUMN",
    "IMAGE_COLUMN",
]

log = logging.getLogger(__name__)

COORDINATE_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
CENTERED_COLUMNS = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                    "rlnCenteredCoordinateZAngst")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGIN_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
ORIGIN_PIXEL_COLUMNS = ("rlnOriginX", "rlnOriginY", "rlnOriginZ")
CLASS_COLUMN = "rlnClassNumber"
SCORE_COLUMN = "rlnAutopickFigureOfMerit"
TOMO_COLUMN = "rlnTomoName"
IMAGE_COLUMN = "rlnImageName"
OPTICS_GROUP_COLUMN = "rlnOpticsGroup"
_STRING_COLUMNS = ["rlnTomoName", "rlnImageName", "rlnMicrographName", "rlnOpticsGroupName",
                   "rlnImageOriginalName", "rlnTomoParticleName", "rlnGroupName",
                   "rlnTomoReconstructedTomogram", "rlnTomoTiltSeriesStarFile"]
_PARTICLE_BLOCKS = ("particles", "images", "")
_STAR_FILE = "an existing STAR file"  # what a missing input is told it should be
_PIXEL_SIZE_LABELS = ("rlnTomoTiltSeriesPixelSize", "rlnImagePixelSize")
_SIZE_LABELS = ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")

#: What ``require`` may ask :func:`read_particles` for, and the columns each needs
#: (any one of the alternatives).
REQUIREMENTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "coordinates": (COORDINATE_COLUMNS[:2], CENTERED_COLUMNS[:2]),
    "coordinates3d": (COORDINATE_COLUMNS, CENTERED_COLUMNS),
    "angles": (ANGLE_COLUMNS,),
    "origins": (ORIGIN_COLUMNS[:2], ORIGIN_PIXEL_COLUMNS[:2]),
    "classes": ((CLASS_COLUMN,),),
    "scores": ((SCORE_COLUMN,),),
    "tomo_name": ((TOMO_COLUMN,),),
    "image_names": ((IMAGE_COLUMN,),),
}


@dataclass(frozen=True, eq=False)
class ParticleTable:
    """A particle STAR file.

    Attributes
    ----------
    data : pandas.DataFrame
        One row per particle, every column of the file (plus ``rlnCoordinateX/Y/Z``
        computed from the centered form when the file has only that).
    optics : pandas.DataFrame or None
        The ``data_optics`` block.
    general : dict or None
        The ``data_general`` block (RELION 5).
    form : str
        "relion5" (centered Å coordinates or a version 50001 file with optics),
        "relion4" (3D coordinates with an optics block), "relion3.1" (2D, optics block) or
        "relion3.0" (no optics block).
    path : pathlib.Path or None
    coordinates_from : str or None
        Which columns the voxel coordinates came from: "rlnCoordinate",
        "rlnCenteredCoordinateAngst", or None (no coordinates).
    voxel_size : float or None
        Pixel/voxel size in Å used for conversions (argument, tomograms table, optics or
        general block), when the same for every row.
    tomogram_shape : tuple or None
        ``(z, y, x)`` voxels when known and the same for every row (argument, tomograms
        table or file); ints when whole numbers.
    """

    data: pd.DataFrame
    optics: pd.DataFrame | None = None
    general: dict | None = None
    form: str = "relion4"
    path: Path | None = None
    coordinates_from: str | None = None
    voxel_size: float | None = None
    tomogram_shape: tuple | None = None

    def __len__(self) -> int:
        return len(self.data)

    @property
    def columns(self) -> list[str]:
        return list(self.data.columns)


# ----------------------------------------------------------------------------- reading
def read_star(path: str | os.PathLike) -> dict[str, pd.DataFrame | dict]:
    """Read every block of a STAR file.

    Returns
    -------
    dict
        Block name (``"optics"``, ``"particles"``, ``""`` for ``data_``) to a DataFrame
        (loop blocks) or a dict (key-value blocks). Name-like columns (``rlnTomoName``,
        ``rlnImageName``, ...) stay strings even when they look like numbers.

    Raises
    ------
    InputError
        ``field="path"`` for a missing file, ``field="format"`` when it is not a STAR file
        or holds no data block.
    """
    p = _existing_input(path, expected=_STAR_FILE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(p, always_dict=True, parse_as_string=_STRING_COLUMNS)
    except Exception as err:  # starfile raises many kinds on garbage
        raise InputError("a STAR file (data_ blocks with loop_ or key-value pairs)", path=p,
                         field="format", got=f"{type(err).__name__}: {err}") from None
    if not blocks:
        raise InputError("a STAR file with at least one data_ block", path=p, field="format",
                         got="no data block")
    return dict(blocks)


def write_star(path: str | os.PathLike, blocks: Mapping[str, pd.DataFrame | Mapping[str, Any]], *,
               overwrite: bool = False) -> Path:
    """Write the blocks of a STAR file, in the order given, atomically.

    Parameters
    ----------
    path : path-like
    blocks : mapping
        Block name (``"general"``, ``"optics"``, ``"particles"``, ``""`` for ``data_``) to a
        DataFrame (a loop block, one row per item) or a dict (a key-value block), as
        :func:`read_star` returns them. Floats are written with six decimals (``%.6f``).
    overwrite : bool, keyword-only
        Replace an existing file. Default False.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InputError
        ``field="output"`` for an existing file without ``overwrite``, ``"output folder"`` for
        a folder that does not exist.
    """
    path = check_output_path(path, overwrite=overwrite)
    with atomic_path(path, overwrite=overwrite) as tmp:
        starfile.write(dict(blocks), tmp, float_format="%.6f")
    return path


def _version(path: Path) -> int | None:
    try:
        with open(path, "r", errors="replace") as f:
            for _, line in zip(range(50), f):
                m = re.match(r"\s*#\s*version\s+(\d+)", line)
                if m:
                    return int(m.group(1))
    except OSError:
        pass
    return None


def particle_block(blocks: Mapping[str, Any], *, path: str | os.PathLike | None = None
                   ) -> tuple[str, pd.DataFrame]:
    """The particle table among the blocks :func:`read_star` returned.

    ``data_particles``, else ``data_images``, else ``data_`` (RELION 3.0), else the only loop
    block other than optics/general/global.

    Parameters
    ----------
    blocks : mapping
        Block name to DataFrame or dict.
    path : path-like, optional, keyword-only
        The STAR file, named in the error.

    Returns
    -------
    name : str
        The block's name (``"particles"``, ``"images"``, ``""``, ...).
    table : pandas.DataFrame
        One row per particle (the block itself, not a copy).

    Raises
    ------
    InputError
        ``field="data_particles"`` when no block qualifies.
    """
    for name in _PARTICLE_BLOCKS:
        if isinstance(blocks.get(name), pd.DataFrame):
            return name, blocks[name]
    others = [k for k, v in blocks.items() if isinstance(v, pd.DataFrame)
              and k not in ("optics", "general", "global")]
    if len(others) == 1:
        return others[0], blocks[others[0]]
    raise InputError("a particle table: a data_particles, data_images or data_ loop block",
                     path=path, field="data_particles",
                     got="blocks " + ", ".join(f"data_{k}" for k in blocks) if blocks else "none")


def _general_dict(block) -> dict | None:
    if block is None:
        return None
    if isinstance(block, dict):
        return dict(block)
    if isinstance(block, pd.DataFrame) and len(block) == 1:
        return {k: v for k, v in block.iloc[0].items()}
    return None


def _lookup(label: str, general: dict | None, optics: pd.DataFrame | None):
    """A single value for ``label`` from the general block or a one-valued optics column."""
    if general and label in general:
        return general[label]
    if optics is not None and label in optics.columns:
        vals = pd.unique(optics[label])
        if len(vals) == 1:
            return vals[0]
    return None


def _pixel_size_from_file(general, optics, data: pd.DataFrame) -> float | None:
    for label in _PIXEL_SIZE_LABELS:
        v = _lookup(label, general, optics)
        if v is not None:
            binning = _lookup("rlnTomoTomogramBinning", general, optics)
            v = float(v) * (float(binning) if binning is not None and label ==
                            "rlnTomoTiltSeriesPixelSize" else 1.0)
            if v > 0:
                return v
    if "rlnDetectorPixelSize" in data.columns and "rlnMagnification" in data.columns:
        vals = pd.unique(data["rlnDetectorPixelSize"] * 1e4 / data["rlnMagnification"])
        if len(vals) == 1 and vals[0] > 0:
            return float(vals[0])
    return None


def _shape_from_file(general, optics) -> tuple[float, float, float] | None:
    vals = [_lookup(label, general, optics) for label in _SIZE_LABELS]
    if any(v is None for v in vals):
        return None
    binning = _lookup("rlnTomoTomogramBinning", general, optics)
    b = float(binning) if binning is not None else 1.0
    nx, ny, nz = (float(v) / b for v in vals)  # unrounded: keeps the centre exact
    return (nz, ny, nx)


def _numeric(df: pd.DataFrame, cols: Sequence[str], path) -> np.ndarray:
    out = np.empty((len(df), len(cols)), dtype=np.float64)
    for j, c in enumerate(cols):
        vals = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(vals))
        if bad.size:
            raise InputError("finite numbers", path=path, field=c,
                             got=f"{df[c].iloc[bad[0]]!r} in row {int(bad[0])}"
                             + (f" and {bad.size - 1} more rows" if bad.size > 1 else ""))
        out[:, j] = vals
    return out


def centered_angstrom_to_voxels(centered_xyz, *, tomogram_shape, voxel_size) -> np.ndarray:
    """RELION 5 centered coordinates (Å) to 0-based voxel coordinates.

    ``coordinate = centered / voxel_size + N / 2`` with ``N`` the tomogram size along the
    axis (float division).

    Parameters
    ----------
    centered_xyz : (n, 3) array
        ``rlnCenteredCoordinateX/Y/ZAngst``.
    tomogram_shape : (z, y, x)
    voxel_size : float, Å

    Returns
    -------
    (n, 3) float64 array, (x, y, z) voxels.
    """
    nz, ny, nx = tomogram_shape
    half = np.array([nx, ny, nz], dtype=np.float64) / 2.0
    return np.asarray(centered_xyz, dtype=np.float64) / float(voxel_size) + half


def voxels_to_centered_angstrom(coordinates_xyz, *, tomogram_shape, voxel_size) -> np.ndarray:
    """0-based voxel coordinates to RELION 5 centered coordinates in Å:
    ``(coordinate - N / 2) * voxel_size``. Inverse of :func:`centered_angstrom_to_voxels`."""
    nz, ny, nx = tomogram_shape
    half = np.array([nx, ny, nz], dtype=np.float64) / 2.0
    return (np.asarray(coordinates_xyz, dtype=np.float64) - half) * float(voxel_size)


def _has(df, cols) -> bool:
    return all(c in df.columns for c in cols)


def _check_required(df: pd.DataFrame, require: Sequence[str], path) -> None:
    for req in require:
        if req not in REQUIREMENTS:
            raise ValueError(f"unknown requirement {req!r}; choose from {sorted(REQUIREMENTS)}")
        alternatives = REQUIREMENTS[req]
        if not any(_has(df, alt) for alt in alternatives):
            need = " or ".join("(" + ", ".join(alt) + ")" for alt in alternatives)
            raise InputError(f"columns for {req}: {need}", path=path, field=req,
                             got="columns " + ", ".join(map(str, df.columns)))


def _check_bounds(coords: np.ndarray, sizes_xyz: np.ndarray, path) -> None:
    """``coords`` (n, k<=3) voxels against per-row tomogram sizes (n, 3) (x, y, z)."""
    for j, col in enumerate(COORDINATE_COLUMNS[:coords.shape[1]]):
        c = coords[:, j]
        n = sizes_xyz[:, j]
        bad = np.flatnonzero((c < -0.5) | (c > n - 0.5))
        if bad.size:
            rows = ", ".join(f"row {int(i)} ({c[i]:.6g})" for i in bad[:5])
            more = f" and {bad.size - 5} more" if bad.size > 5 else ""
            nb = n[bad[0]]
            raise InputError(f"0-based voxel coordinates inside the tomogram, 0 <= {col} <= "
                             f"{nb - 1:g} (tomogram size {nb:g} along {col[-1].lower()})",
                             path=path, field=col, got=f"{bad.size} outside: {rows}{more}")


def _shape_xyz(shape, path) -> np.ndarray:
    """(z, y, x) -> float array (x, y, z); InputError unless three positive numbers."""
    try:
        vals = [float(v) for v in shape]
        if len(vals) != 3 or not all(v > 0 and math.isfinite(v) for v in vals):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError("a tomogram shape (z, y, x) of three positive voxel counts", path=path,
                         field="tomogram_shape", got=repr(shape)) from None
    return np.array(vals[::-1])


def _positive(v, path) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if not (f > 0 and math.isfinite(f)):
        raise InputError("a positive voxel size in Angstrom", path=path, field="voxel_size", got=v)
    return f


def _per_row(value, df: pd.DataFrame, path, field: str, convert) -> np.ndarray:
    """One value for all rows, or a mapping rlnTomoName -> value looked up per row."""
    if isinstance(value, Mapping):
        if TOMO_COLUMN not in df.columns:
            raise InputError(f"an rlnTomoName column to look up the per-tomogram {field}",
                             path=path, field=TOMO_COLUMN, got="no such column")
        table = {str(k): convert(v, path) for k, v in value.items()}
        names = df[TOMO_COLUMN].astype(str).to_numpy()
        missing = sorted(set(names) - set(table))
        if missing:
            raise InputError(f"a {field} for every rlnTomoName", path=path, field=field,
                             got=f"none for {', '.join(missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        return np.array([table[nm] for nm in names], dtype=np.float64)
    v = convert(value, path)
    return np.broadcast_to(np.asarray(v, dtype=np.float64), (len(df),) + np.shape(v)).copy()


_TOMO_PATH_LABEL = "rlnTomoReconstructedTomogram"


def _tomogram_table(blocks: Mapping[str, Any], need: Sequence[str], path) -> pd.DataFrame:
    """The first block of a tomograms.star with all ``need`` columns (a key-value block is one row)."""
    for block in blocks.values():
        if isinstance(block, dict):
            block = pd.DataFrame([block])
        if isinstance(block, pd.DataFrame) and _has(block, need):
            return block
    raise InputError("a tomogram table with columns " + ", ".join(need), path=path,
                     field="data_global", got="blocks " + ", ".join(f"data_{k}" for k in blocks))


def _tomogram_number(row: Mapping[str, Any], label: str, i: int, name: str, path) -> float:
    v = row.get(label)
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if not (f > 0 and math.isfinite(f)):
        raise InputError(f"a positive number for {label}", path=path, field=label,
                         got=f"{v!r} in row {i} (rlnTomoName {name})")
    return f


def _resolve_tomogram(name: str, base: Path, *, search_up: bool) -> Path:
    """``name`` against ``base``; a relative name not found there is looked for against up to three
    parent folders (RELION writes paths relative to its project folder, which holds
    ``Tomograms/jobNNN/tomograms.star``). Not found anywhere: against ``base``."""
    first = base / name
    if Path(name).is_absolute() or first.exists() or not search_up:
        return first
    for parent in list(base.resolve().parents)[:3]:
        if (parent / name).exists():
            return parent / name
    return first


def read_tomograms_star(path: str | os.PathLike, *, base_dir: str | os.PathLike | None = None
                        ) -> dict[str, dict[str, Any]]:
    """Read a RELION 5 ``tomograms.star`` into ``{rlnTomoName: {...}}`` for
    :func:`read_particles` (``tomograms=``) and :func:`~.relion5.write_tomograms_star`.

    Each tomogram's dict holds:

    * ``"tomogram_shape"``: ``(z, y, x)`` voxels of the reconstructed tomogram;
    * ``"voxel_size"``: its voxel size in Å;
    * ``"tomogram_path"``: the tomogram file (``rlnTomoReconstructedTomogram``) as a
      :class:`~pathlib.Path`, a relative name resolved against ``base_dir`` (by default the
      STAR file's folder, or the nearest of its three parent folders where the file exists,
      since RELION writes these paths relative to its project folder); None when the column
      is absent or empty;
    * ``"binning"``: ``rlnTomoTomogramBinning`` (1.0 when absent);
    * ``"columns"``: every column of the row as read (name -> value).

    RELION 5 gives ``rlnTomoSizeX/Y/Z`` in pixels of ``rlnTomoTiltSeriesPixelSize``; with a
    ``rlnTomoTomogramBinning`` the shape is divided by it (possibly fractional, which keeps
    the tomogram centre exact) and the voxel size multiplied by it.

    Parameters
    ----------
    path : path-like
    base_dir : path-like, optional, keyword-only
        Folder that relative tomogram paths are relative to. Default: the STAR file's folder
        (then its parents, see above). RELION itself writes them relative to its project
        folder: pass that for RELION's own files to be sure.

    Raises
    ------
    InputError
        No block with the needed columns (``field="data_global"``, naming them); a row whose
        size, pixel size or binning is not a positive number (``field`` = the column, naming
        the row and tomogram); a tomogram name given twice (``field="rlnTomoName"``).
    """
    p = _existing_input(path, expected=_STAR_FILE)
    blocks = read_star(p)
    need = (TOMO_COLUMN,) + _SIZE_LABELS + ("rlnTomoTiltSeriesPixelSize",)
    block = _tomogram_table(blocks, need, p)
    base = Path(base_dir) if base_dir is not None else p.parent
    out: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(block.to_dict("records")):
        name = str(r[TOMO_COLUMN])
        if name in out:
            raise InputError("each rlnTomoName once", path=p, field=TOMO_COLUMN,
                             got=f"{name!r} again in row {i}")
        b = _tomogram_number(r, "rlnTomoTomogramBinning", i, name, p) \
            if r.get("rlnTomoTomogramBinning") is not None else 1.0
        px = _tomogram_number(r, "rlnTomoTiltSeriesPixelSize", i, name, p)
        sizes = [_tomogram_number(r, k, i, name, p) for k in _SIZE_LABELS[::-1]]
        raw = r.get(_TOMO_PATH_LABEL)
        tomo_path = None
        if raw is not None and not (isinstance(raw, float) and math.isnan(raw)) and str(raw).strip():
            tomo_path = _resolve_tomogram(str(raw).strip(), base, search_up=base_dir is None)
        out[name] = {
            "tomogram_shape": tuple(v / b for v in sizes),
            "voxel_size": px * b,
            "tomogram_path": tomo_path,
            "binning": b,
            "columns": dict(r),
        }
    return out


def read_particles(path: str | os.PathLike, *,
                   tomogram_shape: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
                   voxel_size: float | Mapping[str, float] | None = None,
                   tomograms: str | os.PathLike | Mapping[str, Mapping[str, Any]] | None = None,
                   require: Sequence[str] = ("coordinates",)) -> ParticleTable:
    """Read a RELION particle STAR file (3.0, 3.1, 4 or 5 form).

    ``read_particles(path, ...)`` is ``particle_table(read_star(path), path=path, ...)``.

    Parameters
    ----------
    path : path-like
    tomogram_shape : (z, y, x) or {rlnTomoName: (z, y, x)}, optional, keyword-only
        Tomogram size in voxels (one for all rows, or per tomogram). Needed to convert
        RELION 5 centered coordinates and used to check that coordinates lie inside the
        tomogram. Default: from ``tomograms``, else the file's general/optics blocks
        (``rlnTomoSizeX/Y/Z``, divided by ``rlnTomoTomogramBinning`` when present), else
        unknown.
    voxel_size : float or {rlnTomoName: float}, optional, keyword-only
        Tomogram voxel size in Å. Default: from ``tomograms``, else
        ``rlnTomoTiltSeriesPixelSize`` (times ``rlnTomoTomogramBinning``) or
        ``rlnImagePixelSize`` from the file, else
        ``rlnDetectorPixelSize * 1e4 / rlnMagnification``.
    tomograms : path-like or mapping, optional, keyword-only
        A RELION 5 ``tomograms.star`` (or the dict :func:`read_tomograms_star` returns):
        per-tomogram shapes and voxel sizes, looked up by ``rlnTomoName``.
    require : sequence of str, keyword-only
        What must be present: any of "coordinates" (x, y; z optional), "coordinates3d",
        "angles", "origins", "classes", "scores", "tomo_name", "image_names".

    Returns
    -------
    ParticleTable
        ``data`` has 0-based voxel ``rlnCoordinateX/Y/Z`` whenever the file has either
        coordinate form (and shape and voxel size are known for the centered form).
        ``coordinates_from`` says which form was used; a log message (INFO) too.

    Raises
    ------
    InputError
        Missing file or not a STAR file; no particle block (``field="data_particles"``);
        missing required columns (``field`` = the requirement, listing the columns
        present); non-numeric coordinates (``field`` = the column); centered coordinates
        without tomogram shape or voxel size (``"tomogram_shape"`` / ``"voxel_size"``);
        coordinates outside the tomogram (``field`` = the column, naming the rows).
    """
    p = _existing_input(path, expected=_STAR_FILE)
    return particle_table(read_star(p), path=p, tomogram_shape=tomogram_shape, voxel_size=voxel_size,
                          tomograms=tomograms, require=require)


def particle_table(blocks: Mapping[str, Any], *, path: str | os.PathLike | None = None,
                   tomogram_shape: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
                   voxel_size: float | Mapping[str, float] | None = None,
                   tomograms: str | os.PathLike | Mapping[str, Mapping[str, Any]] | None = None,
                   require: Sequence[str] = ("coordinates",)) -> ParticleTable:
    """The :class:`ParticleTable` of a STAR file whose blocks are already read.

    For a caller that needs to look at the blocks first (:func:`read_star`, then
    :func:`particle_block`), so that the file is parsed once. ``blocks`` is not changed.

    Parameters
    ----------
    blocks : mapping
        Block name to DataFrame or dict, as :func:`read_star` returns them.
    path : path-like, optional, keyword-only
        The STAR file they were read from: named in errors, stored in the table, and its
        ``# version`` line tells the RELION 5 form apart.
    tomogram_shape, voxel_size, tomograms, require
        As for :func:`read_particles`.

    Returns
    -------
    ParticleTable
        As :func:`read_particles`.

    Raises
    ------
    InputError
        As :func:`read_particles`, except for a missing or unreadable file.
    """
    p = Path(path) if path is not None else None
    _, df = particle_block(blocks, path=p)
    df = df.copy()
    optics = blocks.get("optics")
    optics = optics.copy() if isinstance(optics, pd.DataFrame) else None
    general = _general_dict(blocks.get("general"))
    _check_required(df, require, p)

    if tomograms is not None and not isinstance(tomograms, Mapping):
        tomograms = read_tomograms_star(tomograms)
    sizes = vs_rows = None  # per row: (n, 3) sizes (x, y, z) in voxels, (n,) voxel sizes
    if tomogram_shape is not None:
        sizes = _per_row(tomogram_shape, df, p, "tomogram_shape", _shape_xyz)
    elif tomograms is not None:
        sizes = _per_row({k: v["tomogram_shape"] for k, v in tomograms.items()}, df, p,
                         "tomogram_shape", _shape_xyz)
    elif (file_shape := _shape_from_file(general, optics)) is not None:
        sizes = _per_row(file_shape, df, p, "tomogram_shape", _shape_xyz)
    if voxel_size is not None:
        vs_rows = _per_row(voxel_size, df, p, "voxel_size", _positive)
    elif tomograms is not None:
        vs_rows = _per_row({k: v["voxel_size"] for k, v in tomograms.items()}, df, p,
                           "voxel_size", _positive)
    elif (file_vs := _pixel_size_from_file(general, optics, df)) is not None:
        vs_rows = _per_row(file_vs, df, p, "voxel_size", _positive)

    has_vox = _has(df, COORDINATE_COLUMNS[:2])
    has_centered = _has(df, CENTERED_COLUMNS[:2])
    version = _version(p) if p is not None else None
    if has_centered or (version is not None and version >= 50000 and optics is not None) \
            or (general is not None and "rlnTomoSubTomosAre2DStacks" in general):
        form = "relion5"
    elif optics is not None:
        form = "relion4" if "rlnCoordinateZ" in df.columns or TOMO_COLUMN in df.columns else "relion3.1"
    else:
        form = "relion3.0"

    coords = None
    source = None
    if has_vox:
        cols = [c for c in COORDINATE_COLUMNS if c in df.columns]
        coords = _numeric(df, cols, p)
        source = "rlnCoordinate"
    elif has_centered:
        cols = [c for c in CENTERED_COLUMNS if c in df.columns]
        if sizes is None:
            raise InputError("the tomogram shape (z, y, x) to convert rlnCenteredCoordinate*Angst"
                             " to voxels: pass tomogram_shape= or add rlnTomoSizeX/Y/Z to the "
                             "general or optics block", path=p, field="tomogram_shape",
                             got="none given or in the file")
        if vs_rows is None:
            raise InputError("the voxel size (Angstrom) to convert rlnCenteredCoordinate*Angst to"
                             " voxels: pass voxel_size= or add rlnTomoTiltSeriesPixelSize / "
                             "rlnImagePixelSize to the optics block", path=p, field="voxel_size",
                             got="none given or in the file")
        centered = _numeric(df, cols, p)
        if centered.shape[1] == 2:
            centered = np.column_stack([centered, np.zeros(len(df))])
        coords = centered / vs_rows[:, None] + sizes / 2.0
        for j, c in enumerate(COORDINATE_COLUMNS[:len(cols)]):
            df[c] = coords[:, j]
        coords = coords[:, :len(cols)]
        source = "rlnCenteredCoordinateAngst"
    if coords is not None and sizes is not None:
        _check_bounds(coords, sizes, p)

    vs = shape = None
    if vs_rows is not None and len(vs_rows) and np.all(vs_rows == vs_rows[0]):
        vs = float(vs_rows[0])
    elif vs_rows is not None and len(vs_rows) == 0 and voxel_size is not None \
            and not isinstance(voxel_size, Mapping):
        vs = float(voxel_size)
    if sizes is not None and len(sizes) and np.all(sizes == sizes[0]):
        shape = tuple(int(v) if float(v).is_integer() else float(v) for v in sizes[0][::-1])

    log.info("%s: %d particles, %s form, coordinates from %s", p, len(df), form,
             source or "nowhere (no coordinate columns)")
    return ParticleTable(data=df, optics=optics, general=general, form=form, path=p,
                         coordinates_from=source, voxel_size=vs, tomogram_shape=shape)
