"""JobRunner: background jobs from widgets, cancel, newest request wins, errors as notifications."""

import threading
import time


from napari_cryoalign.backend.jobs import Partial, Progress
from napari_cryoalign.errors import InputError
from napari_cryoalign.widgets._runner import JobRunner


def slow_job(tag, n, delay, log, started=None):
    try:
        if started is not None:
            started.set()
        for i in range(n):
            time.sleep(delay)
            yield Progress(i + 1, n, f"{tag} {i + 1}")
            yield Partial("value", (tag, i, threading.current_thread() is threading.main_thread()))
        return tag
    finally:
        log.append(f"closed {tag}")


def failing_job():
    yield Progress(1, 2)
    raise InputError("a tomogram with z > 0", path="t.mrc", field="shape")


def _runner(**kw):
    got = {"partials": [], "done": [], "errors": [], "states": []}
    r = JobRunner(
        "test job",
        on_partial=got["partials"].append,
        on_done=got["done"].append,
        on_error=kw.pop("on_error", got["errors"].append),
        on_state=lambda s: got["states"].append((s.running, s.step, s.total, s.message)),
        show_progress=kw.pop("show_progress", False),
    )
    return r, got


def test_runs_in_thread_and_delivers_on_main_thread(qtbot):
    log = []
    r, got = _runner()
    r.start(slow_job("a", 4, 0.01, log))
    qtbot.waitUntil(lambda: got["done"] == ["a"], timeout=10_000)
    values = [p.value for p in got["partials"]]
    assert [v[1] for v in values] == [0, 1, 2, 3]
    assert all(v[2] is False for v in values), "the job must not run on the main thread"
    assert not r.running
    assert got["states"][-1][0] is False
    assert (True, 4, 4, "a 4") in got["states"]
    qtbot.waitUntil(lambda: log == ["closed a"], timeout=5_000)


def test_cancel_stops_job_and_runs_its_finally(qtbot):
    log = []
    started = threading.Event()
    r, got = _runner()
    r.start(slow_job("long", 1000, 0.01, log, started))
    assert started.wait(5)
    qtbot.waitUntil(lambda: len(got["partials"]) >= 2, timeout=5_000)
    r.cancel(quiet=True)
    n = len(got["partials"])
    qtbot.waitUntil(lambda: log == ["closed long"], timeout=10_000)
    qtbot.wait(100)
    assert got["done"] == []
    assert len(got["partials"]) == n, "results of a cancelled job must be dropped"
    assert r.state.history[-1] == "cancelled"


def test_newest_request_wins(qtbot):
    log = []
    r, got = _runner()
    r.start(slow_job("old", 50, 0.02, log))
    qtbot.waitUntil(lambda: len(got["partials"]) >= 1, timeout=5_000)
    r.start(slow_job("new", 3, 0.01, log))
    qtbot.waitUntil(lambda: got["done"] == ["new"], timeout=10_000)
    qtbot.waitUntil(lambda: "closed old" in log, timeout=10_000)
    tags_after = [p.value[0] for p in got["partials"]]
    first_new = tags_after.index("new")
    assert all(t == "new" for t in tags_after[first_new:])
    assert got["done"] == ["new"]


def test_error_goes_to_handler_not_exception(qtbot):
    r, got = _runner()
    r.start(failing_job())
    qtbot.waitUntil(lambda: len(got["errors"]) == 1, timeout=10_000)
    assert isinstance(got["errors"][0], InputError)
    assert "t.mrc" in str(got["errors"][0])
    assert not r.running and r.state.history[-1] == "failed"


def test_a_runtime_error_in_a_job_is_reported_and_the_runner_settles(qtbot):
    """superqt drops a RuntimeError raised by a generator (it takes it for a deleted worker); the runner
    must still report it and finish, or the widget would stay "running" for good."""
    def job():
        yield Progress(1, 2)
        raise RuntimeError("shape mismatch (as torch says)")

    r, got = _runner()
    r.start(job())
    qtbot.waitUntil(lambda: len(got["errors"]) == 1, timeout=10_000)
    assert type(got["errors"][0]) is RuntimeError and "shape mismatch" in str(got["errors"][0])
    assert r.wait(5_000) and not r.running and r.state.history[-1] == "failed"
    r.start(slow_job("next", 2, 0.0, []))  # usable again
    qtbot.waitUntil(lambda: got["done"] == ["next"], timeout=10_000)


def test_default_error_handler_is_a_notification(qtbot, monkeypatch):
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_error", shown.append)  # what the one error reporter calls
    r = JobRunner("picker", show_progress=False)
    r.start(failing_job())
    qtbot.waitUntil(lambda: len(shown) == 1, timeout=10_000)
    assert shown[0] == "picker: t.mrc: shape: expected a tomogram with z > 0"


def test_napari_progress_bar(qtbot, make_napari_viewer):
    make_napari_viewer()
    r, got = _runner(show_progress=True)
    r.start(slow_job("p", 3, 0.01, []))
    qtbot.waitUntil(lambda: got["done"] == ["p"], timeout=10_000)
    assert r._pbar is None  # closed when done


def test_new_job_waits_for_the_superseded_one_to_clean_up(qtbot):
    """Two jobs never overlap: the newest starts only after the old one ran its `finally`."""
    events = []
    lock_holder = {"busy": False}

    def job(tag, n, delay):
        assert not lock_holder["busy"], "two jobs overlapped"
        lock_holder["busy"] = True
        events.append(f"start {tag}")
        try:
            for i in range(n):
                time.sleep(delay)
                yield Progress(i + 1, n, tag)
            return tag
        finally:
            time.sleep(0.05)  # a slow clean-up (say, restoring a model's state)
            lock_holder["busy"] = False
            events.append(f"end {tag}")

    r, got = _runner()
    r.start(job("a", 100, 0.02))
    qtbot.waitUntil(lambda: "start a" in events, timeout=5_000)
    r.start(job("b", 100, 0.02))
    r.start(job("c", 3, 0.01))  # supersedes b before b ever ran
    qtbot.waitUntil(lambda: got["done"] == ["c"], timeout=20_000)
    assert events[:2] == ["start a", "end a"] and "start b" not in events
    assert events[-2:] == ["start c", "end c"]
    assert r.wait(5_000)


def test_wait_does_not_stop_the_job(qtbot):
    r, got = _runner()
    r.start(slow_job("w", 5, 0.02, []))
    assert r.wait(20_000)
    assert got["done"] == ["w"]
