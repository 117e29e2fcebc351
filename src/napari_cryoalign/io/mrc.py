"""MRC volumes, images and image stacks.

Read with :func:`read_mrc`, write with :func:`write_mrc`, summarise with :func:`mrc_info`.
Arrays follow the project's conventions (docs/io.md, docs/conventions.md):

* a volume is ``(z, y, x)``, an image ``(y, x)``, an image stack (particle stack ``.mrcs``,
  tilt series ``.st``/``.ali``) ``(n, y, x)``;
* files whose header says the axes are stored in another order (``mapc/mapr/maps`` not
  ``1, 2, 3``, as in some EMDB maps) are transposed to ``(z, y, x)``;
* the voxel size is read from the header (``cella / mx``, in Å) as a tuple ``(x, y, z)``.
  A voxel size of 0 means "unset": :class:`VoxelSizeWarning` and 1.0 Å. For single images
  and stacks a 0 along z is normal and silently takes the x value.

Reading is ``mrcfile`` based; uncompressed files larger than 256 MB are memory-mapped.
Gzip and bzip2 compressed files (``.mrc.gz``, ``.map.bz2``) are read (never mapped) and
written.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import mrcfile
import mrcfile.utils
import numpy as np

from ..errors import InputError
from ._atomic import _existing_input, atomic_path, check_output_path
from ._kinds import STACK_SUFFIXES, core_suffix
from .mrc_header import (
    _HEADER_BYTES,
    _axis_perm,
    _checked_header,
    _info,
    _voxel_from_header,
)

__all__ = [
    "MrcVolume",
    "VoxelSizeWarning",
    "read_mrc",
    "write_mrc",
    "mrc_info",
    "voxel_size_isotropic",
    "check_same_voxel_size",
    "MMAP_THRESHOLD_BYTES",
    "STACK_EXTENSIONS",
    "VOLUME_EXTENSIONS",
]

#: Uncompressed files larger than this are memory-mapped when ``mmap="auto"``.
MMAP_THRESHOLD_BYTES = 256 * 1024**2
#: File extensions that hold image stacks (particle stacks, tilt series, aligned stacks).
STACK_EXTENSIONS = STACK_SUFFIXES
#: File extensions that hold volumes.
VOLUME_EXTENSIONS = (".rec", ".map")
_WRITE_DTYPES = (np.int8, np.int16, np.uint16, np.float16, np.float32)
_CHUNK_ELEMENTS = 1 << 25  # ~128 MB of float32 per chunk in the finiteness check


class VoxelSizeWarning(UserWarning):
    """The header's voxel size is unset (0) or invalid; 1.0 Å is used instead."""


@dataclass(frozen=True, eq=False)
class MrcVolume:
    """The content of one MRC file.

    Attributes
    ----------
    data : numpy.ndarray
        ``(z, y, x)`` for a volume, ``(y, x)`` for a single image, ``(n, y, x)`` for an
        image stack. float32 unless read with ``raw=True`` (then the file's dtype). May be
        a read-only :class:`numpy.memmap` for large files.
    voxel_size : tuple of float
        ``(x, y, z)`` in Å, all > 0 (unset values replaced, see :func:`read_mrc`).
    path : pathlib.Path
        The file read.
    is_stack : bool
        True for an image stack (``ispg`` 0 with several sections, or a ``.mrcs``/``.st``/
        ``.ali`` file).
    header_info : dict
        The summary of :func:`mrc_info`.
    """

    data: np.ndarray
    voxel_size: tuple[float, float, float]
    path: Path | None = None
    is_stack: bool = False
    header_info: dict = field(default_factory=dict)

    @property
    def scale(self) -> tuple[float, ...]:
        """napari layer scale in Å per pixel, in array axis order: ``(vz, vy, vx)`` or
        ``(vy, vx)``."""
        vx, vy, vz = self.voxel_size
        return (vz, vy, vx) if self.data.ndim == 3 else (vy, vx)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


# ----------------------------------------------------------------------------- helpers
def _is_stack(path: Path, header, ndim: int, override: bool | None) -> bool:
    if override is not None:
        return bool(override)
    ext = core_suffix(path)
    if ext in STACK_EXTENSIONS:
        return True
    if ndim == 2 or ext in VOLUME_EXTENSIONS:
        return False
    return int(header.ispg) == 0


def _clean_voxel_size(raw: Sequence[float], *, image_like: bool, path: Path,
                      warn: bool = True) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in raw)
    if image_like and not (z > 0 and math.isfinite(z)) and x > 0 and math.isfinite(x):
        z = x  # images and stacks have no z sampling
    fixed = []
    bad = []
    for name, v in zip("xyz", (x, y, z)):
        if v > 0 and math.isfinite(v):
            fixed.append(v)
        else:
            fixed.append(1.0)
            bad.append(f"{name}={v:g}")
    if bad and warn:
        warnings.warn(f"{path}: voxel size {', '.join(bad)} in the header is unset or invalid; "
                      "using 1.0 Angstrom", VoxelSizeWarning, stacklevel=3)
    return tuple(fixed)  # type: ignore[return-value]


def _voxel_unset(raw: Sequence[float], image_like: bool) -> bool:
    vals = list(raw)[:2] if image_like else list(raw)
    return not all(v > 0 and math.isfinite(v) for v in vals)


def _check_finite(data: np.ndarray, path: Path | None, field_name: str = "data") -> None:
    if data.dtype.kind not in "fc":
        return
    n0 = data.shape[0] if data.ndim else 1
    per = max(1, int(np.prod(data.shape[1:], dtype=np.int64))) if data.ndim > 1 else 1
    step = max(1, _CHUNK_ELEMENTS // per) if data.ndim > 1 else max(1, _CHUNK_ELEMENTS)
    n_bad = 0
    first = None
    for start in range(0, n0, step):
        block = np.asarray(data[start:start + step])
        ok = np.isfinite(block)
        if not ok.all():
            n_bad += int(ok.size - np.count_nonzero(ok))
            if first is None:
                idx = np.argwhere(~ok)[0]
                idx[0] += start
                first = tuple(int(i) for i in idx)
    if n_bad:
        axes = "(z, y, x)" if data.ndim == 3 else "(y, x)" if data.ndim == 2 else "index"
        raise InputError("finite voxel values (no NaN or inf)", path=path, field=field_name,
                         got=f"{n_bad} non-finite values, the first at {axes} = {first}")


def _shape_after(header, path: Path, is_stack_override: bool | None):
    file_shape = mrcfile.utils.data_shape_from_header(header)
    if len(file_shape) == 3 and file_shape[0] == 1:
        file_shape = file_shape[1:]
    ndim = len(file_shape)
    stack = _is_stack(path, header, ndim, is_stack_override)
    perm = None if stack else _axis_perm(header, ndim == 3)
    shape = tuple(file_shape[p] for p in perm) if perm else tuple(file_shape)
    if stack and ndim == 2:
        shape = (1,) + shape
    return file_shape, shape, perm, stack


# ----------------------------------------------------------------------------- public API
def mrc_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summarise an MRC file from its header alone (no voxel data is read).

    Returns
    -------
    dict
        ``path``; ``shape`` (array shape as :func:`read_mrc` returns it, z/y/x order);
        ``axes`` ("zyx", "nyx" or "yx"); ``mode`` and ``dtype`` of the file;
        ``voxel_size`` ``(x, y, z)`` Å as :func:`read_mrc` returns it (unset values replaced,
        without warning), ``voxel_size_header`` exactly as in the header (0 = unset) and
        ``voxel_size_unset`` (bool); ``origin``
        ``(x, y, z)`` Å; ``nstart`` (column, row, section); ``axis_order`` (mapc, mapr,
        maps); ``min``, ``max``, ``mean``, ``rms`` from the header; ``ispg``; ``is_stack``;
        ``extended_header_type`` (e.g. "FEI1") and ``extended_header_bytes``;
        ``nversion``; ``labels``; ``compression`` (None, "gzip", "bzip2"); ``file_bytes``.

    Raises
    ------
    InputError
        Not an MRC file (``field="header"``), unsupported mode (``"mode"``), truncated
        file (``"data"``).
    """
    p = _existing_input(path)
    header, compressed = _checked_header(p)
    _, shape, _, stack = _shape_after(header, p, None)
    info = _info(p, header, compressed=compressed, shape=shape, is_stack=stack,
                 voxel_size_header=_voxel_from_header(header))
    info["voxel_size"] = _clean_voxel_size(info["voxel_size_header"],
                                           image_like=stack or len(shape) == 2, path=p, warn=False)
    info["voxel_size_unset"] = _voxel_unset(info["voxel_size_header"], stack or len(shape) == 2)
    return info


def read_mrc(path: str | os.PathLike, *, mmap: bool | str = "auto", validate: bool = True,
             raw: bool = False, is_stack: bool | None = None) -> MrcVolume:
    """Read an MRC volume, image or image stack.

    Parameters
    ----------
    path : path-like
        ``.mrc``, ``.rec``, ``.map``, ``.st``, ``.ali``, ``.mrcs`` ..., optionally gzip or
        bzip2 compressed (detected from the file's first bytes).
    mmap : {"auto", True, False}, keyword-only
        Memory-map the voxels (read-only) instead of reading them. "auto" maps
        uncompressed files larger than :data:`MMAP_THRESHOLD_BYTES` (256 MB). Compressed
        and 4-bit (mode 101) files are always read. A mapped file stays mapped only when
        the returned dtype equals the file's (float32 files, or ``raw=True``); otherwise the
        conversion to float32 loads it.
    validate : bool, keyword-only
        Check that every voxel is finite (in chunks for mapped files). Default True.
    raw : bool, keyword-only
        Keep the file's dtype (int8, int16, uint16, float16, float32, uint8 for 4-bit)
        instead of converting to float32.
    is_stack : bool or None, keyword-only
        Force the file to be read as an image stack (True) or a volume (False). None
        decides from the extension (``.mrcs .st .ali .preali`` are stacks, ``.rec .map``
        volumes) and otherwise from the header (``ispg`` 0 with several sections).

    Returns
    -------
    MrcVolume
        ``data`` in (z, y, x), (y, x) or (n, y, x) order; ``voxel_size`` (x, y, z) in Å.

    Raises
    ------
    InputError
        ``field="path"``: no such file; ``"header"``: not an MRC file; ``"mode"``:
        unsupported mode (complex, unknown); ``"ispg"``: volume stack; ``"data"``: truncated
        file or NaN/inf voxels (when ``validate``).

    Warns
    -----
    VoxelSizeWarning
        The header's voxel size is 0 (unset) or invalid along x or y (or z for a volume);
        1.0 Å is used for that axis.
    MrcHeaderWarning
        The header is slightly broken (e.g. no map ID or an unknown machine stamp, as
        written by some older programs) and was read permissively.
    """
    p = _existing_input(path)
    header, compressed = _checked_header(p)
    file_shape, shape, perm, stack = _shape_after(header, p, is_stack)
    mode = int(header.mode)

    if mmap == "auto":
        use_mmap = compressed is None and p.stat().st_size > MMAP_THRESHOLD_BYTES
    elif isinstance(mmap, bool):
        use_mmap = mmap and compressed is None
    else:
        raise ValueError(f"mmap must be 'auto', True or False, got {mmap!r}")
    if mode == 101:
        use_mmap = False

    if use_mmap:
        dtype = mrcfile.utils.data_dtype_from_header(header)
        data = np.memmap(p, dtype=dtype, mode="r", offset=_HEADER_BYTES + int(header.nsymbt),
                         shape=tuple(file_shape))
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with mrcfile.open(p, mode="r", permissive=True) as m:
                    data = m.data
            except (ValueError, OSError, EOFError) as err:
                raise InputError("complete voxel data as described by the header", path=p,
                                 field="data", got=str(err)) from None
        if data is None:
            msgs = "; ".join(str(w.message) for w in caught) or "no data block"
            raise InputError("complete voxel data as described by the header", path=p,
                             field="data", got=msgs)
        data = data.reshape(file_shape)
    if perm is not None:
        data = data.transpose(perm)
    if stack and data.ndim == 2:
        data = data[None]
    if not raw:
        if data.dtype != np.dtype(np.float32) or not data.dtype.isnative:
            data = np.ascontiguousarray(data, dtype=np.float32)
        elif not use_mmap:
            data = np.ascontiguousarray(data)
            if not data.flags.writeable:
                data = data.copy()
    elif not use_mmap and not data.flags.writeable:
        data = data.copy()
    if validate:
        _check_finite(data, p)

    vs_header = _voxel_from_header(header)
    voxel_size = _clean_voxel_size(vs_header, image_like=stack or data.ndim == 2, path=p)
    info = _info(p, header, compressed=compressed, shape=data.shape, is_stack=stack,
                 voxel_size_header=vs_header)
    info["voxel_size"] = voxel_size
    info["voxel_size_unset"] = _voxel_unset(vs_header, stack or data.ndim == 2)
    info["memory_mapped"] = bool(use_mmap and isinstance(data, np.memmap))
    return MrcVolume(data=data, voxel_size=voxel_size, path=p, is_stack=stack, header_info=info)


def _as_voxel_tuple(voxel_size, path) -> tuple[float, float, float]:
    try:
        if np.ndim(voxel_size) == 0:
            vs = (float(voxel_size),) * 3
        else:
            vals = [float(v) for v in np.asarray(voxel_size, dtype=float).ravel()]
            if len(vals) != 3:
                raise ValueError
            vs = tuple(vals)
    except (TypeError, ValueError):
        raise InputError("a voxel size in Angstrom: one number or (x, y, z)", path=path,
                         field="voxel_size", got=repr(voxel_size)) from None
    if not all(v > 0 and math.isfinite(v) for v in vs):
        raise InputError("a positive, finite voxel size in Angstrom", path=path,
                         field="voxel_size", got=vs)
    return vs  # type: ignore[return-value]


def write_mrc(path: str | os.PathLike, data, *, voxel_size, overwrite: bool = False,
              is_stack: bool | None = None, origin: Sequence[float] | None = None,
              label: str | None = "napari-cryoalign") -> Path:
    """Write a volume, image or image stack to an MRC file, atomically.

    Parameters
    ----------
    path : path-like
        Output file. ``.gz`` / ``.bz2`` endings write compressed files.
    data : array_like
        ``(z, y, x)`` volume, ``(y, x)`` image or ``(n, y, x)`` stack; a torch tensor is
        accepted. int8, int16, uint16, float16 and float32 are written as they are (MRC
        modes 0, 1, 6, 12, 2); anything else real is converted to float32.
    voxel_size : float or (x, y, z), keyword-only
        Voxel size in Å, > 0.
    overwrite : bool, keyword-only
        Replace an existing file. Default False: an existing file is an error.
    is_stack : bool or None, keyword-only
        Write a 3D array as an image stack (``ispg`` 0, ``mz`` 1) rather than a volume
        (``ispg`` 1). None: a stack for ``.mrcs .st .ali .preali`` names.
    origin : (x, y, z), optional
        Header origin in Å.
    label : str or None
        First header label.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InputError
        Bad data (not 2D/3D, complex, NaN/inf: ``field="data"``), bad voxel size
        (``"voxel_size"``), existing output without ``overwrite`` (``"output"``).
    """
    path = check_output_path(path, overwrite=overwrite)
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    arr = np.asarray(data)
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise InputError("a non-empty (y, x) image, (z, y, x) volume or (n, y, x) stack",
                         path=path, field="data", got=f"shape {arr.shape}")
    if arr.dtype.kind == "c":
        raise InputError("real voxel values", path=path, field="data", got=str(arr.dtype))
    if not any(arr.dtype == np.dtype(t) for t in _WRITE_DTYPES):
        arr = arr.astype(np.float32)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    _check_finite(arr, path)
    vs = _as_voxel_tuple(voxel_size, path)
    if is_stack is None:
        is_stack = core_suffix(path) in STACK_EXTENSIONS and arr.ndim == 3
    suffix = path.suffix.lower()
    compression = {".gz": "gzip", ".bz2": "bzip2"}.get(suffix)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.new(tmp, overwrite=True, compression=compression) as m:
                m.set_data(np.ascontiguousarray(arr))
                if arr.ndim == 3:
                    if is_stack:
                        m.set_image_stack()
                    else:
                        m.set_volume()
                m.voxel_size = vs
                if origin is not None:
                    ox, oy, oz = (float(v) for v in origin)
                    m.header.origin.x, m.header.origin.y, m.header.origin.z = ox, oy, oz
                if label:
                    m.header.label[0] = label.encode("ascii", "replace")[:80]
                    m.header.nlabl = max(int(m.header.nlabl), 1)
    return path


def _voxel_of(v) -> tuple[tuple[float, ...], Path | None]:
    if isinstance(v, MrcVolume):
        return tuple(v.voxel_size), v.path
    if np.ndim(v) == 0:
        return (float(v),), None
    return tuple(float(x) for x in np.asarray(v, dtype=float).ravel()), None


def voxel_size_isotropic(v, *, path: str | os.PathLike | None = None, rtol: float = 1e-3,
                         image: bool | None = None) -> float:
    """Return the voxel size as one float (Å), checking that it is isotropic.

    Parameters
    ----------
    v : float, (x, y, z) or MrcVolume
    path : path-like, optional
        File named in the error (taken from an MrcVolume when not given).
    rtol : float
        Largest allowed relative difference between axes (0.1 %).
    image : bool, optional
        Compare only x and y (images, stacks). Default: True for 2D data or stacks of an
        MrcVolume, else False.

    Raises
    ------
    InputError
        ``field="voxel_size"`` when the axes differ by more than ``rtol``.
    """
    vals, vpath = _voxel_of(v)
    path = path if path is not None else vpath
    if image is None:
        image = isinstance(v, MrcVolume) and (v.is_stack or v.data.ndim == 2)
    if image and len(vals) == 3:
        vals = vals[:2]
    ref = vals[0]
    if not all(x > 0 and math.isfinite(x) for x in vals):
        raise InputError("a positive voxel size", path=path, field="voxel_size", got=vals)
    if max(abs(x - ref) for x in vals) > rtol * ref:
        raise InputError(f"an isotropic voxel size (x, y{'' if image else ', z'} equal within "
                         f"{rtol * 100:g} %)", path=path, field="voxel_size",
                         got=" x ".join(f"{x:g}" for x in vals) + " Angstrom")
    return float(ref)


def check_same_voxel_size(a, b, *, paths: Sequence[str | os.PathLike | None] = (None, None),
                          rtol: float = 1e-3, what: str = "voxel_size") -> float:
    """Check that two voxel sizes agree and return it (Å, float).

    ``a`` and ``b`` are floats, ``(x, y, z)`` tuples or :class:`MrcVolume` (whose path is
    used when ``paths`` does not name one). Each must be isotropic.

    Raises
    ------
    InputError
        ``field=what``, naming both files and both values, when they differ by more than
        ``rtol`` (0.1 %).
    """
    pa, pb = (list(paths) + [None, None])[:2]
    if pa is None and isinstance(a, MrcVolume):
        pa = a.path
    if pb is None and isinstance(b, MrcVolume):
        pb = b.path
    va = voxel_size_isotropic(a, path=pa, rtol=rtol)
    vb = voxel_size_isotropic(b, path=pb, rtol=rtol)
    if abs(va - vb) > rtol * max(va, vb):
        raise InputError(f"the same voxel size as {pb if pb is not None else 'the other input'} "
                         f"({vb:g} Angstrom, within {rtol * 100:g} %)", path=pa, field=what,
                         got=f"{va:g} Angstrom")
    return va
