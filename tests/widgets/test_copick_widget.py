"""The "Copick project" widget (issue 21): open a copick project in tmp, list runs, open a run's tomogram at a
resolution level with its picks (one points layer per user/session, at the right place in world units), the
Pick widget takes the run's tomogram as a tomogram, and picks saved back to the run read back."""

import numpy as np
import pytest

from napari_cryoalign.io.copick_project import (COPICK_USER, CopickTomogramRef, new_copick_project, read_copick_picks,
                                                write_copick_picks)
from napari_cryoalign.widgets.copick import CopickWidget, picks_layer_name

VOXEL = 10.0


@pytest.fixture
def project(tmp_path):
    root = new_copick_project(tmp_path / "config.json", tmp_path / "overlay",
                              objects=[{"name": "ribosome", "radius": 120.0}, {"name": "membrane",
                                                                               "is_particle": False}])
    rng = np.random.default_rng(0)
    for name in ("TS_01", "TS_02"):
        root.new_run(name).new_voxel_spacing(VOXEL).new_tomogram("wbp").from_numpy(
            rng.normal(size=(16, 64, 48)).astype(np.float32))
    ref = CopickTomogramRef(str(tmp_path / "config.json"), "TS_02", VOXEL, "wbp")
    write_copick_picks(ref, np.array([[10.0, 20.0, 5.0], [30.0, 40.0, 8.0]]), object_name="ribosome",
                       session_id="3", user_id="alice", scores=np.array([0.9, 0.8]))
    return tmp_path / "config.json", ref


def test_open_runs_and_save_picks(make_napari_viewer, qtbot, project):
    from napari_cryoalign._layer_geometry import tomogram_geometry

    config, ref = project
    viewer = make_napari_viewer()
    w = CopickWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.open_button.clicked()  # no file: a message
    assert "copick config" in w.status.text()
    w.config.value = str(config)
    w.open_button.clicked()
    assert list(w.run.choices) == ["TS_01", "TS_02"] and "2 runs" in w.status.text()
    w.run.value = "TS_02"
    assert list(w.voxel_spacing.choices) == [VOXEL] and w.tomo_type.value == "wbp"
    w.level.value = 1
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=30_000)
    image = viewer.layers["TS_02 wbp"]
    assert image.data.shape == (8, 32, 24) and tuple(image.scale) == (2 * VOXEL,) * 3
    geo = tomogram_geometry(image)  # what "Pick particles" and the other widgets read
    assert geo.name == "TS_02" and geo.voxel_size == 2 * VOXEL
    pts = viewer.layers[picks_layer_name("TS_02", {"object": "ribosome", "user_id": "alice", "session_id": "3"})]
    world = np.asarray(pts.data) * np.asarray(pts.scale)
    np.testing.assert_allclose(world[:, ::-1], [[100.0, 200.0, 50.0], [300.0, 400.0, 80.0]])  # Å, copick's own
    # save picks made on the binned tomogram back to the run: the same Å positions, user cryoalign
    new = viewer.add_points(np.array([[2.0, 10.0, 5.0]]), scale=image.scale, name="my picks")
    w.points.value = "my picks"
    w.object.value = "ribosome"
    w.session.value = "7"
    assert w.save_picks() == 1
    (meta, xyz, _), = read_copick_picks(ref, user_id=COPICK_USER)
    assert meta == {"object": "ribosome", "user_id": COPICK_USER, "session_id": "7"}
    np.testing.assert_allclose(xyz * VOXEL, np.asarray(new.data)[:, ::-1] * 2 * VOXEL)
    assert "saved 1 picks" in w.status.text()


def test_file_open_on_a_copick_config(make_napari_viewer, project, tmp_path):
    """File > Open on the configuration: the first run at a level of at most 256³ voxels, with its picks; a JSON
    file that is no copick project is not ours."""
    from napari_cryoalign._reader import get_reader

    config, _ = project
    viewer = make_napari_viewer()
    layers = viewer.open(str(config), plugin="napari-cryoalign")
    names = [layer.name for layer in layers]
    assert names[0] == "TS_01 wbp" and viewer.layers["TS_01 wbp"].data.shape == (16, 64, 48)
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert get_reader(str(tmp_path / "other.json")) is None
