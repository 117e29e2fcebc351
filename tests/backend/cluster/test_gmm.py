"""Gaussian mixture, k-means, BIC, Hungarian re-indexing and clustering accuracy."""

import numpy as np
import pytest

from napari_cryoalign.backend.cluster.gmm import (
    clustering_accuracy,
    fit_gmm,
    kmeans,
    match_labels,
    select_n_classes,
    v_measure,
)
from napari_cryoalign.errors import InputError


def _blobs(seed=0, n=150):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 7.0, -2.0]])
    # anisotropic, correlated covariances: a full-covariance mixture is needed to model them
    covs = [np.array([[1.0, 0.8, 0], [0.8, 1.0, 0], [0, 0, 0.3]]), np.diag([0.3, 2.0, 0.5]), np.eye(3) * 0.6]
    x = np.concatenate([rng.multivariate_normal(c, s, n) for c, s in zip(centres, covs)])
    y = np.repeat(np.arange(3), n)
    perm = rng.permutation(len(y))
    return x[perm], y[perm], centres, covs


def test_gmm_recovers_well_separated_blobs():
    x, y, centres, covs = _blobs()
    g = fit_gmm(x, 3, seed=1)
    acc = clustering_accuracy(y, g.labels)
    assert acc.accuracy >= 0.98
    # parameters: each true centre has a fitted mean close by, weights ~1/3, covariances close
    for c, s in zip(centres, covs):
        j = np.argmin(np.linalg.norm(g.means - c, axis=1))
        assert np.linalg.norm(g.means[j] - c) < 0.4
        assert np.abs(g.covariances[j] - s).max() < 0.3 * np.abs(s).max() + 0.1
    np.testing.assert_allclose(g.weights.sum(), 1.0, atol=1e-9)
    np.testing.assert_allclose(g.posteriors.sum(1), 1.0, atol=1e-9)
    assert g.posteriors.max(1).mean() > 0.95
    np.testing.assert_allclose(g.predict_proba(x), g.posteriors, atol=1e-6)


def test_bic_selects_the_true_number_of_components():
    x, _, _, _ = _blobs(seed=3)
    k, bics = select_n_classes(x, max_classes=6, seed=0)
    assert k == 3, bics
    assert set(bics) == set(range(1, 7))


def test_kmeans_separates_blobs():
    x, y, _, _ = _blobs(seed=5)
    lab, centres = kmeans(x, 3, seed=0)
    assert clustering_accuracy(y, lab).accuracy >= 0.97
    assert centres.shape == (3, 3)


def test_hungarian_reindexing_keeps_labels_stable_under_a_permutation():
    rng = np.random.default_rng(0)
    prev = rng.integers(0, 4, 200)
    perm = np.array([2, 0, 3, 1])
    new = perm[prev]  # the same clustering with other indices
    fixed, mapping = match_labels(new, prev, n_classes=4)
    np.testing.assert_array_equal(fixed, prev)
    np.testing.assert_array_equal(mapping[perm], np.arange(4))
    # with 10 % of the samples moved, the mapping is still the permutation's inverse
    noisy = new.copy()
    flip = rng.choice(200, 20, replace=False)
    noisy[flip] = rng.integers(0, 4, 20)
    fixed, mapping = match_labels(noisy, prev, n_classes=4)
    np.testing.assert_array_equal(mapping[perm], np.arange(4))
    assert np.mean(fixed == prev) >= 0.9


def test_clustering_accuracy_matches_labels_and_reports_per_class():
    true = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    pred = np.array([2, 2, 0, 0, 0, 0, 1, 1, 1, 1])  # cluster 2 = class 1 (one error), 0 = 2, 1 = 3
    acc = clustering_accuracy(true, pred)
    assert acc.accuracy == pytest.approx(0.9)
    assert acc.mapping == {2: 1, 0: 2, 1: 3}
    assert acc.per_class == {1: pytest.approx(2 / 3), 2: 1.0, 3: 1.0}
    assert clustering_accuracy(true, true).accuracy == 1.0
    assert v_measure(true, true) == pytest.approx(1.0)
    assert v_measure(true, np.zeros(10)) == pytest.approx(0.0)
    assert 0.0 < v_measure(true, pred) < 1.0
    with pytest.raises(InputError):
        clustering_accuracy(true, pred[:5])


def test_bad_inputs_are_input_errors():
    with pytest.raises(InputError, match="n_classes"):
        fit_gmm(np.zeros((5, 2)), 6)
    with pytest.raises(InputError, match="finite"):
        fit_gmm(np.full((5, 2), np.nan), 2)
