"""Metrics on hand-made picks; NMS by max-pooling with an exact minimum distance."""

import numpy as np
import pytest

from napari_cryoalign.backend.picking.infer import Heatmap, find_peaks
from napari_cryoalign.backend.picking.metrics import (
    average_precision,
    best_f1,
    match_picks,
    precision_recall_f1,
)

TRUTH = np.array([[10.0, 10, 10], [30, 10, 10], [10, 30, 10], [30, 30, 10]])


def test_precision_recall_f1_hand_made():
    picks = np.array([[11.0, 10, 10], [30, 11, 10], [50, 50, 10], [10, 30, 13.5]])
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    r = precision_recall_f1(picks, scores, TRUTH, radius=3.0)
    assert (r.n_true_positive, r.n_picks, r.n_true) == (2, 4, 4)  # the last is 3.5 away
    assert r.precision == 0.5 and r.recall == 0.5 and r.f1 == 0.5
    r4 = precision_recall_f1(picks, scores, TRUTH, radius=4.0)
    assert r4.n_true_positive == 3 and r4.f1 == pytest.approx(0.75)
    r_thr = precision_recall_f1(picks, scores, TRUTH, radius=4.0, threshold=0.75)
    assert (r_thr.n_picks, r_thr.n_true_positive) == (2, 2) and r_thr.precision == 1.0 and r_thr.recall == 0.5


def test_greedy_matching_one_to_one_by_score():
    # two picks near the same particle: only the higher-scored one matches
    picks = np.array([[10.5, 10, 10], [9.0, 10, 10]])
    m = match_picks(picks, [0.2, 0.9], TRUTH, radius=2.0)
    np.testing.assert_array_equal(m.order, [1, 0])
    np.testing.assert_array_equal(m.matched_truth, [0, -1])


def test_scaled_radius_for_output_grid():
    picks = np.array([[14.0, 10, 10]])  # 4 voxels off in x = 2 voxels of a stride-2 grid
    assert precision_recall_f1(picks, [1.0], TRUTH[:1], radius=2.0).f1 == 0.0
    assert precision_recall_f1(picks, [1.0], TRUTH[:1], radius=2.0, scale_zyx=(1, 2, 2)).f1 == 1.0


def test_average_precision_hand_made():
    # ranks: hit, miss, hit, (two particles never found)  -> AP = (1/1 + 2/3) / 4
    picks = np.array([[10.0, 10, 10], [60, 60, 10], [30, 10, 10]])
    ap = average_precision(picks, [0.9, 0.8, 0.7], TRUTH, radius=2.0)
    assert ap == pytest.approx((1.0 + 2.0 / 3.0) / 4.0)
    assert average_precision(TRUTH, [4, 3, 2, 1], TRUTH, radius=1.0) == pytest.approx(1.0)
    assert average_precision(np.zeros((0, 3)), [], TRUTH, radius=1.0) == 0.0


def test_best_f1_threshold():
    picks = np.array([[10.0, 10, 10], [30, 10, 10], [70, 70, 10], [10, 30, 10], [80, 80, 10]])
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    prf, thr = best_f1(picks, scores, TRUTH, radius=2.0)
    # top-2: P 1, R .5, F1 .667; top-4: P .75, R .75, F1 .75
    assert prf.f1 == pytest.approx(0.75) and thr == pytest.approx(0.6)


def test_find_peaks_maxpool_and_min_distance():
    hm = np.zeros((20, 40, 40), np.float32)
    hm[5, 10, 10] = 0.9
    hm[5, 10, 13] = 0.8   # 3 voxels from the first: suppressed with min_distance 5
    hm[5, 10, 20] = 0.7   # 10 away: kept
    hm[15, 30, 30] = 0.2  # below the threshold
    xyz, sc = find_peaks(hm, min_distance=5, threshold=0.5)
    np.testing.assert_allclose(xyz, [[10, 10, 5], [20, 10, 5]])
    np.testing.assert_allclose(sc, [0.9, 0.7], rtol=1e-6)
    xyz2, _ = find_peaks(hm, min_distance=2, threshold=0.5)
    assert len(xyz2) == 3
    xyz3, _ = find_peaks(hm, min_distance=5, threshold=0.0, max_picks=1)
    assert len(xyz3) == 1


def test_find_peaks_exact_distance_beyond_pool_window():
    # diagonal neighbours survive a small max-pool window; the exact check removes them
    hm = np.zeros((10, 20, 20), np.float32)
    hm[5, 5, 5] = 1.0
    hm[7, 7, 7] = 0.9  # distance 3.46
    xyz, _ = find_peaks(hm, min_distance=4, threshold=0.1)
    assert len(xyz) == 1


def test_find_peaks_on_strided_grid():
    hm = np.zeros((8, 10, 10), np.float32)
    hm[3, 4, 6] = 1.0
    xyz, sc = find_peaks(Heatmap(hm, (1, 2, 2)), min_distance=3, threshold=0.5)
    np.testing.assert_allclose(xyz, [[12.5, 8.5, 3.0]])
