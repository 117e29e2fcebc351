"""Export for RELION 5: ``particles.star`` (centered Å coordinates) plus ``tomograms.star``.

:func:`export_relion5` turns a particle STAR file of this project (RELION 4 form, voxel
coordinates) or a RELION 5 one, plus the tomogram(s) the particles were picked in, into the
two files RELION 5's tomography pipeline reads. :func:`write_tomograms_star` writes the
tomogram table alone; :func:`~.star.read_tomograms_star` reads it back.

Column sets follow RELION 5 (the ``global`` table of its ``tomograms.star`` and its
``ParticleSet`` reader/writer, ``src/jaz/tomography/particle_set.cpp``):

* ``tomograms.star``, block ``data_global``, one row per tomogram: ``rlnTomoName``,
  ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``,
  ``rlnMicrographOriginalPixelSize``, ``rlnTomoHand``, ``rlnOpticsGroupName``,
  ``rlnTomoTiltSeriesPixelSize``, ``rlnTomoTomogramBinning``, ``rlnTomoSizeX/Y/Z`` (in
  pixels of ``rlnTomoTiltSeriesPixelSize``, i.e. tomogram voxels × binning),
  ``rlnTomoReconstructedTomogram`` (relative to the STAR file's folder).
* ``particles.star``: ``data_general`` (``rlnTomoSubTomosAre2DStacks 0``, what RELION
  assumes when the block is absent and writes itself), ``data_optics`` (``rlnOpticsGroup``,
  ``rlnOpticsGroupName``, ``rlnVoltage``, ``rlnSphericalAberration``,
  ``rlnAmplitudeContrast``, ``rlnTomoTiltSeriesPixelSize``: RELION 5 refuses a particle
  set whose optics lack the last) and ``data_particles``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..errors import InputError
from ._atomic import atomic_path, check_output_path, ensure_not_input
from .star import (
    ANGLE_COLUMNS,
    CENTERED_COLUMNS,
    CLASS_COLUMN,
    COORDINATE_COLUMNS,
    IMAGE_COLUMN,
    OPTICS_GROUP_COLUMN,
    ORIGIN_COLUMNS,
    ORIGIN_PIXEL_COLUMNS,
    TOMO_COLUMN,
    particle_block,
    particle_table,
    read_star,
    read_tomograms_star,
)
from .star_columns import classes as _classes
from .star_columns import coordinates_xyz, euler_deg, origins_angstrom, tomo_names

__all__ = ["Relion5Export", "export_relion5", "write_tomograms_star", "write_relion_star",
           "TOMOGRAMS_COLUMNS", "RELION5_VERSION_LINE"]

#: The ``data_global`` columns :func:`write_tomograms_star` writes, in RELION 5's order.
TOMOGRAMS_COLUMNS = (
    "rlnTomoName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
    "rlnMicrographOriginalPixelSize", "rlnTomoHand", "rlnOpticsGroupName",
    "rlnTomoTiltSeriesPixelSize", "rlnTomoTomogramBinning", "rlnTomoSizeX", "rlnTomoSizeY",
    "rlnTomoSizeZ", "rlnTomoReconstructedTomogram",
)
_DEFAULTS = {"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
             "rlnTomoHand": -1.0, "rlnTomoTomogramBinning": 1.0}
_KEYWORDS = {"voltage": "rlnVoltage", "spherical_aberration": "rlnSphericalAberration",
             "amplitude_contrast": "rlnAmplitudeContrast", "hand": "rlnTomoHand",
             "binning": "rlnTomoTomogramBinning", "original_pixel_size": "rlnMicrographOriginalPixelSize",
             "optics_group_name": "rlnOpticsGroupName"}
_OPTICS_VALUES = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnTomoTiltSeriesPixelSize")
#: Particle columns export_relion5 writes itself or leaves out (RELION extracts its own images).
_REPLACED = set(COORDINATE_COLUMNS + CENTERED_COLUMNS + ANGLE_COLUMNS + ORIGIN_COLUMNS
                + ORIGIN_PIXEL_COLUMNS) | {CLASS_COLUMN, TOMO_COLUMN, OPTICS_GROUP_COLUMN, IMAGE_COLUMN,
                                           "rlnCtfImage"}
_STAR_SUFFIXES = (".star",)
#: The ``# version`` line RELION 5 writes before each block; without one RELION takes a file
#: for version 30000 (RELION 3.0).
RELION5_VERSION_LINE = "# version 50001"


@dataclass(frozen=True)
class Relion5Export:
    """What :func:`export_relion5` wrote.

    Attributes
    ----------
    particles_star, tomograms_star : pathlib.Path
    n_particles, n_tomograms : int
        Rows written to each file.
    """

    particles_star: Path
    tomograms_star: Path
    n_particles: int
    n_tomograms: int


# ----------------------------------------------------------------------------- tomograms
def _mrc_geometry(path: str | os.PathLike) -> dict[str, Any]:
    """Shape (z, y, x) and isotropic voxel size of an MRC volume, from its header alone."""
    from .mrc import VoxelSizeWarning, mrc_info, voxel_size_isotropic

    p = Path(path)
    info = mrc_info(p)
    shape = tuple(int(v) for v in info["shape"])
    if len(shape) != 3 or info["is_stack"]:
        raise InputError("a tomogram: a 3D MRC volume (z, y, x)", path=p, field="shape",
                         got=("an image stack " if info["is_stack"] else "") + f"of shape {shape}")
    vs = voxel_size_isotropic(info["voxel_size"], path=p)
    if info["voxel_size_unset"]:
        warnings.warn(f"{p}: voxel size unset in the header; using {vs:g} Angstrom for the RELION 5 "
                      "centered coordinates", VoxelSizeWarning, stacklevel=3)
    return {"tomogram_shape": shape, "voxel_size": vs, "tomogram_path": p}


def _spec(name: str, spec, where) -> dict[str, Any]:
    """One tomogram: an MRC path, or a mapping with tomogram_shape, voxel_size (+ optional keys)."""
    if isinstance(spec, (str, os.PathLike)):
        return _mrc_geometry(spec)
    if not isinstance(spec, Mapping) or "tomogram_shape" not in spec or "voxel_size" not in spec:
        raise InputError("an MRC path or a mapping with tomogram_shape (z, y, x) and voxel_size", path=where,
                         field=f"tomograms[{name!r}]", got=type(spec).__name__)
    return dict(spec)


def _float(v, label: str, name: str, where) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if not math.isfinite(f):
        raise InputError(f"a number for {label}", path=where, field=label, got=f"{v!r} for tomogram {name}")
    return f


def _tomogram_rows(star_path: Path, tomograms: Mapping[str, Any], overrides: Mapping[str, Any]) -> pd.DataFrame:
    """The ``data_global`` table for ``tomograms`` written next to ``star_path``."""
    if not isinstance(tomograms, Mapping) or not tomograms:
        raise InputError("at least one tomogram: a mapping rlnTomoName -> MRC path or geometry", path=star_path,
                         field="tomograms", got=repr(tomograms))
    rows, extras = [], []
    for name, spec in tomograms.items():
        name = str(name)
        if not name or any(c.isspace() for c in name):
            raise InputError("a tomogram name without spaces", path=star_path, field=TOMO_COLUMN, got=repr(name))
        s = _spec(name, spec, star_path)
        columns = {str(k): v for k, v in (s.get("columns") or {}).items()}
        row: dict[str, Any] = {TOMO_COLUMN: name}
        for label, default in _DEFAULTS.items():
            v = overrides.get(label)
            if v is None:
                v = s.get(label, columns.get(label, default))
            row[label] = _float(v, label, name, star_path)
        b = row["rlnTomoTomogramBinning"]
        if b <= 0:
            raise InputError("a positive binning", path=star_path, field="rlnTomoTomogramBinning",
                             got=f"{b:g} for tomogram {name}")
        vs = _float(s["voxel_size"], "voxel_size", name, star_path)
        if vs <= 0:
            raise InputError("a positive voxel size in Angstrom", path=star_path, field="voxel_size",
                             got=f"{vs:g} for tomogram {name}")
        try:
            shape = [float(v) for v in s["tomogram_shape"]]
            if len(shape) != 3 or not all(v > 0 and math.isfinite(v) for v in shape):
                raise ValueError
        except (TypeError, ValueError):
            raise InputError("a tomogram shape (z, y, x) of three positive voxel counts", path=star_path,
                             field="tomogram_shape", got=f"{s['tomogram_shape']!r} for tomogram {name}") from None
        px = vs / b
        row["rlnTomoTiltSeriesPixelSize"] = px
        v = overrides.get("rlnMicrographOriginalPixelSize")
        v = v if v is not None else s.get("rlnMicrographOriginalPixelSize",
                                          columns.get("rlnMicrographOriginalPixelSize", px))
        row["rlnMicrographOriginalPixelSize"] = _float(v, "rlnMicrographOriginalPixelSize", name, star_path)
        v = overrides.get("rlnOpticsGroupName")
        v = v if v is not None else s.get("rlnOpticsGroupName", columns.get("rlnOpticsGroupName"))
        row["rlnOpticsGroupName"] = None if v is None else str(v)
        for label, n in zip(("rlnTomoSizeZ", "rlnTomoSizeY", "rlnTomoSizeX"), shape):
            size = n * b  # RELION 5: sizes in tilt-series pixels
            if abs(size - round(size)) > 1e-3:
                raise InputError(f"a binning that makes {label} (tomogram voxels x binning) a whole number",
                                 path=star_path, field="rlnTomoTomogramBinning",
                                 got=f"{n:g} x {b:g} = {size:g} for tomogram {name}")
            row[label] = int(round(size))
        tp = s.get("tomogram_path")
        row["rlnTomoReconstructedTomogram"] = None if tp is None else _relative(Path(tp), star_path.parent)
        rows.append(row)
        extras.append({k: v for k, v in columns.items() if k.startswith("rln") and k not in TOMOGRAMS_COLUMNS})

    # optics groups: given names, else one group per distinct (pixel size, voltage, Cs, Q0)
    auto: dict[tuple, str] = {}
    for row in rows:
        if row["rlnOpticsGroupName"] is None:
            key = tuple(round(row[k], 6) for k in _OPTICS_VALUES)
            row["rlnOpticsGroupName"] = auto.setdefault(key, f"opticsGroup{len(auto) + 1}")
    with_path = [r[TOMO_COLUMN] for r in rows if r["rlnTomoReconstructedTomogram"] is not None]
    if with_path and len(with_path) != len(rows):
        missing = [r[TOMO_COLUMN] for r in rows if r["rlnTomoReconstructedTomogram"] is None]
        raise InputError("a tomogram file (rlnTomoReconstructedTomogram) for every tomogram or for none",
                         path=star_path, field="rlnTomoReconstructedTomogram", got="none for " + ", ".join(missing))
    cols = [c for c in TOMOGRAMS_COLUMNS if with_path or c != "rlnTomoReconstructedTomogram"]
    df = pd.DataFrame(rows)[cols]
    # other columns of an input tomograms.star (tilt-series STAR, etomo directives...) are kept when
    # every row has them; their values, paths included, are copied as they are
    shared = [k for k in extras[0] if all(k in e for e in extras)]
    for k in shared:
        df[k] = [e[k] for e in extras]
    return df


def write_relion_star(path: str | os.PathLike, blocks: Mapping[str, Any], *, overwrite: bool = False) -> Path:
    """:func:`~.star.write_star` with RELION 5's ``# version 50001`` line before each ``data_`` block."""
    import starfile

    path = check_output_path(path, overwrite=overwrite)
    with atomic_path(path, overwrite=overwrite) as tmp:
        starfile.write(dict(blocks), tmp, float_format="%.6f")
        lines = Path(tmp).read_text().splitlines(keepends=True)
        out = []
        for line in lines:
            if line.startswith("data_"):
                out.append(RELION5_VERSION_LINE + "\n\n")
            out.append(line)
        Path(tmp).write_text("".join(out))
    return path


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).resolve().as_posix()


def write_tomograms_star(path: str | os.PathLike, tomograms: Mapping[str, Any], *,
                         voltage: float | None = None, spherical_aberration: float | None = None,
                         amplitude_contrast: float | None = None, hand: float | None = None,
                         binning: float | None = None, original_pixel_size: float | None = None,
                         optics_group_name: str | None = None, overwrite: bool = False) -> Path:
    """Write a RELION 5 ``tomograms.star`` (block ``data_global``, one row per tomogram), atomically.

    Parameters
    ----------
    path : path-like
    tomograms : mapping
        ``rlnTomoName`` -> an MRC path (shape and voxel size from its header; the file becomes
        ``rlnTomoReconstructedTomogram``), or -> a mapping with ``"tomogram_shape"`` ``(z, y,
        x)`` voxels and ``"voxel_size"`` Å and optionally ``"tomogram_path"`` and any
        ``rln*`` label as a per-tomogram value (the dicts :func:`~.star.read_tomograms_star`
        returns qualify: their ``"columns"`` supply the labels and other columns, which are
        kept when every tomogram has them).
    voltage, spherical_aberration, amplitude_contrast, hand : float, optional, keyword-only
        kV, mm, fraction, ±1 for every tomogram. Default: the tomogram's own value, else
        300 kV, 2.7 mm, 0.1 and -1.
    binning : float, optional, keyword-only
        ``rlnTomoTomogramBinning``: the tomogram's voxel size over the tilt series' pixel
        size. Default: the tomogram's own, else 1 (then the sizes are the tomogram's voxels
        and ``rlnTomoTiltSeriesPixelSize`` is its voxel size). Sizes are written as
        voxels × binning, which must be whole numbers.
    original_pixel_size : float, optional, keyword-only
        ``rlnMicrographOriginalPixelSize`` (Å). Default: the tomogram's own, else the
        tilt-series pixel size.
    optics_group_name : str, optional, keyword-only
        ``rlnOpticsGroupName`` for every tomogram. Default: the tomogram's own, else one group
        ``opticsGroup1``, ``opticsGroup2``... per distinct pixel size, voltage, Cs and
        amplitude contrast.
    overwrite : bool, keyword-only
        Replace an existing file. Default False.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InputError
        An unreadable MRC file, a tomogram without shape or voxel size, a binning that makes
        a size fractional, tomogram files for only some tomograms, an existing output without
        ``overwrite`` (``field="output"``).
    """
    path = check_output_path(path, overwrite=overwrite)
    df = _tomogram_rows(path, tomograms, _overrides(locals()))
    return write_relion_star(path, {"global": df}, overwrite=overwrite)


def _overrides(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {label: kwargs[k] for k, label in _KEYWORDS.items() if kwargs.get(k) is not None}


# ----------------------------------------------------------------------------- particles
def _tomogram_specs(tomograms, tomo_name: str | None, file_names: set[str]) -> tuple[dict[str, Any], str]:
    """``tomograms`` as {name: spec}, and where they came from (for errors)."""
    if isinstance(tomograms, Mapping):
        return {str(k): v for k, v in tomograms.items()}, "tomograms"
    if isinstance(tomograms, (str, os.PathLike)):
        p = Path(tomograms)
        if p.suffix.lower() in _STAR_SUFFIXES:
            return read_tomograms_star(p), str(p)
        # one tomogram: named tomo_name, else the file's one rlnTomoName, else the file stem
        name = tomo_name or (next(iter(file_names)) if len(file_names) == 1 else p.name.split(".")[0])
        return {name: _mrc_geometry(p)}, str(p)
    raise InputError("an MRC path, a tomograms.star path or a mapping rlnTomoName -> MRC path",
                     field="tomograms", got=type(tomograms).__name__)


def export_relion5(particles_star: str | os.PathLike, out_dir: str | os.PathLike, *,
                   tomograms: str | os.PathLike | Mapping[str, Any], tomo_name: str | None = None,
                   voltage: float | None = None, spherical_aberration: float | None = None,
                   amplitude_contrast: float | None = None, hand: float | None = None,
                   binning: float | None = None, original_pixel_size: float | None = None,
                   overwrite: bool = False) -> Relion5Export:
    """Write ``out_dir/particles.star`` and ``out_dir/tomograms.star`` for RELION 5.

    Coordinates: the input's 0-based voxel coordinates ``c`` (``rlnCoordinateX/Y/Z``, or
    RELION 5 centered coordinates converted with the same tomograms) become
    ``rlnCenteredCoordinateX/Y/ZAngst = (c - N/2) * voxel_size``, with ``N`` the tomogram's
    size in voxels along the axis and ``N/2`` a float (docs/conventions.md; RELION 5's
    ``ParticleSet`` decentres with the same float ``N/2``, ``N`` = ``rlnTomoSizeX/Y/Z`` in
    pixels of ``rlnTomoTiltSeriesPixelSize``, which binning leaves unchanged in Å).
    ``rlnOriginX/Y/ZAngst`` stay origins: they are **not** folded into the coordinates, so the
    particle's centre is, as in the input and as RELION reads it,
    ``coordinate - origin / voxel_size``. The file has the centered form only, as RELION 5
    writes it (RELION prefers it and drops ``rlnCoordinate*`` when it rewrites a file).

    Parameters
    ----------
    particles_star : path-like
        A particle STAR file: this project's (RELION 4 form: ``rlnCoordinateX/Y/Z`` voxels,
        optional ``rlnTomoName``, ``rlnAngleRot/Tilt/Psi``, ``rlnOriginX/Y/ZAngst``,
        ``rlnClassNumber``, other columns) or a RELION 3.1 - 5 one.
    out_dir : path-like
        Created when missing.
    tomograms : path-like or mapping, keyword-only
        The tomogram(s) the coordinates refer to: one MRC file (shape and voxel size from its
        header), a mapping ``rlnTomoName`` -> MRC path (or -> geometry, as for
        :func:`write_tomograms_star`), or a ``tomograms.star`` (``.star``; its rows are
        rewritten, with the tomogram file relative to ``out_dir`` and its other columns kept).
    tomo_name : str, optional, keyword-only
        ``rlnTomoName`` for a file without that column and for a single MRC tomogram.
        Default: the tomograms' only name, the file's only ``rlnTomoName``, or the MRC
        file's name up to the first dot.
    voltage, spherical_aberration, amplitude_contrast, hand, binning, original_pixel_size : keyword-only
        As for :func:`write_tomograms_star` (defaults 300 kV, 2.7 mm, 0.1, -1, 1).
    overwrite : bool, keyword-only
        Replace existing output files. Default False.

    Returns
    -------
    Relion5Export
        The two paths and the numbers of particles and tomograms.

    Notes
    -----
    ``data_particles`` holds ``rlnTomoName``, ``rlnCenteredCoordinateX/Y/ZAngst``,
    ``rlnAngleRot/Tilt/Psi`` (0 when absent), ``rlnOriginX/Y/ZAngst`` (0 when absent;
    RELION 3.0 pixel origins are converted), ``rlnClassNumber`` (1 when absent),
    ``rlnOpticsGroup`` (from the tomogram's optics group), then the other input columns,
    except ``rlnImageName`` and ``rlnCtfImage``: RELION 5 extracts its own particles from the
    tilt series. Every tomogram given is written to ``tomograms.star``, also one without
    particles. RELION 5 reads a particle's origin in the frame of ``rlnTomoSubtomogramRot/
    Tilt/Psi`` when those columns are present; they are kept as they are.

    Raises
    ------
    InputError
        Unreadable inputs; no 3D coordinates; a ``rlnTomoName`` with no tomogram
        (``field="rlnTomoName"``); several tomograms but no ``rlnTomoName`` column;
        coordinates outside their tomogram; tomograms of one optics group with different
        pixel size or optics; an existing output without ``overwrite`` (``field="output"``,
        nothing written).
    """
    src = Path(particles_star)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("an output folder", path=out_dir, field="output", got="a file")
    p_out, t_out = out_dir / "particles.star", out_dir / "tomograms.star"
    for o in (p_out, t_out):
        if out_dir.is_dir():
            check_output_path(o, overwrite=overwrite)
        ensure_not_input(o, src, tomograms if isinstance(tomograms, (str, os.PathLike)) else None)

    blocks = read_star(src)  # parsed once: the names decide how the tomograms are keyed
    _, raw = particle_block(blocks, path=src)
    file_names = set(raw[TOMO_COLUMN].astype(str)) if TOMO_COLUMN in raw.columns else set()
    specs, where = _tomogram_specs(tomograms, tomo_name, file_names)
    overrides = _overrides(locals())
    table = _tomogram_rows(t_out, specs, overrides)  # checks every tomogram before reading particles

    geometry = {}
    for row in table.to_dict("records"):
        b = row["rlnTomoTomogramBinning"]
        geometry[row[TOMO_COLUMN]] = ((row["rlnTomoSizeZ"] / b, row["rlnTomoSizeY"] / b, row["rlnTomoSizeX"] / b),
                                      row["rlnTomoTiltSeriesPixelSize"] * b)
    if file_names:
        missing = sorted(file_names - set(geometry))
        if missing:
            raise InputError(f"a tomogram for every rlnTomoName (given: {', '.join(sorted(geometry))})",
                             path=src, field=TOMO_COLUMN,
                             got=f"none for {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more"
                                                                         if len(missing) > 5 else ""))
        shape_arg = {k: v[0] for k, v in geometry.items()}
        vs_arg = {k: v[1] for k, v in geometry.items()}
    else:
        name = tomo_name or (next(iter(geometry)) if len(geometry) == 1 else None)
        if name is None or name not in geometry:
            raise InputError("an rlnTomoName column (or tomo_name=) to tell the tomograms apart",
                             path=src, field=TOMO_COLUMN,
                             got=f"no such column, {len(geometry)} tomograms in {where}"
                             + (f", none named {tomo_name!r}" if tomo_name else ""))
        shape_arg, vs_arg = geometry[name]
    t = particle_table(blocks, path=src, tomogram_shape=shape_arg, voxel_size=vs_arg,
                       require=("coordinates3d",))
    df_in = t.data
    n = len(df_in)
    names = tomo_names(t) if file_names else np.array([name] * n, dtype=object)
    xyz = coordinates_xyz(t)
    shapes = np.array([geometry[nm][0] for nm in names], dtype=float).reshape(n, 3)
    voxels = np.array([geometry[nm][1] for nm in names], dtype=float)
    centered = (xyz - shapes[:, ::-1] / 2.0) * voxels[:, None] if n else np.zeros((0, 3))
    _check_voxel_size(t, voxels, src)

    # optics: one group per rlnOpticsGroupName of the tomograms
    group_of = dict(zip(table[TOMO_COLUMN], table["rlnOpticsGroupName"]))
    optics_rows: dict[str, dict[str, Any]] = {}
    for row in table.to_dict("records"):
        g = row["rlnOpticsGroupName"]
        vals = {k: row[k] for k in _OPTICS_VALUES}
        if g in optics_rows:
            prev = {k: optics_rows[g][k] for k in _OPTICS_VALUES}
            if any(not math.isclose(prev[k], vals[k], rel_tol=1e-6) for k in _OPTICS_VALUES):
                raise InputError(f"one pixel size, voltage, Cs and amplitude contrast per optics group ({g})",
                                 path=where, field="rlnOpticsGroupName",
                                 got=f"{row[TOMO_COLUMN]}: {vals} but {prev} before")
            continue
        optics_rows[g] = {OPTICS_GROUP_COLUMN: len(optics_rows) + 1, "rlnOpticsGroupName": g, **vals}
    optics = pd.DataFrame(list(optics_rows.values()),
                          columns=[OPTICS_GROUP_COLUMN, "rlnOpticsGroupName", *_OPTICS_VALUES])

    eul = euler_deg(t)
    ori = origins_angstrom(t)
    cls = _classes(t, default=1)
    cols: dict[str, Any] = {TOMO_COLUMN: [str(s) for s in names]}
    for j, c in enumerate(CENTERED_COLUMNS):
        cols[c] = centered[:, j]
    for j, c in enumerate(ANGLE_COLUMNS):
        cols[c] = eul[:, j]
    for j, c in enumerate(ORIGIN_COLUMNS):
        cols[c] = ori[:, j]
    cols[CLASS_COLUMN] = cls.astype(np.int64)
    cols[OPTICS_GROUP_COLUMN] = np.array([optics_rows[group_of[nm]][OPTICS_GROUP_COLUMN] for nm in names],
                                         dtype=np.int64)
    particles = pd.DataFrame(cols)
    kept = [c for c in df_in.columns if c not in _REPLACED]
    if kept:
        particles = pd.concat([particles, df_in[kept].reset_index(drop=True)], axis=1)

    out_dir.mkdir(parents=True, exist_ok=True)
    for o in (p_out, t_out):  # both checked before either is written
        check_output_path(o, overwrite=overwrite)
    write_relion_star(t_out, {"global": table}, overwrite=overwrite)
    write_relion_star(p_out, {"general": {"rlnTomoSubTomosAre2DStacks": 0}, "optics": optics, "particles": particles},
               overwrite=overwrite)
    return Relion5Export(particles_star=p_out, tomograms_star=t_out, n_particles=n, n_tomograms=len(table))


def _check_voxel_size(t, voxels: np.ndarray, src: Path) -> None:
    """Warn when the particle file states a pixel size other than its tomogram's voxel size:
    its coordinates may then be voxels of another (binned) tomogram."""
    optics = t.optics
    if optics is None or "rlnImagePixelSize" not in optics.columns or not len(voxels):
        return
    vals = pd.to_numeric(optics["rlnImagePixelSize"], errors="coerce").dropna().unique()
    if len(vals) == 1 and vals[0] > 0 and not np.allclose(voxels, vals[0], rtol=1e-3):
        warnings.warn(f"{src}: rlnImagePixelSize {vals[0]:g} Angstrom differs from the tomogram voxel size "
                      f"{voxels[0]:g} Angstrom; the coordinates are taken as voxels of the tomogram given",
                      UserWarning, stacklevel=3)
