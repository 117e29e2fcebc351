"""Simulated particle images follow RELION's projection, shift and CTF conventions."""

import json
import time

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.ctf import ctf_2d_batched
from napari_cryoalign.backend.geometry import euler_to_matrix
from napari_cryoalign.backend.simulate.particles import (
    project,
    sample_particles,
    simulate_particles,
    write_particle_set,
)
from napari_cryoalign.errors import InputError


def _blob(shape, center_xyz, sigma=1.2):
    z, y, x = np.indices(shape).astype(float)
    cx, cy, cz = center_xyz
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2)).astype(np.float32)


def _com2d(img):
    img = np.clip(img, 0, None)
    y, x = np.indices(img.shape)
    return np.array([(x * img).sum(), (y * img).sum()]) / img.sum()


def test_point_feature_lands_at_A_r():
    """Reference feature at r (from the centre) is imaged at (A r)_xy + centre - origin."""
    n = 32
    c = n // 2
    r = np.array([6.0, -3.0, 4.0])
    ref = _blob((n, n, n), r + c)
    # the CONVENTIONS.md worked example: rot=30 moves (8,0,0) to (6.93,-4.00)
    eul = np.array([[30.0, 0.0, 0.0], [10.0, 70.0, -40.0], [-120.0, 35.0, 150.0], [75.0, 140.0, 20.0]])
    A = euler_to_matrix(eul)
    shifts = np.array([[0.0, 0.0], [2.5, -1.5], [-3.0, 2.0], [0.5, 0.5]])  # = -origin (pixels)
    imgs = project(ref, A, shifts_pixels=shifts)
    for i in range(len(eul)):
        expected = (A[i] @ r)[:2] + c + shifts[i]
        assert np.allclose(_com2d(imgs[i]), expected, atol=0.15), i
    ex = project(_blob((n, n, n), np.array([8.0, 0, 0]) + c), A[0])
    assert np.allclose(_com2d(ex) - c, [6.93, -4.00], atol=0.1)


def test_fourier_slice_relion_convention():
    """FT(image)(k) = FT(reference)(A^T (kx, ky, 0)) evaluated by direct summation."""
    s = simulate_particles("mtor", n=3, box=32, pixel_size_angstrom=10.0, snr=None, defocus_um=None,
                           max_shift_pixels=0.0, seed=2)
    ref = s.reference.astype(np.float64)
    n = ref.shape[0]
    idx = np.indices(ref.shape).reshape(3, -1)[::-1].T - n // 2  # (x, y, z) from the centre
    vals = ref.reshape(-1)
    yy, xx = np.indices((n, n))
    for i in range(s.n):
        img = s.images[i].astype(np.float64)
        for k in ([1, 0], [0, 1], [2, 1], [-1, 2], [3, -2]):
            k2 = np.array(k, float) / n
            f_img = (img * np.exp(-2j * np.pi * (k2[0] * (xx - n // 2) + k2[1] * (yy - n // 2)))).sum()
            k3 = s.rotations[i].T @ np.array([k2[0], k2[1], 0.0])
            f_ref = (vals * np.exp(-2j * np.pi * idx @ k3)).sum()
            assert abs(f_img - f_ref) < 0.03 * abs(vals.sum()), (i, k)


def test_requested_snr_is_met():
    snr = 0.1
    a = simulate_particles("ribosome", n=48, box=40, pixel_size_angstrom=10.0, snr=snr, seed=1, noise_seed=5)
    b = simulate_particles("ribosome", n=48, box=40, pixel_size_angstrom=10.0, snr=snr, seed=1, noise_seed=6)
    cs = []
    for x, y in zip(a.images, b.images):
        x = x - x.mean()
        y = y - y.mean()
        cs.append((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))
    c = float(np.mean(cs))
    assert c / (1 - c) == pytest.approx(snr, rel=0.10)
    assert np.allclose(a.signal_variance / a.noise_variance, snr, rtol=1e-4)


def test_shift_sign_ctf_and_contrast():
    # no CTF, no noise: the image centre of mass moves to centre - origin/pixel
    s0 = simulate_particles("cct", n=4, box=48, pixel_size_angstrom=10.0, snr=None, defocus_um=None,
                            max_shift_pixels=0.0, seed=3)
    s1 = simulate_particles("cct", n=4, box=48, pixel_size_angstrom=10.0, snr=None, defocus_um=None,
                            max_shift_pixels=5.0, seed=3)
    assert np.allclose(s0.euler_deg, s1.euler_deg)
    for i in range(4):
        move = _com2d(s1.images[i]) - _com2d(s0.images[i])
        assert np.allclose(move, -s1.origins_pixels[i], atol=0.2)
    assert np.abs(s1.origins_pixels).max() > 1
    # CTF: the noise-free image is the projection times -CTF (protein bright), per-particle astigmatism
    s2 = simulate_particles("cct", n=4, box=48, pixel_size_angstrom=10.0, snr=None, defocus_um=(1.0, 3.0),
                            astigmatism_um=0.3, max_shift_pixels=0.0, seed=3)
    ctf = ctf_2d_batched((48, 48), pixel_size_angstrom=10.0, defocus_um=s2.defocus_u_um, defocus_v_um=s2.defocus_v_um,
                         astigmatism_angle_deg=s2.defocus_angle_deg)
    expected = -torch.fft.irfftn(torch.fft.rfftn(torch.from_numpy(s0.images), dim=(1, 2)) * ctf, s=(48, 48), dim=(1, 2))
    assert np.allclose(s2.images, expected.numpy(), atol=1e-3 * np.abs(s2.images).max())
    assert np.allclose(s2.defocus_u_um - s2.defocus_v_um, 0.3)
    assert np.all((s2.defocus_u_um + s2.defocus_v_um) / 2 >= 1.0) and np.all((s2.defocus_u_um + s2.defocus_v_um) / 2 <= 3.0)
    # bright protein: image correlates positively with the low-pass projection
    assert np.corrcoef(s2.images[0].ravel(), s0.images[0].ravel())[0, 1] > 0.3


def test_seed_half_sets_and_bad_input():
    a = simulate_particles("enolase", n=9, box=24, pixel_size_angstrom=10.0, snr=1.0, seed=4)
    b = simulate_particles("enolase", n=9, box=24, pixel_size_angstrom=10.0, snr=1.0, seed=4)
    c = simulate_particles("enolase", n=9, box=24, pixel_size_angstrom=10.0, snr=1.0, seed=5)
    assert np.array_equal(a.images, b.images)
    assert not np.allclose(a.images, c.images) and not np.allclose(a.euler_deg, c.euler_deg)
    assert sorted(np.bincount(a.random_subset)[1:]) == [4, 5]
    with pytest.raises(InputError, match="structure"):
        simulate_particles("nope", n=2)
    # a procedural structure (held-out seed) as well as the packaged ones
    p = simulate_particles("procedural:10522", n=2, box=24, pixel_size_angstrom=8.0, snr=None, seed=1)
    assert p.images.shape == (2, 24, 24) and np.isfinite(p.images).all() and p.images.std() > 0
    with pytest.raises(InputError, match="max_shift"):
        simulate_particles("cct", n=2, box=16, max_shift_pixels=20)


def test_writer_roundtrip(tmp_path):
    import mrcfile
    import starfile

    s = simulate_particles("mtor", n=6, box=32, pixel_size_angstrom=8.0, snr=0.5, seed=6)
    paths = write_particle_set(s, tmp_path / "p")
    st = starfile.read(paths["star"])
    optics, df = st["optics"], st["particles"]
    assert float(optics["rlnImagePixelSize"][0]) == pytest.approx(8.0)
    assert int(optics["rlnImageSize"][0]) == 32 and float(optics["rlnVoltage"][0]) == 300.0
    assert float(optics["rlnSphericalAberration"][0]) == 2.7 and float(optics["rlnAmplitudeContrast"][0]) == 0.07
    assert list(df["rlnImageName"])[:2] == ["000001@particles.mrcs", "000002@particles.mrcs"]
    assert np.allclose(df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), s.euler_deg, atol=1e-5)
    assert np.allclose(df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), s.origins_angstrom, atol=1e-5)
    assert np.allclose(df["rlnDefocusU"].to_numpy(), s.defocus_u_um * 1e4, atol=1e-2)
    assert set(df["rlnRandomSubset"]) == {1, 2}
    with mrcfile.open(paths["stack"]) as m:
        assert m.data.shape == (6, 32, 32) and np.allclose(m.data[3], s.images[3])
    assert json.loads(paths["params"].read_text())["seed"] == 6
    with pytest.raises(InputError):
        write_particle_set(s, tmp_path / "p")


def test_sample_is_fast():
    t = time.perf_counter()
    s = sample_particles(seed=0)
    assert time.perf_counter() - t < 3.0 and s.images.shape == (64, 48, 48)


def test_symmetric_structure_gives_the_same_image_for_every_symmetry_mate(tmp_path):
    """symmetry="D2": the map is symmetrised, so poses A and A g project identically; params record it."""
    from napari_cryoalign.backend.symmetry import point_group

    rot = euler_to_matrix(np.array([[20.0, 70.0, -35.0]]))[0]
    mates = np.einsum("ij,gjk->gik", rot, point_group("D2"))  # A g, g in D2
    other = euler_to_matrix(np.array([[110.0, 20.0, -35.0]]))  # not a mate
    kw = dict(n=5, box=32, pixel_size_angstrom=10.0, snr=None, defocus_um=None, max_shift_pixels=0.0)
    sym = simulate_particles("mtor", rotations=np.concatenate([mates, other]), symmetry="d2", **kw)
    imgs = sym.images
    scale = np.abs(imgs[0]).max()
    for k in range(1, 4):
        assert np.abs(imgs[k] - imgs[0]).max() < 0.05 * scale  # interpolation only
    assert np.abs(imgs[4] - imgs[0]).max() > 0.3 * scale  # a non-mate differs
    plain = simulate_particles("mtor", rotations=np.concatenate([mates, other]), **kw)
    assert np.abs(plain.images[1] - plain.images[0]).max() > 0.3 * scale  # mTOR itself is not D2
    assert sym.params["symmetry"] == "D2" and plain.params["symmetry"] == "C1"
    paths = write_particle_set(sym, tmp_path / "d2")
    assert json.loads(paths["params"].read_text())["symmetry"] == "D2"
    with pytest.raises(InputError, match="symmetry"):
        simulate_particles("mtor", rotations=mates[:1], symmetry="X3", **{**kw, "n": 1})
