"""`cryoalign simulate ...` end to end on small sizes: files written, truth readable, inputs safe."""

import json

import numpy as np
import pytest

from napari_cryoalign import io as star
from napari_cryoalign.cli import main
from napari_cryoalign.io import read_mrc, read_tlt


def test_simulate_tomogram(tmp_path, capsys):
    out = tmp_path / "tomo"
    args = ["-q", "simulate", "tomogram", "--out", str(out), "--size", "96,96,48", "--particles", "5",
            "--structures", "mtor,ruvab", "--seed", "3"]
    assert main(args) == 0
    tomo = read_mrc(out / "tomogram.mrc")
    assert tomo.data.shape == (48, 96, 96)
    assert tomo.voxel_size[0] == pytest.approx(10.0)
    angles = read_tlt(out / "tiltseries.tlt")
    assert angles.min() == pytest.approx(-60) and angles.max() == pytest.approx(60) and len(angles) == 41
    truth = star.read_particles(out / "truth.star", tomogram_shape=(48, 96, 96), voxel_size=10.0)
    xyz = star.coordinates_xyz(truth)
    assert len(xyz) == 5 and np.all(xyz >= 0) and np.all(xyz < [96, 96, 48])
    assert set(star.classes(truth)) <= {1, 2}
    params = json.loads((out / "params.json").read_text())
    assert params["seed"] == 3
    # same seed, new folder: identical tomogram
    assert main(args[:4] + [str(tmp_path / "tomo2")] + args[5:]) == 0
    np.testing.assert_array_equal(read_mrc(tmp_path / "tomo2" / "tomogram.mrc").data, tomo.data)
    # existing outputs are never replaced
    before = (out / "tomogram.mrc").read_bytes()
    assert main(args) == 2
    assert "tomogram.mrc" in capsys.readouterr().err
    assert (out / "tomogram.mrc").read_bytes() == before


def test_simulate_subtomograms_and_particles(tmp_path):
    sub = tmp_path / "sub"
    assert main(["-q", "simulate", "subtomograms", "--out", str(sub), "--structures", "ribosome,smc_hinge",
                 "--n-per-class", "3", "--box", "24", "--snr", "0.5"]) == 0
    vols, table = star.read_subtomograms(sub / "particles.star")
    assert vols.shape == (6, 24, 24, 24)
    assert sorted(set(star.classes(table))) == [1, 2]
    assert np.abs(star.origins_angstrom(table)).max() > 0
    part = tmp_path / "part"
    assert main(["-q", "simulate", "particles", "--out", str(part), "--structure", "cct", "--n", "6",
                 "--box", "32"]) == 0
    imgs, ptable = star.read_particle_images(part / "particles.star")
    assert imgs.shape == (6, 32, 32)
    assert set(ptable.data["rlnRandomSubset"]) == {1, 2}


def test_simulate_tiltseries_preset(tmp_path):
    out = tmp_path / "ts"
    assert main(["-q", "simulate", "tiltseries", "--out", str(out), "--preset", "paper3d"]) == 0
    ts = read_mrc(out / "tiltseries.mrc")
    assert ts.data.shape == (140, 64, 64)
    truth = json.loads((out / "truth.json").read_text())
    assert len(truth["beads"]["positions_nm_xyz"]) == 20
    assert truth["deformation"]["coefficients_nm"]  # the deformation truth rides along
    assert len(read_tlt(out / "tiltseries.tlt")) == 140


def test_unknown_structure_is_a_clear_error(tmp_path, capsys):
    assert main(["simulate", "subtomograms", "--out", str(tmp_path / "x"), "--structures", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and err.count("\n") == 1


def test_simulate_tiltseries_shows_a_progress_bar(tmp_path, capsys):
    assert main(["simulate", "tiltseries", "--out", str(tmp_path / "ts"), "--preset", "paper2d"]) == 0
    err = capsys.readouterr().err
    assert "tiltseries" in err and "21/21" in err  # 20 tilt images rendered, then the imaging


def test_shared_simulate_options():
    from argparse import Namespace

    from napari_cryoalign.cli._simulate import defocus_option, snr_option

    assert defocus_option(Namespace(defocus=(2.0, 2.0), no_ctf=False)) == 2.0
    assert defocus_option(Namespace(defocus=(1.0, 3.0), no_ctf=False)) == (1.0, 3.0)
    assert defocus_option(Namespace(defocus=(1.0, 3.0), no_ctf=True)) is None
    assert snr_option(Namespace(snr=0.0)) is None and snr_option(Namespace(snr=0.5)) == 0.5
