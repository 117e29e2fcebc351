"""Cutting boxes: the box centre convention, sub-voxel remainders as RELION origins, skipped particles;
the aligned STAR file."""

from types import SimpleNamespace

import numpy as np
import pytest

from napari_cryoalign.backend.align.extract import (
    check_box_size,
    extract_subtomograms,
    load_particle_set,
    relion_origins_angstrom,
    write_aligned_star,
)
from napari_cryoalign.errors import InputError
from napari_cryoalign.io import read_star, read_subtomograms, write_subtomograms


def test_box_centre_and_residual_origin():
    tomo = np.zeros((20, 30, 40), np.float32)
    tomo[10, 12, 25] = 1.0  # (x, y, z) = (25, 12, 10)
    ext = extract_subtomograms(tomo, [[25.3, 11.8, 10.0]], 8)
    assert ext.volumes.shape == (1, 8, 8, 8)
    assert ext.volumes[0, 4, 4, 4] == 1.0  # the rounded coordinate is at N // 2
    # RELION origin of the remainder: true centre = N//2 - origin = 4 + (25.3 - 25) along x
    assert np.allclose(ext.residual_origins_voxels[0], [-0.3, 0.2, 0.0])
    # an alignment that puts the particle where it is (box-relative origin = the remainder) gives a RELION
    # origin of 0 (the picked coordinate is the centre); one more voxel of shift along x is 10 Å at 10 Å/voxel
    found = ext.residual_origins_voxels + [[1.0, 0.0, 0.0]]
    assert np.allclose(relion_origins_angstrom(ext.residual_origins_voxels, ext.residual_origins_voxels, 10.0), 0)
    assert np.allclose(relion_origins_angstrom(found, ext.residual_origins_voxels, 10.0), [[10.0, 0.0, 0.0]])


def test_outside_and_empty_boxes_are_skipped_and_listed():
    rng = np.random.default_rng(0)
    tomo = rng.normal(size=(20, 30, 40)).astype(np.float32)
    tomo[:, :, 30:] = 0.0  # a blank region
    coords = [[10, 10, 10], [-1, 10, 10], [35, 15, 10], [20, 15, 10], [np.nan, 1, 1]]
    ext = extract_subtomograms(tomo, coords, 8)
    assert list(ext.rows) == [0, 3]
    reasons = {s.row: s.reason for s in ext.skipped}
    assert "centre" in reasons[1] and "outside the tomogram" in reasons[1]
    assert "all zero" in reasons[2] and "finite" in reasons[4]
    assert ext.inside_masks() is None and np.all(ext.fraction_inside == 1.0)


def test_box_crossing_a_face_is_padded_with_the_inside_mean_and_recorded():
    rng = np.random.default_rng(1)
    tomo = rng.normal(loc=5.0, size=(20, 30, 40)).astype(np.float32)
    # x = 2: box x from -2 to 6 (2 of 8 columns outside); z = 18: box z 14 .. 22 (2 of 8 planes outside)
    ext = extract_subtomograms(tomo, [[2, 10, 18], [10, 10, 10]], 8)
    assert list(ext.rows) == [0, 1] and not ext.skipped
    v = ext.volumes[0]
    inner = tomo[14:20, 6:14, 0:6]
    assert np.allclose(v[:6, :, 2:], inner)  # the voxels inside are the tomogram's
    assert np.allclose(v[6:], inner.mean()) and np.allclose(v[:, :, :2], inner.mean())  # the rest: their mean
    assert ext.fraction_inside[0] == pytest.approx(6 * 8 * 6 / 512) and ext.fraction_inside[1] == 1.0
    assert ext.inside_bounds[0].tolist() == [[0, 6], [0, 8], [2, 8]]
    masks = ext.inside_masks()
    assert masks.shape == (2, 8, 8, 8) and masks[0].sum() == 6 * 8 * 6 and masks[1].min() == 1.0
    # the padded voxels are zero after the mean is removed: they add nothing to a score without the DC term
    assert np.allclose((v - v.mean())[6:], 0.0, atol=1e-5)
    # pad=False keeps the old behaviour: skipped, listed
    old = extract_subtomograms(tomo, [[2, 10, 18], [10, 10, 10]], 8, pad=False)
    assert list(old.rows) == [1] and "falls outside the tomogram" in old.skipped[0].reason


@pytest.mark.parametrize("box", [7, 0, 4, 64, 10.5])
def test_bad_box_sizes(box):
    with pytest.raises(InputError) as err:
        check_box_size(box, tomogram_shape=(20, 30, 40))
    assert err.value.field == "box"


def test_aligned_star_keeps_blocks_and_repoints_image_names(tmp_path):
    rng = np.random.default_rng(3)
    vols = rng.normal(size=(3, 8, 8, 8)).astype(np.float32)
    src = write_subtomograms(tmp_path / "set.star", vols, voxel_size=4.0, tomo_name="TS_1",
                             tomogram_shape=(20, 30, 40), coordinates_xyz=[[5, 6, 7], [8, 9, 10], [11, 12, 13]],
                             classes=[1, 2, 1])
    pset = load_particle_set(src)
    result = SimpleNamespace(euler_deg=np.array([[10.0, 20, 30], [0, 0, 0], [-5, 90, 5]]),
                             origins_voxels=np.array([[1.0, 0, 0], [0, 0.5, 0], [0, 0, -2]]), scores=[0.9, 0.1, 0.5])
    (tmp_path / "out").mkdir()
    out = write_aligned_star(tmp_path / "out" / "aligned.star", pset, result,
                             extra_columns={"rlnClassNumber": [2, 2, 1]})
    blocks, before = read_star(out), read_star(src)
    assert list(blocks) == ["general", "optics", "particles"]
    assert blocks["general"] == before["general"]
    df = blocks["particles"]
    assert df["rlnImageName"].tolist() == ["../" + n for n in before["particles"]["rlnImageName"]]
    np.testing.assert_allclose(df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]], result.euler_deg)
    origins = df[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]]
    np.testing.assert_allclose(origins, result.origins_voxels * 4.0)
    np.testing.assert_allclose(df["cryoalignCorrelation"], [0.9, 0.1, 0.5])
    assert df["rlnClassNumber"].tolist() == [2, 2, 1]
    volumes, _ = read_subtomograms(out)  # the names resolve from the new folder
    np.testing.assert_array_equal(volumes, vols)
    with pytest.raises(InputError) as err:
        write_aligned_star(out, pset, result)
    assert err.value.field == "output"
