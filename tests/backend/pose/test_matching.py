"""The map search (backend/pose/matching.py): its sums, slices, centre estimate and recovered poses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.pose import matching
from napari_cryoalign.backend.pose.grid import so3_healpix_grid
from napari_cryoalign.backend.pose.reconstruct import prepare_projector, project_fourier, slice_values
from napari_cryoalign.backend.symmetry import symmetric_angle_deg
from napari_cryoalign.errors import InputError


def test_half_plane_sums_equal_full_plane_sums():
    """Σ over the rfft half with weights 2 (kx > 0) / 1 (kx = 0) = Σ over the full plane, for real images."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 24, 24, generator=g)
    fa, fb = torch.fft.fft2(a), torch.fft.fft2(b)
    k_max = 9.0
    index, weight, kx, ky = matching._frequencies(24, k_max, "cpu")
    half = (weight * (fa.reshape(-1)[index].conj() * fb.reshape(-1)[index]).real).sum()
    f = torch.fft.fftfreq(24, d=1 / 24)
    fy, fx = torch.meshgrid(f, f, indexing="ij")
    full_sel = (fx ** 2 + fy ** 2 <= k_max ** 2) & ((fx != 0) | (fy != 0))
    full = (fa[full_sel].conj() * fb[full_sel]).real.sum()
    assert torch.isclose(half, full, rtol=1e-5)
    assert (kx >= 0).all() and set(weight.unique().tolist()) == {1.0, 2.0}


def test_slices_at_frequencies_equal_the_projector(easy_set):
    proj = prepare_projector(easy_set.reference)
    rot = torch.as_tensor(easy_set.rotations[:5], dtype=torch.float32)
    full = project_fourier(proj, rot).reshape(5, -1)
    index, _, kx, ky = matching._frequencies(32, 12.0, "cpu")
    part = slice_values(proj, rot, torch.stack([kx, ky], dim=1))
    assert torch.allclose(part, full[:, index], atol=1e-4 * full.abs().max())


@pytest.fixture(scope="module")
def search_set():
    """Noiseless CTF-free projections of the ribosome map at known poses and displacements."""
    from napari_cryoalign.backend.simulate.particles import simulate_particles

    ps = simulate_particles("ribosome", n=48, box=32, pixel_size_angstrom=12.0, snr=None, defocus_um=None,
                            max_shift_pixels=2.0, seed=11)
    from napari_cryoalign.backend.pose.data import normalize_outside_circle

    images = normalize_outside_circle(torch.as_tensor(ps.images))
    proj = prepare_projector(ps.reference)
    return ps, images, proj, matching.prepare_map_search(proj, level=1)


def test_map_search_finds_known_poses_and_displacements(search_set):
    ps, images, proj, search = search_set
    assert search.fine.level == 2 and search.coarse.reim.shape[0] == 576 and search.nbytes > 0
    res = matching.map_search(search, images, None, max_shift=3.0, candidates=8)
    best = res.log_likelihood.argmax(dim=1)
    ar = torch.arange(images.shape[0])
    grid = so3_healpix_grid(2)
    idx = res.fine_index[ar, best].numpy()
    err = symmetric_angle_deg(grid[idx], ps.rotations)
    # the fine grid has 15° spacing: the best grid point is within about one spacing of the truth
    assert np.median(err) < 10.0 and (err < 20.0).mean() > 0.9
    disp = res.displacement[ar, best].numpy()
    true_disp = -ps.origins_angstrom / ps.pixel_size_angstrom
    assert np.median(np.abs(disp - true_disp)) < 0.5
    # repeated children are counted once
    row = res.fine_index[0][torch.isfinite(res.log_likelihood[0])]
    assert row.unique().numel() == row.numel()
    # off the grid: two rounds of local refinement bring the rotations within a few degrees
    found = matching.search_poses(search, proj, images, None, max_shift=3.0, candidates=8,
                                  refine_offsets=matching.refinement_offsets(2))
    assert torch.equal(found.index, res.fine_index[ar, best])  # no prior: the likelihood's best grid point
    err2 = symmetric_angle_deg(found.rotations.double().numpy(), ps.rotations)
    assert np.median(err2) < 3.0 and np.median(err2) < np.median(err)
    assert ((found.confidence > 0) & (found.confidence <= 1)).all()
    # a prior certain of one rotation: its parent is expanded and it wins
    prior = torch.full((images.shape[0], 4608), -1e30)  # the fine grid: level 2
    prior[:, 0] = 0.0
    forced = matching.search_poses(search, proj, images, None, max_shift=3.0, candidates=8, log_prior=prior,
                                   prior_candidates=1)
    assert (forced.index == 0).all()


def test_centre_estimate_follows_the_particle(search_set):
    ps, images, proj, search = search_set
    x_ft = torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1)))
    c = matching._centre(search, x_ft, None, 3.0).numpy()
    true_disp = -ps.origins_angstrom / ps.pixel_size_angstrom
    # the rotational average of the projections is a blob: a rough centre, refined by the lattices after it
    assert np.median(np.linalg.norm(c - true_disp, axis=1)) < 1.0


def test_map_search_rejects_bad_sizes(search_set):
    _, images, proj, search = search_set
    with pytest.raises(InputError, match="32x32"):
        matching.map_search(search, images[:, :16, :16], None, max_shift=2.0)
    with pytest.raises(InputError, match="max_frequency"):
        matching.prepare_map_search(proj, max_frequency=40.0)
    with pytest.raises(InputError, match="level"):
        matching.prepare_map_search(proj, level=5)
