"""Template matching finds planted copies of the template at the right positions and orientations."""

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.geometry import (
    euler_to_matrix,
    geodesic_angle_deg,
    rotation_grid,
    transform_reference_to_particle,
)
from napari_cryoalign.backend.picking.template import template_match
from napari_cryoalign.backend.simulate.structures import load_structure_map
from napari_cryoalign.backend.wedge import missing_wedge_mask
from napari_cryoalign.errors import InputError


@pytest.fixture(scope="module")
def planted():
    ref, _ = load_structure_map("ruvab", voxel_size_angstrom=10.0, box=20)
    rng = np.random.default_rng(0)
    shape = (36, 72, 80)
    vol = np.zeros(shape, np.float32)
    pos = np.array([[18, 18, 17], [56, 20, 18], [26, 52, 19], [60, 54, 17]])
    grid = rotation_grid(45)
    rots = grid[rng.choice(len(grid), len(pos), replace=False)]
    b = ref.shape[0]
    for (x, y, z), r in zip(pos, rots):
        vol[z - b // 2 : z - b // 2 + b, y - b // 2 : y - b // 2 + b, x - b // 2 : x - b // 2 + b] += \
            transform_reference_to_particle(ref, r)
    # the tomogram's missing wedge (-60..60, tilt axis y), then noise
    wedge = missing_wedge_mask(shape, rfft=True)
    vol = torch.fft.irfftn(torch.fft.rfftn(torch.from_numpy(vol)) * wedge, s=shape).numpy()
    vol += rng.normal(0, 1.5 * vol.std(), shape).astype(np.float32)
    return vol.astype(np.float32), ref, pos, rots


def test_finds_planted_copies(planted):
    vol, ref, pos, rots = planted
    res = template_match(vol, ref, voxel_size=10.0, angular_step_deg=45, max_picks=4, batch=16)
    assert res.scores.shape == vol.shape and res.best_rotation.shape == vol.shape
    assert len(res.picks) == 4 and np.all(np.diff(res.picks.scores) <= 0)
    d = np.linalg.norm(res.picks.coordinates_xyz[:, None] - pos[None], axis=2)
    assert sorted(d.argmin(1)) == [0, 1, 2, 3]
    assert d.min(1).max() <= 1.0
    # orientations: the planted rotations are on the grid
    mats = euler_to_matrix(res.picks.euler_deg)
    ang = geodesic_angle_deg(mats, rots[d.argmin(1)])
    assert np.median(ang) < 1.0
    # the planted peaks stand far above the background
    assert res.picks.scores.min() > 0.3
    bg = np.delete(res.scores.ravel(), np.ravel_multi_index(np.round(res.picks.coordinates_xyz[:, ::-1]).astype(int).T,
                                                            vol.shape))
    assert res.picks.scores.min() > np.percentile(bg, 99.9)


def test_wedge_aware_scoring_scores_higher(planted):
    vol, ref, pos, rots = planted
    kw = dict(voxel_size=10.0, rotations=rots, max_picks=4, batch=4)
    with_w = template_match(vol, ref, **kw).picks.scores
    without = template_match(vol, ref, tilt_range_deg=None, **kw).picks.scores
    assert with_w.mean() > without.mean() + 0.02


def test_bad_template():
    vol = np.zeros((20, 20, 20), np.float32)
    with pytest.raises(InputError, match="cubic"):
        template_match(vol, np.ones((4, 5, 6)))
    with pytest.raises(InputError, match="larger|no larger"):
        template_match(vol[:10], np.random.default_rng(0).normal(size=(12, 12, 12)))


def test_false_alarm_threshold_counts_noise_exceedances():
    from napari_cryoalign.backend.picking.template import false_alarm_threshold

    rng = np.random.default_rng(1)
    n, sigma = 200_000, 0.07
    for k in (1.0, 10.0):
        thr = false_alarm_threshold(sigma, n, false_positives=k)
        counts = [(rng.normal(0, sigma, n) > thr).sum() for _ in range(30)]
        assert 0.6 * k < np.mean(counts) < 1.5 * k
    assert false_alarm_threshold(sigma, n, false_positives=1) > false_alarm_threshold(sigma, n, false_positives=10)
    with pytest.raises(InputError, match="false positives"):
        false_alarm_threshold(sigma, n, false_positives=0)


def test_suggested_threshold_keeps_the_planted_copies_and_little_noise(planted):
    vol, ref, pos, rots = planted
    res = template_match(vol, ref, voxel_size=10.0, angular_step_deg=45, batch=16, false_positives=1)
    assert 0.9 * vol.size * len(res.euler_deg) < res.n_search <= vol.size * len(res.euler_deg)
    assert 0.0 < res.ncc_std < 0.2 and 3 * res.ncc_std < res.suggested_threshold < 8 * res.ncc_std
    # the picks are cut at the one-false-alarm score: every planted copy, at most a few others
    assert res.picks.scores.min() >= res.suggested_threshold
    d = np.linalg.norm(res.picks.coordinates_xyz[:, None] - pos[None], axis=2)
    assert (d.min(0) <= 1.0).all() and len(res.picks) <= len(pos) + 2
    # pure noise: (almost) nothing passes
    noise = np.random.default_rng(2).normal(size=(24, 48, 48)).astype(np.float32)
    res_n = template_match(noise, ref, voxel_size=10.0, angular_step_deg=45, batch=16, false_positives=1)
    assert len(res_n.picks) <= 2
