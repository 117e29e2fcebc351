"""HEALPix grids on the sphere and the Hopf-fibration (I2S-style) grids on SO(3).

HEALPix (Górski et al. 2005) splits the sphere into ``12 * nside**2`` equal-area pixels;
``nside = 2**level``. The pixel centres are computed here directly (no healpy), in both
orderings:

* **ring** ordering: pixels numbered ring by ring from the north pole (``z = cos θ``
  decreasing), eastwards within a ring;
* **nested** ordering: the 12 base faces each split hierarchically, so the children of
  pixel ``p`` at ``level`` are ``4p .. 4p + 3`` at ``level + 1``.

Both return ``(theta, phi)`` in radians (colatitude from +z, longitude from +x towards +y)
and are the same point set in another order (pinned by a test).

SO(3) grid (Image2Sphere's ``so3_healpix_grid``): a viewing direction from the HEALPix
centres at ``level`` times ``6 * nside`` in-plane angles, ``72 * 8**level`` rotations
(level 0: 72, 1: 576, 2: 4608 ≈ 15°, 3: 36864 ≈ 7.5°, 4: 294912 ≈ 3.75°). A grid element is the
RELION pose ``A = euler_to_matrix(rot=phi, tilt=theta, psi=psi)``: the particle is seen along
the direction ``A^T e_z = (sin θ cos φ, sin θ sin φ, cos θ)`` of the reference, with in-plane
angle ``psi``. Matrices act on ``(x, y, z)`` (docs/conventions.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import InputError
from ..geometry import euler_to_matrix, local_rotation_grid

__all__ = [
    "grid_spacing_deg",
    "healpix_nest_angles",
    "healpix_npix",
    "healpix_ring_angles",
    "healpix_vectors",
    "local_offsets",
    "nearest_grid_index",
    "so3_grid_euler",
    "so3_grid_size",
    "so3_healpix_grid",
]

# base-face tables of the HEALPix nested scheme (healpix_base.cc: jrll, jpll)
_JRLL = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4], dtype=np.int64)
_JPLL = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7], dtype=np.int64)


def _check_level(level) -> int:
    if int(level) != level or not 0 <= level <= 6:
        raise InputError("a HEALPix level between 0 and 6 (nside = 2**level)", field="level", got=level)
    return int(level)


def healpix_npix(level: int) -> int:
    """Number of HEALPix pixels at ``level``: ``12 * 4**level``."""
    return 12 * 4 ** _check_level(level)


def healpix_ring_angles(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres ``(theta, phi)`` (radians, each ``(12 * 4**level,)``) in ring order."""
    nside = 2 ** _check_level(level)
    npix = 12 * nside * nside
    pix = np.arange(npix, dtype=np.int64)
    ncap = 2 * nside * (nside - 1)
    z = np.empty(npix)
    phi = np.empty(npix)
    north = pix < ncap
    south = pix >= npix - ncap
    belt = ~(north | south)
    # north polar cap
    p = pix[north]
    iring = (1 + np.floor(np.sqrt(1 + 2 * p)).astype(np.int64)) >> 1
    iring = np.where(2 * iring * (iring - 1) > p, iring - 1, iring)  # guard sqrt rounding
    iphi = p + 1 - 2 * iring * (iring - 1)
    z[north] = 1.0 - iring**2 * 4.0 / npix
    phi[north] = (iphi - 0.5) * math.pi / (2.0 * iring)
    # equatorial belt
    p = pix[belt] - ncap
    iring = p // (4 * nside) + nside
    iphi = p % (4 * nside) + 1
    fodd = 0.5 * (1 + ((iring + nside) & 1))
    z[belt] = (2 * nside - iring) * 2.0 / (3.0 * nside)
    phi[belt] = (iphi - fodd) * math.pi / (2.0 * nside)
    # south polar cap
    p = npix - pix[south]
    iring = (1 + np.floor(np.sqrt(2 * p - 1)).astype(np.int64)) >> 1
    iring = np.where(2 * iring * (iring - 1) >= p, iring - 1, iring)
    iphi = 4 * iring + 1 - (p - 2 * iring * (iring - 1))
    z[south] = -1.0 + iring**2 * 4.0 / npix
    phi[south] = (iphi - 0.5) * math.pi / (2.0 * iring)
    return np.arccos(np.clip(z, -1.0, 1.0)), np.mod(phi, 2 * math.pi)


def _compress_bits(v: np.ndarray) -> np.ndarray:
    """Every second bit of ``v`` (bits 0, 2, 4, ...) packed together: de-interleaving."""
    out = np.zeros_like(v)
    for b in range(31):
        out |= ((v >> (2 * b)) & 1) << b
    return out


def healpix_nest_angles(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres ``(theta, phi)`` (radians) in nested order (children of ``p`` are ``4p..4p+3``)."""
    level = _check_level(level)
    nside = 2**level
    npix = 12 * nside * nside
    npface = nside * nside
    pix = np.arange(npix, dtype=np.int64)
    face = pix >> (2 * level)
    ipf = pix & (npface - 1)
    ix = _compress_bits(ipf)
    iy = _compress_bits(ipf >> 1)
    jr = (_JRLL[face] << level) - ix - iy - 1
    nl4 = 4 * nside
    fact2 = 4.0 / npix
    fact1 = (nside << 1) * fact2
    z = np.empty(npix)
    nr = np.empty(npix, dtype=np.int64)
    kshift = np.zeros(npix, dtype=np.int64)
    north = jr < nside
    south = jr > 3 * nside
    belt = ~(north | south)
    nr[north] = jr[north]
    z[north] = 1.0 - nr[north] ** 2 * fact2
    nr[south] = nl4 - jr[south]
    z[south] = nr[south] ** 2 * fact2 - 1.0
    nr[belt] = nside
    z[belt] = (2 * nside - jr[belt]) * fact1
    kshift[belt] = (jr[belt] - nside) & 1
    jp = (_JPLL[face] * nr + ix - iy + 1 + kshift) // 2
    jp = np.where(jp > nl4, jp - nl4, jp)
    jp = np.where(jp < 1, jp + nl4, jp)
    phi = (jp - (kshift + 1) * 0.5) * (0.5 * math.pi / nr)
    return np.arccos(np.clip(z, -1.0, 1.0)), np.mod(phi, 2 * math.pi)


def healpix_vectors(level: int, *, nested: bool = True) -> np.ndarray:
    """HEALPix pixel centres as unit vectors ``(n, 3)`` (x, y, z), nested (default) or ring order."""
    theta, phi = (healpix_nest_angles if nested else healpix_ring_angles)(level)
    st = np.sin(theta)
    return np.stack([st * np.cos(phi), st * np.sin(phi), np.cos(theta)], axis=1)


def so3_grid_size(level: int) -> int:
    """``72 * 8**level``: HEALPix directions (``12 * 4**level``) times ``6 * 2**level`` in-plane angles."""
    return 72 * 8 ** _check_level(level)


def so3_grid_euler(level: int) -> np.ndarray:
    """RELION Euler angles ``(n, 3)`` (rot, tilt, psi in degrees) of :func:`so3_healpix_grid`.

    Order: in-plane angle slowest, then the nested HEALPix direction, so that element
    ``k`` has direction ``k % npix`` and in-plane angle ``k // npix``.
    """
    level = _check_level(level)
    theta, phi = healpix_nest_angles(level)
    n_psi = 6 * 2**level
    psi = np.arange(n_psi) * (360.0 / n_psi)
    npix = theta.size
    eul = np.empty((npix * n_psi, 3))
    eul[:, 0] = np.tile(np.degrees(phi), n_psi)
    eul[:, 1] = np.tile(np.degrees(theta), n_psi)
    eul[:, 2] = np.repeat(psi, npix)
    return eul


def so3_healpix_grid(level: int) -> np.ndarray:
    """The SO(3) grid at ``level`` as RELION matrices ``A``, ``(72 * 8**level, 3, 3)`` float64."""
    return euler_to_matrix(so3_grid_euler(level))


def grid_spacing_deg(level: int) -> float:
    """Nominal spacing of the SO(3) grid: the in-plane step ``360 / (6 * 2**level)`` degrees (≈ the HEALPix pixel size)."""
    return 360.0 / (6 * 2 ** _check_level(level))


def nearest_grid_index(rotations, grid, *, chunk: int = 4096) -> np.ndarray:
    """Index of the grid rotation nearest (geodesic angle) to each rotation.

    ``rotations``: ``(n, 3, 3)``; ``grid``: ``(m, 3, 3)`` (numpy or torch). Exact: the
    largest ``trace(R G^T)`` over the whole grid, computed as one matrix product per chunk.
    Returns ``(n,)`` int64.
    """
    r = torch.as_tensor(np.asarray(rotations, dtype=np.float32).reshape(-1, 9))
    g = torch.as_tensor(np.asarray(grid, dtype=np.float32).reshape(-1, 9))
    out = np.empty(r.shape[0], dtype=np.int64)
    for s in range(0, r.shape[0], chunk):
        out[s:s + chunk] = (r[s:s + chunk] @ g.T).argmax(dim=1).numpy()
    return out


def local_offsets(*, max_angle_deg: float, step_deg: float) -> np.ndarray:
    """Small rotations ``Δ`` (``(k, 3, 3)``, identity first) for local refinement ``A -> A Δ``.

    A cubic lattice of rotation vectors inside a ball (:func:`..geometry.local_rotation_grid`
    about the identity).
    """
    return local_rotation_grid(np.eye(3), max_angle_deg=max_angle_deg, step_deg=step_deg)
