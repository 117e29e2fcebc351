"""`cryoalign pose train / pose predict / reconstruct` end to end on a tiny simulated set."""

from __future__ import annotations

import re

import numpy as np
import pytest
import starfile

from napari_cryoalign.cli import main


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pose")
    assert main(["-q", "simulate", "particles", "--out", str(d / "sim"), "--structure", "ribosome", "--n", "160",
                 "--box", "32", "--pixel-size", "12", "--snr", "2"]) == 0
    return d


def test_train_predict_reconstruct(sim_dir, capsys):
    d = sim_dir
    star = d / "sim" / "particles.star"
    before = star.read_bytes()
    assert main(["-q", "pose", "train", "--particles", str(star), "--out", str(d / "m.pt"), "--epochs", "2",
                 "--grid-level", "1", "--batch-size", "16"]) == 0
    assert (d / "m.pt").is_file()
    assert main(["-q", "pose", "predict", "--particles", str(star), "--model", str(d / "m.pt"),
                 "--out", str(d / "poses.star")]) == 0
    out = capsys.readouterr().out
    assert "MAnE" in out and "particles/s" in out and "network + map search" in out
    mane_map = float(re.search(r"MAnE ([0-9.]+)°", out).group(1))
    assert main(["-q", "pose", "predict", "--particles", str(star), "--model", str(d / "m.pt"),
                 "--out", str(d / "poses_net.star"), "--no-map-search"]) == 0
    out = capsys.readouterr().out
    assert "network only" in out
    assert "rlnLogLikeliContribution" not in starfile.read(d / "poses_net.star", always_dict=True)["particles"]
    mane_net = float(re.search(r"MAnE ([0-9.]+)°", out).group(1))
    assert mane_map < 0.5 * mane_net  # measured 26° vs 126°: after 2 epochs the network alone is near random
    df = starfile.read(d / "poses.star", always_dict=True)["particles"]
    src = starfile.read(star, always_dict=True)["particles"]
    for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
              "rlnParticleFigureOfMerit", "rlnLogLikeliContribution", "rlnDefocusU", "rlnRandomSubset",
              "rlnImageName"):
        assert c in df.columns
    assert len(df) == len(src) and (df["rlnDefocusU"].to_numpy() == pytest.approx(src["rlnDefocusU"].to_numpy()))
    assert star.read_bytes() == before  # input untouched
    # reconstruct from the true poses: half maps, FSC files, FSC vs the truth printed
    assert main(["-q", "reconstruct", "--particles", str(star), "--out", str(d / "map.mrc"), "--half-maps",
                 "--reference", str(d / "sim" / "reference.mrc")]) == 0
    out = capsys.readouterr().out
    assert "half-map FSC" in out and "masked correlation" in out
    for name in ("map.mrc", "map_half1.mrc", "map_half2.mrc", "map_fsc.csv", "map_fsc.png"):
        assert (d / name).is_file()
    fsc = np.loadtxt(d / "map_fsc.csv", delimiter=",", skiprows=1)[:, 3]
    assert fsc[1:4].min() > 0.8
    # reconstruct from predicted poses too (the written STAR file is readable by the reader)
    assert main(["-q", "reconstruct", "--particles", str(d / "poses.star"), "--out", str(d / "pred.mrc")]) == 0


def test_errors_are_one_line(sim_dir, capsys):
    d = sim_dir
    star = d / "sim" / "particles.star"
    assert main(["pose", "predict", "--particles", str(star), "--model", str(d / "missing.pt"),
                 "--out", str(d / "x.star")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["reconstruct", "--particles", str(star), "--out", str(star)]) == 2  # never overwrite the input
    assert main(["pose", "train", "--particles", str(star), "--out", str(d / "y.pt"), "--symmetry", "X9"]) == 2
