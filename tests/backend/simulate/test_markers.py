"""Gold-marker tilt series and the polynomial deformation model (SparseAlign)."""

import json

import numpy as np
import pytest
import torch

from napari_cryoalign.backend import deformation as D
from napari_cryoalign.backend.jobs import JobCancelled, Progress, run_job
from napari_cryoalign.backend.simulate import markers as M
from napari_cryoalign.backend.simulate.imaging import interaction_constant
from napari_cryoalign.backend.tomography import project_points
from napari_cryoalign.errors import InputError


# ----------------------------------------------------------------------------------------
# the deformation model
# ----------------------------------------------------------------------------------------
def test_basis_is_listed_explicitly():
    m = D.PolynomialDeformation(degree=2, variables="xyz")
    assert m.term_names == ["1", "x", "y", "z", "x^2", "xy", "xz", "y^2", "yz", "z^2"]
    assert m.coefficients.shape == (3, 10, 1)
    assert D.PolynomialDeformation(degree=2, variables="xy").term_names == ["1", "x", "y", "x^2", "xy", "y^2"]
    assert D.PolynomialDeformation(degree=2, variables="xz").n_parameters == 18


def test_evaluate_matches_the_formula_and_is_differentiable():
    L = 800.0
    m = D.PolynomialDeformation.from_terms(
        {"z": {"1": 200.0, "x^2": -100.0, "y^2": -100.0}, "x": {"xz": [3.0, 5.0]}},
        degree=2, time_degree=2, length_scale_nm=L)
    rng = np.random.default_rng(0)
    p = rng.uniform(-400, 400, (50, 3))
    t = rng.uniform(0, 1, 50)
    d = m.evaluate(p, t)
    X, Y, Z = p[:, 0] / L, p[:, 1] / L, p[:, 2] / L
    np.testing.assert_allclose(d[:, 2], (200 - 100 * X**2 - 100 * Y**2) * t, rtol=1e-12)
    np.testing.assert_allclose(d[:, 0], X * Z * (3 * t + 5 * t**2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d[:, 1], 0.0)
    # gradient with respect to the coefficients = basis * t^zeta
    coef = torch.tensor(m.coefficients, requires_grad=True)
    out = m.evaluate(torch.tensor(p), torch.tensor(t), coefficients=coef)
    out[:, 2].sum().backward()
    i = m.term_names.index("x^2")
    assert coef.grad[2, i, 0].item() == pytest.approx(float((X**2 * t).sum()))
    assert coef.grad[2, i, 1].item() == pytest.approx(float((X**2 * t**2).sum()))
    assert coef.grad[0].abs().sum() == 0


def test_json_round_trip_and_bad_input():
    m = D.PolynomialDeformation.from_terms({"z": {"1": 200.0, "x^2": -100.0}}, variables="xy", length_scale_nm=819.2)
    back = D.PolynomialDeformation.from_dict(json.loads(m.to_json()))
    assert back == m
    assert back != m.with_coefficients(m.coefficients * 2)
    assert back.term_names == m.term_names and back.length_scale_nm == 819.2
    with pytest.raises(InputError, match="monomial"):
        D.PolynomialDeformation.from_terms({"z": {"z^2": 1.0}}, variables="xy")
    with pytest.raises(InputError, match="coefficients"):
        D.PolynomialDeformation(degree=1, coefficients=np.zeros((3, 3, 1)))
    with pytest.raises(InputError, match="time_degree"):
        D.PolynomialDeformation(time_degree=0)


def test_time_from_acquisition_order():
    ang = np.arange(-6.0, 7.0, 2.0)  # -6 .. 6, 7 tilts
    np.testing.assert_allclose(D.times_from_order(D.acquisition_order(ang)), np.arange(7) / 6)
    ds = D.acquisition_order(ang, scheme="dose-symmetric", group_size=2)
    assert list(ang[ds]) == [0, 2, 4, -2, -4, 6, -6]
    t = D.times_from_order(ds)
    assert t[3] == 0.0 and t[0] == 1.0  # 0 deg first, -6 deg last
    bi = D.acquisition_order(ang, scheme="bidirectional")
    assert list(ang[bi]) == [0, 2, 4, 6, -2, -4, -6]
    with pytest.raises(InputError, match="permutation"):
        D.times_from_order([0, 0, 1])


# ----------------------------------------------------------------------------------------
# simulation
# ----------------------------------------------------------------------------------------
def _local_centroid(img, u, v, half=4):
    iu, iv = int(round(u)), int(round(v))
    patch = img[iv - half: iv + half + 1, iu - half: iu + half + 1].astype(np.float64)
    yy, xx = np.mgrid[-half: half + 1, -half: half + 1]
    w = patch.sum()
    return iu + (patch * xx).sum() / w, iv + (patch * yy).sum() / w


def test_deformation_moves_beads_as_the_json_says(tmp_path):
    """Re-evaluate the model from truth.json; beads found in the noiseless images agree to sub-pixel."""
    model = D.PolynomialDeformation.from_terms(
        {"z": {"1": 150.0, "x^2": -120.0, "y^2": -80.0}, "x": {"x": -20.0}}, variables="xy", length_scale_nm=1024.0)
    sim = M.simulate_marker_tiltseries(
        geometry="3d", n_markers=8, bead_diameter_nm=10.0, field_of_view_nm=(1024.0, 1024.0), thickness_nm=100.0,
        detector_shape=(128, 128), tilt_range_deg=(-60.0, 60.0), n_tilts=21, acquisition="dose-symmetric",
        deformation=model, profile="gaussian", profile_sigma_nm=12.0, region_fraction=(0.7, 0.7, 1.0),
        noise="none", seed=5)
    paths = M.write_marker_tiltseries(sim, tmp_path)
    truth = M.read_marker_truth(paths["truth"])
    model2 = truth["deformation_model"]
    pix = truth["geometry"]["pixel_size_nm"]
    ny, nx = truth["geometry"]["detector_shape_yx"]
    pred = project_points(truth["beads"]["positions_nm_xyz"], truth["tilt_angles_deg"], deformation=model2,
                          times=truth["times"]) / pix + np.array([nx // 2, ny // 2])
    undeformed = project_points(truth["beads"]["positions_nm_xyz"], truth["tilt_angles_deg"]) / pix + \
        np.array([nx // 2, ny // 2])
    np.testing.assert_allclose(pred, truth["beads"]["projected_px_uv"], atol=1e-5)
    errs, moved = [], []
    for i in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            others = np.delete(pred[i], j, axis=0)
            if np.min(np.linalg.norm(others - pred[i, j], axis=1)) < 14:  # skip overlapping beads
                continue
            u, v = _local_centroid(sim.ideal[i], *pred[i, j], half=7)
            errs.append(np.hypot(u - pred[i, j, 0], v - pred[i, j, 1]))
            moved.append(np.linalg.norm(pred[i, j] - undeformed[i, j]))
    assert len(errs) > 60
    assert np.max(errs) < 0.05  # sub-pixel agreement
    assert np.max(moved) > 5.0  # ... while the deformation moves beads by pixels


def test_ball_profile_is_centred():
    sim = M.simulate_marker_tiltseries(geometry="3d", n_markers=3, bead_diameter_nm=20.0,
                                       field_of_view_nm=(512.0, 512.0), thickness_nm=60.0, detector_shape=(128, 128),
                                       tilt_angles_deg=[-50.0, 0.0, 35.0], profile="ball", noise="none",
                                       region_fraction=(0.6, 0.6, 1.0), seed=2)
    for i in range(3):
        for j in range(3):
            u, v = _local_centroid(sim.ideal[i], *sim.projected_px[i, j], half=5)
            assert np.hypot(u - sim.projected_px[i, j, 0], v - sim.projected_px[i, j, 1]) < 0.05
    # peak of an isolated 5-pixel bead is close to 1 (projected thickness / diameter)
    assert 0.8 < sim.ideal.max() <= 1.5


def test_paper3d_preset():
    sim = M.simulate_marker_tiltseries(preset="paper3d", noise="none", seed=0)
    assert sim.tilt_series.shape == (140, 64, 64)
    assert sim.pixel_size_nm == pytest.approx(12.8)
    np.testing.assert_allclose(sim.tilt_angles_deg[[0, -1]], [-70.0, 70.0])
    np.testing.assert_allclose(sim.times, np.arange(140) / 139)
    assert sim.bead_positions_nm.shape == (20, 3)
    assert np.all(np.abs(sim.bead_positions_nm[:, 2]) <= 50.0)
    d = sim.deformation.displacement_at(np.array([[0.0, 0.0, 0.0], [409.6, 409.6, 0.0]]), 1.0)
    np.testing.assert_allclose(d[:, 2], [200.0, 150.0])  # P0 = 200 nm; -100 nm at (x/L)^2 = 1/4 each
    np.testing.assert_allclose(d[:, :2], 0.0)
    # the counts follow I0 exp(-C V_abs D Psi)
    c = interaction_constant(300.0)
    np.testing.assert_allclose(sim.tilt_series, 1024.0 * np.exp(-c * 5.39 * 15.0 * sim.ideal), rtol=1e-4)


def test_paper2d_preset():
    sim = M.simulate_marker_tiltseries(preset="paper2d", seed=0)
    assert sim.tilt_series.shape == (20, 1, 64)
    np.testing.assert_allclose(sim.tilt_angles_deg, np.linspace(-70, 70, 20, endpoint=False))
    L = M.PAPER_L_NM
    assert np.all(np.abs(sim.bead_positions_nm[:, 0]) <= 0.4 * L)
    assert np.all(np.abs(sim.bead_positions_nm[:, 2]) <= 0.1 * L)
    np.testing.assert_allclose(sim.bead_positions_nm[:, 1], 0.0)
    # D_z(x, z, t) = (-x - z - x^2 - z^2 - xz) t in units of L (paper eq. 23)
    p = np.array([[0.2 * L, 0.0, 0.05 * L]])
    X, Z = 0.2, 0.05
    assert sim.deformation.displacement_at(p, 0.5)[0, 2] == pytest.approx(-(X + Z + X * X + Z * Z + X * Z) * 0.5 * L)


def test_same_seed_same_data_and_noise_statistics():
    kw = dict(geometry="3d", n_markers=4, detector_shape=(48, 48), n_tilts=9, tilt_range_deg=(-40, 40),
              noise="poisson", electrons_per_pixel=400.0)
    a = M.simulate_marker_tiltseries(seed=3, **kw)
    b = M.simulate_marker_tiltseries(seed=3, **kw)
    c = M.simulate_marker_tiltseries(seed=4, **kw)
    np.testing.assert_array_equal(a.tilt_series, b.tilt_series)
    np.testing.assert_array_equal(a.bead_positions_nm, b.bead_positions_nm)
    assert not np.array_equal(a.tilt_series, c.tilt_series)
    # Poisson: background pixels have variance = mean = I0
    bg = a.tilt_series[a.ideal < 1e-4]
    assert bg.mean() == pytest.approx(400.0, rel=0.01)
    assert bg.var() == pytest.approx(400.0, rel=0.06)
    g = M.simulate_marker_tiltseries(seed=3, **{**kw, "noise": "gaussian", "noise_variance": 25.0})
    bg = g.tilt_series[g.ideal < 1e-4]
    assert bg.std() == pytest.approx(5.0, rel=0.05)


def test_sample_marker_tiltseries_is_fast_and_realistic():
    import time

    t0 = time.perf_counter()
    s = M.sample_marker_tiltseries(seed=0)
    assert time.perf_counter() - t0 < 3.0
    assert s.tilt_series.shape == (41, 256, 256)
    # beads are dark in the recorded images (absorption + CTF), at their projected positions
    i = 20
    u, v = np.round(s.projected_px[i, 0]).astype(int)
    assert s.tilt_series[i, v - 1: v + 2, u - 1: u + 2].min() < 0.7 * s.tilt_series[i].mean()


def test_bad_preset_and_detector():
    with pytest.raises(InputError, match="preset"):
        M.simulate_marker_tiltseries(preset="paper4d")
    with pytest.raises(InputError, match="detector"):
        M.simulate_marker_tiltseries(geometry="2d", detector_shape=(4, 64))


def test_the_job_reports_each_tilt_and_returns_what_the_plain_function_returns():
    kw = dict(geometry="3d", n_markers=3, detector_shape=(32, 32), n_tilts=5, tilt_range_deg=(-40, 40), seed=1)
    steps = []
    res = run_job(M.simulate_marker_tiltseries_job(**kw), progress=False, on_progress=steps.append)
    assert [(p.step, p.total) for p in steps] == [(i, 6) for i in range(7)]
    plain = M.simulate_marker_tiltseries(**kw)
    np.testing.assert_array_equal(res.tilt_series, plain.tilt_series)
    np.testing.assert_array_equal(res.ideal, plain.ideal)
    assert res.params == plain.params
    sample = run_job(M.sample_marker_tiltseries_job(seed=2), progress=False)
    np.testing.assert_array_equal(sample.tilt_series, M.sample_marker_tiltseries(seed=2).tilt_series)


def test_closing_the_job_after_its_first_progress_stops_it(monkeypatch):
    rendered = []
    real = M.render_markers
    monkeypatch.setattr(M, "render_markers", lambda *a, **k: rendered.append(1) or real(*a, **k))
    for job in (M.simulate_marker_tiltseries_job(preset="paper3d", seed=0), M.sample_marker_tiltseries_job(seed=0)):
        first = next(job)
        assert isinstance(first, Progress) and first.step == 0
        job.close()
        with pytest.raises(StopIteration):
            next(job)
    assert rendered == []  # no tilt image rendered after the first progress
    with pytest.raises(JobCancelled):
        run_job(M.simulate_marker_tiltseries_job(preset="paper3d", seed=0), progress=False, should_stop=lambda: True)
    assert rendered == []
