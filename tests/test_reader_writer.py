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



def test_star_points_voxel_size_only_in_optics_block(tmp_path):
    xyz = np.array([[3.0, 5.0, 7.0], [9.0, 8.0, 1.0]])
    p = star.write_particles(tmp_path / "opt.star", coordinates_xyz=xyz, tomo_name="not_here", voxel_size=6.0,
                             form="relion4")
    [(data, kwargs, kind)] = _reader.read_files(str(p))
    assert kind == "points"
    np.testing.assert_allclose(data, xyz[:, ::-1])
    assert kwargs["scale"] == (6.0, 6.0, 6.0)
    meta = kwargs["metadata"]["napari_cryoalign"]
    assert meta == {"path": str(p.resolve()), "star_form": "relion4", "voxel_size_angstrom": 6.0,
                    "tomogram_shape": None,
                    "optics": {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                               "rlnImagePixelSize": [6.0]}}


def test_star_points_take_shape_and_voxel_size_from_the_tomogram_beside_them(tomogram_and_picks):
    tomo_path, _, _, xyz = tomogram_and_picks
    p = star.write_particles(tomo_path.parent / "plain.star", coordinates_xyz=xyz, tomo_name="TS_01", form="relion4")
    [(data, kwargs, _)] = _reader.read_files(str(p))
    np.testing.assert_allclose(data, xyz[:, ::-1])
    assert kwargs["scale"] == (13.5, 13.5, 13.5)
    meta = kwargs["metadata"]["napari_cryoalign"]
    assert meta["voxel_size_angstrom"] == 13.5 and meta["tomogram_shape"] == (20, 40, 50)


@pytest.mark.parametrize("text,voxel", [
    # tilt-series pixel size times the tomogram binning (RELION 5)
    ("data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnTomoTiltSeriesPixelSize #2\n_rlnTomoTomogramBinning #3\n"
     "1 1.5 4\n\ndata_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n"
     "_rlnOpticsGroup #4\n1 2 3 1\n", 6.0),
    # detector pixel size (um) * 1e4 / magnification (RELION 3.0)
    ("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n_rlnDetectorPixelSize #4\n"
     "_rlnMagnification #5\n1 2 3 14.0 20000\n", 7.0),
])
def test_star_points_scale_is_the_voxel_size_io_reads(tmp_path, text, voxel):
    p = tmp_path / "p.star"
    p.write_text(text)
    assert star.read_particles(p).voxel_size == voxel
    [(_, kwargs, _)] = _reader.read_files(str(p))
    assert kwargs["scale"] == (voxel,) * 3
    assert kwargs["metadata"]["napari_cryoalign"]["voxel_size_angstrom"] == voxel


def test_star_file_is_parsed_once(tomogram_and_picks, monkeypatch):
    import starfile

    _, star_path, _, _ = tomogram_and_picks
    calls = []
    read = starfile.read
    monkeypatch.setattr(starfile, "read", lambda *a, **k: calls.append(a) or read(*a, **k))
    [(_, kwargs, _)] = _reader.read_files(str(star_path))
    assert len(calls) == 1 and kwargs["scale"] == (13.5, 13.5, 13.5)

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
