"""Which file format a path is, from its name: the one place that maps suffixes to formats."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

MRC_SUFFIXES = (".mrc", ".rec", ".map", ".st", ".mrcs", ".ali", ".preali")
#: suffixes that hold a stack of 2D images (tilt series, particle stacks) rather than a volume
STACK_SUFFIXES = (".st", ".mrcs", ".ali", ".preali")
COMPRESSED_SUFFIXES = (".gz", ".bz2")


def core_suffix(path: str | os.PathLike) -> str:
    """The format suffix, lower case, ignoring a trailing .gz/.bz2: ``a.map.gz`` -> ``.map``."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def kind_of_file(path: str | os.PathLike) -> str:
    """``"mrc"``, ``"star"`` or ``"tlt"``; raises :class:`InputError` for anything else."""
    kind = maybe_kind_of_file(path)
    if kind is None:
        raise InputError(
            "expected an MRC file (" + ", ".join(MRC_SUFFIXES) + ", optionally .gz/.bz2), a .star or a .tlt file",
            path=path,
            field="file name",
        )
    return kind


def maybe_kind_of_file(path: str | os.PathLike) -> str | None:
    """Like :func:`kind_of_file` but returns None for an unknown format."""
    suffix = core_suffix(Path(path))
    if suffix in MRC_SUFFIXES:
        return "mrc"
    if suffix == ".star" and Path(path).suffix.lower() == ".star":
        return "star"
    if suffix == ".tlt" and Path(path).suffix.lower() == ".tlt":
        return "tlt"
    return None


def is_stack_name(path: str | os.PathLike) -> bool:
    """True for names that by convention hold image stacks (.st, .mrcs, .ali)."""
    return core_suffix(Path(path)) in STACK_SUFFIXES


def file_stem(path: str | os.PathLike) -> str:
    """The name without its format suffix (and a trailing .gz/.bz2): ``TS_01.rec.gz`` -> ``TS_01``.

    Names without an MRC suffix are kept whole (``TS_01.tomo`` stays ``TS_01.tomo``).
    """
    name = Path(path).name
    for comp in COMPRESSED_SUFFIXES:
        if name.lower().endswith(comp):
            name = name[: -len(comp)]
    return Path(name).stem if Path(name).suffix.lower() in MRC_SUFFIXES else name
