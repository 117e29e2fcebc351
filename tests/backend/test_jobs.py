"""The job protocol: generators drained by run_job."""

import time

import pytest

from napari_cryoalign.backend.jobs import JobCancelled, Partial, Progress, run_job, throttle


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
