"""IMOD tilt-angle files (``.tlt``) and acquisition-order files.

A ``.tlt`` file holds one tilt angle in degrees per line, in the order of the images in
the tilt-series stack (IMOD convention; the tilt axis is the image y axis after coarse
alignment). An acquisition-order file holds one 0-based stack index per line, the first
acquired image first; it must be a permutation of ``0 .. n_tilts - 1``.

Blank lines and lines starting with ``#`` are ignored when reading.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ._atomic import _existing_input, atomic_write

__all__ = ["read_tlt", "write_tlt", "read_acquisition_order", "write_acquisition_order"]


def _lines(path) -> tuple[Path, list[tuple[int, str]]]:
    p = _existing_input(path, expected="an existing text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("a text file, one number per line", path=p, field="format",
                         got="binary data") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if s and not s.startswith("#"):
            out.append((lineno, s))
    return p, out


def _one_number(path: Path, lineno: int, s: str, expected: str, *, integer: bool = False) -> float:
    """The one number on line ``lineno`` (text ``s``); InputError ``field="line N"`` otherwise."""
    parts = s.split()
    try:
        if len(parts) != 1:
            raise ValueError
        v = float(parts[0])
        if integer and not v.is_integer():
            raise ValueError
    except ValueError:
        raise InputError(expected, path=path, field=f"line {lineno}", got=repr(s)) from None
    return v


def read_tlt(path: str | os.PathLike, *, n_tilts: int | None = None) -> np.ndarray:
    """Read an IMOD ``.tlt`` file.

    Parameters
    ----------
    path : path-like
    n_tilts : int, optional, keyword-only
        Expected number of angles (the number of images in the stack).

    Returns
    -------
    (n_tilts,) float64 array
        Tilt angles in degrees, in stack order.

    Raises
    ------
    InputError
        ``field="line N"`` for a line that is not one finite number in [-90, 90];
        ``field="n_tilts"`` when the count differs from ``n_tilts`` or the file is empty.
    """
    p, lines = _lines(path)
    angles = []
    for lineno, s in lines:
        a = _one_number(p, lineno, s, "one tilt angle in degrees per line")
        if not math.isfinite(a) or abs(a) > 90.0:
            raise InputError("a finite tilt angle between -90 and 90 degrees", path=p,
                             field=f"line {lineno}", got=repr(s))
        angles.append(a)
    if not angles:
        raise InputError("at least one tilt angle", path=p, field="n_tilts", got="an empty file")
    if n_tilts is not None and len(angles) != int(n_tilts):
        raise InputError(f"{int(n_tilts)} tilt angles (one per image of the stack)", path=p,
                         field="n_tilts", got=f"{len(angles)} angles")
    return np.asarray(angles, dtype=np.float64)


def write_tlt(path: str | os.PathLike, angles: Sequence[float], *, overwrite: bool = False) -> Path:
    """Write tilt angles (degrees, stack order) to an IMOD ``.tlt`` file, atomically.

    One angle per line with two decimals, right-aligned as IMOD writes them (``%7.2f``),
    unless an angle needs more precision, in which case up to 6 decimals are kept.

    Raises
    ------
    InputError
        ``field="angles"`` for an empty, non-1D or non-finite input or an angle outside
        [-90, 90]; ``field="output"`` for an existing file without ``overwrite``.
    """
    p = Path(path)
    if hasattr(angles, "detach"):
        angles = angles.detach().cpu().numpy()
    a = np.asarray(angles, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise InputError("a non-empty 1D sequence of tilt angles", path=p, field="angles",
                         got=f"shape {a.shape}")
    if not np.isfinite(a).all() or np.abs(a).max() > 90.0:
        raise InputError("finite tilt angles between -90 and 90 degrees", path=p, field="angles",
                         got=f"min {np.nanmin(a):g}, max {np.nanmax(a):g}")
    exact2 = np.allclose(np.round(a, 2), a, rtol=0, atol=1e-9)
    fmt = "{:7.2f}\n" if exact2 else "{:.6f}\n"
    with atomic_write(p, mode="w", overwrite=overwrite) as f:
        for v in a:
            f.write(fmt.format(float(v)))
    return p


def read_acquisition_order(path: str | os.PathLike, *, n_tilts: int) -> np.ndarray:
    """Read an acquisition-order file: one 0-based stack index per line, first acquired
    first.

    Returns
    -------
    (n_tilts,) int64 array
        A permutation of ``0 .. n_tilts - 1``.

    Raises
    ------
    InputError
        ``field="line N"`` for a line that is not one integer in range; ``field="order"``
        when an index repeats or the count differs from ``n_tilts``.
    """
    p, lines = _lines(path)
    n = int(n_tilts)
    order = []
    for lineno, s in lines:
        i = int(_one_number(p, lineno, s, "one 0-based stack index (an integer) per line", integer=True))
        if not 0 <= i < n:
            raise InputError(f"a 0-based stack index between 0 and {n - 1}", path=p,
                             field=f"line {lineno}", got=i)
        order.append(i)
    arr = np.asarray(order, dtype=np.int64)
    if arr.size != n:
        raise InputError(f"{n} stack indices (one per image)", path=p, field="order",
                         got=f"{arr.size} indices")
    counts = np.bincount(arr, minlength=n)
    if (counts != 1).any():
        dup = np.flatnonzero(counts > 1)
        missing = np.flatnonzero(counts == 0)
        raise InputError(f"a permutation of 0..{n - 1}", path=p, field="order",
                         got=f"repeated {dup.tolist()[:5]}, missing {missing.tolist()[:5]}")
    return arr


def write_acquisition_order(path: str | os.PathLike, order: Sequence[int], *,
                            overwrite: bool = False) -> Path:
    """Write an acquisition order (0-based stack indices, first acquired first), atomically.

    Raises
    ------
    InputError
        ``field="order"`` unless ``order`` is a permutation of ``0 .. len(order) - 1``.
    """
    p = Path(path)
    if hasattr(order, "detach"):
        order = order.detach().cpu().numpy()
    a = np.asarray(order)
    if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iu" and not (
            a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a))):
        raise InputError("a non-empty 1D sequence of integer stack indices", path=p,
                         field="order", got=f"{a.dtype} array of shape {a.shape}")
    a = a.astype(np.int64)
    if not np.array_equal(np.sort(a), np.arange(a.size)):
        raise InputError(f"a permutation of 0..{a.size - 1}", path=p, field="order",
                         got=a.tolist()[:10])
    with atomic_write(p, mode="w", overwrite=overwrite) as f:
        for v in a:
            f.write(f"{int(v)}\n")
    return p
