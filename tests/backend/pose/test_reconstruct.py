"""Direct Fourier reconstruction, Fourier-slice projection, shift search, preprocessing, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.align.average import default_fsc_mask, fsc_report
from napari_cryoalign.backend.geometry import random_rotations
from napari_cryoalign.backend.pose.data import (
    particle_data_from_simulation,
    preprocess_images,
)
from napari_cryoalign.backend.pose.metrics import (
    angular_errors,
    evaluate_reconstructions,
    mane,
)
from napari_cryoalign.backend.pose.predict import shift_search
from napari_cryoalign.backend.pose.reconstruct import (
    pearson_correlation,
    prepare_projector,
    project_fourier,
    reconstruct,
    reconstruct_half_maps,
)
from napari_cryoalign.backend.simulate.particles import project
from napari_cryoalign.backend.symmetry import point_group


def test_reconstruction_from_true_poses_has_fsc_one_at_low_resolution(easy_set):
    data = particle_data_from_simulation(easy_set)
    res = reconstruct_half_maps(data)
    mask = default_fsc_mask(32)
    # half maps of noiseless data agree; FSC ~ 1 at low resolution
    assert res.fsc.curve.fsc[1:9].min() > 0.99
    gt = fsc_report(res.volume, easy_set.reference, voxel_size_angstrom=12.0, mask=mask)
    assert gt.curve.fsc[1:9].min() > 0.98
    assert pearson_correlation(res.volume, easy_set.reference, mask=mask) > 0.97
    # wrong poses do not: the test can fail
    bad = reconstruct(data.images, random_rotations(data.n, seed=1), pixel_size_angstrom=12.0,
                      origins_angstrom=data.origins_angstrom)
    assert pearson_correlation(bad, easy_set.reference, mask=mask) < 0.8  # a featureless blob
    assert fsc_report(bad, easy_set.reference, voxel_size_angstrom=12.0, mask=mask).curve.fsc[5:9].max() < 0.5
    # ignoring the CTF hurts too (the sign of the CTF is right when used)
    no_ctf = reconstruct(data.images, data.rotations, pixel_size_angstrom=12.0, origins_angstrom=data.origins_angstrom)
    assert pearson_correlation(no_ctf, easy_set.reference, mask=mask) < pearson_correlation(res.volume, easy_set.reference,
                                                                                             mask=mask) - 0.05


def test_symmetric_reconstruction_inserts_every_mate():
    from napari_cryoalign.backend.geometry import rotate_volume
    from napari_cryoalign.backend.simulate.particles import simulate_particles

    ps = simulate_particles("mtor", n=120, box=24, pixel_size_angstrom=16.0, snr=None, defocus_um=None,
                            max_shift_pixels=0.0, symmetry="D2", seed=2)
    vol = reconstruct(ps.images, ps.rotations, symmetry="D2")
    for g in point_group("D2")[1:]:
        assert np.corrcoef(rotate_volume(vol, g).ravel(), vol.ravel())[0, 1] > 0.95
    assert pearson_correlation(vol, ps.reference) > 0.9


def test_fourier_projection_matches_real_space_projection_and_shift_search(easy_set):
    ref = easy_set.reference
    rot = easy_set.rotations[:6]
    projector = prepare_projector(ref)
    ft = project_fourier(projector, rot)
    img = torch.fft.fftshift(torch.fft.ifft2(ft).real, dim=(-2, -1)).numpy()
    real = project(ref, rot)
    for a, b in zip(img, real):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    # shift search: a projection displaced by d is found at d
    d_true = np.array([[2.0, -1.0], [-3.5, 0.5], [0.0, 2.25], [1.0, 1.0], [-2.0, -2.0], [0.7, -0.3]])
    moved = torch.as_tensor(project(ref, rot, shifts_pixels=d_true))
    d, _ = shift_search(moved, ft, max_shift=5.0)
    assert np.abs(d.numpy() - d_true).max() < 0.3


def test_preprocessing_normalises_outside_circle_and_phase_flips(easy_set):
    data = particle_data_from_simulation(easy_set)
    noisy = data.images + np.random.default_rng(0).standard_normal(data.images.shape).astype(np.float32) * 50
    from dataclasses import replace

    x = preprocess_images(replace(data, images=noisy), np.arange(16), phase_flip=False)
    n = x.shape[-1]
    ax = np.arange(n) - n // 2
    outside = (ax[:, None] ** 2 + ax[None, :] ** 2) > (n / 2) ** 2
    bg = x.numpy()[:, outside]
    assert np.allclose(bg.mean(axis=1), 0, atol=1e-4) and np.allclose(bg.std(axis=1, ddof=1), 1, atol=1e-3)
    # phase flipping multiplies the transform by sign(T), T = -CTF (+A at DC: low frequencies untouched)
    from napari_cryoalign.backend.pose.data import transfer_function

    t = transfer_function(data.ctf, np.arange(16), (n, n), pixel_size_angstrom=12.0)
    assert (t[:, 0, 0] > 0).all() and (t < 0).any()
    flipped = torch.fft.rfft2(preprocess_images(data, np.arange(16)))
    raw = torch.fft.rfft2(preprocess_images(data, np.arange(16), phase_flip=False))
    assert torch.allclose(flipped, raw * torch.sign(t), atol=1e-3 * raw.abs().max().item())
    small = preprocess_images(data, np.arange(4), image_size=16)
    assert small.shape == (4, 16, 16)


def test_metrics_on_hand_made_cases(easy_set):
    true = easy_set.rotations[:50]
    assert mane(true, true) == pytest.approx(0.0, abs=1e-4)
    rnd = random_rotations(2000, seed=0)
    assert mane(rnd, random_rotations(2000, seed=1)) == pytest.approx(126.5, abs=3.0)  # random poses
    mates = np.einsum("nij,jk->nik", true, point_group("D2")[3])
    assert mane(mates, true, "D2") == pytest.approx(0.0, abs=1e-4)
    assert mane(mates, true, "C1") > 100
    e = angular_errors(mates, true, "C1", confidence=np.r_[np.ones(25), np.zeros(25)])
    assert e.wmane == pytest.approx(e.errors[:25].mean())
    data = particle_data_from_simulation(easy_set)
    ev = evaluate_reconstructions(data, data.rotations, predicted_origins_angstrom=data.origins_angstrom)
    assert abs(ev.delta_pcc) < 0.02 and abs(ev.delta_fscr_05) < 3.0
    ev_bad = evaluate_reconstructions(data, random_rotations(data.n, seed=3))
    assert ev_bad.delta_pcc > 0.1 and ev_bad.delta_fscr_05 > 10.0
