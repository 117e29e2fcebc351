"""`cryoalign batch pick predict` as a user runs it: a copick project, its own LocalCluster, the exit status
counting the failed runs, the merged outputs, a rerun that skips finished runs; argument errors."""

import pytest

from napari_cryoalign.backend.batch import tomograms_from_copick
from napari_cryoalign.cli import main
from napari_cryoalign.io import read_star
from napari_cryoalign.io.copick_project import COPICK_USER, read_copick_picks

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_batch_pick_predict_cli_on_a_copick_project(project, tmp_path, capsys):
    d = project.d
    argv = ["-q", "batch", "pick", "predict", "--copick", str(d / "config.json"), "--model", str(d / "model.pt"),
            "--out", str(tmp_path / "out"), "--workers", "2", "--threads-per-worker", "1",
            "--threshold", str(project.threshold)]
    assert main(argv) == 1  # one run failed: the corrupt one
    out = capsys.readouterr()
    assert "3 done, 0 finished before, 1 failed of 4 tomograms" in out.out
    assert "failed: TS_bad:" in out.out and "resolution level 0" in out.out
    assert "Dask" in out.err  # the dashboard's address, or why there is none
    merged = read_star(tmp_path / "out" / "particles.star")["particles"]
    assert set(merged["rlnTomoName"]) == set(project.runs)
    # written back with the project's only particle object, user cryoalign, session 0
    ref = tomograms_from_copick(d / "config.json", runs=["TS_002"]).sources[0].copick_ref()
    (meta, xyz, _), = read_copick_picks(ref, user_id=COPICK_USER)
    assert meta == {"object": "enolase", "user_id": COPICK_USER, "session_id": "0"}
    assert len(xyz) == len(read_star(tmp_path / "out" / "TS_002" / "picks.star")["particles"])
    # rerun only the finished runs: nothing to do, exit 0
    assert main([*argv, "--runs", ",".join(project.runs)]) == 0
    assert "0 done, 3 finished before, 0 failed of 3 tomograms" in capsys.readouterr().out


def test_batch_argument_errors(project, tmp_path, capsys):
    d = project.d
    base = ["batch", "pick", "predict", "--model", str(d / "model.pt"), "--out", str(tmp_path / "o")]
    assert main([*base, "--copick", str(d / "config.json"), "--object", "ribosome"]) == 2
    assert "--object" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main([*base, "--tomogram-list", str(d / "list.txt"), "--runs", "TS_001"]) == 2
    assert "--runs" in capsys.readouterr().err
    assert main([*base, "--copick", str(d / "config.json"), "--runs", "TS_404"]) == 2
    assert "TS_404" in capsys.readouterr().err
    assert main(["batch", "pick", "predict", "--model", str(d / "config.json"), "--out", str(tmp_path / "o"),
                 "--tomogram-list", str(d / "list.txt")]) == 2  # not a model file
    with pytest.raises(SystemExit):
        main([*base, "--copick", str(d / "config.json"), "--tomograms", str(d / "tomograms.star")])
    with pytest.raises(SystemExit):
        main([*base, "--tomogram-list", str(d / "list.txt"), "--workers", "0"])
