"""The `cryoalign` command line: help, info, error handling."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cryoalign import io as star
from napari_cryoalign.cli import main
from napari_cryoalign.io import mrc, tilt


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("info", "simulate", "demo", "gui"):
        assert cmd in out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: cryoalign" in capsys.readouterr().out


def test_info_mrc_star_tlt(tmp_path, capsys):
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    mrc.write_mrc(tmp_path / "v.mrc", vol, voxel_size=3.25)
    star.write_particles(tmp_path / "p.star", coordinates_xyz=np.array([[1.0, 2, 3], [4, 4, 2]]), scores=[0.3, 0.8])
    tilt.write_tlt(tmp_path / "a.tlt", np.array([-60.0, -57, 0, 57, 60]))
    assert main(["info", "--json", str(tmp_path / "v.mrc")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "mrc"
    assert tuple(info["shape"]) == (4, 5, 6)
    assert info["voxel_size"][0] == pytest.approx(3.25)
    assert main(["info", str(tmp_path / "p.star")]) == 0
    out = capsys.readouterr().out
    assert "2 rows" in out and "rlnCoordinateX" in out and "rlnAutopickFigureOfMerit" in out
    assert main(["info", "--json", str(tmp_path / "a.tlt")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_tilts"] == 5 and info["min_deg"] == -60


@pytest.mark.parametrize(
    "content,name,expect",
    [
        (b"not an mrc at all" * 20, "bad.mrc", "bad.mrc"),
        (b"data_\nloop_\n_rlnFoo #1\n1\n", "nocoords.star", "nocoords.star"),
        (b"10\nabc\n", "bad.tlt", "line 2"),
        (b"", "x.tif", "x.tif"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, name, expect):
    p = tmp_path / name
    p.write_bytes(content)
    args = ["info", str(p)]
    if name.endswith(".star"):
        # `info` lists any STAR file; reading it as particles needs coordinates
        from napari_cryoalign.cli._info import describe

        assert describe(p)["kind"] == "star"
        with pytest.raises(Exception, match="rlnCoordinate"):
            star.read_particles(p)
        return
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("cryoalign info: error:") and expect in err


def test_missing_file(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.mrc")]) == 2
    err = capsys.readouterr().err
    assert "nope.mrc" in err


def test_console_script_runs():
    exe = shutil.which("cryoalign") or str(Path(sys.executable).with_name("cryoalign"))
    if not Path(exe).exists():
        pytest.skip("console script not installed")
    res = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "napari-cryoalign" in res.stdout
