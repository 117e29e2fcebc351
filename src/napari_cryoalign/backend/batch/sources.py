"""The tomograms of a batch: a copick project, a RELION 5 ``tomograms.star`` or a list of files.

Every source becomes a list of :class:`TomogramSource` - plain strings and numbers, so that a Dask
task can take one (functions and data are pickled by reference; a tomogram is opened on the
worker, never shipped) - plus the tomograms that could not be listed, with why (a batch reports
them as failed and goes on).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import InputError

__all__ = ["TomogramSource", "BatchInputs", "tomograms_from_star", "tomograms_from_list", "tomograms_from_copick",
           "load_tomogram", "safe_name"]

_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_name(name: str) -> str:
    """A tomogram name as a folder name: characters other than letters, digits and ``._+-`` become ``_``."""
    out = _SAFE.sub("_", str(name)).strip("._") or "tomogram"
    return out


@dataclass(frozen=True)
class TomogramSource:
    """One tomogram of a batch.

    Attributes
    ----------
    name : ``rlnTomoName`` (the run's name for copick, the file's stem for a list)
    kind : ``"mrc"`` (a file) or ``"copick"`` (a run of a copick project)
    path : the MRC file, or the copick configuration
    voxel_size : Å, for copick (the voxel spacing); None for a file (read from its header)
    run, tomo_type : for copick: the run and the tomogram type
    """

    name: str
    kind: str
    path: str
    voxel_size: float | None = None
    run: str | None = None
    tomo_type: str | None = None

    @property
    def folder(self) -> str:
        """The name of this tomogram's output folder, ``OUT/<folder>/``."""
        return safe_name(self.name)

    def describe(self) -> str:
        if self.kind == "copick":
            return f"copick run {self.run!r} ({self.tomo_type} at {self.voxel_size:g} Å) of {self.path}"
        return self.path

    def copick_ref(self):
        from ...io.copick_project import CopickTomogramRef

        if self.kind != "copick":
            raise ValueError("not a copick tomogram")
        return CopickTomogramRef(self.path, str(self.run), float(self.voxel_size), str(self.tomo_type))


@dataclass
class BatchInputs:
    """Tomograms to process and those that could not be listed (``{name: why}``)."""

    sources: list[TomogramSource]
    missing: dict[str, str] = field(default_factory=dict)
    origin: str = ""

    def __post_init__(self):
        seen: dict[str, str] = {}
        for s in self.sources:
            if s.folder in seen:
                raise InputError("tomogram names that give distinct output folders", path=self.origin or None,
                                 field="rlnTomoName", got=f"{seen[s.folder]!r} and {s.name!r} -> {s.folder}")
            seen[s.folder] = s.name


def tomograms_from_star(path: str | os.PathLike) -> BatchInputs:
    """A RELION 5 ``tomograms.star``: each row's ``rlnTomoName`` and its file
    ``rlnTomoReconstructedTomogram`` (relative to the STAR file's folder, or to one of its three
    parents, where RELION writes them relative to its project folder). Only those two columns are
    needed; a row without a file is listed as missing."""
    from ...io.star import _resolve_tomogram, read_star

    p = Path(path)
    if not p.is_file():
        raise InputError("an existing tomograms.star", path=p, field="file", got="no such file")
    blocks = read_star(p)
    table = None
    for block in blocks.values():
        if hasattr(block, "columns") and "rlnTomoName" in block.columns:
            table = block
            break
    if table is None:
        raise InputError("a block with rlnTomoName and rlnTomoReconstructedTomogram", path=p,
                         field="data_global", got=", ".join(blocks) or "no blocks")
    if "rlnTomoReconstructedTomogram" not in table.columns:
        raise InputError("the column rlnTomoReconstructedTomogram (each tomogram's file)", path=p,
                         field="rlnTomoReconstructedTomogram", got="absent")
    sources, missing = [], {}
    for i, row in enumerate(table.to_dict("records")):
        name = str(row["rlnTomoName"])
        raw = row.get("rlnTomoReconstructedTomogram")
        if raw is None or (isinstance(raw, float) and math.isnan(raw)) or not str(raw).strip():
            missing[name] = f"row {i}: no rlnTomoReconstructedTomogram"
            continue
        f = _resolve_tomogram(str(raw).strip(), p.parent, search_up=True)
        sources.append(TomogramSource(name, "mrc", str(f)))
    return BatchInputs(sources, missing, origin=str(p))


def tomograms_from_list(path: str | os.PathLike) -> BatchInputs:
    """A text file with one tomogram file per line (relative to the list's folder), optionally
    followed by a name (``path name``); the name is the file's stem otherwise. Blank lines and
    lines starting with ``#`` are skipped."""
    p = Path(path)
    if not p.is_file():
        raise InputError("an existing list of tomogram files", path=p, field="file", got="no such file")
    sources = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        f = Path(parts[0])
        f = f if f.is_absolute() else p.parent / f
        name = parts[1] if len(parts) > 1 else f.name.removesuffix(".mrc").removesuffix(".rec").split(".")[0]
        sources.append(TomogramSource(name, "mrc", str(f)))
    if not sources:
        raise InputError("at least one tomogram file", path=p, field="lines", got="none")
    return BatchInputs(sources, origin=str(p))


def tomograms_from_copick(config: str | os.PathLike, *, runs: Sequence[str] | None = None,
                          voxel_size: float | None = None, tomo_type: str | None = None) -> BatchInputs:
    """Every run (or the ``runs`` named) of a copick project, at one voxel spacing
    (:func:`~napari_cryoalign.io.copick_project.copick_tomograms` says how it is chosen)."""
    from ...io.copick_project import copick_tomograms

    refs, missing = copick_tomograms(config, runs=runs, voxel_size=voxel_size, tomo_type=tomo_type)
    sources = [TomogramSource(r.run, "copick", str(Path(r.config).resolve()), r.voxel_size, r.run, r.tomo_type)
               for r in refs]
    return BatchInputs(sources, missing, origin=str(config))


def load_tomogram(source: TomogramSource):
    """Open a tomogram: ``(data (z, y, x), voxel_size Å, shape)``. An MRC file is memory-mapped; a copick
    tomogram's full-resolution level is read into memory."""
    if source.kind == "copick":
        from ...io.copick_project import read_copick_tomogram

        data = read_copick_tomogram(source.copick_ref())
        return data, float(source.voxel_size), tuple(int(v) for v in data.shape)
    from ...io import read_mrc, voxel_size_isotropic

    vol = read_mrc(source.path, mmap=True)
    if vol.data.ndim != 3:
        raise InputError("a 3D tomogram", path=source.path, field="data", got=f"shape {vol.data.shape}")
    return vol.data, float(voxel_size_isotropic(vol)), tuple(int(v) for v in np.shape(vol.data))
