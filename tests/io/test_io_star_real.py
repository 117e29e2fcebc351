"""STAR readers on real files written by RELION 3.0 / 3.1 / 5, cryoSPARC (exported to STAR)
and cryoDRGN, with their real particle stacks (from cryoDRGN's source distribution, fetched
by scripts/fetch_test_data.sh). Expected values are read independently with starfile and
mrcfile, or are the values printed in the files."""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pytest
import starfile

from napari_cryoalign.errors import InputError
from napari_cryoalign.io import (
    VoxelSizeWarning,
    classes,
    coordinates_xyz,
    euler_deg,
    image_names,
    origins_angstrom,
    read_particle_images,
    read_particles,
    read_star,
    scores,
    write_particles,
)

pytestmark = pytest.mark.filterwarnings("ignore::napari_cryoalign.io.MrcHeaderWarning")


def _stack(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True) as m:
            return np.array(m.data)


def _raw(path, block):
    return starfile.read(path, always_dict=True)[block]


def test_read_star_all_blocks(cryodrgn_data):
    expected = {
        "relion31.star": {"optics": (1, 9), "particles": (5, 26)},
        "relion31.v2.star": {"optics": (1, 9), "particles": (5, 26)},
        "relion5.star": {"optics": (1, 18), "particles": (17, 26)},
        "relion31.6opticsgroups.star": {"optics": (6, 18), "particles": (139, 23)},
        "sta_testing_bin8.star": {"": (219, 20)},
        "toy_projections.star": {"images": (1000, 9)},
    }
    for name, blocks in expected.items():
        got = read_star(cryodrgn_data / name)
        assert {k: v.shape for k, v in got.items()} == blocks, name


def test_relion31_with_optics_and_stack(cryodrgn_data, unchanged):
    p = cryodrgn_data / "relion31.star"
    unchanged(p, cryodrgn_data / "relion31.mrcs")
    raw = _raw(p, "particles")
    t = read_particles(p)
    assert t.form == "relion3.1" and t.coordinates_from == "rlnCoordinate" and len(t) == 5
    assert list(t.data.columns) == list(raw.columns)  # every column kept
    assert t.optics["rlnImagePixelSize"].iloc[0] == pytest.approx(2.806)
    assert t.voxel_size == pytest.approx(2.806)
    np.testing.assert_allclose(coordinates_xyz(t)[:, :2], raw[["rlnCoordinateX", "rlnCoordinateY"]])
    assert (coordinates_xyz(t)[:, 2] == 0).all()  # 2D file
    np.testing.assert_allclose(euler_deg(t), raw[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]])
    np.testing.assert_allclose(origins_angstrom(t)[:, :2], raw[["rlnOriginXAngst", "rlnOriginYAngst"]])
    assert origins_angstrom(t)[0, :2] == pytest.approx((0.019324, -0.64686))
    assert classes(t).tolist() == [1] * 5
    # the .mrcs header holds RELION's placeholder 1.0: the STAR file's 2.806 wins, with a warning
    with pytest.warns(VoxelSizeWarning):
        imgs, t2 = read_particle_images(p)
    assert imgs.shape == (5, 256, 256) and t2.voxel_size == pytest.approx(2.806)
    np.testing.assert_array_equal(imgs, _stack(cryodrgn_data / "relion31.mrcs"))


def test_relion31_six_optics_groups(cryodrgn_data):
    p = cryodrgn_data / "relion31.6opticsgroups.star"
    t = read_particles(p)
    assert len(t) == 139 and len(t.optics) == 6
    assert t.voxel_size is None  # 1.24 and 1.25 A groups: no single pixel size
    assert t.data["rlnOpticsGroup"].value_counts().to_dict() == {1: 48, 2: 29, 5: 26, 6: 24, 4: 7, 3: 5}
    np.testing.assert_allclose(scores(t), _raw(p, "particles")["rlnAutopickFigureOfMerit"])
    assert image_names(t)[1] == "279@Polish/job520/Micrographs/0027_shiny.mrcs"


def test_relion5_file_with_stacks_in_data_dir(cryodrgn_data):
    p = cryodrgn_data / "relion5.star"
    t = read_particles(p)
    assert t.form == "relion5" and t.voxel_size == pytest.approx(0.89)
    with pytest.raises(InputError) as e:  # the stacks are in toy_datadir/
        read_particle_images(p)
    assert e.value.field == "rlnImageName" and "toy_images_a.mrcs" in str(e.value)
    with pytest.warns(VoxelSizeWarning):
        imgs, t = read_particle_images(p, data_dir=cryodrgn_data / "toy_datadir")
    a = _stack(cryodrgn_data / "toy_datadir" / "toy_images_a.mrcs")
    b = _stack(cryodrgn_data / "toy_datadir" / "toy_images_b.mrcs")
    assert imgs.shape == (17, 30, 30)
    for i, name in enumerate(image_names(t)):
        k, stack = name.split("@")
        expected = (a if stack == "toy_images_a.mrcs" else b)[int(k) - 1]
        np.testing.assert_array_equal(imgs[i], expected)
    assert t.voxel_size == pytest.approx(0.89)


def test_relion30_tilt_series_particles(cryodrgn_data):
    """Subtomogram-averaging particles as 2D tilt images (RELION 3.0, no optics block)."""
    p = cryodrgn_data / "sta_testing_bin8.star"
    t = read_particles(p)
    assert t.form == "relion3.0" and len(t) == 219
    assert t.voxel_size == pytest.approx(1.96)  # rlnDetectorPixelSize 1.96 um / magnification 1e4
    with pytest.warns(VoxelSizeWarning, match="1.96"):  # headers: placeholder 1.0
        imgs, t = read_particle_images(p)
    assert t.voxel_size == pytest.approx(1.96)
    stack = _stack(cryodrgn_data / "ay19102021_L3_position6_ribo_it09_bin8_1.82A.mrcs")
    assert imgs.shape == (219, 64, 64) and stack.shape[0] == 220
    np.testing.assert_array_equal(imgs, stack[:219])
    assert euler_deg(t)[0] == pytest.approx((113.14910, 88.02000, -95.35435))


def test_cryosparc_exported_relion30(cryodrgn_data):
    """A STAR file exported from cryoSPARC (RELION 3.0 form): origins in pixels."""
    p = cryodrgn_data / "FinalRefinement-OriginalParticles-PfCRT.star"
    raw = _raw(p, "images")
    t = read_particles(p)
    assert t.form == "relion3.0" and t.voxel_size == pytest.approx(1.035)
    np.testing.assert_allclose(origins_angstrom(t)[:, :2],
                               raw[["rlnOriginX", "rlnOriginY"]].to_numpy() * 1.035)
    np.testing.assert_allclose(euler_deg(t)[0], (16.093530, 86.352776, 98.225690))
    np.testing.assert_allclose(coordinates_xyz(t)[0], (323.0, 3210.0, 0.0))


def test_old_stack_without_map_id_or_voxel_size(cryodrgn_data):
    p = cryodrgn_data / "empiar_10076_7.star"  # images in a .mrc file, header voxel size 0
    with pytest.raises(InputError) as e:  # no coordinate columns in this file
        read_particles(p)
    assert e.value.field == "coordinates" and "rlnImageName" in str(e.value)
    imgs, t = read_particle_images(p)
    assert imgs.shape == (7, 320, 320)
    assert t.voxel_size == pytest.approx(5.0 * 1e4 / 38168)
    np.testing.assert_array_equal(imgs, _stack(cryodrgn_data / "empiar_10076_7.mrc"))


def test_thousand_images_one_stack(cryodrgn_data):
    imgs, t = read_particle_images(cryodrgn_data / "toy_projections.star")
    assert imgs.shape == (1000, 30, 30)
    np.testing.assert_array_equal(imgs, _stack(cryodrgn_data / "toy_projections.mrcs"))


def test_real_table_round_trip(cryodrgn_data, tmp_path):
    t = read_particles(cryodrgn_data / "relion31.6opticsgroups.star")
    keep = t.data[["rlnMicrographName", "rlnDefocusU", "rlnImageName"]].rename(
        columns={"rlnImageName": "rlnImageOriginalName"})
    out = write_particles(tmp_path / "copy.star", coordinates_xyz=coordinates_xyz(t),
                          euler_deg=euler_deg(t), origins_angstrom=origins_angstrom(t),
                          classes=classes(t), scores=scores(t), extra_columns=keep, form="relion4")
    back = read_particles(out)
    np.testing.assert_allclose(coordinates_xyz(back), coordinates_xyz(t), atol=1e-6)
    np.testing.assert_allclose(euler_deg(back), euler_deg(t), atol=1e-6)
    np.testing.assert_allclose(origins_angstrom(back), origins_angstrom(t), atol=1e-6)
    np.testing.assert_array_equal(classes(back), classes(t))
    np.testing.assert_allclose(scores(back), scores(t), atol=1e-6)
    assert back.data["rlnMicrographName"].tolist() == t.data["rlnMicrographName"].tolist()
    assert back.data["rlnImageOriginalName"].tolist() == t.data["rlnImageName"].tolist()
