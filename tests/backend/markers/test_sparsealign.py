"""SparseAlign backend: forward model = simulator, recovery on noise-free small cases, job protocol."""

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.deformation import PolynomialDeformation
from napari_cryoalign.backend.jobs import Partial, Progress
from napari_cryoalign.backend.markers import MarkerGeometry, forward_model, parse_levels, sparse_align, sparse_align_job
from napari_cryoalign.backend.markers.forward import make_level, projected_positions_px
from napari_cryoalign.backend.markers.metrics import deformation_errors, match_markers
from napari_cryoalign.backend.simulate.markers import simulate_marker_tiltseries
from napari_cryoalign.backend.tomography import project_points
from napari_cryoalign.errors import InputError


def _small3d(n_markers=4, seed=3, terms=None, degree=1):
    model = PolynomialDeformation.from_terms(terms or {"z": {"1": 60.0, "x": -40.0, "y": 25.0}}, degree=degree,
                                             variables="xy", length_scale_nm=409.6)
    return simulate_marker_tiltseries(geometry="3d", n_markers=n_markers, bead_diameter_nm=15.0,
                                      field_of_view_nm=(409.6, 409.6), thickness_nm=80.0, detector_shape=(32, 32),
                                      tilt_range_deg=(-60, 60), n_tilts=21, endpoint=True, deformation=model,
                                      profile="gaussian", profile_sigma_nm=15.0, noise="none", seed=seed)


def _small2d(seed=0):
    model = PolynomialDeformation.from_terms({"z": {"1": 40.0, "x": -60.0, "x^2": -80.0}}, degree=2, variables="xz",
                                             length_scale_nm=819.2)
    return simulate_marker_tiltseries(preset="paper2d", n_markers=5, deformation=model, noise="none", seed=seed)


@pytest.mark.parametrize("preset", ["paper3d", "paper2d"])
def test_forward_model_matches_simulator(preset):
    ts = simulate_marker_tiltseries(preset=preset, noise="none", seed=4)
    g = MarkerGeometry.from_simulation(ts)
    img = forward_model(ts.bead_positions_nm, np.ones(len(ts.bead_positions_nm)), g, ts.deformation).numpy()
    assert img.shape == ts.ideal.shape
    np.testing.assert_allclose(img, ts.ideal, atol=2e-5)  # simulator truncates Gaussians at 5 sigma (6e-6)
    q = projected_positions_px(torch.as_tensor(ts.bead_positions_nm), g, ts.deformation).numpy()
    np.testing.assert_allclose(q[..., 0], ts.projected_px[..., 0], atol=1e-6)
    # same numbers as tomography.project_points (the simulator's projector), also with a coefficient tensor
    coef = torch.tensor(np.array(ts.deformation.coefficients) * 0.5, requires_grad=True)
    ref = project_points(torch.as_tensor(ts.bead_positions_nm), ts.tilt_angles_deg, deformation=ts.deformation,
                         times=ts.times, coefficients=coef)
    mine = projected_positions_px(torch.as_tensor(ts.bead_positions_nm), g, ts.deformation, coefficients=coef)
    np.testing.assert_allclose(mine[..., 0].detach().numpy(),
                               ref[..., 0].detach().numpy() / ts.pixel_size_nm + g.centre_px[0], atol=1e-9)
    mine.sum().backward()
    assert coef.grad is not None and torch.isfinite(coef.grad).all()


def test_coarse_level_model_matches_blurred_data():
    ts = _small3d()
    g = MarkerGeometry.from_simulation(ts)
    data = torch.as_tensor(ts.ideal, dtype=torch.float64)
    lev = make_level(data, g, 2)
    assert lev.data.shape == (21, 16, 16) and float(lev.xs[0]) == 0.0  # centre pixel 16 is kept
    q = projected_positions_px(torch.as_tensor(ts.bead_positions_nm), g, ts.deformation)
    model = lev.render(q, torch.ones(q.shape[1], dtype=torch.float64))
    err = float((model - lev.data).abs().max())
    assert err < 0.02 * float(lev.data.max())


def test_noise_free_3d_recovers_markers_and_deformation():
    ts = _small3d()
    g = MarkerGeometry.from_simulation(ts)
    res = sparse_align(ts.ideal, g, degree=1, z_range_nm=40.0, levels="1")
    m = match_markers(res.positions_nm, ts.bead_positions_nm, pixel_size_nm=ts.pixel_size_nm, max_distance_nm=15)
    assert m.n_missed == 0 and m.n_spurious == 0
    assert m.max_error_px < 0.05
    np.testing.assert_allclose(res.weights, 1.0, atol=0.02)
    np.testing.assert_allclose(res.deformation.coefficients, ts.deformation.coefficients, atol=1.0)  # nm
    e = deformation_errors(ts.deformation, res.deformation, ts.bead_positions_nm, extent_nm=(409.6, 409.6, 80))
    assert e["E_markers"] < 1.0 and e["E_global"] < 2.0
    assert float(np.abs(res.residual()).max()) < 0.02


def test_noise_free_2d_line_detector():
    ts = _small2d()
    g = MarkerGeometry.from_simulation(ts)
    assert g.line_detector
    res = sparse_align(ts.ideal, g, z_range_nm=90.0)
    m = match_markers(res.positions_nm, ts.bead_positions_nm, pixel_size_nm=ts.pixel_size_nm, max_distance_nm=30)
    assert m.n_missed == 0 and m.n_spurious == 0 and m.max_error_px < 0.1
    assert np.all(res.positions_nm[:, 1] == 0.0)
    e = deformation_errors(ts.deformation, res.deformation, ts.bead_positions_nm, extent_nm=(655.0, 0.0, 160.0))
    assert e["E_markers"] < 1.0


def test_job_yields_partials_and_can_be_cancelled():
    ts = _small3d()
    g = MarkerGeometry.from_simulation(ts)
    job = sparse_align_job(ts.ideal, g, degree=1, z_range_nm=40.0, levels="1")
    names, counts = [], []
    for ev in job:
        if isinstance(ev, Partial):
            names.append(ev.name)
            if ev.name == "markers":
                counts.append(len(ev.value.weights))
                assert ev.value.projected_px.shape == (21, len(ev.value.weights), 2)
            if ev.name == "deformation":
                assert isinstance(ev.value, PolynomialDeformation)
        else:
            assert isinstance(ev, Progress)
        if len(counts) == 2:
            job.close()  # the consumer stops: cancelled at a yield
            break
    assert {"markers", "loss", "deformation"} <= set(names)
    assert counts == [1, 2]  # markers appear one by one


def test_parse_levels():
    assert parse_levels("1/16,1/8,1/4,1/2") == (16, 8, 4, 2)
    assert parse_levels("auto", (512, 512)) == (16, 8, 4, 2, 1)
    assert parse_levels("auto", (64, 64)) == (2, 1)
    assert parse_levels([4, 2, 1]) == (4, 2, 1)
    for bad in ("1/2,1/4", "1/3.5", "abc", "0"):
        with pytest.raises(InputError):
            parse_levels(bad)


def test_bad_data_shape():
    ts = _small3d()
    g = MarkerGeometry.from_simulation(ts)
    with pytest.raises(InputError, match="stack of shape"):
        sparse_align(ts.ideal[:-1], g)
