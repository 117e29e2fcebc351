"""The picking session's jobs (what the "Pick particles" widget runs): candidates down to the floor,
the rotation of each template peak, only the peak finder for a new minimum distance."""

import numpy as np

from napari_cryoalign.backend.jobs import Partial, run_job
from napari_cryoalign.backend.picking import Picker
from napari_cryoalign.backend.picking.infer import Heatmap
from napari_cryoalign.backend.picking.session import (
    PICKER_SCORE_FLOOR,
    find_candidates,
    pick_with_model_job,
)


def _blobs(shape, centres_zyx, heights, sigma=1.5):
    z, y, x = np.indices(shape)
    out = np.zeros(shape, np.float32)
    for (cz, cy, cx), h in zip(centres_zyx, heights):
        out += h * np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    return out


def test_find_candidates_of_a_template_score_map_carry_the_rotation_of_their_voxel():
    ncc = _blobs((16, 24, 24), [(5, 6, 7), (10, 18, 16)], [0.9, 0.6])
    best_rotation = np.zeros(ncc.shape, dtype=np.int64)
    best_rotation[10, 18, 16] = 2
    grid = np.array([[0.0, 0.0, 0.0], [10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    picks = find_candidates(ncc, method="template", min_distance_voxels=4.0, best_rotation=best_rotation,
                            euler_grid=grid)
    np.testing.assert_allclose(picks.coordinates_xyz[:2], [[7, 6, 5], [16, 18, 10]])
    np.testing.assert_allclose(picks.euler_deg[:2], [grid[0], grid[2]])
    # a minimum distance beyond their separation (15.8 voxels) keeps only the higher peak
    far = find_candidates(ncc, method="template", min_distance_voxels=20.0, best_rotation=best_rotation,
                          euler_grid=grid)
    assert len(far) == 1 and np.allclose(far.coordinates_xyz[0], [7, 6, 5])


def test_find_candidates_of_a_heatmap_keep_the_floor():
    data = _blobs((8, 12, 12), [(3, 4, 4), (4, 9, 9)], [0.8, 0.01])
    picks = find_candidates(Heatmap(data, (2, 2, 2)), method="picker", min_distance_voxels=3.0)
    assert picks.euler_deg is None and np.all(picks.scores >= PICKER_SCORE_FLOOR)
    np.testing.assert_allclose(picks.coordinates_xyz[0], [2 * 4, 2 * 4, 2 * 3], atol=1.0)


def test_pick_with_model_job_returns_every_candidate_and_shows_the_heatmap():
    rng = np.random.default_rng(0)
    tomo = rng.normal(size=(24, 48, 48)).astype(np.float32)
    picker = Picker.new(diameter_angstrom=80.0, voxel_size=10.0)
    partials = []
    out = run_job(pick_with_model_job(picker, tomo, voxel_size=10.0), progress=False, on_partial=partials.append)
    assert out.method == "picker" and out.picker is picker
    assert [p.name for p in partials] == ["heatmap"] and isinstance(partials[0], Partial)
    assert np.all(out.picks.scores >= PICKER_SCORE_FLOOR) and out.score_map is partials[0].value


def test_find_candidates_again_keep_the_shape_check_of_the_places_it_checked():
    """After a new minimum distance the widget finds the peaks again: a peak at a checked place gets its checked
    score (here pushed below the other), a place never checked keeps the network's."""
    from napari_cryoalign.backend.picking.shape_check import ShapeCheck

    data = _blobs((8, 16, 16), [(3, 4, 4), (4, 12, 12)], [0.8, 0.6])
    heat = Heatmap(data, (1, 2, 2))
    plain = find_candidates(heat, method="picker", min_distance_voxels=3.0)
    first = plain.coordinates_xyz[0]
    check = ShapeCheck(coordinates_xyz=first[None], fit=np.array([0.1]), delta=np.array([-3.0]))
    picks = find_candidates(heat, method="picker", min_distance_voxels=3.0, shape_check=check)
    assert np.allclose(picks.coordinates_xyz[-1], first)  # moved down: sigmoid(logit(0.8) - 3) = 0.18
    assert np.isclose(picks.scores[-1], 1 / (1 + np.exp(-(np.log(0.8 / 0.2) - 3))), atol=0.02)
    assert np.isclose(picks.scores[0], plain.scores[1])  # the unchecked peak keeps its score


def test_shape_check_checks_at_most_twice_the_picks_at_the_threshold_plus_100():
    """Thousands of weak peaks above the floor are not all fitted: the highest 2 n + 100 (n at the threshold)."""
    from napari_cryoalign.backend.picking.infer import Picks
    from napari_cryoalign.backend.picking.shape_check import ShapeCheck, ShapeReference, shape_check_job

    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 50, (400, 3))
    scores = np.sort(np.concatenate([np.full(20, 0.9), rng.uniform(0.13, 0.45, 380)]))[::-1]
    ref = ShapeReference(map=np.ones((8, 8, 8), np.float32), voxel_size=10.0, centre=0.2, scale=0.05)
    known = ShapeCheck(coordinates_xyz=xyz, fit=rng.uniform(0.1, 0.3, 400), delta=np.zeros(400))
    picks, check = run_job(shape_check_job(Picks(xyz, scores), np.zeros((4, 4, 4), np.float32), ref, threshold=0.5,
                                           voxel_size=10.0, known=known), progress=False)
    assert len(check.coordinates_xyz) == 2 * 20 + 100 and len(picks) == 400
    assert np.sum(picks.scores >= 0.5) == 20  # as many at the threshold as before
    top = set(map(tuple, xyz[:140]))
    assert all(tuple(p) in top for p in check.coordinates_xyz)  # the highest scores were checked
