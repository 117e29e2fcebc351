"""Tests of backend/fourier.py against known physics and geometry (CTF: test_ctf.py, wedge: test_wedge.py)."""

import math

import numpy as np
import pytest
import torch

from napari_cryoalign.backend import fourier as F


# ------------------------------------------------------------------ FSC
def test_fsc_identical_and_independent():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 32, 32, generator=g)
    b = torch.randn(32, 32, 32, generator=g)
    r = F.fsc(a, a)
    assert r.n_shells == 17 and r.frequency[-1] == pytest.approx(0.5)
    assert np.allclose(r.fsc, 1.0, atol=1e-9)
    r2 = F.fsc(a, b)
    assert np.abs(r2.fsc[5:]).max() < 0.1  # shells with >= ~300 samples
    assert abs(r2.fsc[3:].mean()) < 0.03
    assert F.resolution_at(r, 0.143, voxel_size_angstrom=5.0) == pytest.approx(10.0)
    # a mask is applied to both maps: signal inside, independent noise outside -> high FSC
    m = F.sphere_mask((32, 32, 32), 8.0, soft_edge=3.0)
    inside = a * F.sphere_mask((32, 32, 32), 6.0)
    outside = 3 * b * (1 - F.sphere_mask((32, 32, 32), 11.5))
    rm = F.fsc(inside + outside, inside - outside, mask=m)
    assert rm.fsc[1:].min() > 0.999 and F.fsc(inside + outside, inside - outside).fsc[3:].max() < 0.5


def test_resolution_at_known_lowpass():
    g = torch.Generator().manual_seed(1)
    vox = 4.0
    signal = torch.randn(64, 64, 64, generator=g)
    signal = F.lowpass(signal, 16.0, voxel_size_angstrom=vox, soft_edge=0)  # hard cut at 1/16 Å^-1
    n1 = 0.05 * torch.randn(64, 64, 64, generator=g)
    n2 = 0.05 * torch.randn(64, 64, 64, generator=g)
    r = F.fsc(signal + n1, signal + n2)
    res = F.resolution_at(r, 0.143, voxel_size_angstrom=vox)
    assert res == pytest.approx(16.0, rel=0.08)
    res05 = F.resolution_at(r, 0.5, voxel_size_angstrom=vox)
    assert res05 == pytest.approx(16.0, rel=0.08) and res05 >= res - 1e-9


def test_lowpass_bandpass_sphere_radial():
    vox = 5.0
    x = np.random.default_rng(0).standard_normal((32, 32, 32)).astype(np.float32)
    y = F.lowpass(x, 20.0, voxel_size_angstrom=vox)
    assert isinstance(y, np.ndarray) and y.shape == x.shape
    p = np.abs(np.fft.fftn(y)) ** 2
    k = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(32)] * 3, indexing="ij")))
    assert p[k > 0.25 + 2 / 32].max() < 1e-8 * p.max() + 1e-6
    assert np.allclose(p[k < 0.25 - 2 / 32], (np.abs(np.fft.fftn(x)) ** 2)[k < 0.25 - 2 / 32], rtol=1e-3)
    bp = F.bandpass(x, low_resolution_angstrom=80.0, high_resolution_angstrom=20.0, voxel_size_angstrom=vox)
    assert abs(float(bp.mean())) < 1e-5  # DC removed
    m = F.sphere_mask((21, 21, 21), 5.0)
    assert m[10, 10, 10] == 1 and m[10, 10, 15] == 1 and m[10, 10, 16] == 0
    assert float(m.sum()) == pytest.approx(4 / 3 * math.pi * 125, rel=0.05)
    soft = F.sphere_mask((21, 21, 21), 5.0, soft_edge=3.0)
    assert 0 < float(soft[10, 10, 17]) < 1
    radii, vals = F.radial_average(np.asarray(F.sphere_mask((21, 21), 5.0)))
    assert vals[0] == 1 and vals[4] == 1 and 0 < vals[5] < 1 and vals[6] == 0


def test_pad_crop_resample():
    x = np.zeros((10, 10, 10), np.float32)
    x[5, 5, 5] = 1
    y = F.pad_or_crop(x, (16, 16, 16))
    assert y[8, 8, 8] == 1 and y.sum() == 1
    z = F.pad_or_crop(y, (7, 7, 7))
    assert z[3, 3, 3] == 1
    smooth = F.lowpass(np.random.default_rng(2).standard_normal((24, 24, 24)), 40.0, voxel_size_angstrom=5.0)
    up, v = F.resample_voxel_size(smooth, from_voxel_angstrom=5.0, to_voxel_angstrom=2.5)
    assert v == 2.5 and up.shape == (48, 48, 48)
    assert np.allclose(up[::2, ::2, ::2], smooth, atol=1e-4)
