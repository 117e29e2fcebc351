"""Jim-Net: the fine-transformation regulariser, shapes, within-cluster pairs, one training epoch."""

import math

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.cluster.jimnet import (
    JimNet,
    JimNetConfig,
    affine_regularization_loss,
    draw_pairs_within_clusters,
    jimnet_features,
    rigid_regularization_loss,
    train_jimnet,
)
from napari_cryoalign.backend.geometry import random_rotations


def _monte_carlo(a: np.ndarray, s: np.ndarray, n: int = 400_000, seed: int = 0) -> float:
    """Volume of the unit ball x mean of |A v + s - v|^2 over uniform points v in it."""
    rng = np.random.default_rng(seed)
    v = rng.uniform(-1, 1, (n, 3))
    v = v[(v ** 2).sum(1) <= 1.0]
    d = v @ a.T + s - v
    return 4.0 / 3.0 * math.pi * float((d ** 2).sum(1).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_rigid_regularizer_is_the_integral_over_the_unit_ball(seed):
    a = random_rotations(1, seed=seed)[0]
    s = np.random.default_rng(seed).normal(size=3) * 0.3
    got = float(rigid_regularization_loss(torch.as_tensor(a), torch.as_tensor(s)))
    assert got == pytest.approx(_monte_carlo(a, s), rel=0.01)
    # closed form of the supplement, written out: 4 pi/3 (2/5 (3 - tr A) + s.s)
    assert got == pytest.approx(4 * math.pi / 3 * (0.4 * (3 - np.trace(a)) + s @ s), rel=1e-9)
    # eq. 2 (any matrix) agrees for a rotation, and for a general matrix with the Monte-Carlo integral
    assert float(affine_regularization_loss(torch.as_tensor(a), torch.as_tensor(s))) == pytest.approx(got, rel=1e-9)
    m = np.eye(3) + np.random.default_rng(seed + 5).normal(size=(3, 3)) * 0.2
    assert float(affine_regularization_loss(torch.as_tensor(m), torch.as_tensor(s))) == pytest.approx(
        _monte_carlo(m, s), rel=0.01)
    assert float(rigid_regularization_loss(torch.eye(3), torch.zeros(3))) == 0.0


def test_pairs_are_drawn_within_clusters():
    labels = np.array([0, 0, 1, 1, 1, 2, 0, 1])
    partner = draw_pairs_within_clusters(labels, rng=np.random.default_rng(0))
    assert np.all(labels[partner] == labels)
    assert np.all(partner[labels != 2] != np.flatnonzero(labels != 2))  # nobody with itself unless alone
    assert partner[5] == 5
    assert sorted(partner[labels == 1]) == sorted(np.flatnonzero(labels == 1))  # each used once as partner


def test_network_shapes_and_one_training_epoch():
    torch.manual_seed(0)
    cfg = JimNetConfig(box=16, channels=4, n_layers=2, n_clusters=2, feature_dim=8, hidden=16)
    net = JimNet(cfg)
    x = torch.randn(3, 16, 16, 16)
    out = net(x, x.flip(0))
    assert out["rotation"].shape == (3, 3, 3) and out["origin"].shape == (3, 3)
    assert out["aligned"].shape == (3, 16, 16, 16) and out["logits"].shape == (3, 2)
    r = out["rotation"].detach()
    np.testing.assert_allclose((r @ r.transpose(1, 2)).numpy(), np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-5)
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(8, 16, 16, 16)).astype(np.float32)
    vols[4:] += 2.0 * np.exp(-((np.indices((16,) * 3) - 8) ** 2).sum(0) / 8.0)  # two kinds of volume
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = train_jimnet(vols, n_classes=2, model=net, epochs=1, batch_size=4)
    assert len(res.losses) == 1 and np.isfinite(res.losses[0])
    assert res.labels.shape == (8,)
    changed = [k for k, v in res.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("head.") for k in changed) and any(k.startswith("reg_fine.") for k in changed)
    f = jimnet_features(res.model, vols)
    assert f.shape == (8, 8) and np.all(np.isfinite(f))


def test_a_jimnet_model_supplies_the_first_clustering_of_the_joint_method():
    from napari_cryoalign.backend.cluster.classify import cluster_subtomograms_job
    from napari_cryoalign.backend.jobs import Partial
    from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms

    s = simulate_subtomograms(["ribosome", "mtor"], n_per_class=4, box=16, voxel_size_angstrom=20.0, snr=2.0, seed=1)
    torch.manual_seed(0)
    net = JimNet(JimNetConfig(box=16, channels=4, n_layers=2, n_clusters=2, feature_dim=8, hidden=16)).eval()
    job = cluster_subtomograms_job(s.volumes, n_classes=2, particle_masks=s.mask, model=net, iterations=1,
                                   init_iterations=1, refine_levels=0, voxel_size_angstrom=20.0)
    first = None
    messages = []
    while True:
        try:
            ev = next(job)
        except StopIteration as stop:
            res = stop.value
            break
        if isinstance(ev, Partial) and ev.name == "embedding" and first is None:
            first = ev.value
        elif not isinstance(ev, Partial):
            messages.append(ev.message)
    assert "Jim-Net features" in messages[0]
    # the first embedding is the principal-component map of the network's features
    feats = jimnet_features(net, s.volumes)
    assert first.shape == (8, 2) and np.all(np.isfinite(first))
    assert np.isfinite(feats).all() and feats.shape == (8, 8)
    assert res.classes.shape == (8,) and set(np.unique(res.classes)) <= {0, 1}
