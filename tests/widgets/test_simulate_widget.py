"""The "Simulate data" dock widget, driven with qtbot."""

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_cryoalign import io as star
from napari_cryoalign.widgets.simulate import SimulateWidget


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = SimulateWidget(viewer)
    viewer.window.add_dock_widget(w)
    return viewer, w


def test_subtomograms_run_show_and_save(widget, qtbot, tmp_path):
    viewer, w = widget
    w.kind.value = "Subtomograms (alignment, clustering)"
    assert not w.sub_n.native.isHidden() and w.tomo_z.native.isHidden()
    w.sub_structures.value = ["ribosome", "cct"]
    w.sub_n.value = 3
    w.sub_box.value = 24
    qtbot.mouseClick(w.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: "simulated subtomograms" in viewer.layers, timeout=30_000)
    layer = viewer.layers["simulated subtomograms"]
    assert layer.data.shape == (6, 24, 24, 24)
    assert layer.scale[1] == pytest.approx(layer.metadata["napari_cryoalign"]["voxel_size_angstrom"])
    assert not w.runner.running and w.save_button.enabled
    w.out_dir.value = str(tmp_path / "subtomos")
    files = w.save_last()
    table = star.read_particles(files["star"], require=())
    assert len(table.data) == 6
    assert sorted(set(star.classes(table))) == [1, 2]


def test_tomogram_truth_points_and_cancel(widget, qtbot):
    viewer, w = widget
    w.kind.value = "Tomogram with particles (picking)"
    w.tomo_z.value, w.tomo_xy.value, w.tomo_particles.value = 48, 96, 4
    w.tomo_structures.value = ["mtor"]
    w.tomo_gold.value = 0
    qtbot.mouseClick(w.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: "simulated tomogram truth" in viewer.layers, timeout=60_000)
    pts = viewer.layers["simulated tomogram truth"]
    assert len(pts.data) == 4 and "rlnAngleRot" in pts.features
    tomo = viewer.layers["simulated tomogram"]
    assert tomo.data.shape == (48, 96, 96)
    # a big run, cancelled: the layers of the finished run stay, nothing is replaced
    w.tomo_z.value, w.tomo_xy.value, w.tomo_particles.value = 128, 1024, 300
    w.run()
    assert w.runner.running and w.cancel_button.isEnabled()
    qtbot.mouseClick(w.cancel_button, Qt.LeftButton)
    assert not w.runner.running and w.status.text() == "cancelled"
    w.runner.wait(60_000)
    qtbot.wait(200)
    assert viewer.layers["simulated tomogram"].data.shape == (48, 96, 96)


def test_bad_parameters_become_a_message(widget, qtbot):
    viewer, w = widget
    w.kind.value = "Subtomograms (alignment, clustering)"
    w.sub_structures.value = []
    assert w.run() is None
    assert "structure" in w.status.text()
    assert not w.runner.running


def test_marker_tiltseries_and_particles(widget, qtbot):
    viewer, w = widget
    w.kind.value = "Tilt series with gold markers"
    w.run()
    qtbot.waitUntil(lambda: "simulated marker tilt series true beads" in viewer.layers, timeout=30_000)
    img = viewer.layers["simulated marker tilt series"]
    beads = viewer.layers["simulated marker tilt series true beads"]
    assert img.data.ndim == 3 and beads.data[:, 0].max() == img.data.shape[0] - 1
    w.kind.value = "Particle images (pose)"
    w.part_n.value, w.part_box.value = 8, 32
    w.run()
    qtbot.waitUntil(lambda: "simulated particle images" in viewer.layers, timeout=30_000)
    assert viewer.layers["simulated particle images"].data.shape == (8, 32, 32)
    assert np.isfinite(viewer.layers["simulated particle images"].data).all()


def test_saved_tomogram_reopens_with_the_reader_where_it_was_shown(widget, qtbot, tmp_path):
    """Simulate, save, open the files with the plugin's reader: same voxel size, the truth on the same
    places in the world, the tilt series with its angles; a second save needs the overwrite box."""
    from conftest import open_files

    viewer, w = widget
    w.kind.value = "Tomogram with particles (picking)"
    w.tomo_z.value, w.tomo_xy.value, w.tomo_particles.value = 48, 96, 4
    w.tomo_structures.value = ["mtor"]
    w.tomo_gold.value = 0
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running and w.last_result is not None, timeout=60_000)
    w.out_dir.value = str(tmp_path / "sim")
    files = w.save_last()
    assert files is not None
    shown_tomo, shown_truth = viewer.layers["simulated tomogram"], viewer.layers["simulated tomogram truth"]
    tomo, truth, series = open_files(viewer, files["tomogram"], files["truth"], files["tilt_series"])
    np.testing.assert_allclose(tomo.scale, shown_tomo.scale)
    np.testing.assert_allclose(np.asarray(tomo.data), shown_tomo.data, atol=1e-6)
    world = lambda layer: np.asarray(layer.data) * layer.scale + layer.translate  # noqa: E731
    np.testing.assert_allclose(np.sort(world(truth), 0), np.sort(world(shown_truth), 0), atol=1e-3)
    assert len(series.metadata["napari_cryoalign"]["tilt_angles_deg"]) == series.data.shape[0]
    assert w.save_last() is None and "overwrite existing files" in w.status.text()
    w.overwrite.value = True  # still refused: the folder holds files open in the viewer
    assert w.save_last() is None and "holds the input" in w.status.text()
    for layer in (tomo, truth, series):
        viewer.layers.remove(layer)
    assert w.save_last() is not None
