"""Exceptions raised by napari-cryoalign.

Every error about user input names the file, the field and what was expected, so that the
CLI can print it as one line and a widget can show it as a notification.
"""

from __future__ import annotations

import os

__all__ = ["CryoAlignError", "InputError", "JobCancelled"]


class CryoAlignError(Exception):
    """Base class of the errors this package raises on purpose."""


class InputError(CryoAlignError, ValueError):
    """Bad input: names the file (if any), the field and what was expected.

    ``expected`` says what was expected; "expected " is put in front unless it is there.

    >>> str(InputError("float32 voxels", path="a.mrc", field="mode", got="mode 7"))
    'a.mrc: mode: expected float32 voxels (got mode 7)'
    """

    def __init__(self, expected: str, *, path: str | os.PathLike | None = None, field: str | None = None, got=None):
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.expected = expected
        self.got = got
        parts = [p for p in (self.path, field) if p]
        text = expected if expected.lower().startswith("expected") else f"expected {expected}"
        msg = ": ".join(parts + [text])
        if got is not None:
            msg += f" (got {got})"
        super().__init__(msg)


class JobCancelled(CryoAlignError):
    """Raised inside a job when its caller asked it to stop."""
