"""Image sets a STAR file references: subtomogram sets and 2D particle-image stacks.

* A subtomogram set is a STAR file whose ``rlnImageName`` names one MRC volume per particle
  (relative paths resolve against the STAR file's folder): :func:`read_subtomograms`,
  :func:`write_subtomograms`.
* A 2D particle stack is a ``.mrcs`` file; ``rlnImageName`` = ``index@stack.mrcs`` with a
  1-based index (:func:`parse_image_name`, :func:`format_image_name`):
  :func:`read_particle_images`, :func:`write_particle_stack`.

Volumes come back as ``(n, z, y, x)``, images as ``(n, y, x)``, float32; the voxel size (Å)
of the headers is reconciled with the STAR file's optics block. The particle table itself
(columns, coordinates, RELION forms) is :mod:`.star`.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ._atomic import _existing_input, check_output_path
from .mrc import VoxelSizeWarning, _check_finite, read_mrc, write_mrc
from .star import _STAR_FILE, IMAGE_COLUMN, ParticleTable, _pixel_size_from_file, read_particles
from .star_columns import image_names, write_particles

__all__ = [
    "parse_image_name",
    "format_image_name",
    "relocate_image_names",
    "read_subtomograms",
    "read_particle_images",
    "write_subtomograms",
    "write_particle_stack",
]

_IMAGE_NAME = re.compile(r"^\s*(\d+)\s*@\s*(.+?)\s*$")


def parse_image_name(name: str, *, path=None, row: int | None = None) -> tuple[int | None, str]:
    """Split an ``rlnImageName``: ``"12@stack.mrcs"`` -> ``(11, "stack.mrcs")`` (the STAR
    index is 1-based, the returned one 0-based); a plain path -> ``(None, path)``.

    Raises
    ------
    InputError
        ``field="rlnImageName"`` for an index below 1 or an empty name.
    """
    s = str(name).strip()
    where = f"row {row}: " if row is not None else ""
    m = _IMAGE_NAME.match(s)
    if m:
        idx = int(m.group(1))
        if idx < 1:
            raise InputError("a 1-based image index (index@stack.mrcs, index >= 1)", path=path,
                             field=IMAGE_COLUMN, got=f"{where}{s!r}")
        return idx - 1, m.group(2)
    if not s or "@" in s:
        raise InputError("an image name 'index@stack.mrcs' or a file path", path=path,
                         field=IMAGE_COLUMN, got=f"{where}{s!r}")
    return None, s


def format_image_name(index0: int, stack: str) -> str:
    """``(0, "a.mrcs")`` -> ``"000001@a.mrcs"`` (RELION's 6-digit, 1-based form)."""
    return f"{int(index0) + 1:06d}@{stack}"


def relocate_image_names(names, *, star_path: str | os.PathLike, out_path: str | os.PathLike) -> list[str]:
    """Re-point ``rlnImageName`` values read from ``star_path`` for a STAR file at ``out_path``.

    A name resolves against the folder of ``star_path`` (an absolute one stays as it is) and
    is written relative to the folder of ``out_path``, with ``/`` separators; an
    ``index@stack.mrcs`` name keeps its index (written in RELION's 6-digit form).

    Parameters
    ----------
    names : (n,) sequence of str
        ``rlnImageName`` values.
    star_path : path-like, keyword-only
        The STAR file the names come from (named in errors).
    out_path : path-like, keyword-only
        The STAR file they will be written to.

    Returns
    -------
    list of str
        ``n`` names, in order.

    Raises
    ------
    InputError
        ``field="rlnImageName"`` for a name that is neither a path nor ``index@stack``.
    """
    base, out_dir = Path(star_path).parent, Path(out_path).parent
    out = []
    for i, name in enumerate(names):
        idx, fname = parse_image_name(name, path=star_path, row=i)
        p = Path(fname)
        rel = _relative(p if p.is_absolute() else base / p, out_dir)
        out.append(rel if idx is None else format_image_name(idx, rel))
    return out


def _image_table(star_path, data_dir) -> tuple[Path, ParticleTable, np.ndarray, Path | None]:
    """The STAR file of an image set, its table (with ``rlnImageName``), the names, and
    ``data_dir`` as a Path (or None)."""
    star = _existing_input(star_path, expected=_STAR_FILE)
    table = read_particles(star, require=("image_names",))
    return star, table, image_names(table), Path(data_dir) if data_dir is not None else None


def _resolve(name: str, star: Path, data_dir: Path | None, row: int) -> Path:
    p = Path(name)
    candidates = [p] if p.is_absolute() else [(data_dir if data_dir is not None else star.parent) / p]
    if data_dir is not None and not p.is_absolute():
        candidates.append(data_dir / p.name)
    for c in candidates:
        if c.is_file():
            return c
    raise InputError("an existing file for every rlnImageName (relative paths resolve against "
                     + ("data_dir" if data_dir is not None else "the STAR file's folder") + ")",
                     path=star, field=IMAGE_COLUMN, got=f"row {row}: {name!r} not found at {candidates[0]}")


def _read_quiet(p: Path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VoxelSizeWarning)
        vol = read_mrc(p, **kw)
    unset = any(issubclass(w.category, VoxelSizeWarning) for w in caught)
    for w in caught:
        if not issubclass(w.category, VoxelSizeWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return vol, unset


def read_subtomograms(star_path: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                      validate: bool = True, rtol: float = 1e-3, rows=None) -> tuple[np.ndarray, ParticleTable]:
    """Read a subtomogram set: a STAR file whose ``rlnImageName`` names one MRC volume per
    particle.

    Parameters
    ----------
    star_path : path-like
    data_dir : path-like, optional
        Folder that relative names resolve against (then also tried: its file with the
        same base name). Default: the STAR file's folder.
    validate : bool
        Check voxels are finite.
    rtol : float
        Allowed relative voxel-size difference between files and against the optics
        block's ``rlnImagePixelSize``.
    rows : sequence of int, optional
        Read only these rows' files (a shard of a large set); the table still holds every row.

    Returns
    -------
    volumes : (n, z, y, x) float32 (``(len(rows), ...)`` with ``rows``)
    table : ParticleTable
        With ``voxel_size`` set to the volumes' voxel size (Å).

    Raises
    ------
    InputError
        No ``rlnImageName`` column; a file missing (naming the row); not a volume; box sizes
        that differ (``field="rlnImageName"``); voxel sizes that differ between files or
        from the optics block (``field="voxel_size"``).
    """
    star, table, names, ddir = _image_table(star_path, data_dir)
    which = range(len(names)) if rows is None else [int(r) for r in rows]
    if rows is not None and any(r < 0 or r >= len(names) for r in which):
        raise InputError(f"rows between 0 and {len(names) - 1}", path=star, field="rows",
                         got=f"{min(which)}..{max(which)}")
    n = len(which)
    out = None
    first = None  # (voxel size, file) of the first header that sets one
    for k, i in enumerate(which):
        name = names[i]
        idx, fname = parse_image_name(name, path=star, row=i)
        p = _resolve(fname, star, ddir, i)
        if idx is not None:
            raise InputError("one MRC volume file per particle (no index@ for subtomograms)",
                             path=star, field=IMAGE_COLUMN, got=f"row {i}: {name!r}")
        vol, unset = _read_quiet(p, validate=validate, is_stack=False)
        data = vol.data
        if data.ndim != 3:
            raise InputError("one 3D volume per rlnImageName", path=star, field=IMAGE_COLUMN,
                             got=f"row {i}: {p} has shape {data.shape}")
        if out is None:
            out = np.empty((n,) + data.shape, dtype=np.float32)
        elif data.shape != out.shape[1:]:
            raise InputError(f"subtomograms of one box size {out.shape[1:]} (z, y, x)", path=star,
                             field=IMAGE_COLUMN, got=f"row {i}: {p} has shape {data.shape}")
        out[k] = data
        if not unset:
            first = _agreeing(first, float(np.mean(vol.voxel_size)), p, star=star, rtol=rtol, what="voxel size",
                              where=f"row {i}: ")
    if out is None:
        raise InputError("at least one particle", path=star, field="data_particles", got="0 rows")
    return out, _with_voxel_size(table, first, star, rtol, what="voxel size", headers="subtomogram")


def _image_pixel_size(table: ParticleTable) -> float | None:
    """The particle images' pixel size from the STAR file: optics ``rlnImagePixelSize`` (one
    value), else ``rlnDetectorPixelSize * 1e4 / rlnMagnification`` (RELION 3.0)."""
    if table.optics is not None and "rlnImagePixelSize" in table.optics.columns:
        vals = pd.unique(table.optics["rlnImagePixelSize"].astype(float))
        if len(vals) == 1 and vals[0] > 0:
            return float(vals[0])
        return None
    return _pixel_size_from_file(None, None, table.data)


def _agreeing(first: tuple[float, Path] | None, v: float, p: Path, *, star: Path, rtol: float, what: str,
              where: str = "") -> tuple[float, Path]:
    """``first`` (size in Å, file), or ``(v, p)`` when there is none yet; InputError
    (``field="voxel_size"``) when ``v``, from ``p``, differs from it by more than ``rtol``."""
    if first is None:
        return v, p
    if abs(v - first[0]) > rtol * first[0]:
        raise InputError(f"the {what} of {first[1]} ({first[0]:g} Angstrom)", path=star, field="voxel_size",
                         got=f"{where}{p} has {v:g} Angstrom")
    return first


def _with_voxel_size(table: ParticleTable, first: tuple[float, Path] | None, star: Path, rtol: float, *,
                     what: str, headers: str) -> ParticleTable:
    """``table`` with the set's voxel size: the headers' reconciled with the STAR file's, else
    1.0 Å with a :class:`VoxelSizeWarning`."""
    voxel = _check_against_optics(table, None if first is None else first[0], star, rtol)
    if voxel is None:
        warnings.warn(f"{star}: no {what} in the STAR file or the {headers} headers; using 1.0 Angstrom",
                      VoxelSizeWarning, stacklevel=3)
        voxel = 1.0
    return replace(table, voxel_size=voxel)


def _check_against_optics(table: ParticleTable, voxel: float | None, star: Path, rtol: float):
    """Reconcile the MRC headers' voxel size with the STAR file's; the STAR value wins when
    the headers hold RELION's placeholder 1.0, a real difference is an error."""
    file_px = _image_pixel_size(table)
    if voxel is None or file_px is None:
        return voxel if voxel is not None else file_px
    if abs(voxel - file_px) <= rtol * file_px:
        return file_px
    if abs(voxel - 1.0) < 1e-6:
        warnings.warn(f"{star}: the image headers say 1.0 Angstrom (a common placeholder); "
                      f"using the STAR file's pixel size {file_px:g} Angstrom", VoxelSizeWarning,
                      stacklevel=4)
        return file_px
    raise InputError(f"image files with the STAR file's pixel size ({file_px:g} Angstrom, "
                     "rlnImagePixelSize)", path=star, field="voxel_size",
                     got=f"{voxel:g} Angstrom in the MRC headers")


def read_particle_images(star_path: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                         validate: bool = True, rtol: float = 1e-3) -> tuple[np.ndarray, ParticleTable]:
    """Read 2D particle images referenced as ``index@stack.mrcs`` (1-based index).

    Each stack is opened once (memory-mapped when it is float32 and uncompressed) and only
    the referenced images are copied out, in row order.

    Parameters
    ----------
    star_path : path-like
    data_dir : path-like, optional
        Folder that stack names resolve against; a name not found there is also tried as
        ``data_dir / basename``. Default: the STAR file's folder.
    validate : bool
        Check the returned pixels are finite.
    rtol : float
        Allowed relative pixel-size difference between stacks and against the optics
        block.

    Returns
    -------
    images : (n, y, x) float32
    table : ParticleTable
        With ``voxel_size`` set to the pixel size (Å) of the headers, else the optics block.

    Raises
    ------
    InputError
        Missing ``rlnImageName``; a stack missing; index out of range (naming the row);
        images of different sizes; different pixel sizes.
    """
    star, table, names, ddir = _image_table(star_path, data_dir)
    n = len(names)
    if n == 0:
        raise InputError("at least one particle", path=star, field="data_particles", got="0 rows")
    parsed = [parse_image_name(s, path=star, row=i) for i, s in enumerate(names)]
    groups: dict[str, list[int]] = {}
    for i, (_, fname) in enumerate(parsed):
        groups.setdefault(fname, []).append(i)
    out = None
    first = None  # (voxel size, file) of the first header that sets one
    for fname, rows in groups.items():
        p = _resolve(fname, star, ddir, rows[0])
        vol, unset = _read_quiet(p, mmap=True, validate=False, is_stack=True)
        stack = vol.data
        if out is None:
            out = np.empty((n,) + stack.shape[1:], dtype=np.float32)
        elif stack.shape[1:] != out.shape[1:]:
            raise InputError(f"particle images of one size {out.shape[1:]} (y, x)", path=star,
                             field=IMAGE_COLUMN, got=f"row {rows[0]}: {p} holds {stack.shape[1:]}")
        idx = np.array([0 if parsed[r][0] is None else parsed[r][0] for r in rows])
        bad = np.flatnonzero(idx >= stack.shape[0])
        if bad.size:
            r = rows[bad[0]]
            raise InputError(f"an image index between 1 and {stack.shape[0]} (the images in {p})",
                             path=star, field=IMAGE_COLUMN,
                             got=f"row {r}: {names[r]!r}" + (f" and {bad.size - 1} more rows" if bad.size > 1 else ""))
        out[np.asarray(rows)] = stack[idx]
        if not unset:
            first = _agreeing(first, float(np.mean(vol.voxel_size[:2])), p, star=star, rtol=rtol, what="pixel size")
        del stack, vol
    if validate:
        _check_finite(out, star, field_name=IMAGE_COLUMN)
    return out, _with_voxel_size(table, first, star, rtol, what="pixel size", headers="image")


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` with ``/`` separators, as STAR files name images."""
    return os.path.relpath(path, folder).replace(os.sep, "/")


def _batch(arrays, axes: tuple[str, ...], *, path: Path, field: str) -> np.ndarray:
    """``arrays`` (numpy or torch) as a non-empty numpy array with the axes ``axes``."""
    if hasattr(arrays, "detach"):
        arrays = arrays.detach().cpu().numpy()
    arr = np.asarray(arrays)
    if arr.ndim != len(axes) or 0 in arr.shape:
        raise InputError(f"{field} of shape ({', '.join(axes)})", path=path, field=field, got=f"shape {arr.shape}")
    return arr


def write_subtomograms(star_path: str | os.PathLike, volumes, *, voxel_size: float,
                       folder: str | os.PathLike | None = None, name_pattern: str = "subtomo_{:06d}.mrc",
                       overwrite: bool = False, **particle_columns) -> Path:
    """Write a subtomogram set: one MRC volume per particle plus the STAR file naming them.

    Parameters
    ----------
    star_path : path-like
        The STAR file to write.
    volumes : (n, z, y, x) array
    voxel_size : float
        Å, written in every MRC header and the optics block.
    folder : path-like, optional
        Where the volumes go. Default: ``<star stem>_subtomograms`` next to the STAR file.
        ``rlnImageName`` holds paths relative to the STAR file's folder.
    name_pattern : str
        File name of volume ``i`` (0-based): ``name_pattern.format(i)``.
    overwrite : bool
        Replace existing files. Default False.
    **particle_columns
        Passed to :func:`write_particles` (``coordinates_xyz``, ``euler_deg``,
        ``origins_angstrom``, ``classes``, ``scores``, ``tomo_name``, ...).

    Returns
    -------
    pathlib.Path
        The STAR file.
    """
    star = check_output_path(star_path, overwrite=overwrite)
    vols = _batch(volumes, ("n", "z", "y", "x"), path=star, field="volumes")
    folder = Path(folder) if folder is not None else star.parent / f"{star.stem}_subtomograms"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(vols.shape[0]):
        p = folder / name_pattern.format(i)
        write_mrc(p, vols[i], voxel_size=voxel_size, overwrite=overwrite, is_stack=False)
        names.append(_relative(p, star.parent))
    particle_columns.setdefault("image_size", int(vols.shape[-1]))
    return write_particles(star, image_names=names, voxel_size=voxel_size, overwrite=overwrite,
                           **particle_columns)


def write_particle_stack(star_path: str | os.PathLike, images, *, voxel_size: float,
                         stack_path: str | os.PathLike | None = None, overwrite: bool = False,
                         **particle_columns) -> Path:
    """Write 2D particle images as one ``.mrcs`` stack plus a STAR file with
    ``rlnImageName = 000001@stack.mrcs`` ... (1-based).

    Parameters
    ----------
    star_path : path-like
    images : (n, y, x) array
    voxel_size : float
        Pixel size in Å.
    stack_path : path-like, optional
        Default: the STAR file's name with ``.mrcs``. Named relative to the STAR folder.
    overwrite : bool
    **particle_columns
        Passed to :func:`write_particles`.

    Returns
    -------
    pathlib.Path
        The STAR file.
    """
    star = check_output_path(star_path, overwrite=overwrite)
    imgs = _batch(images, ("n", "y", "x"), path=star, field="images")
    stack = Path(stack_path) if stack_path is not None else star.with_suffix(".mrcs")
    write_mrc(stack, imgs, voxel_size=voxel_size, overwrite=overwrite, is_stack=True)
    rel = _relative(stack, star.parent)
    names = [format_image_name(i, rel) for i in range(imgs.shape[0])]
    particle_columns.setdefault("image_size", int(imgs.shape[-1]))
    particle_columns.setdefault("form", "relion4")
    particle_columns["optics"] = {"rlnImageDimensionality": 2, **(particle_columns.get("optics") or {})}
    return write_particles(star, image_names=names, voxel_size=voxel_size, overwrite=overwrite,
                           **particle_columns)
