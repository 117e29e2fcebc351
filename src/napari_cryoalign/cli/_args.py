"""Argument types shared by the ``cryoalign`` commands: one parser per kind of value, one error text."""

from __future__ import annotations

import argparse

__all__ = ["device_arg", "float_pair", "float_range", "floats", "ints", "resolve_device", "show_progress"]

_DEVICES = ("auto", "cpu", "cuda", "mps")


def device_arg(text: str) -> str:
    """``--device``: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if text not in _DEVICES and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise argparse.ArgumentTypeError("expected auto, cpu, cuda, cuda:N or mps")
    return text


def resolve_device(name: str) -> str:
    """The torch device a ``--device`` value names on this machine (``auto`` -> cuda or cpu)."""
    from ..backend._tensor import resolve_device as _resolve

    return str(_resolve(name))


def floats(text: str) -> tuple[float, ...]:
    """Numbers separated by ``,`` or ``:`` (``-60,60``, ``20:20:40``)."""
    try:
        return tuple(float(p) for p in text.replace(":", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def ints(text: str) -> tuple[int, ...]:
    """Whole numbers separated by ``,`` or ``x`` (``512,512,128``, ``512x512x128``)."""
    try:
        return tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None


def float_pair(text: str) -> tuple[float, float]:
    """Two numbers ``A,B`` (or ``A:B``), e.g. a tilt range ``-60,60``."""
    parts = floats(text)
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers A,B, e.g. -60,60, got {text!r}")
    return parts[0], parts[1]


def float_range(text: str) -> tuple[float, float]:
    """``MIN,MAX``, or one number ``V`` for ``(V, V)`` (a fixed value where a range is allowed)."""
    parts = floats(text)
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX or one number, got {text!r}")
    return parts[0], parts[1]


def show_progress(args) -> bool:
    """Whether a command shows progress bars (not with ``cryoalign -q``)."""
    return not getattr(args, "quiet", False)
