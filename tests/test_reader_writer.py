"""npe2 reader and writer, without and with a napari viewer."""

import numpy as np
import pandas as pd
import pytest

from napari_cryoalign import _reader, _writer
from napari_cryoalign import io as star
from napari_cryoalign.io import mrc


@pytest.fixture
def tomogram_and_picks(tmp_path):
    rng = np.random.default_rng(0)
    shape = (20, 40, 50)  # z, y, x
    tomo = rng.normal(size=shape).astype(np.float32)
    tomo_path = tmp_path / "TS_01.mrc"
    mrc.write_mrc(tomo_path, tomo, voxel_size=13.5)
    xyz = np.array([[3.0, 5.0, 7.0], [49.0, 39.0, 19.0], [25.5, 20.25, 10.0]])
    star_path = tmp_path / "picks.star"
    star.write_particles(
        star_path,
        coordinates_xyz=xyz,
        scores=np.array([0.9, 0.5, 0.7]),
        euler_deg=np.array([[10.0, 20, 30], [0, 90, 0], [-45, 135, 60]]),
        classes=np.array([1, 2, 1]),
        tomo_name="TS_01",
        tomogram_shape=shape,
        voxel_size=13.5,
        form="relion5",
    )
    return tomo_path, star_path, tomo, xyz


def test_get_reader_accepts_only_our_formats(tmp_path):
    assert _reader.get_reader("a.mrc") is not None
    assert _reader.get_reader("a.map.gz") is not None
    assert _reader.get_reader("a.star") is not None
    assert _reader.get_reader("a.tif") is None
    assert _reader.get_reader(["a.mrc", "b.tif"]) is None


def test_mrc_layer_scale_from_voxel_size(tomogram_and_picks):
    tomo_path, _, tomo, _ = tomogram_and_picks
    [(data, kwargs, kind)] = _reader.read_files(str(tomo_path))
    assert kind == "image"
    assert kwargs["scale"] == (13.5, 13.5, 13.5)
    np.testing.assert_array_equal(np.asarray(data), tomo)


def test_stack_layer_scale(tmp_path):
    stack = np.zeros((5, 16, 16), np.float32)
    stack[2, 3, 4] = 1
    p = tmp_path / "ts.st"
    mrc.write_mrc(p, stack, voxel_size=2.0, is_stack=True)
    [(data, kwargs, _)] = _reader.read_files(str(p))
    assert kwargs["scale"] == (1.0, 2.0, 2.0)
    assert np.asarray(data)[2, 3, 4] == 1


def test_star_points_use_tomogram_voxel_size_and_keep_columns(tomogram_and_picks):
    _, star_path, _, xyz = tomogram_and_picks
    [(data, kwargs, kind)] = _reader.read_files(str(star_path))
    assert kind == "points"
    np.testing.assert_allclose(data, xyz[:, ::-1], atol=1e-4)  # (z, y, x)
    assert kwargs["scale"] == (13.5, 13.5, 13.5)
    feats = kwargs["features"]
    for col in ("rlnAutopickFigureOfMerit", "rlnAngleRot", "rlnClassNumber", "rlnTomoName"):
        assert col in feats.columns
    np.testing.assert_allclose(feats["rlnAutopickFigureOfMerit"], [0.9, 0.5, 0.7])


def test_writer_round_trip(tomogram_and_picks, tmp_path):
    _, star_path, _, xyz = tomogram_and_picks
    [(data, kwargs, _)] = _reader.read_files(str(star_path))
    out = tmp_path / "out.star"
    written = _writer.write_points(str(out), data, kwargs)
    assert written == [str(out)]
    back = star.read_particles(out)
    np.testing.assert_allclose(star.coordinates_xyz(back), xyz, atol=1e-4)
    np.testing.assert_allclose(star.scores(back), [0.9, 0.5, 0.7])
    np.testing.assert_allclose(star.euler_deg(back)[2], [-45, 135, 60])
    # RELION 5 columns too, with the centred convention (coordinate - N/2) * voxel
    df = back.data
    assert "rlnCenteredCoordinateXAngst" in df.columns
    np.testing.assert_allclose(df["rlnCenteredCoordinateXAngst"], (xyz[:, 0] - 50 / 2) * 13.5, atol=1e-3)


def test_writer_refuses_to_overwrite_its_input(tomogram_and_picks):
    _, star_path, _, _ = tomogram_and_picks
    [(data, kwargs, _)] = _reader.read_files(str(star_path))
    before = star_path.read_bytes()
    with pytest.raises(Exception, match="different"):
        _writer.write_points(str(star_path), data, kwargs)
    assert star_path.read_bytes() == before


def test_broken_file_gives_notification_not_exception(tmp_path, monkeypatch):
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"this is not an MRC file" * 10)
    messages = []
    monkeypatch.setattr(_reader, "_notify_error", messages.append)
    assert _reader.read_files(str(bad)) == [(None,)]
    assert len(messages) == 1 and "broken.mrc" in messages[0]


def test_viewer_open_and_save(make_napari_viewer, tomogram_and_picks, tmp_path):
    tomo_path, star_path, _, xyz = tomogram_and_picks
    viewer = make_napari_viewer()
    viewer.open([str(tomo_path)], plugin="napari-cryoalign")
    viewer.open([str(star_path)], plugin="napari-cryoalign")
    image, points = viewer.layers
    assert tuple(image.scale) == (13.5, 13.5, 13.5)
    assert tuple(points.scale) == (13.5, 13.5, 13.5)
    assert isinstance(points.features, pd.DataFrame) and len(points.features) == 3
    # a point added by clicking gets a row in features; saving writes all of them
    points.add([[4.0, 6.0, 8.0]])
    out = tmp_path / "edited.star"
    from napari.plugins.io import save_layers

    written = save_layers(str(out), [points], plugin="napari-cryoalign")
    assert written == [str(out)]
    back = star.coordinates_xyz(star.read_particles(out))
    assert back.shape == (4, 3)
    np.testing.assert_allclose(back[3], [8.0, 6.0, 4.0])


def test_viewer_open_broken_file_keeps_running(make_napari_viewer, tmp_path):
    bad = tmp_path / "truncated.mrc"
    good = np.zeros((8, 8, 8), np.float32)
    mrc.write_mrc(bad, good, voxel_size=1.0)
    bad.write_bytes(bad.read_bytes()[:-100])  # truncated data
    viewer = make_napari_viewer()
    viewer.open([str(bad)], plugin="napari-cryoalign")
    assert len(viewer.layers) == 0
