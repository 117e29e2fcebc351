"""The one error reporter of the dock widgets: a napari notification, the status line, the traceback in the log."""

from __future__ import annotations

import logging

from ..errors import CryoAlignError

__all__ = ["OVERWRITE_TEXT", "report_error"]

log = logging.getLogger(__name__)

#: the text of every widget's overwrite box (error messages about a refused overwrite point at it)
OVERWRITE_TEXT = "overwrite existing files"


def report_error(where: str, exc: BaseException, *, status=None) -> str:
    """Show ``exc`` as a napari error notification (and on ``status``); returns the message shown.

    Errors this package raises on purpose (:class:`~napari_cryoalign.errors.CryoAlignError`:
    bad input, a refused overwrite) are shown as they are; anything else is shown with its type
    and logged with its traceback.
    """
    from napari.utils.notifications import show_error

    if isinstance(exc, CryoAlignError):
        msg = str(exc)
        log.warning("%s: %s", where, msg)
    else:
        msg = f"{type(exc).__name__}: {exc}"
        log.error("%s failed", where, exc_info=(type(exc), exc, exc.__traceback__))
    msg = msg.replace("pass overwrite=True to replace it", f"tick '{OVERWRITE_TEXT}' to replace it")
    show_error(f"{where}: {msg}")
    if status is not None:
        status.setText(f"error: {msg}")
    return msg
