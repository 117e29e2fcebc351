"""Atomic output files, and checks of input and output paths.

Every writer of :mod:`napari_cryoalign.io` writes to a temporary file in the folder of
the final file, flushes and fsyncs it, then renames it over the final name with
:func:`os.replace` (atomic on POSIX and Windows within one file system). A reader
therefore never sees a half-written file, and an error leaves the old file untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from ..errors import InputError

__all__ = ["atomic_write", "atomic_path", "ensure_not_input", "check_output_path", "write_json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Check that ``path`` can be written: its folder exists, and it does not exist yet
    unless ``overwrite`` is true.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    InputError
        ``field="output"`` when the file exists and ``overwrite`` is false or when it is a
        folder; ``field="output folder"`` when the folder does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("a file name, not a folder", path=path, field="output")
    if not path.parent.is_dir():
        raise InputError("an existing folder to write into", path=path, field="output folder",
                         got=f"{path.parent} does not exist")
    if path.exists() and not overwrite:
        raise InputError("a file that does not exist yet (pass overwrite=True to replace it)",
                         path=path, field="output", got="an existing file")
    return path


def _fsync_path(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _finish(tmp: str, path: Path, overwrite: bool) -> None:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
    if not overwrite and path.exists():  # appeared while we were writing
        raise InputError("a file that does not exist yet (pass overwrite=True to replace it)",
                         path=path, field="output", got="an existing file")
    os.replace(tmp, path)
    if os.name == "posix":  # make the rename itself durable
        _fsync_path(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    For libraries that want a file name rather than a file object (``mrcfile.new``,
    ``starfile.write``). The temporary file exists (empty) when the block starts and keeps
    the suffix of ``path``. It is fsynced and renamed with :func:`os.replace` when the
    block ends without error, and removed when it raises.

    Parameters
    ----------
    path : path-like
        Final file name.
    overwrite : bool, keyword-only
        Allow replacing an existing ``path``. Default True.

    Raises
    ------
    InputError
        See :func:`check_output_path`.
    """
    path = check_output_path(path, overwrite=overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes),
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync_path(tmp)
        _finish(tmp, path, overwrite)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, mode: str = "wb", overwrite: bool = True,
                 encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success replace ``path``.

    Parameters
    ----------
    path : path-like
        Final file name.
    mode : {"wb", "w"}, keyword-only
        Binary or text mode. Text mode uses UTF-8 unless ``encoding`` is given.
    overwrite : bool, keyword-only
        Allow replacing an existing ``path``. Default True.

    Yields
    ------
    file object
        Write to it; it is flushed, fsynced, closed and renamed onto ``path`` when the
        block ends without error, and deleted when the block raises.

    Examples
    --------
    >>> with atomic_write("angles.tlt", mode="w") as f:  # doctest: +SKIP
    ...     f.write("-60.0\\n")
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = check_output_path(path, overwrite=overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode == "w":
            f = os.fdopen(fd, mode, encoding=encoding or "utf-8", newline="\n")
        else:
            f = os.fdopen(fd, mode)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _finish(tmp, path, overwrite)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _existing_input(path: str | os.PathLike, *, expected: str = "an existing file") -> Path:
    """``path`` as a :class:`~pathlib.Path` when it is an existing file.

    Raises
    ------
    InputError
        ``field="path"``: ``expected``, got "a folder" or "no such file".
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(expected, path=p, field="path", got="a folder" if p.is_dir() else "no such file")
    return p


def ensure_not_input(out_path: str | os.PathLike, *input_paths: str | os.PathLike | None) -> None:
    """Raise :class:`InputError` if ``out_path`` is the same file as one of the inputs.

    Compares with :func:`os.path.samefile` when both exist (catches hard links and
    symbolic links), otherwise the resolved absolute paths. ``None`` inputs are skipped.

    Raises
    ------
    InputError
        ``field="output"``, naming the input it would overwrite.
    """
    out = Path(out_path)
    out_resolved = out.expanduser().resolve()
    for inp in input_paths:
        if inp is None:
            continue
        inp_p = Path(inp)
        same = False
        if out.exists() and inp_p.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, inp_p)
        if not same:
            same = inp_p.expanduser().resolve() == out_resolved
        if same:
            raise InputError("an output file different from every input (inputs are never "
                             "overwritten)", path=out, field="output", got=f"the input {inp}")


def write_json(path: str | os.PathLike, obj, *, overwrite: bool = False, indent: int = 1) -> Path:
    """Write ``obj`` as JSON, atomically; numpy scalars become floats. Refuses to replace a file unless ``overwrite``."""
    import json

    path = check_output_path(path, overwrite=overwrite)
    with atomic_write(path, mode="w", overwrite=overwrite) as f:
        f.write(json.dumps(obj, indent=indent, default=float) + "\n")
    return path
