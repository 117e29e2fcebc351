"""Tests of backend/ctf.py against known physics: wavelength, sign at DC, first zero, envelope, astigmatism, 3D."""

import math

import numpy as np
import pytest
import torch

from napari_cryoalign.backend import ctf as C


def test_wavelength_300kv():
    assert C.electron_wavelength_angstrom(300) == pytest.approx(0.019687, rel=1e-4)
    assert C.electron_wavelength_angstrom(200) == pytest.approx(0.025079, rel=1e-4)


def test_ctf_dc_value_and_sign():
    c = C.ctf_2d((64, 64), pixel_size_angstrom=2.0, defocus_um=2.0, amplitude_contrast=0.07)
    assert c.shape == (64, 33)
    assert float(c[0, 0]) == pytest.approx(-0.07, abs=1e-6)  # -A at DC
    # first lobe negative in underfocus
    assert float(c[0, 3]) < -0.07
    full = C.ctf_2d((64, 64), pixel_size_angstrom=2.0, defocus_um=2.0, rfft=False)
    assert full.shape == (64, 64)
    assert torch.allclose(full[:, :33], c, atol=1e-6)
    assert torch.allclose(full[0, 1:], full[0, 1:].flip(0), atol=1e-6)  # even in kx


def test_ctf_first_zero_at_theory():
    n, px, dz, a = 512, 1.0, 1.5, 0.1
    lam = C.electron_wavelength_angstrom(300)
    k0 = math.sqrt((math.pi - math.asin(a)) / (math.pi * lam * dz * 1e4))  # 1/Å, Cs ignored
    c = C.ctf_2d((n, n), pixel_size_angstrom=px, defocus_um=dz, cs_mm=0.0, amplitude_contrast=a, rfft=True)
    line = c[0].double().numpy()  # along kx
    k = np.arange(line.size) / (n * px)
    i = np.nonzero(np.sign(line[1:]) != np.sign(line[:-1]))[0][0]
    k_zero = k[i] - line[i] * (k[i + 1] - k[i]) / (line[i + 1] - line[i])
    assert k_zero == pytest.approx(k0, rel=2e-3)
    # Cs pushes the zero outward only slightly at this defocus
    c2 = C.ctf_2d((n, n), pixel_size_angstrom=px, defocus_um=dz, cs_mm=2.7, amplitude_contrast=a)[0].numpy()
    j = np.nonzero(np.sign(c2[1:]) != np.sign(c2[:-1]))[0][0]
    assert abs(j - i) <= 2


def test_ctf_bfactor_envelope_and_batched():
    c0 = C.ctf_2d((64, 64), pixel_size_angstrom=4.0, defocus_um=3.0)
    cb = C.ctf_2d((64, 64), pixel_size_angstrom=4.0, defocus_um=3.0, bfactor=100.0)
    ky = torch.fft.fftfreq(64, d=4.0).view(-1, 1)
    kx = torch.fft.rfftfreq(64, d=4.0).view(1, -1)
    env = torch.exp(-100.0 * (kx**2 + ky**2) / 4)
    assert torch.allclose(cb, c0 * env, atol=1e-5)
    batch = C.ctf_2d_batched((64, 64), pixel_size_angstrom=4.0, defocus_um=torch.tensor([1.0, 3.0]))
    assert batch.shape == (2, 64, 33)
    assert torch.allclose(batch[1], c0, atol=1e-6)
    assert not torch.allclose(batch[0], c0, atol=1e-2)


def test_ctf_astigmatism_direction():
    # defocus U along x (angle 0): stronger defocus along kx -> zeros come earlier along kx
    c = C.ctf_2d_batched((256, 256), pixel_size_angstrom=2.0, defocus_um=[3.0], defocus_v_um=[1.0],
                         astigmatism_angle_deg=[0.0], rfft=False)[0]
    cu = C.ctf_2d((256, 256), pixel_size_angstrom=2.0, defocus_um=3.0, rfft=False)
    cv = C.ctf_2d((256, 256), pixel_size_angstrom=2.0, defocus_um=1.0, rfft=False)
    assert torch.allclose(c[0, :], cu[0, :], atol=1e-5)
    assert torch.allclose(c[:, 0], cv[:, 0], atol=1e-5)


def test_ctf_3d_is_radial_2d():
    c3 = C.ctf_3d((32, 32, 32), voxel_size_angstrom=10.0, defocus_um=4.0, rfft=True)
    c2 = C.ctf_2d((32, 32), pixel_size_angstrom=10.0, defocus_um=4.0, rfft=True)
    assert c3.shape == (32, 32, 17)
    assert torch.allclose(c3[0], c2, atol=1e-6)
    assert torch.allclose(c3[:, 0, 0], c2[:, 0], atol=1e-6)


def test_ctf_3d_batched():
    cb = C.ctf_3d((16, 16, 16), voxel_size_angstrom=10.0, defocus_um=[2.0, 5.0])
    assert cb.shape == (2, 16, 16, 9)
    assert torch.allclose(cb[1], C.ctf_3d((16, 16, 16), voxel_size_angstrom=10.0, defocus_um=5.0))
