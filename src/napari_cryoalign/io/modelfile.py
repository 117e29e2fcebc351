"""Model files: ``torch.save`` of a dict ``{"format", "version", "header", "state_dict", ...}``.

Every trained model napari-cryoalign writes (picker, learned aligner, ...) uses this layout;
:func:`read_model_file` does the checks they share, with ``torch.load(weights_only=True)``
so a file can never run code, and clear errors for a missing, corrupted, foreign or newer
file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

__all__ = ["read_model_file"]


def read_model_file(path: str | os.PathLike, *, format_name: str, max_version: int, what: str) -> dict:
    """Load and check a model file; returns the whole dict (``header`` and ``state_dict`` are dicts).

    Raises :class:`InputError` with ``field`` ``"path"`` (missing file), ``"file"`` (not a
    readable torch file: corrupted, truncated, or pickled code that ``weights_only``
    refuses), ``"format"`` (another tool's file), ``"version"`` (a newer format) or
    ``"header"`` (no header / state_dict). ``what`` names the model in messages.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise InputError(f"an existing {what} file", path=p, field="path", got="no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle is bad input
        msg = " ".join(str(err).split())[:200]
        raise InputError(f"a {format_name} model file written by torch.save", path=p, field="file",
                         got=f"unreadable ({type(err).__name__}: {msg})") from None
    if not isinstance(obj, dict) or obj.get("format") != format_name:
        if isinstance(obj, dict):
            got = obj["format"] if "format" in obj else f"a dict with keys {sorted(map(str, obj))[:6]}"
        else:
            got = f"a {type(obj).__name__} without a format name"
        raise InputError(f"a {format_name} model file", path=p, field="format", got=got)
    ver = obj.get("version")
    if not isinstance(ver, int) or not 1 <= ver <= max_version:
        raise InputError(f"format version 1..{max_version} (update napari-cryoalign for newer files)",
                         path=p, field="version", got=ver)
    if not isinstance(obj.get("header"), dict) or not isinstance(obj.get("state_dict"), dict):
        raise InputError("a header dict and a state_dict", path=p, field="header", got="missing")
    return obj
