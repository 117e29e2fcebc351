"""The job protocol: generators drained by run_job."""

import time

import pytest

from napari_cryoalign.backend.jobs import JobCancelled, Partial, Progress, run_job, subjob, throttle


def counting_job(n, log):
    try:
        for i in range(n):
            yield Progress(i + 1, n, f"step {i + 1}")
            if i % 2 == 0:
                yield Partial("value", i)
        return sum(range(n))
    finally:
        log.append("closed")


def test_run_job_returns_result_and_forwards_events():
    log, partials, progress = [], [], []
    result = run_job(counting_job(5, log), progress=False, on_partial=partials.append, on_progress=progress.append)
    assert result == 10
    assert [p.value for p in partials] == [0, 2, 4]
    assert [p.step for p in progress] == [1, 2, 3, 4, 5]
    assert progress[-1].fraction == 1.0
    assert log == ["closed"]


def test_run_job_with_progress_bar(capsys):
    assert run_job(counting_job(3, []), progress=True, description="demo") == 3


def test_should_stop_cancels_and_runs_finally():
    log = []
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] >= 3

    with pytest.raises(JobCancelled):
        run_job(counting_job(100, log), progress=False, should_stop=stop)
    assert log == ["closed"]


def test_bad_yield_type_is_an_error():
    def bad():
        yield 42

    with pytest.raises(TypeError, match="Progress or Partial"):
        run_job(bad(), progress=False)


def test_throttle():
    t = throttle(0.05)
    assert t() is True
    assert t() is False
    time.sleep(0.06)
    assert t() is True
    assert throttle(10, first=False)() is False


def _outer(sub, **kwargs):
    result = yield from subjob(sub, **kwargs)
    yield Partial("outer", result)
    return result + 1


def _events(job):
    events = []
    result = run_job(job, progress=False, on_partial=events.append, on_progress=events.append)
    return result, events


def test_subjob_forwards_everything_by_default():
    log = []
    result, events = _events(_outer(counting_job(3, log)))
    assert result == 4 and log == ["closed"]
    assert [(e.step, e.total, e.message) for e in events if isinstance(e, Progress)] == [
        (1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert [(e.name, e.value) for e in events if isinstance(e, Partial)] == [("value", 0), ("value", 2), ("outer", 3)]


def test_subjob_places_progress_at_an_outer_step_with_a_prefix_and_drops_partials():
    def sub():
        yield Progress(0, None, "no total")  # shows nothing at a fixed outer step: dropped
        yield Progress(1, 2, "half")
        yield Partial("picks", [1, 2])
        return 7

    result, events = _events(_outer(sub(), at=(5, 9), prefix="refine", partials=False))
    assert result == 8
    assert [(e.step, e.total, e.message) for e in events if isinstance(e, Progress)] == [(5, 9, "refine: half")]
    assert [e.name for e in events if isinstance(e, Partial)] == ["outer"]


def test_subjob_counts_its_steps_on_from_an_offset():
    def sub():
        yield Progress(1, 3, "a")
        yield Progress(None, None, "no total")
        yield Progress(3, 3, "c")
        return 0

    _, events = _events(_outer(sub(), offset=(2, 4)))
    assert [(e.step, e.total, e.message) for e in events if isinstance(e, Progress)] == [(3, 4, "a"), (4, 4, "c")]


def test_subjob_without_progress_keeps_partials():
    result, events = _events(_outer(counting_job(2, []), progress=False))
    assert not any(isinstance(e, Progress) for e in events)
    assert [e.name for e in events] == ["value", "outer"]


def test_closing_the_outer_job_closes_the_subjob():
    log = []
    job = _outer(counting_job(10, log))
    next(job), next(job)
    job.close()
    assert log == ["closed"]
