"""Model files: ``torch.save`` of a dict ``{"format", "version", "header", "state_dict", ...}``.

Every trained model napari-cryoalign writes (picker, learned aligner, pose networks) uses
this layout. :func:`write_model_file` writes one atomically, with the header made plain
(:func:`jsonable`: only what ``weights_only`` loading accepts) and its creation time;
:func:`read_model_file` does the checks they share, with ``torch.load(weights_only=True)``
so a file can never run code, and clear errors for a missing, corrupted, foreign or newer
file.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from ..errors import InputError
from ._atomic import atomic_write, check_output_path

__all__ = ["jsonable", "model_file_bytes", "read_model_file", "write_model_file"]


def jsonable(x):
    """``x`` as plain Python (dict with str keys, list, str, int, float, bool, None) for a model header.

    numpy / torch scalars become numbers, arrays lists, ``str`` subclasses (``torch.__version__``)
    plain ``str`` (they would not load with ``weights_only``), anything else its ``str``.
    """
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, str):
        return str(x)
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x)
    if hasattr(x, "item") and getattr(x, "size", 1) == 1:
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _payload(format_name: str, version: int, header: dict, state_dict: dict, extra: dict | None) -> dict:
    state = {k: (v.detach().cpu().clone() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
    payload = {
        "format": str(format_name),
        "version": int(version),
        "header": {**jsonable(header), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "state_dict": state,
    }
    payload.update(extra or {})
    return payload


def write_model_file(path: str | os.PathLike, *, format_name: str, version: int, header: dict, state_dict: dict,
                     extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write a model file atomically (temporary file in the same folder, then rename); returns its path.

    Parameters
    ----------
    path : output file (``.pt``); an existing file is an error unless ``overwrite``
    format_name, version : what :func:`read_model_file` checks
    header : the model's description (made plain by :func:`jsonable`; ``created`` is added)
    state_dict : name -> tensor (copied to the CPU)
    extra : further top-level entries (e.g. an optimizer state), stored as given
    """
    import torch

    path = check_output_path(path, overwrite=overwrite)
    payload = _payload(format_name, version, header, state_dict, extra)
    with atomic_write(path, mode="wb", overwrite=overwrite) as f:
        torch.save(payload, f)
    return path


def model_file_bytes(*, format_name: str, version: int, header: dict, state_dict: dict,
                     extra: dict | None = None) -> bytes:
    """The bytes :func:`write_model_file` would write (in-memory copies, tests)."""
    import torch

    buf = io.BytesIO()
    torch.save(_payload(format_name, version, header, state_dict, extra), buf)
    return buf.getvalue()


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
