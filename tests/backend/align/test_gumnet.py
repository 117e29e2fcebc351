"""Gum-Net building blocks: DCT spectral pooling, the model's shapes and gradients, and the
differentiable warp with missing-wedge imputation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from scipy.spatial.transform import Rotation

from napari_cryoalign.backend.align._dct import (
    SpectralPool3d,
    dct_matrix,
    spectral_pool_matrix,
)
from napari_cryoalign.backend.align.gumnet import (
    GumNet,
    GumNetConfig,
    fourier_crop,
    imputed_correlation_map,
    origin_from_peak,
    pair_correlation,
    rotate_fourier_mask,
    rotate_fourier_mask_rfft,
    rotation_from_6d,
    warp_and_impute,
)
from napari_cryoalign.backend.align.scoring import mask_to_rfft
from napari_cryoalign.backend.geometry import (
    euler_to_matrix,
    rotate_volume,
    transform_reference_to_particle,
)
from napari_cryoalign.backend.peaks import find_peak
from napari_cryoalign.backend.wedge import observed_fourier_mask


def _blob_volume(n=32, seed=0):
    """A smooth asymmetric test object (three Gaussians), (z, y, x) float32."""
    z, y, x = np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")
    v = np.zeros((n, n, n))
    for cx, cy, cz, s in ((4, 0, 0, 2.5), (-3, 5, 1, 2.0), (0, -2, -5, 3.0)):
        v += np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return torch.from_numpy(v.astype(np.float32))


def _shifted_mask(n=32):
    return torch.fft.fftshift(observed_fourier_mask((n, n, n), rfft=False))


# ----------------------------------------------------------------------------- DCT pooling
def test_dct_matrix_is_orthonormal_dct2():
    c = dct_matrix(9).numpy()
    x = np.random.default_rng(0).normal(size=9)
    np.testing.assert_allclose(c @ x, scipy.fft.dct(x, type=2, norm="ortho"), atol=1e-12)
    np.testing.assert_allclose(c @ c.T, np.eye(9), atol=1e-12)


def test_spectral_pool_matches_definition():
    """Keep the first ``trunc`` DCT coefficients, zero-pad to ``out``, inverse DCT -- per axis."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 30, 30))
    coef = scipy.fft.dctn(x, type=2, norm="ortho")[:22, :22, :22]
    padded = np.zeros((26, 26, 26))
    padded[:22, :22, :22] = coef
    want = scipy.fft.idctn(padded, type=2, norm="ortho")
    got = SpectralPool3d(30, 26, 22).double()(torch.from_numpy(x)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, want, atol=2e-6)  # the matrix is stored in float32
    with pytest.raises(ValueError):
        spectral_pool_matrix(10, 8, 9)


# ----------------------------------------------------------------------------- model
def test_rotation_from_6d_gives_proper_rotations():
    r = rotation_from_6d(torch.randn(50, 6, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    torch.testing.assert_close(r.transpose(1, 2) @ r, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(50, dtype=torch.float64), atol=1e-10, rtol=0)


def test_model_shapes_and_gradients():
    torch.manual_seed(0)
    cfg = GumNetConfig(n_hypotheses=3)
    model = GumNet(cfg)
    assert model.n_parameters() * 4 < 5e6  # weights file < 5 MB
    moving, fixed = torch.randn(2, 32, 32, 32), torch.randn(2, 32, 32, 32)
    rot = model(moving, fixed)
    assert rot.shape == (2, 3, 3, 3)
    det = torch.linalg.det(rot.detach())
    torch.testing.assert_close(det, torch.ones_like(det), atol=1e-5, rtol=0)
    _, warped, mh = warp_and_impute(moving.repeat_interleave(3, 0), fixed.repeat_interleave(3, 0),
                                    rot.reshape(-1, 3, 3), torch.zeros(6, 3), moving_mask=_shifted_mask())
    _, values = find_peak(imputed_correlation_map(warped, fixed.repeat_interleave(3, 0), mh), max_shift=4.0,
                          window="cube", subpixel=False)
    loss = (1 - values).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the loss reaches the first convolution through the warp, the head and the correlation
    assert grads["features.body.0.weight"].abs().sum() > 0
    assert grads["out.weight"].abs().sum() > 0


def test_hypotheses_start_spread_out():
    model = GumNet(GumNetConfig(n_hypotheses=4)).eval()
    with torch.no_grad():
        rot = model(torch.randn(1, 32, 32, 32), torch.randn(1, 32, 32, 32))
    r = rot[0].numpy()
    ang = [np.degrees(Rotation.from_matrix(r[i] @ r[j].T).magnitude()) for i in range(4) for j in range(i + 1, 4)]
    assert min(ang) > 20


# ----------------------------------------------------------------------------- warp + imputation
def test_identity_warp_returns_input():
    x = torch.randn(2, 32, 32, 32)
    y = torch.randn(2, 32, 32, 32)
    eye = torch.eye(3).expand(2, 3, 3)
    out, warped, mh = warp_and_impute(x, y, eye, torch.zeros(2, 3))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    assert torch.all(mh == 1)
    # with a mask but the identity transform, the measured part of x is kept exactly
    mask = _shifted_mask()
    out, warped, mh = warp_and_impute(x, y, eye, torch.zeros(2, 3), moving_mask=mask)
    torch.testing.assert_close(warped, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(mh, torch.fft.ifftshift(mask)[..., :17].expand(2, -1, -1, -1), atol=1e-6, rtol=0)


def test_warp_matches_geometry_rotate_volume_and_undoes_the_particle_transform():
    ref = _blob_volume()
    a = torch.from_numpy(euler_to_matrix([30.0, 50.0, -70.0])).float()
    # pure rotation: aligning with A is rotating by A.T
    out, _, _ = warp_and_impute(ref[None], ref[None], a[None], torch.zeros(1, 3))
    torch.testing.assert_close(out[0], rotate_volume(ref, a.T), atol=1e-5, rtol=0)
    # a particle made from the reference with (A, origin) is brought back onto the reference
    origin = torch.tensor([[1.5, -2.0, 0.5]])
    particle = transform_reference_to_particle(ref, a, origin[0])
    back, _, _ = warp_and_impute(particle[None], ref[None], a[None], origin)
    assert pair_correlation(back, ref[None]).item() > 0.99
    wrong, _, _ = warp_and_impute(particle[None], ref[None], a.T[None], origin)
    assert pair_correlation(wrong, ref[None]).item() < 0.8


@pytest.mark.parametrize("euler", [(90.0, 0.0, 0.0), (0.0, 90.0, 0.0), (90.0, 90.0, 0.0)])
def test_rotated_mask_is_where_the_warped_particle_has_signal(euler):
    """Rotations by multiples of 90 degrees move grid points onto grid points, so the rotated
    mask is binary; it must be the Fourier support of the aligned particle (up to the small
    leakage of the one plane that the rotation about N // 2 moves out of the box)."""
    n = 32
    mask = _shifted_mask(n)
    noise = torch.randn(1, n, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    particle = torch.fft.ifftn(torch.fft.fftn(noise) * torch.fft.ifftshift(mask).double()).real
    a = torch.from_numpy(euler_to_matrix(list(euler)))[None]
    _, warped, mh = warp_and_impute(particle, particle, a, torch.zeros(1, 3, dtype=torch.float64), moving_mask=mask)
    power = torch.fft.rfftn(warped[0]).abs() ** 2
    inner = torch.fft.ifftshift(torch.from_numpy(_radius(n) < 0.45))[..., : n // 2 + 1]
    m = mh[0]
    assert (m - m.round()).abs().max() < 1e-9  # grid-exact rotation: a binary mask stays binary
    m = m.round()
    unrotated = torch.fft.ifftshift(mask)[..., : n // 2 + 1].double()
    total = power[inner].sum()
    assert power[inner & (m == 0)].sum() / total < 0.04  # almost no power where the rotated mask is 0
    assert power[inner & (unrotated == 0)].sum() / total > 0.15  # ... but plenty where the unrotated one is 0


def _radius(n):
    k = np.fft.fftshift(np.fft.fftfreq(n))
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.sqrt(kx ** 2 + ky ** 2 + kz ** 2)


def test_imputation_fills_exactly_the_missing_region():
    n = 32
    mask = _shifted_mask(n)
    x = torch.randn(1, n, n, n, dtype=torch.float64)
    y = torch.randn(1, n, n, n, dtype=torch.float64)
    a = torch.from_numpy(euler_to_matrix([90.0, 90.0, 0.0]))[None]  # grid-exact, so M' is binary
    out, warped, mh = warp_and_impute(x, y, a, torch.zeros(1, 3, dtype=torch.float64), moving_mask=mask)
    fo, fw, fy = (torch.fft.rfftn(v[0]) for v in (out, warped, y))
    m = mh[0]
    assert (m - m.round()).abs().max() < 1e-9
    m = m.round()
    assert 0.2 < m.mean() < 0.8
    # Hermitian-symmetric planes of the rfft layout are fine as the mask is point-symmetric
    torch.testing.assert_close(fo[m == 1], fw[m == 1], atol=1e-9, rtol=0)
    torch.testing.assert_close(fo[m == 0], fy[m == 0], atol=1e-9, rtol=0)
    # and the rotated mask itself is the mask rotated like the volume
    torch.testing.assert_close(rotate_fourier_mask(mask.double(), a)[0],
                               rotate_volume(mask.double(), a[0].T), atol=1e-12, rtol=0)


def test_rfft_half_of_the_rotated_mask_is_sampled_directly():
    """``rotate_fourier_mask_rfft`` (only the rfft half's samples) equals the full rotated mask's rfft half,
    for a shared and a per-particle mask, at general (off-grid) rotations."""
    n = 32
    mask = _shifted_mask(n).double()
    a = torch.from_numpy(Rotation.random(5, random_state=3).as_matrix())
    full = mask_to_rfft(rotate_fourier_mask(mask, a))
    assert full.shape == (5, n, n, n // 2 + 1)
    torch.testing.assert_close(rotate_fourier_mask_rfft(mask, a), full, atol=1e-12, rtol=0)
    per = torch.stack([mask, mask.flip(0), mask, mask.flip(1), mask])
    torch.testing.assert_close(rotate_fourier_mask_rfft(per, a), mask_to_rfft(rotate_fourier_mask(per, a)),
                               atol=1e-12, rtol=0)


def test_fourier_crop_keeps_the_centre_and_scales_shifts():
    n = 32
    z, y, x = np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")
    v = np.exp(-((x - 4) ** 2 + y ** 2 + (z + 2) ** 2) / (2 * 2.0 ** 2)).astype(np.float32)
    small = fourier_crop(torch.from_numpy(v)[None], 16)[0].numpy()
    assert small.shape == (16, 16, 16)
    zz, yy, xx = np.unravel_index(np.argmax(small), small.shape)
    assert (xx - 8, yy - 8, zz - 8) == (2, 0, -1)


def test_correlation_map_equals_direct_imputed_correlation_and_finds_the_origin():
    """The FFT correlation map is the correlation of the imputed volume for every shift, and its
    peak gives back the origin of a particle made from the reference."""
    ref = _blob_volume() + 0.05 * torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = ref.double()
    a = torch.from_numpy(euler_to_matrix([10.0, 70.0, 200.0]))
    origin = torch.tensor([2.3, -1.6, 0.7], dtype=torch.float64)
    mask = _shifted_mask().double()
    particle = transform_reference_to_particle(ref, a, origin)
    spec = torch.fft.fftn(particle) * torch.fft.ifftshift(mask)
    particle = torch.fft.ifftn(spec).real  # the particle only measured inside the wedge mask
    _, warped, mh = warp_and_impute(particle[None], ref[None], a[None], torch.zeros(1, 3, dtype=torch.float64),
                                    moving_mask=mask)
    cmap = imputed_correlation_map(warped - warped.mean(), ref[None] - ref.mean(), mh)
    # direct check at a few integer shifts d: roll the measured part, impute, correlate
    for d in ((0, 0, 0), (2, -2, 1), (-3, 1, 0)):
        rolled = torch.roll(warped, shifts=(-d[2], -d[1], -d[0]), dims=(1, 2, 3))  # rolled(r) = warped(r + d)
        spec = torch.fft.rfftn(rolled - rolled.mean()) * mh + torch.fft.rfftn(ref[None] - ref.mean()) * (1 - mh)
        imputed = torch.fft.irfftn(spec, s=(32, 32, 32), dim=(1, 2, 3))
        direct = pair_correlation(imputed, ref[None])[0]
        idx = tuple(v % 32 for v in (d[2], d[1], d[0]))
        assert abs(cmap[0][idx].item() - direct.item()) < 0.02, (d, cmap[0][idx].item(), direct.item())
    shift, value = find_peak(cmap, max_shift=4.0, window="cube")
    found = origin_from_peak(a[None], shift)[0]
    assert torch.linalg.norm(found - origin) < 0.5, (found, origin)
    assert value.item() > 0.9
    # a search radius that excludes the true shift finds a worse peak
    _, value_small = find_peak(cmap, max_shift=0.0, window="cube", subpixel=False)
    assert value_small.item() < value.item() - 0.05


# ----------------------------------------------------------------------------- grid head
def test_grid_head_gives_logits_over_the_rotation_grid_and_reuses_one_reference():
    from napari_cryoalign.backend.geometry import rotation_grid

    torch.manual_seed(0)
    cfg = GumNetConfig(head="grid", input_box=16, grid_step_deg=30.0)
    assert cfg.pools == ((14, 12), (12, 10), (10, 8), (8, 7)) and cfg.feature_size() == 6
    model = GumNet(cfg).eval()
    assert model.grid.shape == (len(rotation_grid(30.0)), 3, 3)
    assert "grid" not in model.state_dict()  # rebuilt from the config, not stored
    moving, fixed = torch.randn(3, 32, 32, 32), torch.randn(1, 32, 32, 32)
    with torch.no_grad():
        once = model(moving, fixed)  # one reference: its features computed once
        each = model(moving, fixed.expand(3, -1, -1, -1))
    assert once.shape == (3, model.grid.shape[0])
    torch.testing.assert_close(once, each, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="head"):
        GumNetConfig(head="euler")
    with pytest.raises(ValueError, match="input_box"):
        GumNetConfig(input_box=64)


def test_centring_on_the_spherical_average_undoes_a_shift_whatever_the_pose():
    """``centre_on_rotational_average`` finds a particle's displacement without its pose (the reference
    is given in another orientation), within ``max_shift``; a network with ``centre_moving`` gives the
    same output for a particle and its shifted copy."""
    from napari_cryoalign.backend.align.gumnet import GumNet, GumNetConfig, centre_on_rotational_average
    from napari_cryoalign.backend.geometry import random_rotations, transform_reference_to_particle
    from napari_cryoalign.backend.simulate.procedural import procedural_structure

    m = np.asarray(procedural_structure(3, voxel_size_angstrom=12.0, box=24)[0], np.float32)
    rots = random_rotations(4, seed=1).astype(np.float32)
    parts = np.asarray(transform_reference_to_particle(np.stack([m] * 4), rots))
    shifts = [(2, -1, 0), (0, 3, -2), (-3, -3, 1), (0, 0, 0)]
    moved = np.stack([np.roll(p, s, axis=(0, 1, 2)) for p, s in zip(parts, shifts)])
    ref = np.asarray(transform_reference_to_particle(m, random_rotations(1, seed=9)[0].astype(np.float32)))
    back = centre_on_rotational_average(torch.from_numpy(moved), torch.from_numpy(ref)[None], 3).numpy()
    np.testing.assert_allclose(back, parts, atol=1e-6)
    # beyond max_shift the displacement is not searched: (0, 3, -2) with max_shift 2 is not undone
    part = centre_on_rotational_average(torch.from_numpy(moved[1:2]), torch.from_numpy(ref)[None], 2).numpy()
    assert np.abs(part - parts[1:2]).max() > 1e-3
    torch.manual_seed(0)
    net = GumNet(GumNetConfig(box=24, head="grid", grid_step_deg=90.0, input_box=16, centre_moving=True)).eval()
    with torch.no_grad():
        a = net(torch.from_numpy(parts), torch.from_numpy(ref)[None])
        b = net(torch.from_numpy(moved), torch.from_numpy(ref)[None])
    torch.testing.assert_close(a, b)
    assert GumNetConfig.from_dict(net.config.to_dict()).centre_moving and not GumNetConfig().centre_moving


def test_centre_crop_input_keeps_the_particle_at_its_own_voxel_size():
    """``input_crop="centre"``: the network sees the central ``input_box``³ voxels (standardised), not the
    whole box Fourier-cropped; the choice survives the model file's config, and an unknown one is refused."""
    from napari_cryoalign.backend.align.gumnet import GumNet, GumNetConfig, standardize

    torch.manual_seed(0)
    x = torch.randn(2, 24, 24, 24)
    crop = GumNet(GumNetConfig(box=24, head="grid", grid_step_deg=90.0, input_box=16, input_crop="centre"))
    torch.testing.assert_close(crop._net_input(x), standardize(x[:, 4:20, 4:20, 4:20]))
    whole = GumNet(GumNetConfig(box=24, head="grid", grid_step_deg=90.0, input_box=16))
    assert whole._net_input(x).shape == (2, 16, 16, 16)
    assert not torch.allclose(whole._net_input(x), crop._net_input(x))  # the default still low-passes the box
    assert GumNetConfig.from_dict(crop.config.to_dict()).input_crop == "centre"
    assert GumNetConfig.from_dict({k: v for k, v in whole.config.to_dict().items() if k != "input_crop"}).input_crop \
        == "fourier"  # model files from before the option
    with pytest.raises(ValueError, match="input_crop"):
        GumNetConfig(input_crop="middle")


def test_refine_grid_head_starts_where_the_coarse_head_stopped():
    """The curriculum's head refinement (60° -> 30° grid): the fine head's probabilities summed over each
    coarse cell equal the coarse head's, for any input; every fine rotation belongs to its nearest coarse
    cell; the rest of the network is copied; a non-grid model is refused."""
    from napari_cryoalign.backend.align.gumnet import GumNet, GumNetConfig, refine_grid_head
    from napari_cryoalign.backend.geometry import geodesic_angle_deg

    torch.manual_seed(0)
    coarse = GumNet(GumNetConfig(box=16, head="grid", grid_step_deg=60.0, channels=(4, 4, 8, 8, 8), hidden=32))
    with torch.no_grad():  # a head that is not uniform, as after training
        coarse.out.weight.normal_(0.0, 0.5)
        coarse.out.bias.normal_(0.0, 1.0)
    coarse.eval()
    fine = refine_grid_head(coarse, 30.0).eval()
    assert fine.config.grid_step_deg == 30.0 and len(fine.grid) > 4 * len(coarse.grid)
    a, b = torch.randn(3, 16, 16, 16), torch.randn(3, 16, 16, 16)
    with torch.no_grad():
        pc, pf = coarse(a, b).softmax(1).numpy(), fine(a, b).softmax(1).numpy()
    g_c, g_f = coarse.grid.numpy().astype(np.float64), fine.grid.numpy().astype(np.float64)
    cell = np.argmin(geodesic_angle_deg(g_f[:, None], g_c[None]), axis=1)
    summed = np.stack([np.bincount(cell, weights=p, minlength=len(g_c)) for p in pf])
    np.testing.assert_allclose(summed, pc, rtol=1e-4, atol=1e-6)
    assert geodesic_angle_deg(g_f, g_c[cell]).max() < 60.0
    torch.testing.assert_close(fine.head[0].weight, coarse.head[0].weight)
    with pytest.raises(ValueError, match="head='grid'"):
        refine_grid_head(GumNet(GumNetConfig(box=16, channels=(4, 4, 8, 8, 8), hidden=32)), 30.0)
