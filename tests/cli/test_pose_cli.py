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


def _write_user_star(path, ps, rows, subset):
    """Particles ``rows`` of a simulated set as a user's STAR file (the project's writer); ``subset``: the
    rlnRandomSubset value of every row, or None for no such column."""
    from napari_cryoalign.io.star_images import write_particle_stack

    extra = {"rlnOriginXAngst": ps.origins_angstrom[rows, 0], "rlnOriginYAngst": ps.origins_angstrom[rows, 1],
             "rlnDefocusU": ps.defocus_u_um[rows] * 1e4, "rlnDefocusV": ps.defocus_v_um[rows] * 1e4,
             "rlnDefocusAngle": ps.defocus_angle_deg[rows]}
    if subset is not None:
        extra["rlnRandomSubset"] = np.asarray(subset)[None].repeat(len(rows)) if np.isscalar(subset) else subset
    return write_particle_stack(path, ps.images[rows], voxel_size=ps.pixel_size_angstrom,
                                euler_deg=ps.euler_deg[rows], extra_columns=extra,
                                optics={"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
                                        "rlnAmplitudeContrast": 0.07})


@pytest.fixture(scope="module")
def one_direction(tmp_path_factory):
    """CESPED's one-direction protocol as files: half1.star (rlnRandomSubset = 1 on every row), half2.star
    (= 2 on every row) and all.star (no rlnRandomSubset column)."""
    from napari_cryoalign.backend.simulate.particles import simulate_particles

    d = tmp_path_factory.mktemp("one_direction")
    ps = simulate_particles("ribosome", n=160, box=32, pixel_size_angstrom=12.0, snr=2.0, seed=3)
    rows = np.arange(ps.n)
    _write_user_star(d / "half1.star", ps, rows[:96], 1)
    _write_user_star(d / "half2.star", ps, rows[96:], 2)
    _write_user_star(d / "all.star", ps, rows[:96], None)
    return d


def test_single_half_star_trains_one_network_and_predicts_the_other_half(one_direction, capsys):
    from napari_cryoalign.backend.pose.modelio import load_pose_model

    d = one_direction
    assert main(["-q", "pose", "train", "--particles", str(d / "half1.star"), "--out", str(d / "h1.pt"),
                 "--symmetry", "C1", "--epochs", "1", "--grid-level", "1", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "only half set 1" in out and "--half 1" in out and "trained 1 network(s) on half set 1, 96 particles" in out
    model = load_pose_model(d / "h1.pt")
    assert model.halves == [1] and model.training["trained_on"] == "1"
    assert model.training["particles"] == {"1": 96} and "only half set 1" in model.training["half_choice"]
    # predict half 2 with the network of half 1: every particle gets a pose
    assert main(["-q", "pose", "predict", "--particles", str(d / "half2.star"), "--model", str(d / "h1.pt"),
                 "--out", str(d / "pred2.star")]) == 0
    out = capsys.readouterr().out
    assert "64 by the network of half set 1 (model trained on half set 1)" in out and "not a gold-standard" not in out
    df = starfile.read(d / "pred2.star", always_dict=True)["particles"]
    assert len(df) == 64 and (df["rlnRandomSubset"] == 2).all()
    angles = df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=float)
    assert np.isfinite(angles).all() and angles.std(axis=0).min() > 1.0  # predicted, not copied or constant
    src = starfile.read(d / "half2.star", always_dict=True)["particles"]
    assert not np.allclose(angles, src[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=float))
    # the training half itself is predicted too, with a warning that the network saw it
    assert main(["-q", "pose", "predict", "--particles", str(d / "half1.star"), "--model", str(d / "h1.pt"),
                 "--out", str(d / "pred1.star"), "--no-map-search"]) == 0
    assert "96 of these particles are in the half set their network was trained on" in capsys.readouterr().out


def test_star_without_subset_column_trains_on_all_particles(one_direction, capsys):
    from napari_cryoalign.backend.pose.modelio import load_pose_model

    d = one_direction
    assert main(["-q", "pose", "train", "--particles", str(d / "all.star"), "--out", str(d / "all.pt"),
                 "--epochs", "1", "--grid-level", "0", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "no rlnRandomSubset column: one network on all 96 particles" in out
    model = load_pose_model(d / "all.pt")
    assert model.halves == [0] and model.training["trained_on"] == "all"


def test_too_small_half_names_the_half_option(tmp_path, capsys):
    from napari_cryoalign.backend.simulate.particles import simulate_particles

    ps = simulate_particles("ribosome", n=40, box=16, pixel_size_angstrom=24.0, snr=2.0, seed=4)
    star = _write_user_star(tmp_path / "lopsided.star", ps, np.arange(40), np.r_[np.ones(36, int), np.full(4, 2)])
    assert main(["pose", "train", "--particles", str(star), "--out", str(tmp_path / "m.pt"),
                 "--batch-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "lopsided.star" in err and "rlnRandomSubset" in err and "half set 2" in err
    assert "--half 1" in err and "(half set 1: 36, half set 2: 4)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()
