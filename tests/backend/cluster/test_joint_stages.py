"""The stages of the joint method taken one at a time (cheap inputs, no alignment)."""

import numpy as np
import pytest

from napari_cryoalign.backend.cluster import classify
from napari_cryoalign.backend.cluster.common import _embedding, _masks_for


def _settings(**kw):
    base = dict(n_classes=3, iterations=5, init="classical", init_iterations=2, angular_step_deg=30.0, refine_levels=2,
                min_class_fraction=0.5, global_rounds=2, reseed="split", search_frequency=0.25, max_shift_voxels=None,
                vox=12.0,
                n_components=None, max_frequency=0.15, max_classes=8, model=object(), seed=0, device="cpu", t0=0.0)
    return classify._JointSettings(**{**base, **kw})


def test_bisection_settings_and_progress_total():
    cfg = _settings()
    assert cfg.total == 3 * 2 + 2 + 2 * 5
    sub = cfg.bisection()
    assert (sub.n_classes, sub.iterations, sub.init, sub.reseed, sub.global_rounds, sub.model) == \
        (2, 4, "invariant", "worst", 1, None)
    assert (sub.min_class_fraction, sub.seed, sub.vox, sub.t0) == (cfg.min_class_fraction, cfg.seed, cfg.vox, cfg.t0)
    assert cfg.search(32) == {"angular_step_deg": 30.0, "refine_levels": 2, "max_shift_voxels": None,
                              "voxel_size_angstrom": 12.0, "device": "cpu", "max_search_frequency": 0.25,
                              "crop_to_band": True}
    assert sub.search_frequency == 0.25  # the bisection searches the same band
    assert cfg.band(0.4, 32) == 0.25 and cfg.band(0.2, 32) == 0.2 and cfg.band(0.4, 40) == 0.25
    # small boxes keep a 16^3 search box: 24^3 searches up to 1/3 cycles/voxel
    assert cfg.limit(24) == pytest.approx(1 / 3) and cfg.band(0.2, 24) == 0.2 and cfg.limit(8) == 0.5
    full = _settings(search_frequency=0.5)  # the behaviour before: full box, up to the averages' resolution
    assert not full.cropped and full.band(0.4, 32) == 0.4
    assert full.search(32)["max_search_frequency"] == 0.5 and not full.search(32)["crop_to_band"]


def test_relabel_keeps_the_class_indices_of_the_averages():
    rng = np.random.default_rng(0)
    truth = np.repeat([2, 0, 1], 10)
    scores = 0.1 * rng.standard_normal((30, 3))
    scores[np.arange(30), truth] += 1.0  # each particle fits its own class's average best
    labels, post, changed, feats = classify._relabel(scores, np.zeros(30, np.int64), seed=0)
    np.testing.assert_array_equal(labels, truth)  # class k stays the class of average k
    assert changed == np.mean(truth != 0)
    assert post.shape == (30, 3) and np.all(post[np.arange(30), labels] > 0.5)
    assert feats.shape == (30, 3)
    one, post1, changed1, _ = classify._relabel(scores[:, :1], np.zeros(30, np.int64), seed=0)
    assert np.all(one == 0) and np.all(post1 == 1) and changed1 == 0.0


def test_convergence_needs_a_quiet_round_after_the_first():
    quiet = {"iteration": 2, "changed_fraction": 0.0, "reseeded": [], "split": []}
    assert classify._converged(quiet)
    assert not classify._converged({**quiet, "iteration": 1})
    assert not classify._converged({**quiet, "changed_fraction": 0.05})
    assert not classify._converged({**quiet, "reseeded": [3]})
    assert not classify._converged({**quiet, "split": [[1, 3]]})


def test_shared_helpers():
    m = np.ones((4, 8, 8, 8), np.float32)
    assert _masks_for(None, [0, 1]) is None
    assert _masks_for(m, [1, 3]).shape == (2, 8, 8, 8)
    assert _masks_for(m[0], [1, 3]).shape == (8, 8, 8)  # one mask for all
    feats = np.random.default_rng(1).standard_normal((10, 5))
    assert _embedding(feats).shape == (10, 2) and _embedding(feats[:1]).shape == (1, 2)
