"""STAR particle files: RELION 4 and 5 forms, conventions, round trips and bad input."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryoalign.errors import InputError
from napari_cryoalign.io import (
    centered_angstrom_to_voxels,
    classes,
    coordinates_xyz,
    euler_deg,
    origins_angstrom,
    particle_block,
    particle_table,
    read_particles,
    read_star,
    scores,
    tomo_names,
    voxels_to_centered_angstrom,
    write_particles,
    write_star,
)

RNG = np.random.default_rng(1)
SHAPE = (50, 63, 80)  # (z, y, x) voxels; odd y on purpose: N/2 = 31.5
VOXEL = 13.48


def _particles(n=12):
    nz, ny, nx = SHAPE
    xyz = RNG.uniform(0, 1, size=(n, 3)) * (np.array([nx, ny, nz]) - 1)
    eul = np.column_stack([RNG.uniform(-180, 180, n), RNG.uniform(0, 180, n), RNG.uniform(-180, 180, n)])
    ori = RNG.normal(scale=5.0, size=(n, 3))
    cls = RNG.integers(1, 4, n)
    sco = RNG.uniform(0, 1, n)
    return xyz, eul, ori, cls, sco


def test_round_trip_both_forms(tmp_path):
    xyz, eul, ori, cls, sco = _particles()
    p = write_particles(tmp_path / "p.star", coordinates_xyz=xyz, euler_deg=eul,
                        origins_angstrom=ori, classes=cls, scores=sco, tomo_name="TS_01",
                        tomogram_shape=SHAPE, voxel_size=VOXEL)
    blocks = starfile.read(p, always_dict=True)
    assert set(blocks) == {"general", "optics", "particles"}
    df = blocks["particles"]
    for c in ("rlnCoordinateX", "rlnCenteredCoordinateZAngst", "rlnAngleTilt", "rlnOriginYAngst",
              "rlnClassNumber", "rlnAutopickFigureOfMerit", "rlnTomoName", "rlnOpticsGroup"):
        assert c in df.columns
    assert blocks["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(VOXEL)
    assert blocks["general"]["rlnTomoSizeX"] == SHAPE[2]

    t = read_particles(p)
    assert t.form == "relion5" and t.coordinates_from == "rlnCoordinate" and len(t) == 12
    assert t.voxel_size == pytest.approx(VOXEL) and t.tomogram_shape == SHAPE
    np.testing.assert_allclose(coordinates_xyz(t), xyz, atol=1e-6)
    np.testing.assert_allclose(euler_deg(t), eul, atol=1e-6)
    np.testing.assert_allclose(origins_angstrom(t), ori, atol=1e-6)
    np.testing.assert_array_equal(classes(t), cls)
    np.testing.assert_allclose(scores(t), sco, atol=1e-6)
    assert list(tomo_names(t)) == ["TS_01"] * 12


def test_centered_angstrom_convention_with_float_half(tmp_path):
    """rlnCenteredCoordinate*Angst = (coordinate - N/2) * voxel, N/2 a float (N=63 -> 31.5)."""
    xyz = np.array([[40.0, 31.5, 25.0], [0.0, 0.0, 0.0], [79.0, 62.0, 49.0]])
    p = write_particles(tmp_path / "c.star", coordinates_xyz=xyz, tomogram_shape=SHAPE,
                        voxel_size=VOXEL, form="relion5")
    df = starfile.read(p, always_dict=True)["particles"]
    assert "rlnCoordinateX" not in df.columns
    cen = df[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
              "rlnCenteredCoordinateZAngst"]].to_numpy()
    np.testing.assert_allclose(cen[0], [0.0, 0.0, 0.0], atol=1e-6)  # the centre, y = 31.5
    np.testing.assert_allclose(cen[1], [-40 * VOXEL, -31.5 * VOXEL, -25 * VOXEL], atol=1e-5)
    np.testing.assert_allclose(cen[2], [39 * VOXEL, 30.5 * VOXEL, 24 * VOXEL], atol=1e-5)
    back = centered_angstrom_to_voxels(cen, tomogram_shape=SHAPE, voxel_size=VOXEL)
    np.testing.assert_allclose(back, xyz, atol=1e-6)
    np.testing.assert_allclose(voxels_to_centered_angstrom(xyz, tomogram_shape=SHAPE,
                                                           voxel_size=VOXEL), cen, atol=1e-5)


def test_relion5_only_read_with_sizes_from_file_or_arguments(tmp_path, caplog):
    xyz, eul, *_ = _particles()
    p = write_particles(tmp_path / "r5.star", coordinates_xyz=xyz, euler_deg=eul,
                        tomogram_shape=SHAPE, voxel_size=VOXEL, form="relion5")
    with caplog.at_level(logging.INFO, logger="napari_cryoalign.io.star"):
        t = read_particles(p)  # shape from general block, voxel from optics
    assert t.coordinates_from == "rlnCenteredCoordinateAngst" and t.form == "relion5"
    assert "rlnCenteredCoordinateAngst" in caplog.text and "relion5" in caplog.text
    np.testing.assert_allclose(coordinates_xyz(t), xyz, atol=1e-5)
    assert "rlnCenteredCoordinateXAngst" in t.data.columns  # all columns kept

    # a RELION 5 file from elsewhere: no sizes in the file -> from the arguments
    df = starfile.read(p, always_dict=True)["particles"]
    bare = tmp_path / "bare.star"
    starfile.write({"particles": df}, bare)
    with pytest.raises(InputError) as e:
        read_particles(bare)
    assert e.value.field == "tomogram_shape" and "bare.star" in str(e.value)
    with pytest.raises(InputError) as e:
        read_particles(bare, tomogram_shape=SHAPE)
    assert e.value.field == "voxel_size"
    t = read_particles(bare, tomogram_shape=SHAPE, voxel_size=VOXEL)
    np.testing.assert_allclose(coordinates_xyz(t), xyz, atol=1e-5)
    # a binned tomogram: same Angstrom positions, coordinates in binned voxels
    t2 = read_particles(bare, tomogram_shape=(25, 32, 40), voxel_size=2 * VOXEL)
    expected = (xyz - np.array([40, 31.5, 25])) / 2 + np.array([20, 16, 12.5])
    np.testing.assert_allclose(coordinates_xyz(t2), expected, atol=1e-5)


def test_relion5_tilt_series_pixel_size_and_binning(tmp_path):
    """RELION 5 sizes are in unbinned pixels of rlnTomoTiltSeriesPixelSize; a
    rlnTomoTomogramBinning turns them into voxels of the binned tomogram."""
    cen = np.array([[0.0, 0.0, 0.0], [100.0, -50.0, 20.0]])
    df = pd.DataFrame({"rlnTomoName": ["ts1", "ts1"], "rlnCenteredCoordinateXAngst": cen[:, 0],
                       "rlnCenteredCoordinateYAngst": cen[:, 1], "rlnCenteredCoordinateZAngst": cen[:, 2]})
    general = {"rlnTomoSizeX": 4000, "rlnTomoSizeY": 4000, "rlnTomoSizeZ": 1000,
               "rlnTomoTomogramBinning": 4.0}
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnTomoTiltSeriesPixelSize": [2.5]})
    p = tmp_path / "r5.star"
    starfile.write({"general": general, "optics": optics, "particles": df}, p)
    t = read_particles(p)
    assert t.voxel_size == pytest.approx(10.0) and t.tomogram_shape == (250, 1000, 1000)
    np.testing.assert_allclose(coordinates_xyz(t), [[500, 500, 125], [510, 495, 127]], atol=1e-9)


def test_relion4_form(tmp_path):
    xyz, *_ = _particles()
    p = write_particles(tmp_path / "r4.star", coordinates_xyz=xyz, tomo_name="t",
                        voxel_size=VOXEL, form="relion4")
    blocks = starfile.read(p, always_dict=True)
    assert set(blocks) == {"optics", "particles"}
    assert not any("Centered" in c for c in blocks["particles"].columns)
    t = read_particles(p)
    assert t.form == "relion4" and t.coordinates_from == "rlnCoordinate"
    np.testing.assert_allclose(coordinates_xyz(t), xyz, atol=1e-6)
    assert euler_deg(t).tolist() == [[0.0, 0.0, 0.0]] * 12  # zeros when missing
    assert origins_angstrom(t).tolist() == [[0.0, 0.0, 0.0]] * 12
    assert classes(t) is None and scores(t) is None
    assert classes(t, default=1).tolist() == [1] * 12
    # "both" without shape falls back to the RELION 4 coordinates only
    p2 = write_particles(tmp_path / "b.star", coordinates_xyz=xyz)
    assert "rlnCenteredCoordinateXAngst" not in starfile.read(p2, always_dict=True)["particles"]


def test_sort_by_score_and_extra_columns(tmp_path):
    xyz, eul, ori, cls, sco = _particles(6)
    extra = pd.DataFrame({"rlnMyLabel": np.arange(6), "rlnTomoParticleName": [f"p{i}" for i in range(6)]})
    p = write_particles(tmp_path / "s.star", coordinates_xyz=xyz, scores=sco, classes=cls,
                        extra_columns=extra, sort_by_score=True)
    t = read_particles(p)
    order = np.argsort(-sco, kind="stable")
    np.testing.assert_allclose(scores(t), sco[order], atol=1e-6)
    np.testing.assert_allclose(coordinates_xyz(t), xyz[order], atol=1e-6)
    assert t.data["rlnMyLabel"].tolist() == order.tolist()  # extra columns travel with rows
    assert t.data["rlnTomoParticleName"].tolist() == [f"p{i}" for i in order]
    with pytest.raises(InputError) as e:
        write_particles(tmp_path / "x.star", coordinates_xyz=xyz,
                        extra_columns={"rlnCoordinateX": np.zeros(6)})
    assert e.value.field == "extra_columns"
    with pytest.raises(InputError) as e:
        write_particles(tmp_path / "x.star", coordinates_xyz=xyz, sort_by_score=True)
    assert e.value.field == "scores"


def test_name_columns_stay_strings(tmp_path):
    p = write_particles(tmp_path / "n.star", coordinates_xyz=np.zeros((2, 3)), tomo_name=["1", "02"])
    assert list(tomo_names(read_particles(p))) == ["1", "02"]
    assert list(read_star(p)["particles"]["rlnTomoName"]) == ["1", "02"]


def test_relion30_pixel_origins(tmp_path):
    df = pd.DataFrame({"rlnCoordinateX": [10.0, 20.0], "rlnCoordinateY": [5.0, 6.0],
                       "rlnOriginX": [2.0, -1.0], "rlnOriginY": [0.5, 0.0],
                       "rlnDetectorPixelSize": [5.0, 5.0], "rlnMagnification": [25000.0, 25000.0]})
    p = tmp_path / "r30.star"
    starfile.write({"images": df}, p)
    t = read_particles(p)
    assert t.form == "relion3.0" and t.voxel_size == pytest.approx(2.0)
    np.testing.assert_allclose(origins_angstrom(t), [[4.0, 1.0, 0.0], [-2.0, 0.0, 0.0]])
    np.testing.assert_allclose(coordinates_xyz(t), [[10, 5, 0], [20, 6, 0]])


# ----------------------------------------------------------------------------- bad input
def test_outside_tomogram_names_rows_and_column(tmp_path):
    xyz, *_ = _particles(5)
    xyz[3, 2] = 55.0  # z >= 50
    xyz[4, 2] = -3.0
    p = write_particles(tmp_path / "o.star", coordinates_xyz=xyz)
    with pytest.raises(InputError) as e:
        read_particles(p, tomogram_shape=SHAPE)
    msg = str(e.value)
    assert e.value.field == "rlnCoordinateZ" and "row 3" in msg and "row 4" in msg and "o.star" in msg
    with pytest.raises(InputError) as e:  # the writer checks too
        write_particles(tmp_path / "w.star", coordinates_xyz=xyz, tomogram_shape=SHAPE, voxel_size=1.0)
    assert e.value.field == "rlnCoordinateZ"
    assert not (tmp_path / "w.star").exists()


def test_missing_columns_listed(tmp_path):
    p = tmp_path / "m.star"
    starfile.write({"particles": pd.DataFrame({"rlnAngleRot": [1.0], "rlnFoo": [2]})}, p)
    with pytest.raises(InputError) as e:
        read_particles(p)
    msg = str(e.value)
    assert e.value.field == "coordinates" and "rlnCoordinateX" in msg and "rlnCenteredCoordinateXAngst" in msg
    assert "rlnAngleRot" in msg and "rlnFoo" in msg and "m.star" in msg  # what is present
    with pytest.raises(InputError) as e:
        read_particles(p, require=("angles",))
    assert e.value.field == "angles"
    assert len(read_particles(p, require=())) == 1


def test_non_numeric_coordinates(tmp_path):
    p = tmp_path / "t.star"
    starfile.write({"particles": pd.DataFrame({"rlnCoordinateX": ["1.0", "abc"],
                                               "rlnCoordinateY": [1.0, 2.0]})}, p)
    with pytest.raises(InputError) as e:
        read_particles(p)
    assert e.value.field == "rlnCoordinateX" and "row 1" in str(e.value)


def test_not_a_star_file(tmp_path):
    with pytest.raises(InputError) as e:
        read_particles(tmp_path / "missing.star")
    assert e.value.field == "path"
    p = tmp_path / "empty.star"
    p.write_text("just some text\n")
    with pytest.raises(InputError) as e:
        read_particles(p)
    assert e.value.field in ("format", "data_particles") and "empty.star" in str(e.value)
    p = tmp_path / "opt.star"
    starfile.write({"optics": pd.DataFrame({"rlnOpticsGroup": [1]}),
                    "model": pd.DataFrame({"a": [1]}), "other": pd.DataFrame({"b": [1]})}, p)
    with pytest.raises(InputError) as e:
        read_particles(p)
    assert e.value.field == "data_particles"


@pytest.mark.parametrize("kwargs,field", [
    (dict(coordinates_xyz=np.zeros((3, 4))), "coordinates_xyz"),
    (dict(coordinates_xyz=np.zeros((3, 3)), euler_deg=np.zeros((2, 3))), "euler_deg"),
    (dict(coordinates_xyz=np.full((1, 3), np.nan)), "coordinates_xyz"),
    (dict(coordinates_xyz=np.zeros((2, 3)), classes=[0, 1]), "classes"),
    (dict(coordinates_xyz=np.zeros((2, 3)), form="relion5"), "tomogram_shape"),
    (dict(coordinates_xyz=np.zeros((2, 3)), form="relion6"), "form"),
    (dict(coordinates_xyz=np.zeros((2, 3)), voxel_size=0), "voxel_size"),
    (dict(), "coordinates_xyz"),
])
def test_write_bad_input(tmp_path, kwargs, field):
    with pytest.raises(InputError) as e:
        write_particles(tmp_path / "bad.star", **kwargs)
    assert e.value.field == field
    assert not (tmp_path / "bad.star").exists()


def test_write_never_overwrites_by_default(tmp_path, unchanged):
    p = write_particles(tmp_path / "a.star", coordinates_xyz=np.zeros((2, 3)))
    unchanged(p)
    with pytest.raises(InputError) as e:
        write_particles(p, coordinates_xyz=np.ones((2, 3)))
    assert e.value.field == "output"
    read_particles(p)


def test_per_tomogram_shapes_and_relion5_tomograms_star(tmp_path):
    """Particles from two tomograms of different sizes and voxel sizes, RELION 5 form, with
    the geometry in a RELION 5 tomograms.star (unbinned sizes, tilt-series pixel size and
    binning)."""
    shapes = {"TS_1": (50, 63, 80), "TS_2": (30, 40, 41)}
    voxels = {"TS_1": 10.0, "TS_2": 8.0}
    xyz = np.array([[10.0, 20.0, 30.0], [40.0, 39.0, 29.0], [0.0, 0.0, 0.0]])
    names = ["TS_1", "TS_2", "TS_2"]
    cen = np.stack([voxels_to_centered_angstrom(xyz[i], tomogram_shape=shapes[t],
                                                voxel_size=voxels[t]) for i, t in enumerate(names)])
    df = pd.DataFrame({"rlnTomoName": names, "rlnCenteredCoordinateXAngst": cen[:, 0],
                       "rlnCenteredCoordinateYAngst": cen[:, 1], "rlnCenteredCoordinateZAngst": cen[:, 2]})
    p = tmp_path / "particles.star"
    starfile.write({"particles": df}, p)
    t = read_particles(p, tomogram_shape=shapes, voxel_size=voxels)
    np.testing.assert_allclose(coordinates_xyz(t), xyz, atol=1e-6)
    assert t.voxel_size is None and t.tomogram_shape is None  # not one value for all rows

    binning = 2.0  # tomograms.star: unbinned sizes, tilt-series pixel size = voxel / binning
    tomos = pd.DataFrame({
        "rlnTomoName": list(shapes),
        "rlnTomoSizeX": [shapes[k][2] * binning for k in shapes],
        "rlnTomoSizeY": [shapes[k][1] * binning for k in shapes],
        "rlnTomoSizeZ": [shapes[k][0] * binning for k in shapes],
        "rlnTomoTiltSeriesPixelSize": [voxels[k] / binning for k in shapes],
        "rlnTomoTomogramBinning": [binning, binning]})
    tp = tmp_path / "tomograms.star"
    starfile.write({"global": tomos}, tp)
    t = read_particles(p, tomograms=tp)
    np.testing.assert_allclose(coordinates_xyz(t), xyz, atol=1e-6)

    with pytest.raises(InputError) as e:  # a tomogram without geometry
        read_particles(p, tomogram_shape={"TS_1": shapes["TS_1"]}, voxel_size=voxels)
    assert e.value.field == "tomogram_shape" and "TS_2" in str(e.value)
    xyz_out = xyz.copy()
    xyz_out[1, 0] = 41.0  # TS_2 is 41 voxels wide: x = 41 is outside
    cen_out = cen.copy()
    cen_out[1, 0] = (41.0 - 41 / 2) * 8.0
    df.loc[1, "rlnCenteredCoordinateXAngst"] = cen_out[1, 0]
    bad = tmp_path / "bad.star"
    starfile.write({"particles": df}, bad)
    with pytest.raises(InputError) as e:
        read_particles(bad, tomograms=tp)
    assert e.value.field == "rlnCoordinateX" and "row 1" in str(e.value) and "41" in str(e.value)


def test_tomograms_star_without_needed_columns(tmp_path):
    p = tmp_path / "tomograms.star"
    starfile.write({"global": pd.DataFrame({"rlnTomoName": ["a"], "rlnTomoSizeX": [10]})}, p)
    from napari_cryoalign.io import read_tomograms_star

    with pytest.raises(InputError) as e:
        read_tomograms_star(p)
    assert e.value.field == "data_global" and "rlnTomoTiltSeriesPixelSize" in str(e.value)


def test_write_star_keeps_block_order_and_six_decimals(tmp_path):
    blocks = {
        "general": {"rlnTomoSubTomosAre2DStacks": 0, "rlnTomoSizeX": 80},
        "optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [13.48]}),
        "particles": pd.DataFrame({"rlnTomoName": ["01", "01"], "rlnCoordinateX": [1.0, 2.123456789]}),
    }
    p = write_star(tmp_path / "blocks.star", blocks)
    text = p.read_text()
    assert text.index("data_general") < text.index("data_optics") < text.index("data_particles")
    assert "2.123457" in text and "2.1234567" not in text
    back = read_star(p)
    assert list(back) == ["general", "optics", "particles"]
    assert back["particles"]["rlnTomoName"].tolist() == ["01", "01"]
    assert back["general"]["rlnTomoSizeX"] == 80
    assert list(tmp_path.iterdir()) == [p]  # no temporary file left
    with pytest.raises(InputError) as e:
        write_star(p, blocks)
    assert e.value.field == "output" and p.read_text() == text
    write_star(p, {"particles": blocks["particles"].iloc[:1]}, overwrite=True)
    assert len(read_star(p)["particles"]) == 1


def test_particle_block_names_the_particle_table(tmp_path):
    opt = pd.DataFrame({"rlnOpticsGroup": [1]})
    parts = pd.DataFrame({"rlnCoordinateX": [1.0]})
    for name in ("particles", "images", ""):
        assert particle_block({"optics": opt, name: parts}) == (name, parts)
    assert particle_block({"optics": opt, "picks": parts})[0] == "picks"  # the only other loop block
    with pytest.raises(InputError) as e:
        particle_block({"optics": opt, "a": parts, "b": parts}, path=tmp_path / "x.star")
    assert e.value.field == "data_particles" and "x.star" in str(e.value)


def test_particle_table_of_blocks_read_once_equals_read_particles(tmp_path):
    xyz, eul, ori, cls, sco = _particles()
    p = write_particles(tmp_path / "p.star", coordinates_xyz=xyz, euler_deg=eul, tomo_name="TS_01",
                        tomogram_shape=SHAPE, voxel_size=VOXEL, form="relion5")
    blocks = read_star(p)
    table = particle_table(blocks, path=p)
    ref = read_particles(p)
    pd.testing.assert_frame_equal(table.data, ref.data)
    assert (table.form, table.voxel_size, table.tomogram_shape, table.path, table.coordinates_from) == \
        (ref.form, ref.voxel_size, ref.tomogram_shape, ref.path, ref.coordinates_from)
    assert "rlnCoordinateX" not in blocks["particles"].columns  # the blocks are not changed
    without_path = particle_table(blocks, voxel_size=VOXEL, tomogram_shape=SHAPE)
    assert without_path.path is None and without_path.tomogram_shape == SHAPE
    np.testing.assert_allclose(coordinates_xyz(without_path), xyz, atol=1e-4)
