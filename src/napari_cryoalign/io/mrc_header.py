"""The MRC header: checks before and after ``mrcfile`` reads it, and its summary.

:func:`_checked_header` reads the 1024-byte header of an MRC file (plain, gzip or bzip2)
permissively and refuses what :func:`~.mrc.read_mrc` cannot read: implausible sizes, an
extended header larger than the file, unsupported modes (complex, unknown), volume stacks,
truncated data. Small defects (no map ID, unknown machine stamp) give
:class:`MrcHeaderWarning`. :func:`_info` is the summary :func:`~.mrc.mrc_info` returns.
"""

from __future__ import annotations

import bz2
import gzip
import math
import warnings
from pathlib import Path
from typing import Any

import mrcfile
import mrcfile.utils
import numpy as np

from ..errors import InputError

#: MRC modes the project reads: int8, int16, float32, uint16, float16, 4-bit (as uint8).
SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16", 101: "uint4"}
_HEADER_BYTES = 1024


class MrcHeaderWarning(UserWarning):
    """The MRC header is slightly broken (no map ID, unknown machine stamp, ...) and the
    file was read permissively."""


def _checked_header(path: Path):
    """The header of the existing file ``path`` (a numpy record, read permissively) and its
    compression (None, "gzip" or "bzip2"), after the checks of this module.

    Raises
    ------
    InputError
        ``field="header"``: not an MRC file; ``"mode"``: unsupported mode; ``"ispg"``: a
        volume stack; ``"data"``: truncated file.
    """
    compressed = _compression(path)
    header, messages = _read_header(path, compressed)
    _validate_header(path, header, messages, compressed)
    return header, compressed


def _compression(path: Path) -> str | None:
    with open(path, "rb") as f:
        start = f.read(4)
    if start[:2] == b"\x1f\x8b":
        return "gzip"
    if start[:3] == b"BZh":
        return "bzip2"
    return None


def _peek_header(path: Path, compressed: str | None) -> None:
    """Sanity-check the first 1024 bytes before mrcfile reads the extended header (a random
    file could declare gigabytes of it)."""
    opener = {"gzip": gzip.open, "bzip2": bz2.open}.get(compressed, open)
    try:
        with opener(path, "rb") as f:
            raw = f.read(_HEADER_BYTES)
    except EOFError as err:  # a compressed stream that stops early
        raise InputError(f"a complete {compressed} stream: the file is truncated", path=path,
                         field="data", got=str(err)) from None
    except OSError as err:
        raise InputError("an MRC file", path=path, field="header", got=str(err)) from None
    if len(raw) < _HEADER_BYTES:
        raise InputError("an MRC file (at least a 1024-byte header)", path=path, field="header",
                         got=f"{len(raw)} bytes")
    ints = {}
    for order in ("<", ">"):
        nx, ny, nz, mode = np.frombuffer(raw[:16], dtype=f"{order}i4")
        nsymbt = int(np.frombuffer(raw[92:96], dtype=f"{order}i4")[0])
        ints[order] = (int(nx), int(ny), int(nz), int(mode), nsymbt)
    size = path.stat().st_size if compressed is None else None

    def plausible(v):
        nx, ny, nz, _, nsymbt = v
        ok = all(0 < n < 2**24 for n in (nx, ny, nz)) and 0 <= nsymbt < 2**31
        # compressed files: cap the extended header (FEI/EPU ones are ~1 MB) at 64 MB
        return ok and (_HEADER_BYTES + nsymbt <= size if size is not None else nsymbt < 2**26)

    if not any(plausible(v) for v in ints.values()):
        nx, ny, nz, _, nsymbt = ints["<"]
        map_ok = raw[208:211] == b"MAP"
        raise InputError("an MRC file (positive nx, ny, nz and an extended-header size that fits "
                         "in the file)", path=path, field="header",
                         got=f"nx, ny, nz = {nx}, {ny}, {nz}; nsymbt = {nsymbt}"
                         + ("" if map_ok else "; no 'MAP ' id"))


def _read_header(path: Path, compressed: str | None = None):
    """Header and extended-header size via mrcfile (permissive); InputError if unreadable."""
    _peek_header(path, compressed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as m:
                header = m.header.copy()
        except (ValueError, OSError, EOFError) as err:
            raise InputError("an MRC file (a 1024-byte MRC header)", path=path, field="header",
                             got=str(err)) from None
    messages = [str(w.message) for w in caught]
    return header, messages


def _voxel_from_header(header) -> tuple[float, float, float]:
    out = []
    for c, m in (("x", "mx"), ("y", "my"), ("z", "mz")):
        cell = float(getattr(header.cella, c))
        mm = int(getattr(header, m))
        out.append(cell / mm if mm > 0 and math.isfinite(cell) else 0.0)
    return tuple(out)  # type: ignore[return-value]


def _axis_perm(header, ndim3: bool) -> tuple[int, int, int] | None:
    """Transpose taking the file's (section, row, column) array to (z, y, x); None if
    already in that order."""
    order = (int(header.mapc), int(header.mapr), int(header.maps))
    if not ndim3 or order == (1, 2, 3) or sorted(order) != [1, 2, 3]:
        return None
    labels = [order[2], order[1], order[0]]  # array axes = sections, rows, columns
    return (labels.index(3), labels.index(2), labels.index(1))


def _validate_header(path: Path, header, messages: list[str], compressed: str | None) -> None:
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    nsymbt = int(header.nsymbt)
    map_ok = bytes(header.map)[:3] == b"MAP"
    dims_ok = all(0 < n < 2**24 for n in (nx, ny, nz)) and 0 <= nsymbt < 2**31
    if not dims_ok:
        raise InputError("an MRC file (positive nx, ny, nz and extended-header size in the "
                         "1024-byte header)", path=path, field="header",
                         got=f"nx, ny, nz = {nx}, {ny}, {nz}; nsymbt = {nsymbt}"
                         + ("" if map_ok else "; no 'MAP ' id"))
    mode = int(header.mode)
    if mode not in SUPPORTED_MODES:
        if not map_ok:
            raise InputError("an MRC file", path=path, field="header",
                             got=f"no 'MAP ' id and unknown mode {mode}")
        what = "complex data (mode 4)" if mode == 4 else f"mode {mode}"
        raise InputError("a supported MRC mode: 0 (int8), 1 (int16), 2 (float32), 6 (uint16), "
                         "12 (float16) or 101 (4-bit)", path=path, field="mode", got=what)
    if int(header.ispg) >= 401:
        raise InputError("a single volume or an image stack (volume stacks, ispg 401-630, are "
                         "not supported)", path=path, field="ispg", got=int(header.ispg))
    if compressed is None:
        dtype = mrcfile.utils.data_dtype_from_header(header)
        nbytes = nx * ny * nz * dtype.itemsize
        if mode == 101:
            nbytes = ((nx + 1) // 2) * ny * nz
        expected = _HEADER_BYTES + nsymbt + nbytes
        actual = path.stat().st_size
        if actual < expected:
            if not map_ok:
                raise InputError("an MRC file", path=path, field="header",
                                 got=f"no 'MAP ' id and a header that does not match the file "
                                     f"size ({actual} bytes)")
            raise InputError(f"{expected} bytes ({nx} x {ny} x {nz} voxels of mode {mode} after "
                             f"{_HEADER_BYTES + nsymbt} header bytes): the file is truncated",
                             path=path, field="data", got=f"{actual} bytes")
    if messages:
        warnings.warn(f"{path}: read permissively: " + "; ".join(dict.fromkeys(messages)),
                      MrcHeaderWarning, stacklevel=4)


def _info(path: Path, header, *, compressed: str | None, shape: tuple[int, ...], is_stack: bool,
          voxel_size_header: tuple[float, float, float]) -> dict[str, Any]:
    mode = int(header.mode)
    try:
        dtype = str(mrcfile.utils.dtype_from_mode(mode))
    except ValueError:
        dtype = "unknown"
    perm_order = (int(header.mapc), int(header.mapr), int(header.maps))
    labels = [bytes(header.label[i]).decode("ascii", "replace").rstrip(" \x00")
              for i in range(min(int(header.nlabl), 10))]
    exttyp = bytes(header.exttyp).decode("ascii", "replace").strip(" \x00")
    return {
        "path": str(path),
        "shape": tuple(int(s) for s in shape),
        "axes": "zyx" if len(shape) == 3 and not is_stack else "nyx" if len(shape) == 3 else "yx",
        "mode": mode,
        "dtype": dtype,
        "voxel_size": voxel_size_header,
        "voxel_size_header": voxel_size_header,
        "origin": tuple(float(getattr(header.origin, c)) for c in "xyz"),
        "nstart": (int(header.nxstart), int(header.nystart), int(header.nzstart)),
        "axis_order": perm_order,
        "min": float(header.dmin),
        "max": float(header.dmax),
        "mean": float(header.dmean),
        "rms": float(header.rms),
        "ispg": int(header.ispg),
        "is_stack": bool(is_stack),
        "extended_header_type": exttyp,
        "extended_header_bytes": int(header.nsymbt),
        "nversion": int(header.nversion),
        "labels": labels,
        "compression": compressed,
        "file_bytes": path.stat().st_size,
    }
