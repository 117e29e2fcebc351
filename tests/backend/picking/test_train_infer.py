"""Training on a small simulated tomogram (the CI training test), continuing, cancelling, tiling, bad input."""

import warnings

import numpy as np
import pytest

from napari_cryoalign.backend.jobs import Partial, Progress
from napari_cryoalign.backend.picking import (
    NetConfig,
    Picker,
    average_precision,
    calibrated_threshold,
    pick,
    precision_recall_f1,
    predict_heatmap,
    train_picker,
    train_picker_job,
)
from napari_cryoalign.errors import InputError

VOXEL = 20.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def sims():
    from napari_cryoalign.backend.simulate.tomogram import simulate_tomogram

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [simulate_tomogram(shape=(40, 96, 96), voxel_size_angstrom=VOXEL, structures=("ribosome",),
                                  n_particles=60, seed=s, keep_potential=False) for s in (1, 2)]


def _labels(sim, fraction, seed=0):
    rng = np.random.default_rng(seed)
    n = len(sim.truth)
    k = max(3, int(round(fraction * n)))
    return sim.truth.coordinates_xyz[rng.choice(n, k, replace=False)]


def test_training_reaches_f1_bar_on_another_tomogram(sims):
    train, test = sims
    radius = float(train.truth.radii_voxels[0])  # ~9.8 voxels
    assert len(train.truth) >= 18 and len(test.truth) >= 18
    labels = _labels(train, 0.3)
    res = train_picker(train.tomogram, labels, diameter_angstrom=2 * radius * VOXEL, voxel_size=VOXEL,
                       iterations=120, seed=0)
    assert res.iterations == 120 and res.losses.shape == (120,)
    assert res.losses[-20:].mean() < 0.5 * res.losses[:20].mean()
    picks, heat = pick(res.picker, test.tomogram)  # default threshold 0.5
    assert heat.data.shape == (40, 48, 48)
    prf = precision_recall_f1(picks.coordinates_xyz, picks.scores, test.truth.coordinates_xyz, radius=radius)
    assert prf.f1 >= 0.85, prf
    assert np.all(np.diff(picks.scores) <= 0)
    # the threshold calibrated on the labels at the end of training
    tr = res.picker.training
    assert len(tr["label_scores"]) == len(labels) and min(tr["label_scores"]) > 0.5
    assert res.picker.default_threshold == calibrated_threshold(tr["label_scores"])
    assert 0.5 < res.picker.default_threshold < max(tr["label_scores"])
    cal = picks.above(res.picker.default_threshold)
    prf_cal = precision_recall_f1(cal.coordinates_xyz, cal.scores, test.truth.coordinates_xyz, radius=radius)
    assert prf_cal.f1 >= 0.85, prf_cal
    all_picks, _ = pick(res.picker, test.tomogram, threshold=0.02)
    ap5 = average_precision(all_picks.coordinates_xyz, all_picks.scores, test.truth.coordinates_xyz,
                            radius=5, scale_zyx=(1, 2, 2))
    assert ap5 >= 0.8


def test_continue_training_from_state_and_previews(sims):
    train = sims[0]
    labels = _labels(train, 0.2)
    r1 = train_picker(train.tomogram, labels, diameter_angstrom=390.0, voxel_size=VOXEL, iterations=20, seed=1)
    p = r1.picker
    assert p.training["iterations_done"] == 20 and p.optimizer_state is not None
    # the user adds labels and presses Train again
    more = _labels(train, 0.5, seed=5)
    events = []
    job = train_picker_job(train.tomogram, more, picker=p, voxel_size=VOXEL, iterations=20, seed=2,
                           preview_every_s=0.0)
    try:
        while True:
            events.append(next(job))
    except StopIteration as stop:
        r2 = stop.value
    assert r2.picker is p and p.training["iterations_done"] == 40 and p.training["n_labels"] == len(more)
    assert r2.losses[-10:].mean() < r1.losses[:10].mean()
    names = [e.name for e in events if isinstance(e, Partial)]
    assert names.count("loss") == 20 and "heatmap" in names and "picks" in names
    assert sum(isinstance(e, Progress) for e in events) >= 20
    loss_ev = next(e for e in events if isinstance(e, Partial) and e.name == "loss")
    assert {"loss", "pu", "contrastive", "consistency", "iteration"} <= set(loss_ev.value)


def test_cancel_keeps_partial_model_usable(sims):
    train = sims[0]
    job = train_picker_job(train.tomogram, _labels(train, 0.3), diameter_angstrom=390.0, voxel_size=VOXEL,
                           iterations=1000, seed=0)
    model = None
    n_loss = 0
    for ev in job:
        if isinstance(ev, Partial) and ev.name == "model":
            model = ev.value
        if isinstance(ev, Partial) and ev.name == "loss":
            n_loss += 1
            if n_loss == 5:
                break
    job.close()
    assert model is not None and not model.net.training
    assert model.training["iterations_done"] == 5 and model.optimizer_state is not None
    heat = predict_heatmap(model, train.tomogram[:10])
    assert np.isfinite(heat.data).all() and heat.data.shape == (10, 48, 48)


def test_tiled_inference_equals_untiled():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(14, 100, 108)).astype(np.float32)
    p = Picker.new(diameter_angstrom=100, voxel_size=10, net_config=NetConfig(width=8, feature_channels=8), seed=0)
    whole = predict_heatmap(p, vol, tile=(64, 512, 512)).data
    tiled = predict_heatmap(p, vol, tile=(4, 32, 48), halo=(4, 96, 96)).data
    assert whole.shape == (14, 50, 54)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    # a memory-mapped input gives the same result
    path = __import__("tempfile").mkdtemp() + "/vol.npy"
    np.save(path, vol)
    mm = np.load(path, mmap_mode="r")
    np.testing.assert_allclose(predict_heatmap(p, mm, tile=(4, 64, 64)).data, whole, atol=2e-5)


def test_bad_input_is_reported(sims):
    vol = sims[0].tomogram
    lab = sims[0].truth.coordinates_xyz[:5]
    kw = dict(diameter_angstrom=300.0, voxel_size=VOXEL, iterations=1)
    with pytest.raises(InputError, match="at least 3"):
        train_picker(vol, lab[:2], **kw)
    outside = lab.copy()
    outside[1, 0] = 500.0
    with pytest.raises(InputError, match=r"rlnCoordinate.*rows 1"):
        train_picker(vol, outside, **kw)
    with pytest.raises(InputError, match="diameter"):
        train_picker(vol, lab, diameter_angstrom=40 * VOXEL, voxel_size=VOXEL, iterations=1)
    bad = vol.copy()
    bad[7, 3, 3] = np.nan
    with pytest.raises(InputError, match=r"data: expected finite.*z-slice 7"):
        train_picker(bad, lab, **kw)
    with pytest.raises(InputError, match=r"random_crop_fraction: expected a fraction in \[0, 1\]"):
        train_picker(vol, lab, random_crop_fraction=1.5, **kw)
    assert np.isfinite(vol).all()  # input untouched


def test_calibrated_threshold_rule():
    assert calibrated_threshold([0.92, 0.97, 0.95]) == pytest.approx(0.71)  # midway between 0.5 and the weakest
    assert calibrated_threshold([0.4, 0.99]) == 0.5  # a weak label: fall back to the Bayes cut
    assert calibrated_threshold([]) == 0.5 and calibrated_threshold([np.nan]) == 0.5
    assert calibrated_threshold([0.9], floor=0.3) == pytest.approx(0.6)
