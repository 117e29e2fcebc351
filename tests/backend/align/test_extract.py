"""Cutting boxes: the box centre convention, sub-voxel remainders as RELION origins, skipped particles."""

import numpy as np
import pytest

from napari_cryoalign.backend.align.extract import check_box_size, extract_subtomograms
from napari_cryoalign.errors import InputError


def test_box_centre_and_residual_origin():
    tomo = np.zeros((20, 30, 40), np.float32)
    tomo[10, 12, 25] = 1.0  # (x, y, z) = (25, 12, 10)
    ext = extract_subtomograms(tomo, [[25.3, 11.8, 10.0]], 8)
    assert ext.volumes.shape == (1, 8, 8, 8)
    assert ext.volumes[0, 4, 4, 4] == 1.0  # the rounded coordinate is at N // 2
    # RELION origin of the remainder: true centre = N//2 - origin = 4 + (25.3 - 25) along x
    assert np.allclose(ext.residual_origins_voxels[0], [-0.3, 0.2, 0.0])


def test_outside_and_empty_boxes_are_skipped_and_listed():
    rng = np.random.default_rng(0)
    tomo = rng.normal(size=(20, 30, 40)).astype(np.float32)
    tomo[:, :, 30:] = 0.0  # a blank region
    ext = extract_subtomograms(tomo, [[10, 10, 10], [2, 10, 10], [35, 15, 10], [20, 15, 10]], 8)
    assert list(ext.rows) == [0, 3]
    reasons = {s.row: s.reason for s in ext.skipped}
    assert "outside the tomogram" in reasons[1] and "all zero" in reasons[2]


@pytest.mark.parametrize("box", [7, 0, 4, 64, 10.5])
def test_bad_box_sizes(box):
    with pytest.raises(InputError) as err:
        check_box_size(box, tomogram_shape=(20, 30, 40))
    assert err.value.field == "box"
