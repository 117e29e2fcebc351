"""Tests of backend/fourier.py against known physics and geometry."""

import math

import numpy as np
import pytest
import torch

from napari_cryoalign.backend import fourier as F


# ------------------------------------------------------------------ CTF
def test_wavelength_300kv():
    assert F.electron_wavelength_angstrom(300) == pytest.approx(0.019687, rel=1e-4)
    assert F.electron_wavelength_angstrom(200) == pytest.approx(0.025079, rel=1e-4)


def test_ctf_dc_value_and_sign():
    c = F.ctf_2d((64, 64), pixel_size_angstrom=2.0, defocus_um=2.0, amplitude_contrast=0.07)
    assert c.shape == (64, 33)
    assert float(c[0, 0]) == pytest.approx(-0.07, abs=1e-6)  # -A at DC
    # first lobe negative in underfocus
    assert float(c[0, 3]) < -0.07
    full = F.ctf_2d((64, 64), pixel_size_angstrom=2.0, defocus_um=2.0, rfft=False)
    assert full.shape == (64, 64)
    assert torch.allclose(full[:, :33], c, atol=1e-6)
    assert torch.allclose(full[0, 1:], full[0, 1:].flip(0), atol=1e-6)  # even in kx


def test_ctf_first_zero_at_theory():
    n, px, dz, a = 512, 1.0, 1.5, 0.1
    lam = F.electron_wavelength_angstrom(300)
    k0 = math.sqrt((math.pi - math.asin(a)) / (math.pi * lam * dz * 1e4))  # 1/Å, Cs ignored
    c = F.ctf_2d((n, n), pixel_size_angstrom=px, defocus_um=dz, cs_mm=0.0, amplitude_contrast=a, rfft=True)
    line = c[0].double().numpy()  # along kx
    k = np.arange(line.size) / (n * px)
    i = np.nonzero(np.sign(line[1:]) != np.sign(line[:-1]))[0][0]
    k_zero = k[i] - line[i] * (k[i + 1] - k[i]) / (line[i + 1] - line[i])
    assert k_zero == pytest.approx(k0, rel=2e-3)
    # Cs pushes the zero outward only slightly at this defocus
    c2 = F.ctf_2d((n, n), pixel_size_angstrom=px, defocus_um=dz, cs_mm=2.7, amplitude_contrast=a)[0].numpy()
    j = np.nonzero(np.sign(c2[1:]) != np.sign(c2[:-1]))[0][0]
    assert abs(j - i) <= 2


def test_ctf_bfactor_envelope_and_batched():
    c0 = F.ctf_2d((64, 64), pixel_size_angstrom=4.0, defocus_um=3.0)
    cb = F.ctf_2d((64, 64), pixel_size_angstrom=4.0, defocus_um=3.0, bfactor=100.0)
    ky = torch.fft.fftfreq(64, d=4.0).view(-1, 1)
    kx = torch.fft.rfftfreq(64, d=4.0).view(1, -1)
    env = torch.exp(-100.0 * (kx**2 + ky**2) / 4)
    assert torch.allclose(cb, c0 * env, atol=1e-5)
    batch = F.ctf_2d_batched((64, 64), pixel_size_angstrom=4.0, defocus_um=torch.tensor([1.0, 3.0]))
    assert batch.shape == (2, 64, 33)
    assert torch.allclose(batch[1], c0, atol=1e-6)
    assert not torch.allclose(batch[0], c0, atol=1e-2)


def test_ctf_astigmatism_direction():
    # defocus U along x (angle 0): stronger defocus along kx -> zeros come earlier along kx
    c = F.ctf_2d_batched((256, 256), pixel_size_angstrom=2.0, defocus_um=[3.0], defocus_v_um=[1.0],
                         astigmatism_angle_deg=[0.0], rfft=False)[0]
    cu = F.ctf_2d((256, 256), pixel_size_angstrom=2.0, defocus_um=3.0, rfft=False)
    cv = F.ctf_2d((256, 256), pixel_size_angstrom=2.0, defocus_um=1.0, rfft=False)
    assert torch.allclose(c[0, :], cu[0, :], atol=1e-5)
    assert torch.allclose(c[:, 0], cv[:, 0], atol=1e-5)


def test_ctf_3d_is_radial_2d():
    c3 = F.ctf_3d((32, 32, 32), voxel_size_angstrom=10.0, defocus_um=4.0, rfft=True)
    c2 = F.ctf_2d((32, 32), pixel_size_angstrom=10.0, defocus_um=4.0, rfft=True)
    assert c3.shape == (32, 32, 17)
    assert torch.allclose(c3[0], c2, atol=1e-6)
    assert torch.allclose(c3[:, 0, 0], c2[:, 0], atol=1e-6)


# ------------------------------------------------------------------ missing wedge
def test_missing_wedge_geometry():
    m = F.missing_wedge_mask((32, 32, 32), tilt_min_deg=-60, tilt_max_deg=60)
    assert m.shape == (32, 32, 32)
    # on the kx axis (tilt 0 plane) measured; on the kz axis (beam direction) missing
    assert m[0, 5, 4] == 1 and m[4, 5, 0] == 0 and m[0, 0, 0] == 1
    # (kx, kz) = (1, 1): 45 deg -> measured; (1, 2): 63.4 deg -> missing; independent of ky
    assert m[3, 7, 3] == 1 and m[6, 0, 3] == 0 and m[-6, 11, -3] == 0 and m[-3, 2, 3] == 1
    # ky axis is always measured
    assert m[0, 9, 0] == 1
    # fraction missing of a continuous +-60 wedge: 60/180 of the (kx,kz) directions
    assert 0.28 < 1 - float(m.mean()) < 0.36
    # rfft layout agrees with the full mask
    mr = F.missing_wedge_mask((32, 32, 32), rfft=True)
    assert torch.equal(mr, m[..., :17])
    # asymmetric range: +30..+60 keeps (1,1) at 45 deg but not (1,-1) at -45 deg
    ma = F.missing_wedge_mask((32, 32, 32), tilt_min_deg=30, tilt_max_deg=60)
    assert ma[3, 0, 3] == 1 and ma[-3, 0, 3] == 0 and ma[3, 0, -3] == 0
    full = F.missing_wedge_mask((16, 16, 16), tilt_min_deg=-90, tilt_max_deg=90)
    assert bool((full == 1).all())


def test_missing_wedge_matches_tilt_projection_planes():
    # the plane measured at tilt +40 deg: rotate the (kx, ky) plane about y by +40 deg
    th = math.radians(40)
    kdir = np.array([math.cos(th), 0, math.sin(th)])  # (kx, ky, kz)
    m = F.missing_wedge_mask((64, 64, 64), tilt_min_deg=35, tilt_max_deg=45)
    for s in (5, 10, 20):
        kx, kz = np.round(kdir[0] * s).astype(int), np.round(kdir[2] * s).astype(int)
        assert m[kz % 64, 3, kx % 64] == 1
        assert m[kx % 64, 3, kz % 64] == 0  # 50 deg: outside


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


def test_ctf_3d_batched():
    cb = F.ctf_3d((16, 16, 16), voxel_size_angstrom=10.0, defocus_um=[2.0, 5.0])
    assert cb.shape == (2, 16, 16, 9)
    assert torch.allclose(cb[1], F.ctf_3d((16, 16, 16), voxel_size_angstrom=10.0, defocus_um=5.0))


def test_missing_wedge_mask_accepts_numpy_scalars():
    import numpy as np

    from napari_cryoalign.backend.fourier import missing_wedge_mask

    a = missing_wedge_mask((8, 8, 8), tilt_min_deg=np.float64(-60), tilt_max_deg=np.float32(60))
    b = missing_wedge_mask((8, 8, 8), tilt_min_deg=-60.0, tilt_max_deg=60.0)
    assert bool((a == b).all())
