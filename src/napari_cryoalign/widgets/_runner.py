"""Run backend jobs from a dock widget: a worker thread, napari progress, Cancel, newest request wins.

The backend job (a generator, see :mod:`napari_cryoalign.backend.jobs`) runs in napari's
``thread_worker``. Every yielded :class:`~napari_cryoalign.backend.jobs.Progress` updates a
napari ``progress`` bar and the widget's own status; every
:class:`~napari_cryoalign.backend.jobs.Partial` is handed to ``on_partial`` **on the main
thread**, where it may touch layers. Starting a new job cancels the running one, and
results of a superseded job are dropped even if they were already queued (each run has a
token; callbacks of an old token do nothing). Errors become napari notifications, never a
traceback dialog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from napari.qt.threading import GeneratorWorker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_info

from ..backend.jobs import Job, Partial, Progress
from ._errors import report_error

__all__ = ["JobRunner", "RunState"]

log = logging.getLogger(__name__)


class _JobFailed(Exception):
    """An exception a job raised, carried out of the worker thread (``original`` is the exception).

    superqt's generator worker takes a ``RuntimeError`` from the generator for a deleted worker:
    it warns and emits neither ``errored`` nor ``finished``, so the runner would wait forever
    (torch raises RuntimeError for many real failures). Wrapped, every exception arrives.
    """

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


def _drive(job: Job):
    """Generator run in the worker thread: forwards the job's events, then its return value."""
    try:
        result = yield from job
    except Exception as exc:  # noqa: BLE001 - handed to the main thread as it is (see _JobFailed)
        raise _JobFailed(exc) from exc
    return result


@dataclass
class RunState:
    """What the runner is doing, for the widget's status line and buttons."""

    token: int = 0
    running: bool = False
    message: str = ""
    step: int = 0
    total: int | None = None
    history: list = field(default_factory=list)  # "started", "cancelled", "finished", "failed"


class JobRunner:
    """One job at a time for one widget; the newest request wins.

    Parameters
    ----------
    name : label for progress bars and messages
    on_partial : ``f(partial: Partial)``, main thread
    on_done : ``f(result)``, main thread, only for the current (not superseded, not cancelled) job
    on_error : ``f(exc)``, main thread; defaults to a napari error notification
    on_state : ``f(state: RunState)``, main thread, whenever running/progress changes
    """

    def __init__(
        self,
        name: str,
        *,
        on_partial: Callable[[Partial], Any] | None = None,
        on_done: Callable[[Any], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        on_state: Callable[[RunState], Any] | None = None,
        show_progress: bool = True,
    ):
        self.name = name
        self.on_partial = on_partial
        self.on_done = on_done
        self.on_error = on_error
        self.on_state = on_state
        self.show_progress = show_progress
        self.state = RunState()
        self._worker: GeneratorWorker | None = None
        self._job: Job | None = None
        self._alive = False  # a worker thread of ours has not finished yet
        self._queued: tuple[int, Job] | None = None  # the newest job, waiting for the old thread to end
        self._pbar = None

    # -- public API ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state.running

    @property
    def worker(self) -> GeneratorWorker | None:
        return self._worker

    def start(self, job: Job) -> int:
        """Cancel whatever runs and start ``job`` (a generator); returns the run's token.

        If a superseded job is still inside a step in its thread, ``job`` starts as soon as
        that one has stopped at its next yield and run its clean-up, so two jobs never work
        on shared state (say, the same model) at once.
        """
        self.cancel(quiet=True)
        self.state.token += 1
        token = self.state.token
        self.state.running = True
        self.state.message = "starting"
        self.state.step, self.state.total = 0, None
        self.state.history.append("started")
        if self.show_progress:
            self._pbar = napari_progress(total=0, desc=self.name)
        self._emit_state()
        if self._alive:
            if self._queued is not None:
                self._queued[1].close()  # never started: nothing to clean up but its frame
            self._queued = (token, job)
        else:
            self._launch(token, job)
        return token

    def _launch(self, token: int, job: Job) -> None:
        worker = GeneratorWorker(_drive, job)
        worker.yielded.connect(lambda ev, t=token: self._on_yield(t, ev))
        worker.returned.connect(lambda res, t=token: self._on_returned(t, res))
        worker.errored.connect(lambda exc, t=token: self._on_errored(t, exc))
        worker.finished.connect(lambda t=token, w=worker, j=job: self._on_finished(t, w, j))
        self._worker = worker
        self._job = job
        self._alive = True
        worker.start()

    def cancel(self, *, quiet: bool = False) -> None:
        """Ask the running job to stop at its next yield; its later results are dropped."""
        if not self.state.running:
            return
        if self._queued is not None:
            self._queued[1].close()
            self._queued = None
        if self._worker is not None:
            self._worker.quit()
        self.state.token += 1  # invalidate everything the old run still sends
        self.state.running = False
        self.state.message = "cancelled"
        self.state.history.append("cancelled")
        self._close_pbar()
        self._emit_state()
        if not quiet:
            show_info(f"{self.name}: cancelled")

    def wait(self, msecs: int = 60_000) -> bool:
        """Process Qt events until no worker thread of this runner is alive (tests, scripts).

        Only waits: unlike superqt's ``await_workers`` it stops nobody. Returns False on timeout.
        """
        import time

        from qtpy.QtCore import QCoreApplication

        deadline = time.monotonic() + msecs / 1000.0
        while (self._alive or self._queued is not None) and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.005)
        return not (self._alive or self._queued is not None)

    # -- slots (main thread) ---------------------------------------------------------------
    def _current(self, token: int) -> bool:
        return token == self.state.token and self.state.running

    def _on_yield(self, token: int, event) -> None:
        if not self._current(token):
            return
        if isinstance(event, Progress):
            self.state.step, self.state.total = event.step, event.total
            self.state.message = event.message
            # napari's progress events may process Qt events (re-entrancy): keep a local reference
            pbar = self._pbar
            if pbar is not None:
                if event.total is not None and pbar.total != event.total:
                    pbar.total = event.total
                pbar.update(event.step - pbar.n)
                if event.message:
                    pbar.set_description(f"{self.name}: {event.message}")
            self._emit_state()
        elif isinstance(event, Partial) and self.on_partial is not None:
            self._guard(self.on_partial, event)

    def _on_returned(self, token: int, result) -> None:
        if not self._current(token):
            return
        self.state.running = False
        self.state.message = "done"
        self.state.history.append("finished")
        self._close_pbar()
        if self.on_done is not None:
            self._guard(self.on_done, result)
        self._emit_state()

    def _on_errored(self, token: int, exc: BaseException) -> None:
        exc = exc.original if isinstance(exc, _JobFailed) else exc
        if token != self.state.token:
            return
        self.state.running = False
        self.state.message = "failed"
        self.state.history.append("failed")
        self._close_pbar()
        self._report(exc)
        self._emit_state()

    def _on_finished(self, token: int, worker, job) -> None:
        # run the job's `finally` blocks if it was stopped mid-way (closing a finished one is a no-op)
        try:
            job.close()
        except Exception:  # noqa: BLE001 - a failing cleanup must not break the GUI
            log.exception("closing job %s failed", self.name)
        if worker is self._worker:
            self._alive = False
            if token == self.state.token and self.state.running and self._queued is None:
                # aborted without returning (quit() from outside): settle the state
                self.state.running = False
                self._close_pbar()
                self._emit_state()
        if self._queued is not None and not self._alive:
            queued_token, queued_job = self._queued
            self._queued = None
            self._launch(queued_token, queued_job)

    # -- helpers ---------------------------------------------------------------------------
    def _guard(self, fn, arg) -> None:
        try:
            fn(arg)
        except Exception as exc:  # noqa: BLE001 - shown to the user, GUI keeps running
            self._report(exc)

    def _report(self, exc: BaseException) -> None:
        if self.on_error is not None:
            self.on_error(exc)
            return
        report_error(self.name, exc)

    def _close_pbar(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _emit_state(self) -> None:
        if self.on_state is not None:
            self.on_state(self.state)
