"""Run one step over many tomograms on Dask distributed: resumable, a failure stays one tomogram's.

:func:`batch_job` submits one task per tomogram to a Dask cluster - a ``LocalCluster`` of worker
processes by default, or the scheduler at ``scheduler`` (any Dask cluster: ``dask-jobqueue`` on
SLURM, Kubernetes, ...). Each task gets strings and numbers (a :class:`~.sources.TomogramSource`
and the step's options), opens its tomogram on the worker, sets torch's threads, writes the
tomogram's outputs atomically into ``OUT/<rlnTomoName>/`` and then, last, a completion marker
``OUT/<rlnTomoName>/.cryoalign-<step>.json`` (its summary and a fingerprint of the inputs and
options). Rerunning skips every tomogram whose marker has the same fingerprint; a tomogram whose
task raises is reported with its error and the others go on; a worker that dies has its tasks
rerun elsewhere (Dask's own retry). Tasks are submitted with ``pure=False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ...errors import InputError
from ..jobs import Job, Partial, Progress
from .sources import BatchInputs, TomogramSource

__all__ = ["TaskOutcome", "BatchReport", "batch_job", "dask_client", "cluster_session", "n_workers", "marker_path",
           "fingerprint", "set_task_threads"]

log = logging.getLogger(__name__)


@dataclass
class TaskOutcome:
    """What happened to one tomogram: ``status`` is ``"done"``, ``"skipped"`` (finished before) or
    ``"failed"`` (``error`` says why); ``summary`` is the task's (counts, seconds, shape, ...)."""

    name: str
    folder: str
    status: str
    summary: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class BatchReport:
    """The batch's outcome: one :class:`TaskOutcome` per tomogram (in input order), the merged
    outputs written (``{"particles": path, "tomograms": path, ...}``), the Dask dashboard address
    (None when there is none) and the wall time."""

    step: str
    out: Path
    outcomes: list[TaskOutcome]
    merged: dict[str, Path] = field(default_factory=dict)
    dashboard: str | None = None
    seconds: float = 0.0
    workers: int = 0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def finished(self) -> list[TaskOutcome]:
        """Tomograms with outputs: done now or before."""
        return [o for o in self.outcomes if o.status in ("done", "skipped")]


def marker_path(out: str | os.PathLike, source: TomogramSource, step: str) -> Path:
    """The completion marker of ``step`` for ``source``: ``OUT/<folder>/.cryoalign-<step>.json``."""
    return Path(out) / source.folder / f".cryoalign-{step.replace(' ', '-')}.json"


def fingerprint(step: str, source: TomogramSource, params: dict) -> str:
    """A digest of what a tomogram's outputs depend on: the step, the tomogram and the options."""
    text = json.dumps({"step": step, "source": asdict(source), "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def set_task_threads(threads: int) -> None:
    """Prepare a worker process for a task: limit torch and the BLAS/OpenMP pools to ``threads`` (every
    task calls it: a worker process may have run other work before), and keep freed memory for reuse
    (:func:`~.._malloc.keep_freed_memory`, what the ``cryoalign`` command does for itself: without it a
    picker inference in a Dask worker took 2.2x as long, docs/batch.md; ``CRYOALIGN_NO_MALLOC_TUNING=1``
    turns it off)."""
    import torch
    from threadpoolctl import threadpool_limits

    from .._malloc import keep_freed_memory

    keep_freed_memory()
    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    threadpool_limits(threads)


def _done(out: Path, source: TomogramSource, step: str, digest: str) -> dict | None:
    m = marker_path(out, source, step)
    try:
        data = json.loads(m.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("fingerprint") == digest else None


def run_task(task: Callable[..., dict], source: TomogramSource, out: str, step: str, params: dict, digest: str,
             threads: int) -> dict:
    """One tomogram, on a worker: set the threads, run ``task(source, folder, **params)`` (it writes
    its outputs atomically and returns a JSON-able summary), then write the completion marker.
    Raises whatever the task raises, with the tomogram's traceback text appended."""
    from ...io._atomic import write_json

    set_task_threads(threads)
    folder = Path(out) / source.folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        summary = dict(task(source, str(folder), **params) or {})
    except Exception as err:
        err.add_note(traceback.format_exc(limit=6))
        raise
    summary["seconds"] = time.perf_counter() - t0
    write_json(marker_path(out, source, step), {"step": step, "tomogram": source.name, "fingerprint": digest,
                                                 "summary": summary, "finished": time.time()}, overwrite=True)
    return summary


def dask_client(*, scheduler: str | None = None, workers: int = 2, threads_per_worker: int = 1,
                memory_limit: str | float | None = "auto"):
    """A Dask client: connected to ``scheduler`` (an address such as ``tcp://host:8786``, or a
    scheduler file ending in ``.json``), or to a new ``LocalCluster`` of ``workers`` processes with
    ``threads_per_worker`` threads each. Returns ``(client, owned)``: ``owned`` says whether the
    cluster was made here (and is closed with the client)."""
    import dask
    from distributed import Client, LocalCluster

    # distributed logs every connection at INFO in this process (its own handler): only warnings, unless the
    # user asked for informational messages (cryoalign -v sets the root logger to INFO)
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        if str(scheduler).endswith(".json"):
            return Client(scheduler_file=str(scheduler), timeout="30s"), False
        return Client(str(scheduler), timeout="30s"), False
    if workers < 1 or threads_per_worker < 1:
        raise InputError("at least one worker with at least one thread", field="--workers",
                         got=f"{workers} workers x {threads_per_worker} threads")
    with dask.config.set({"distributed.worker.daemon": False, "distributed.admin.system-monitor.gil.enabled": False}):
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=int(threads_per_worker), processes=True,
                               dashboard_address=":0", silence_logs=logging.CRITICAL, memory_limit=memory_limit)
    return Client(cluster), True


@contextlib.contextmanager
def cluster_session(client=None, *, scheduler: str | None = None, workers: int = 2, threads_per_worker: int = 1):
    """``with cluster_session(...) as (client, futures):`` - the given client, or one made by
    :func:`dask_client` (closed at the end, with its cluster when it made a local one; an external
    scheduler is left running); every future put into ``futures`` (a dict) that has not finished when
    the block ends - a job closed half-way, an error - is cancelled."""
    owned = made = False
    if client is None:
        client, owned = dask_client(scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker)
        made = True
    futures: dict = {}
    try:
        yield client, futures
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
        if made:
            cluster = getattr(client, "cluster", None) if owned else None
            client.close()
            if cluster is not None:
                cluster.close()


def n_workers(client) -> int:
    """The number of workers the client's scheduler has now."""
    return len(client.scheduler_info().get("workers", {}))


def _error_text(err: BaseException) -> str:
    first = f"{type(err).__name__}: {err}".strip()
    return first.splitlines()[0] if first else type(err).__name__


def batch_job(step: str, task: Callable[..., dict], inputs: BatchInputs, out: str | os.PathLike, *,
              params: dict | None = None, client=None, scheduler: str | None = None, workers: int = 2,
              threads_per_worker: int = 1, merge: Callable[[BatchReport, BatchInputs], dict] | None = None,
              ) -> Job[BatchReport]:
    """Run ``task`` on every tomogram of ``inputs`` (module docstring); a job.

    Parameters
    ----------
    step : the step's name (``"pick predict"``, ...): names the completion markers
    task : ``task(source, folder, **params) -> dict``, a module-level function (Dask pickles it by
        reference: the package must be installed on the workers)
    inputs : the tomograms (and those that could not be listed: reported as failed)
    out : the output folder (made if missing; its parent must exist)
    params : the task's options, strings and numbers (part of the fingerprint)
    client : a ``distributed.Client`` to use (else one is made from ``scheduler`` / ``workers`` /
        ``threads_per_worker``, see :func:`dask_client`, and closed at the end)
    merge : called with the report once every task has ended; returns the merged outputs it wrote

    Yields ``Progress(ended, total, "3 done, 1 failed, 12 left")``, ``Partial("dashboard", link)``
    and ``Partial("tomogram", TaskOutcome)`` as each tomogram ends. Closing the job cancels the
    tasks not yet finished (finished ones keep their markers). Returns the :class:`BatchReport`.
    """
    params = dict(params or {})
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError("an output folder whose parent exists", path=out, field="--out",
                         got=f"{out.parent} does not exist")
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    sources = inputs.sources
    total = len(sources) + len(inputs.missing)
    outcomes: dict[str, TaskOutcome] = {}
    for name, why in inputs.missing.items():
        outcomes[name] = TaskOutcome(name, "", "failed", error=why)
    digests = {s.name: fingerprint(step, s, params) for s in sources}
    todo = []
    for s in sources:
        marker = _done(out, s, step, digests[s.name])
        if marker is not None:
            outcomes[s.name] = TaskOutcome(s.name, s.folder, "skipped", summary=marker.get("summary", {}))
        else:
            todo.append(s)

    def progress():
        n_done = sum(o.status == "done" for o in outcomes.values())
        n_skip = sum(o.status == "skipped" for o in outcomes.values())
        n_fail = sum(o.status == "failed" for o in outcomes.values())
        left = total - len(outcomes)
        msg = f"{n_done} done, {n_fail} failed, {left} left" + (f" ({n_skip} finished before)" if n_skip else "")
        return Progress(len(outcomes), total, msg)

    yield progress()
    for o in list(outcomes.values()):
        yield Partial("tomogram", o)
    dashboard, workers_now = None, 0
    if todo:
        with cluster_session(client, scheduler=scheduler, workers=workers,
                             threads_per_worker=threads_per_worker) as (client, futures):
            dashboard = getattr(client, "dashboard_link", None) if _has_dashboard(client) else None
            workers_now = n_workers(client)
            yield Partial("dashboard", dashboard)
            from distributed import as_completed

            for s in todo:
                f = client.submit(run_task, task, s, str(out), step, params, digests[s.name], threads_per_worker,
                                  pure=False, key=f"{step.replace(' ', '-')}-{s.folder}-{os.urandom(4).hex()}")
                futures[f] = s
            for f in as_completed(list(futures)):
                s = futures[f]
                try:
                    summary = f.result()
                    oc = TaskOutcome(s.name, s.folder, "done", summary=summary, seconds=summary.get("seconds", 0.0))
                except Exception as err:  # the tomogram's own failure: reported, the batch goes on
                    oc = TaskOutcome(s.name, s.folder, "failed", error=_error_text(err))
                    log.warning("%s failed: %s", s.name, oc.error)
                outcomes[s.name] = oc
                yield Partial("tomogram", oc)
                yield progress()
    order = [s.name for s in sources] + [n for n in inputs.missing]
    report = BatchReport(step, out, [outcomes[n] for n in order], dashboard=dashboard,
                         seconds=time.perf_counter() - t0, workers=workers_now)
    if merge is not None:
        report.merged = dict(merge(report, inputs) or {})
    return report


def _has_dashboard(client) -> bool:
    try:
        return bool(client.scheduler_info().get("services", {}).get("dashboard"))
    except Exception:  # noqa: BLE001 - an old scheduler without the field
        return False
