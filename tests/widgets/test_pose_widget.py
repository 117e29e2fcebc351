"""The "Pose inference" widget: load a STAR stack, train briefly, predict, reconstruct, threshold, export."""

from __future__ import annotations

import numpy as np
import pytest
import starfile

from napari_cryoalign.backend.simulate.particles import (
    simulate_particles,
    write_particle_set,
)


@pytest.fixture
def star(tmp_path):
    ps = simulate_particles("ribosome", n=96, box=32, pixel_size_angstrom=12.0, snr=2.0, seed=0)
    return write_particle_set(ps, tmp_path / "sim")["star"]


def test_train_predict_reconstruct_export(make_napari_viewer, qtbot, star, tmp_path):
    from napari_cryoalign.widgets.pose import PoseWidget

    viewer = make_napari_viewer()
    w = PoseWidget(viewer)
    w.star.value = str(star)
    data = w.load_particles()
    assert data.n == 96 and "particle images" in viewer.layers
    assert viewer.layers["particle images"].data.shape == (96, 32, 32)
    w.epochs.value = 1
    w.grid_level.value = 1
    token = w.run()
    assert token is not None
    qtbot.waitUntil(lambda: w.last_run is not None, timeout=120_000)
    assert "pose reconstruction" in viewer.layers and "pose training reference" in viewer.layers
    assert viewer.layers["pose reconstruction"].data.shape == (32, 32, 32)
    pts = viewer.layers["particle confidence"]
    assert len(pts.data) == 96 and "confidence" in pts.features.columns
    assert w.map_search.value and w.last_run.prediction.map_search  # the default: network + map search
    assert np.isfinite(pts.features["log_likelihood"]).all()
    assert w.orientation_plot.n_points == 96 and w.fsc_plot.report is not None
    assert len(w.loss_plot.steps) > 0
    conf = w.last_run.prediction.confidence
    w.threshold.value = float(np.median(conf))
    keep = w.selected()
    assert 0 < len(keep) < 96 and pts.shown.sum() == len(keep)
    w.export_file.value = str(tmp_path / "out.star")
    out = w.export_star()
    df = starfile.read(out, always_dict=True)["particles"]
    assert len(df) == len(keep) and "rlnParticleFigureOfMerit" in df.columns
    assert "rlnLogLikeliContribution" in df.columns
    w.save_model_file.value = str(tmp_path / "m.pt")
    assert w.save_model().is_file()


def test_particles_opened_with_the_reader(make_napari_viewer, qtbot, star, tmp_path):
    """The user's path: particles.star dropped into napari opens as the image stack (plugin reader), and the
    widget takes its particles from it; predict with a saved model, export refuses to overwrite."""
    from conftest import open_files

    from napari_cryoalign.backend.pose.modelio import save_pose_model
    from napari_cryoalign.backend.pose.train import train_pose_model
    from napari_cryoalign.backend.pose.data import load_particle_data
    from napari_cryoalign.widgets.pose import MODES, PoseWidget

    viewer = make_napari_viewer()
    layer, = open_files(viewer, star)
    assert layer.data.shape == (96, 32, 32) and layer.scale[-1] == pytest.approx(12.0)
    w = PoseWidget(viewer)
    assert str(w.star.value) == str(star.resolve())
    data = w.load_particles()
    assert data.n == 96 and "particle images" not in viewer.layers  # shown once, as opened
    model = train_pose_model(load_particle_data(star), epochs=1, grid_level=1, symmetry="C1")
    model_path = save_pose_model(tmp_path / "model.pt", model)
    w.mode.value = MODES[1]
    w.model_file.value = str(model_path)
    assert w.run() is not None, w.status.text()
    qtbot.waitUntil(lambda: w.last_run is not None, timeout=120_000)
    assert len(viewer.layers["particle confidence"].data) == 96
    w.export_file.value = str(star)  # the input: refused
    assert w.export_star() is None and "input" in w.status.text()
    w.export_file.value = str(tmp_path / "poses.star")
    assert w.export_star() is not None
    assert w.export_star() is None and "overwrite existing files" in w.status.text()
    w.save_model_file.value = str(model_path)  # the model being used: an input
    assert w.save_model() is None and "input" in w.status.text()


def test_training_on_a_single_half_star(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """A STAR file with rlnRandomSubset = 1 on every row trains one network on it (as `pose train` does) and says so."""
    from napari_cryoalign.io.star_images import write_particle_stack
    from napari_cryoalign.widgets.pose import PoseWidget

    ps = simulate_particles("ribosome", n=64, box=32, pixel_size_angstrom=12.0, snr=2.0, seed=1)
    star = write_particle_stack(tmp_path / "half1.star", ps.images, voxel_size=12.0, euler_deg=ps.euler_deg,
                                extra_columns={"rlnDefocusU": ps.defocus_u_um * 1e4, "rlnRandomSubset": np.ones(64, int)})
    from napari.utils import notifications

    shown = []
    monkeypatch.setattr(notifications, "show_info", shown.append)
    w = PoseWidget(make_napari_viewer())
    w.star.value = str(star)
    w.epochs.value = 1
    w.grid_level.value = 1
    assert w.run() is not None, w.status.text()
    qtbot.waitUntil(lambda: w.last_run is not None, timeout=120_000)
    assert w.last_run.model.halves == [1] and w.last_run.model.training["trained_on"] == "1"
    assert any("half1.star: only half set 1" in m for m in shown), shown
    assert len(w.last_run.prediction.confidence) == 64
