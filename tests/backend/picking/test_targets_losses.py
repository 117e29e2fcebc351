"""Targets (Gaussian peaks, unlabelled = -1) and losses on hand-made cases."""

import math

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.picking.losses import (
    consistency_loss,
    debiased_contrastive_loss,
    focal_loss,
    pu_focal_loss,
)
from napari_cryoalign.backend.picking.targets import (
    heatmap_sigma,
    input_to_output_zyx,
    make_targets,
    output_to_input_xyz,
)


def test_targets_peaks_at_labels_and_unlabelled_minus_one():
    t = make_targets((10, 20, 20), np.array([[5, 4, 6], [2, 15, 15]]), sigma_zyx=(1.5, 1.0, 1.0))
    assert t.shape == (10, 20, 20)
    assert t[5, 4, 6] == 1.0 and t[2, 15, 15] == 1.0
    assert int((t == 1.0).sum()) == 2  # one true-positive voxel per label
    # neighbour follows the Gaussian: exp(-1 / (2 sigma^2))
    assert float(t[5, 4, 7]) == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert float(t[6, 4, 6]) == pytest.approx(math.exp(-1 / (2 * 1.5**2)), rel=1e-5)
    # far away: unlabelled
    assert t[0, 0, 19] == -1.0 and t[9, 10, 0] == -1.0
    vals = t[t >= 0]
    assert float(vals.min()) >= 1e-3


def test_targets_merge_by_maximum_and_clip_at_border():
    t = make_targets((6, 8, 8), np.array([[0, 0, 0], [0, 0, 1]]), sigma_zyx=(1.0, 1.0, 1.0))
    assert t[0, 0, 0] == 1.0 and t[0, 0, 1] == 1.0
    assert float(t[0, 0, 2]) == pytest.approx(math.exp(-0.5), rel=1e-5)  # max, not sum


def test_grid_conversions_round_trip():
    xyz = np.array([[10.5, 20.5, 3.0], [0.5, 0.5, 0.0], [31.4, 7.6, 9.2]])
    idx = input_to_output_zyx(xyz, (1, 2, 2))
    np.testing.assert_array_equal(idx[0], [3, 10, 5])
    np.testing.assert_array_equal(idx[1], [0, 0, 0])
    back = output_to_input_xyz(idx, (1, 2, 2))
    assert np.all(np.abs(back - xyz) <= np.array([1.0, 1.0, 0.5]) + 1e-9)
    assert heatmap_sigma(16, stride=(1, 2, 2)) == (2.0, 1.0, 1.0)


def _np_terms(p, y, alpha=2, beta=4):
    tp = y == 1
    sp = (y > 0) & (y < 1)
    un = y < 0
    rpp = np.mean(-((1 - p[tp]) ** alpha) * np.log(p[tp])) + np.mean(-((1 - y[sp]) ** beta) * p[sp] ** alpha * np.log(1 - p[sp]))
    rpm = np.mean(-(p[tp] ** alpha) * np.log(1 - p[tp])) + np.mean(-(y[sp] ** beta) * (1 - p[sp]) ** alpha * np.log(p[sp]))
    rum = np.mean(-(p[un] ** alpha) * np.log(1 - p[un]))
    return rpp, rpm, rum


def test_pu_loss_matches_formula_when_negative_risk_positive():
    y = np.array([1.0, 0.5, 0.2, -1, -1, -1, -1])
    p = np.array([0.6, 0.4, 0.3, 0.5, 0.7, 0.2, 0.4])
    logits = torch.tensor(np.log(p / (1 - p)), dtype=torch.float64, requires_grad=True)
    prior = 0.2
    loss, parts = pu_focal_loss(logits, torch.tensor(y), prior=prior)
    rpp, rpm, rum = _np_terms(p, y)
    assert rum - prior * rpm > 0
    assert float(loss.detach()) == pytest.approx(prior * rpp + rum - prior * rpm, rel=1e-9)
    assert parts["r_u_minus"] == pytest.approx(rum, rel=1e-9)
    loss.backward()
    # unlabelled voxels with higher p get a larger push down
    g = logits.grad.numpy()
    assert g[4] > g[3] > g[6] > g[5] > 0


def test_pu_loss_non_negative_correction_drops_negative_part():
    # confident positives (large R_p-) and nearly-zero unlabelled predictions: R_u- - pi R_p- < 0
    y = np.array([1.0, 1.0, 0.5, -1, -1, -1])
    p = np.array([0.99, 0.98, 0.9, 0.01, 0.02, 0.01])
    logits = torch.tensor(np.log(p / (1 - p)), dtype=torch.float64, requires_grad=True)
    prior = 0.5
    loss, parts = pu_focal_loss(logits, torch.tensor(y), prior=prior)
    rpp, rpm, rum = _np_terms(p, y)
    assert rum - prior * rpm < 0 and parts["negative_risk"] < 0
    assert float(loss.detach()) == pytest.approx(prior * rpp, rel=1e-9)  # negative part clamped to 0
    assert float(loss.detach()) >= 0
    loss.backward()
    assert np.all(logits.grad.numpy()[3:] == 0)  # no gradient through the dropped part


def test_pu_loss_lower_for_correct_predictions():
    y = torch.tensor([1.0, 0.3, -1, -1, -1, -1])
    good = torch.tensor([4.0, -1.0, -5, -5, -5, -5])
    bad = torch.tensor([-4.0, 3.0, 3, 3, 3, 3])
    assert float(pu_focal_loss(good, y, prior=0.1)[0]) < 0.05 * float(pu_focal_loss(bad, y, prior=0.1)[0])
    with pytest.raises(ValueError):
        pu_focal_loss(good, y, prior=1.0)


def test_focal_loss_hand_value():
    # one centre at p = 0.5, one negative (y = -1 -> 0) at p = 0.5
    loss = focal_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, -1.0]))
    expected = 0.25 * math.log(2) + 0.25 * math.log(2)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_consistency_loss():
    a = torch.tensor([0.0, 10.0])
    assert float(consistency_loss(a, a)) == 0.0
    assert float(consistency_loss(torch.tensor([0.0]), torch.tensor([-100.0]))) == pytest.approx(0.25, rel=1e-6)


def test_contrastive_loss_prefers_clustered_positives():
    torch.manual_seed(0)
    shape = (1, 8, 4, 6, 6)
    target = -torch.ones(1, 4, 6, 6)
    target[0, 1, 1, 1] = target[0, 2, 4, 4] = target[0, 3, 2, 5] = 1.0
    pos = target >= 1
    rand_a = torch.nn.functional.normalize(torch.randn(shape), dim=1)
    rand_b = torch.nn.functional.normalize(torch.randn(shape), dim=1)
    # "good" features: positives share one direction, background another
    good = torch.zeros(shape)
    good[:, 0] = 1.0
    good[0, :, pos[0]] = 0.0
    good[0, 1, pos[0]] = 1.0
    good_a = torch.nn.functional.normalize(good + 0.05 * torch.randn(shape), dim=1)
    good_b = torch.nn.functional.normalize(good + 0.05 * torch.randn(shape), dim=1)
    prob = torch.sigmoid(torch.where(pos, 3.0, -3.0))
    g = torch.Generator().manual_seed(0)
    l_good, p_good = debiased_contrastive_loss(good_a, good_b, target, prob, prior=0.1, n_anchors=64, generator=g)
    l_rand, p_rand = debiased_contrastive_loss(rand_a, rand_b, target, prob, prior=0.1, n_anchors=64, generator=g)
    assert torch.isfinite(l_good) and torch.isfinite(l_rand)
    assert p_good["sup"] < 0.1 < p_rand["sup"]
    assert float(l_good) < float(l_rand)
    # gradients flow to the features
    f = rand_a.clone().requires_grad_(True)
    loss, _ = debiased_contrastive_loss(f, rand_b, target, prob, prior=0.1, n_anchors=64, generator=g)
    loss.backward()
    assert float(f.grad.abs().sum()) > 0


def test_known_negatives_are_marked_around_removed_picks_without_touching_positives():
    from napari_cryoalign.backend.picking.targets import NEGATIVE, UNLABELLED, mark_negatives

    t = make_targets((10, 20, 20), np.array([[5, 4, 6]]), sigma_zyx=(1.0, 1.0, 1.0))
    before = t.clone()
    mark_negatives(t, np.array([[5, 14, 14], [5, 5, 7]]), radius_zyx=(2.0, 1.0, 1.0))
    assert t[5, 14, 14] == NEGATIVE and t[7, 14, 14] == NEGATIVE and t[8, 14, 14] == UNLABELLED
    assert t[5, 15, 14] == NEGATIVE and t[5, 16, 14] == UNLABELLED and t[6, 15, 15] == UNLABELLED
    # the positive's peak and its soft neighbours are kept even where a negative ball reaches them
    assert torch.equal(t[before >= 0], before[before >= 0])
    assert float(t[5, 5, 7]) == float(before[5, 5, 7]) > 0  # a removed pick on a labelled particle's tail


def test_known_negatives_add_their_own_risk_and_leave_the_unlabelled_mean_alone():
    rng = np.random.default_rng(3)
    y = np.full(400, -1.0)
    y[:5] = 1.0
    y[5:40] = rng.uniform(0.01, 0.9, 35)
    logits = torch.from_numpy(rng.normal(0, 2, 400))
    target = torch.from_numpy(y)
    base, parts = pu_focal_loss(logits, target, prior=0.05)
    y2 = y.copy()
    y2[300:330] = -2.0
    with_n, parts_n = pu_focal_loss(logits, torch.from_numpy(y2), prior=0.05, negative_weight=0.7)
    p = torch.sigmoid(logits).numpy()
    rnm = np.mean(-(p[300:330] ** 2) * np.log(1 - p[300:330]))
    un = np.r_[np.arange(40, 300), np.arange(330, 400)]
    assert parts_n["r_n_minus"] == pytest.approx(rnm, rel=1e-9)
    assert parts_n["r_u_minus"] == pytest.approx(np.mean(-(p[un] ** 2) * np.log(1 - p[un])), rel=1e-9)
    neg = max(parts_n["r_u_minus"] - 0.05 * parts_n["r_p_minus"], 0.0)
    assert float(with_n) == pytest.approx(0.05 * parts_n["r_p_plus"] + neg + 0.7 * rnm, rel=1e-9)
    assert parts["r_n_minus"] == 0.0
