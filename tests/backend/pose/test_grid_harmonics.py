"""HEALPix grids, SO(3) grids, real spherical harmonics and Wigner matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.geometry import (
    euler_to_matrix,
    geodesic_angle_deg,
    random_rotations,
)
from napari_cryoalign.backend.pose.grid import (
    healpix_nest_angles,
    healpix_npix,
    healpix_ring_angles,
    healpix_vectors,
    local_offsets,
    nearest_grid_index,
    so3_grid_euler,
    so3_grid_size,
    so3_healpix_grid,
)
from napari_cryoalign.backend.pose.harmonics import (
    spherical_harmonics,
    wigner_d,
    wigner_d_euler,
    wigner_slices,
)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_healpix_counts_equal_area_and_orderings(level):
    n = healpix_npix(level)
    assert n == 12 * 4**level
    ring = healpix_vectors(level, nested=False)
    nest = healpix_vectors(level, nested=True)
    assert ring.shape == nest.shape == (n, 3)
    # the same point set in another order
    d = ring @ nest.T
    assert np.allclose(d.max(axis=1), 1.0, atol=1e-12) and len(set(d.argmax(axis=1))) == n
    # nearly equal spacing: nearest-neighbour distances close to the pixel size sqrt(4 pi / n)
    nn = np.degrees(np.arccos(np.clip(np.sort(ring @ ring.T, axis=1)[:, -2], -1, 1)))
    pixel = np.degrees(np.sqrt(4 * np.pi / n))
    assert 0.75 * pixel < nn.min() and nn.max() < 1.1 * pixel
    # balanced: the centroid is the origin; ring order goes north to south
    assert np.abs(ring.sum(axis=0)).max() < 1e-9
    assert np.all(np.diff(ring[:, 2]) <= 1e-12)


def test_ring_known_values_and_nested_hierarchy():
    theta, phi = healpix_ring_angles(0)
    # nside 1: 4 pixels at z = 2/3, 4 on the equator, 4 at z = -2/3
    assert np.allclose(np.cos(theta), [2 / 3] * 4 + [0] * 4 + [-2 / 3] * 4)
    assert np.allclose(np.degrees(phi[:4]), [45, 135, 225, 315])
    # nested: the 4 children of pixel p at level k are 4p..4p+3 at level k+1, all near it
    for level in (1, 2):
        parent = healpix_vectors(level)
        child = healpix_vectors(level + 1).reshape(-1, 4, 3)
        ang = np.degrees(np.arccos(np.clip(np.einsum("pi,pci->pc", parent, child), -1, 1)))
        assert ang.max() < np.degrees(np.sqrt(4 * np.pi / parent.shape[0]))
    t2, _ = healpix_nest_angles(1)
    assert t2.shape == (48,)


def test_so3_grid_size_spacing_and_nearest_lookup():
    assert [so3_grid_size(k) for k in range(3)] == [72, 576, 4608]
    g = so3_healpix_grid(2)
    assert g.shape == (4608, 3, 3)
    assert np.allclose(np.einsum("nij,nkj->nik", g, g), np.eye(3), atol=1e-9)
    r = random_rotations(400, seed=1)
    idx = nearest_grid_index(r, g)
    err = geodesic_angle_deg(g[idx], r)
    assert err.max() < 15.0 and err.mean() < 8.0  # covering radius of the ~15° grid
    # the nearest index is really the nearest (brute force)
    brute = np.array([geodesic_angle_deg(g, ri[None]).argmin() for ri in r[:20]])
    assert np.allclose(geodesic_angle_deg(g[brute], r[:20]), err[:20], atol=1e-3)
    # grid points are their own nearest points
    assert (nearest_grid_index(g[:100], g) == np.arange(100)).all()
    eul = so3_grid_euler(1)
    assert np.allclose(euler_to_matrix(eul[:5]), so3_healpix_grid(1)[:5])
    off = local_offsets(max_angle_deg=6.0, step_deg=2.0)
    assert np.allclose(off[0], np.eye(3)) and geodesic_angle_deg(off, np.eye(3)).max() <= 6.0 + 1e-6


def test_spherical_harmonics_orthonormal_and_wigner_representation():
    v = healpix_vectors(5)
    y = spherical_harmonics(v, 4)
    gram = y.T @ y * (4 * np.pi / len(v))
    assert torch.allclose(gram, torch.eye(25, dtype=gram.dtype), atol=2e-3)
    r = random_rotations(3, seed=4)
    d = wigner_d(r, 4, dtype=torch.float64)
    d12 = wigner_d(r[:1] @ r[1:2], 4, dtype=torch.float64)
    for l, sl in enumerate(wigner_slices(4)):
        k = 2 * l + 1
        a, b, ab = d[0, sl].reshape(k, k), d[1, sl].reshape(k, k), d12[0, sl].reshape(k, k)
        assert torch.allclose(a @ b, ab, atol=1e-10)  # D(R1 R2) = D(R1) D(R2)
        assert torch.allclose(a @ a.T, torch.eye(k, dtype=a.dtype), atol=1e-10)
    # definition: Y(R x) = D(R) Y(x)
    x = torch.as_tensor(healpix_vectors(1))
    lhs = spherical_harmonics(torch.as_tensor(x.numpy() @ r[2].T), 4)
    for l, sl in enumerate(wigner_slices(4)):
        k = 2 * l + 1
        rhs = spherical_harmonics(x, 4)[:, l * l:(l + 1) ** 2] @ d[2, sl].reshape(k, k).T
        assert torch.allclose(lhs[:, l * l:(l + 1) ** 2], rhs, atol=1e-10)
    # the factorised Euler version agrees with the direct one
    eul = so3_grid_euler(1)[::37]
    assert torch.allclose(wigner_d_euler(eul, 4), wigner_d(euler_to_matrix(eul), 4), atol=1e-5)
