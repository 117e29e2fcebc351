"""Tilt geometry: the projection convention, adjointness, WBP accuracy and the missing wedge."""

import numpy as np
import pytest
import torch

from napari_cryoalign.backend import tomography as T
from napari_cryoalign.backend.deformation import PolynomialDeformation
from napari_cryoalign.backend.wedge import missing_wedge_mask
from napari_cryoalign.errors import InputError


def _blobs(shape, seed=0, n=30):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) - s // 2 for s in shape], indexing="ij")
    out = np.zeros(shape, np.float32)
    for _ in range(n):
        c = rng.uniform(-1, 1, 3) * np.array(shape) * 0.3
        s = rng.uniform(1.5, 4.0)
        out += np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * s * s))
    return out


@pytest.mark.parametrize("x, z", [(10, 6), (-7, 9), (0, -11)])
def test_projection_convention_point(x, z):
    """A point at (x, y, z) from the centre lands at u = x cos + z sin, v = y (pinned convention)."""
    vol = np.zeros((32, 9, 64), np.float32)
    y = 2
    vol[16 + z, 4 + y, 32 + x] = 1.0
    ang = np.array([-60.0, -30.0, 0.0, 20.0, 45.0, 70.0])
    p = T.project_tilt_series(vol, ang)
    assert p.shape == (6, 9, 64)
    for i, a in enumerate(ang):
        img = p[i]
        assert img.sum() == pytest.approx(1.0, abs=1e-5)  # mass conserved
        rows = img.sum(1)
        assert int(np.argmax(rows)) == 4 + y  # v = y
        u = (img.sum(0) * np.arange(64)).sum() - 32
        expect = x * np.cos(np.radians(a)) + z * np.sin(np.radians(a))
        assert u == pytest.approx(expect, abs=1e-4)
    # project_points uses the same convention
    uv = T.project_points(np.array([[x, y, z]], float), ang)
    np.testing.assert_allclose(uv[:, 0, 0], x * np.cos(np.radians(ang)) + z * np.sin(np.radians(ang)), atol=1e-12)
    np.testing.assert_allclose(uv[:, 0, 1], y)


def test_positive_tilt_moves_top_of_slab_towards_plus_u():
    """Sign pin: a point above the centre (z > 0) moves to +u at positive tilt, -u at negative tilt."""
    uv = T.project_points(np.array([[0.0, 0.0, 10.0]]), [30.0, -30.0])
    assert uv[0, 0, 0] == pytest.approx(5.0)
    assert uv[1, 0, 0] == pytest.approx(-5.0)


def test_projection_and_back_projection_are_adjoint():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((20, 6, 40)).astype(np.float64)
    q = rng.standard_normal((7, 6, 44)).astype(np.float64)
    ang = np.array([-65.0, -40.0, -3.0, 0.0, 12.0, 50.0, 80.0])
    lhs = (T.project_tilt_series(torch.from_numpy(v), ang, detector_width=44).numpy() * q).sum()
    rhs = (v * T.back_project(torch.from_numpy(q), ang, thickness=20, width=40).numpy()).sum()
    assert lhs == pytest.approx(rhs, rel=1e-9)


def test_slab_projection_matches_analytic_gaussian():
    """A thin non-cubic slab (z=16, x=96) is projected like the continuous line integral."""
    shape = (16, 4, 96)
    zz, yy, xx = np.meshgrid(*[np.arange(s) - s // 2 for s in shape], indexing="ij")
    s, x0, z0 = 1.5, 9.3, 1.2
    vol = np.exp(-((xx - x0) ** 2 + (zz - z0) ** 2) / (2 * s * s)).astype(np.float32)
    ang = np.array([-70.0, -45.0, 0.0, 30.0, 45.0, 60.0])
    p = T.project_tilt_series(vol, ang, max_nonzeros=3000, y_chunk=3)  # forces tilt and y chunking
    u = np.arange(96) - 48
    for i, a in enumerate(ang):
        th = np.radians(a)
        u0 = x0 * np.cos(th) + z0 * np.sin(th)
        expect = np.sqrt(2 * np.pi) * s * np.exp(-((u - u0) ** 2) / (2 * s * s))
        # the voxel footprint (box of |cos|+|sin| px) spread by linear interpolation blurs it slightly
        w = abs(np.cos(th)) + abs(np.sin(th))
        se = np.sqrt(s * s + w * w / 12.0 + 1.0 / 6.0)
        expect_blur = np.sqrt(2 * np.pi) * s * s / se * np.exp(-((u - u0) ** 2) / (2 * se * se))
        got = p[i, 1]
        assert got.sum() == pytest.approx(vol[:, 1].sum(), rel=1e-5)  # every voxel lands on the detector
        assert got.sum() == pytest.approx(expect.sum(), rel=1e-3)
        assert np.abs(got - expect).max() < 0.08 * expect.max()
        assert np.abs(got - expect_blur).max() < 0.025 * expect.max()


def test_wbp_full_range_recovers_the_volume():
    v = _blobs((48, 8, 48), seed=2)
    ang = np.arange(-89.5, 90.0, 1.0)
    rec = T.weighted_back_projection(T.project_tilt_series(v, ang, detector_width=72), ang, thickness=48, width=48)
    c = np.corrcoef(rec.ravel(), v.ravel())[0, 1]
    assert c > 0.99
    scale = (rec * v).sum() / (v * v).sum()
    assert scale == pytest.approx(1.0, abs=0.05)


def test_wbp_limited_range_matches_the_measured_region():
    v = _blobs((64, 12, 64), seed=3)
    ang = T.tilt_angles(-60, 60, 3)
    rec = T.weighted_back_projection(T.project_tilt_series(v, ang, detector_width=96), ang, thickness=64, width=64)
    m = missing_wedge_mask(v.shape, tilt_min_deg=-60.0, tilt_max_deg=60.0).numpy()
    v_measured = np.fft.ifftn(np.fft.fftn(v) * m).real
    assert np.corrcoef(rec.ravel(), v_measured.ravel())[0, 1] > 0.95
    # ... and clearly better than against the full volume (the wedge is really missing)
    assert np.corrcoef(rec.ravel(), v.ravel())[0, 1] < 0.9


def test_missing_wedge_in_the_reconstruction():
    rng = np.random.default_rng(4)
    v = rng.standard_normal((48, 8, 48)).astype(np.float32)
    ang = T.tilt_angles(-60, 60, 2)
    rec = T.weighted_back_projection(T.project_tilt_series(v, ang), ang, thickness=48, width=48)
    power = np.abs(np.fft.fftn(rec)) ** 2
    kz, ky, kx = np.meshgrid(*[np.fft.fftfreq(n) for n in rec.shape], indexing="ij")
    ang_k = np.degrees(np.arctan2(np.abs(kz), np.abs(kx)))
    r = np.sqrt(kx**2 + kz**2)
    ring = (r > 0.08) & (r < 0.4)
    inside = ring & (ang_k > 70)  # well inside the missing wedge (beyond 60 deg)
    outside = ring & (ang_k < 50)
    assert power[inside].mean() < 0.02 * power[outside].mean()


def test_uneven_angular_weights():
    w = T.angular_weights([-60.0, 0.0, 10.0, 20.0])
    np.testing.assert_allclose(np.degrees(w), [60.0, 35.0, 10.0, 10.0])
    np.testing.assert_allclose(np.degrees(T.angular_weights(T.tilt_angles(-60, 60, 3))), 3.0)


def test_wbp_filters():
    ramp = T.wbp_filter(64, filter="ramp").numpy()
    assert 0 < ramp[0] < 0.01  # Ram-Lak with its small positive DC
    f = np.fft.rfftfreq(T._fast_size(128))
    # the ramp is |f| up to a small discretisation offset
    assert np.abs(ramp[5:-5] - f[5:-5]).max() < 0.01
    np.testing.assert_allclose(T.wbp_filter(64, filter="none").numpy(), 1.0)
    cut = T.wbp_filter(64, filter="ramp", radial_cutoff=0.25).numpy()
    assert np.all(cut[f > 0.25] == 0) and np.all(cut[(f > 0.02) & (f < 0.25)] > 0)
    with pytest.raises(InputError, match="filter"):
        T.wbp_filter(64, filter="sirt")


def test_project_points_with_deformation():
    model = PolynomialDeformation.from_terms({"z": {"1": 100.0}}, length_scale_nm=1000.0)
    ang = np.array([-30.0, 0.0, 30.0])
    times = np.array([0.0, 0.5, 1.0])
    uv = T.project_points(np.array([[20.0, 5.0, 0.0]]), ang, deformation=model, times=times)
    expect_u = 20 * np.cos(np.radians(ang)) + 100.0 * times * np.sin(np.radians(ang))
    np.testing.assert_allclose(uv[:, 0, 0], expect_u, atol=1e-9)
    # differentiable through the coefficients
    coef = torch.tensor(model.coefficients, requires_grad=True)
    uv_t = T.project_points(torch.tensor([[20.0, 5.0, 0.0]], dtype=torch.float64), ang, deformation=model,
                            times=times, coefficients=coef)
    uv_t[:, 0, 0].sum().backward()
    assert coef.grad[2, 0, 0].item() == pytest.approx(float((times * np.sin(np.radians(ang))).sum()))


def test_bad_input_is_reported():
    with pytest.raises(InputError, match="tilt_angles_deg"):
        T.project_tilt_series(np.zeros((4, 4, 4)), [0.0, 90.0])
    with pytest.raises(InputError, match="one tilt angle per image"):
        T.weighted_back_projection(np.zeros((3, 4, 8)), [0.0, 1.0], thickness=4)
    with pytest.raises(InputError, match="volume"):
        T.project_tilt_series(np.zeros((4, 4)), [0.0])
    with pytest.raises(InputError, match="times"):
        T.project_points(np.zeros((1, 3)), [0.0], deformation=PolynomialDeformation())


def test_tensor_in_tensor_out():
    v = torch.rand(8, 4, 16)
    p = T.project_tilt_series(v, [0.0, 10.0])
    assert isinstance(p, torch.Tensor) and p.shape == (2, 4, 16)
    r = T.weighted_back_projection(p, [0.0, 10.0], thickness=8)
    assert isinstance(r, torch.Tensor) and r.shape == (8, 4, 16)
