"""The job protocol: long computations are generators.

A *job* is a generator that yields :class:`Progress` records and, where useful,
:class:`Partial` results (picks so far, the current average, ...) and finally
``return``\\ s its result. It never touches Qt or napari. Three ways to run one:

* :func:`run_job` drains it synchronously, with a tqdm progress bar (CLI, scripts, tests);
* the widget runner (``napari_cryoalign.widgets._runner.JobRunner``) runs it in napari's
  ``thread_worker`` and turns yields into layer updates on the main thread;
* a caller can iterate over it by hand.

Cancellation is cooperative: the consumer stops iterating (or calls ``gen.close()``),
which raises ``GeneratorExit`` at the job's current ``yield``; jobs therefore clean up in
``finally`` blocks. :func:`run_job` also accepts a ``should_stop`` callable and raises
:class:`~napari_cryoalign.errors.JobCancelled` when it returns true.

Writing a job::

    def average_job(volumes, *, iterations=3) -> Generator[Event, None, AverageResult]:
        avg = volumes.mean(0)
        for i in range(iterations):
            avg = ...
            yield Progress(i + 1, iterations, f"iteration {i + 1}")
            yield Partial("average", avg)
        return AverageResult(avg)

    def average(volumes, **kw) -> AverageResult:          # the plain function
        return run_job(average_job(volumes, **kw), progress=False)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, TypeVar, Union

from ..errors import JobCancelled

__all__ = ["Progress", "Partial", "Event", "Job", "run_job", "as_job", "subjob", "JobCancelled", "throttle"]

R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    """Progress of a job: ``step`` of ``total`` (``total`` None when unknown), with a short message."""

    step: int
    total: int | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.step / self.total))


@dataclass(frozen=True)
class Partial:
    """A partial result: ``name`` says what it is (e.g. ``"heatmap"``, ``"picks"``, ``"loss"``)."""

    name: str
    value: Any


Event = Union[Progress, Partial]
Job = Generator[Event, None, R]


def run_job(
    job: Job[R],
    *,
    progress: bool = True,
    description: str | None = None,
    on_partial: Callable[[Partial], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> R:
    """Run a job to completion and return its result.

    Parameters
    ----------
    job : generator yielding :class:`Progress` / :class:`Partial`, returning the result
    progress : show a tqdm progress bar on stderr
    description : label of the progress bar
    on_partial, on_progress : called for each partial result / progress record
    should_stop : polled after each yield; when it returns true the job is closed and
        :class:`JobCancelled` is raised
    """
    bar = None  # created at the first Progress, so a job that fails validation prints no empty bar
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            if isinstance(event, Progress):
                if progress and bar is None:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=event.total, desc=description, unit="step", dynamic_ncols=True, leave=True)
                if bar is not None:
                    if event.total is not None and bar.total != event.total:
                        bar.total = event.total
                    bar.n = event.step
                    if event.message:
                        bar.set_postfix_str(event.message, refresh=False)
                    bar.refresh()
                if on_progress is not None:
                    on_progress(event)
            elif isinstance(event, Partial):
                if on_partial is not None:
                    on_partial(event)
            elif event is not None:
                raise TypeError(f"a job may yield Progress or Partial, not {type(event).__name__}")
            if should_stop is not None and should_stop():
                job.close()
                raise JobCancelled("job cancelled")
    finally:
        if bar is not None:
            bar.close()


def as_job(function: Callable[..., R], *args, message: str = "", **kwargs) -> Job[R]:
    """Wrap a quick plain function as a one-step job (progress 0/1, then 1/1), for the widget runner.

    Only for work that takes a few seconds at most: it cannot be cancelled half-way.
    """
    yield Progress(0, 1, message)
    result = function(*args, **kwargs)
    yield Progress(1, 1, message)
    return result


def subjob(
    job: Job[R],
    *,
    prefix: str = "",
    at: tuple[int, int] | None = None,
    offset: tuple[int, int] | None = None,
    progress: bool = True,
    partials: bool = True,
) -> Job[R]:
    """Run ``job`` inside an outer job (``result = yield from subjob(job, ...)``) and return its result.

    The one way a job forwards the events of another (its sub-job):

    * ``progress`` - forward the sub-job's :class:`Progress` records (False: drop them);
    * ``at`` - ``(step, total)`` of the outer job: a forwarded record is shown at that step of
      the outer total instead of the sub-job's own counts (records without a total, which
      would show nothing new at a fixed step, are dropped);
    * ``offset`` - ``(start, total)`` of the outer job: the sub-job's steps count on from
      ``start`` within the outer ``total`` (capped there; records without a total dropped);
    * ``prefix`` - put before each forwarded message (``"prefix: message"``);
    * ``partials`` - forward the sub-job's :class:`Partial` results (False: drop them; the
      outer job usually returns or re-yields what it needs from the sub-job's result).

    Cancelling the outer job (closing it at a ``yield``) closes the sub-job too.
    """
    placed = at is not None or offset is not None
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            if isinstance(event, Progress):
                if not progress or (placed and not event.total):
                    continue
                message = f"{prefix}: {event.message}" if prefix else event.message
                if at is not None:
                    step, total = at
                elif offset is not None:
                    step, total = min(offset[1], offset[0] + event.step), offset[1]
                else:
                    step, total = event.step, event.total
                yield Progress(step, total, message)
            elif isinstance(event, Partial):
                if partials:
                    yield event
            elif event is not None:
                raise TypeError(f"a job may yield Progress or Partial, not {type(event).__name__}")
    finally:
        job.close()


class throttle:
    """True at most every ``seconds``: lets a job send expensive partial results (a heatmap) only now and then.

    >>> t = throttle(2.0)
    >>> if t(): yield Partial("heatmap", heatmap)   # doctest: +SKIP
    """

    def __init__(self, seconds: float, *, first: bool = True):
        self.seconds = float(seconds)
        self._last = -float("inf") if first else time.monotonic()

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self._last = now
            return True
        return False
