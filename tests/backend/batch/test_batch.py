"""Batch jobs on Dask distributed (issue 21): a copick project of 3 runs in tmp, a tomograms.star and a
list; batch predict on a LocalCluster equals the single-tomogram picks; a corrupt run fails alone;
rerunning skips finished runs; copick's logging change is undone."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from napari_cryoalign.backend.batch import (
    batch_job,
    merge_picks,
    pick_predict_task,
    tomograms_from_copick,
    tomograms_from_list,
    tomograms_from_star,
)
from napari_cryoalign.backend.jobs import run_job
from napari_cryoalign.errors import InputError
from napari_cryoalign.io import read_star
from napari_cryoalign.io.copick_project import (
    COPICK_USER,
    import_copick,
    read_copick_picks,
    read_copick_tomogram,
)

VOXEL, SHAPE, RUNS, THRESHOLD = 10.0, (16, 64, 64), ("TS_001", "TS_002", "TS_003"), 0.2  # as in conftest.py

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _single(d, vol):
    """What `cryoalign pick predict` finds on one tomogram (the reference for the batch)."""
    from napari_cryoalign.backend.picking import load_picker, pick

    picker = load_picker(d / "model.pt")
    picks, _ = pick(picker, vol, threshold=THRESHOLD, voxel_size=VOXEL)
    return picks


def _params(d, **kw):
    return {"model": str(d / "model.pt"), "threshold": THRESHOLD, "min_distance_angstrom": None, "heatmap": False,
            "device": "cpu", "copick_object": None, "copick_session": "0", **kw}


def test_copick_project_round_trip_and_logging(project):
    d, vols = project.d, project.vols
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    import_copick()
    assert (root.level, list(root.handlers)) == before  # copick's INFO + rich handler undone
    inputs = tomograms_from_copick(d / "config.json")
    assert [s.name for s in inputs.sources] == [*RUNS, "TS_bad"] and not inputs.missing
    assert inputs.sources[0].voxel_size == VOXEL and inputs.sources[0].tomo_type == "wbp"
    np.testing.assert_array_equal(read_copick_tomogram(inputs.sources[1].copick_ref()), vols[RUNS[1]])
    sub = tomograms_from_copick(d / "config.json", runs=["TS_002"])
    assert [s.name for s in sub.sources] == ["TS_002"]
    with pytest.raises(InputError, match="TS_404"):
        tomograms_from_copick(d / "config.json", runs=["TS_404"])
    missing = tomograms_from_copick(d / "config.json", voxel_size=20.0)
    assert not missing.sources and set(missing.missing) == {*RUNS, "TS_bad"}


def test_batch_predict_on_copick_equals_single_runs_and_resumes(project, client, tmp_path):
    d, vols = project.d, project.vols
    inputs = tomograms_from_copick(d / "config.json")
    events = []
    job = batch_job("pick predict", pick_predict_task, inputs, tmp_path / "out", params=_params(
        d, copick_object="enolase", copick_session="7"), client=client, merge=merge_picks)
    report = run_job(job, progress=False, on_partial=events.append)
    status = {o.name: o.status for o in report.outcomes}
    assert status == {**{n: "done" for n in RUNS}, "TS_bad": "failed"}  # the corrupt run fails alone
    assert "TS_bad" in [e.value.name for e in events if e.name == "tomogram" and e.value.status == "failed"]
    bad = next(o for o in report.outcomes if o.name == "TS_bad")
    assert "resolution level 0" in bad.error
    n_total = 0
    for name in RUNS:
        single = _single(d, vols[name])
        table = read_star(tmp_path / "out" / name / "picks.star")["particles"]
        got = np.column_stack([table["rlnCoordinateX"], table["rlnCoordinateY"], table["rlnCoordinateZ"]])
        assert len(single) > 0 and len(got) == len(single)
        np.testing.assert_allclose(got, single.coordinates_xyz, atol=1e-4)
        np.testing.assert_allclose(table["rlnAutopickFigureOfMerit"], single.scores, atol=1e-5)
        # written back to the run: user cryoalign, the session asked for, locations in Å
        (meta, xyz, scores), = read_copick_picks(inputs.sources[RUNS.index(name)].copick_ref(), user_id=COPICK_USER)
        assert meta == {"object": "enolase", "user_id": COPICK_USER, "session_id": "7"}
        np.testing.assert_allclose(xyz, single.coordinates_xyz, atol=1e-4)
        n_total += len(single)
    merged = read_star(report.merged["particles"])["particles"]
    assert len(merged) == n_total and set(merged["rlnTomoName"]) == set(RUNS)
    tomos = read_star(report.merged["tomograms"])["global"]
    assert list(tomos["rlnTomoName"]) == list(RUNS) and list(tomos["rlnTomoSizeZ"]) == [SHAPE[0]] * 3
    # rerun: the finished runs are skipped (their markers and files untouched), the corrupt one tried again
    marker = tmp_path / "out" / "TS_001" / ".cryoalign-pick-predict.json"
    stamp = os.stat(marker).st_mtime_ns
    again = run_job(batch_job("pick predict", pick_predict_task, inputs, tmp_path / "out", params=_params(
        d, copick_object="enolase", copick_session="7"), client=client, merge=merge_picks), progress=False)
    assert {o.name: o.status for o in again.outcomes} == {**{n: "skipped" for n in RUNS}, "TS_bad": "failed"}
    assert os.stat(marker).st_mtime_ns == stamp and json.loads(marker.read_text())["summary"]["picks"] > 0
    assert len(read_star(again.merged["particles"])["particles"]) == n_total
    # other options: not finished with those, so run again
    third = run_job(batch_job("pick predict", pick_predict_task, tomograms_from_copick(d / "config.json", runs=[
        "TS_001"]), tmp_path / "out", params=_params(d, threshold=0.9), client=client), progress=False)
    assert [o.status for o in third.outcomes] == ["done"]


def test_batch_predict_from_tomograms_star_and_list(project, client, tmp_path):
    d = project.d
    star = tomograms_from_star(d / "tomograms.star")
    assert [s.name for s in star.sources] == list(RUNS) + ["TS_missing"]
    report = run_job(batch_job("pick predict", pick_predict_task, star, tmp_path / "a", params=_params(d),
                               client=client, merge=merge_picks), progress=False)
    status = {o.name: o.status for o in report.outcomes}
    assert status == {**{n: "done" for n in RUNS}, "TS_missing": "failed"}
    assert "TS_missing.mrc" in next(o.error for o in report.outcomes if o.status == "failed")
    tomos = read_star(report.merged["tomograms"])["global"]
    assert [Path(p).name for p in tomos["rlnTomoReconstructedTomogram"]] == [f"{n}.mrc" for n in RUNS]
    listed = tomograms_from_list(d / "list.txt")
    assert [s.name for s in listed.sources] == list(RUNS)
    other = run_job(batch_job("pick predict", pick_predict_task, listed, tmp_path / "b", params=_params(d),
                              client=client, merge=merge_picks), progress=False)
    for name in RUNS:
        a = read_star(tmp_path / "a" / name / "picks.star")["particles"]
        b = read_star(tmp_path / "b" / name / "picks.star")["particles"]
        np.testing.assert_allclose(a["rlnCoordinateX"], b["rlnCoordinateX"])
    assert other.count("done") == 3
