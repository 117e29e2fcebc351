"""CenterNet-style Gaussian heatmap targets on the network's output grid.

Each labelled particle centre becomes a Gaussian peak of height 1 at its nearest output
voxel (the *true positive*, ``y == 1``); its neighbours get ``0 < y < 1`` (*soft
positives*); every voxel no peak reaches (``y < floor``) is *unlabelled*, ``-1``. Peaks of
nearby particles are merged by maximum. Places the user marked as *not* a particle (removed
picks; :func:`mark_negatives`) are *known negatives*, ``-2``, within a ball around each
(positives are never overwritten).

Width: the Gaussian is isotropic in physical space with ``sigma = sigma_fraction *
diameter`` (input voxels); on the output grid (stride ``(1, 2, 2)``) that is ``sigma`` slices
in z and ``sigma / 2`` voxels in y and x.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["heatmap_sigma", "input_to_output_zyx", "output_to_input_xyz", "make_targets", "mark_negatives",
           "UNLABELLED", "NEGATIVE"]

#: target value of unlabelled voxels
UNLABELLED = -1.0
#: target value of known-negative voxels (around places marked as not a particle)
NEGATIVE = -2.0


def heatmap_sigma(diameter_voxels: float, *, sigma_fraction: float = 0.125, stride: Sequence[int] = (1, 2, 2)):
    """Per-axis Gaussian sigma ``(z, y, x)`` in *output* voxels for a particle ``diameter_voxels`` wide.

    ``sigma = sigma_fraction * diameter`` input voxels, divided by the stride of each axis and
    at least 0.5 output voxels (so the true-positive centre keeps soft-positive neighbours).
    """
    s = sigma_fraction * float(diameter_voxels)
    return tuple(max(0.5, s / float(st)) for st in stride)


def input_to_output_zyx(coordinates_xyz: np.ndarray, stride: Sequence[int] = (1, 2, 2)) -> np.ndarray:
    """Input-voxel coordinates ``(n, 3)`` (x, y, z) -> nearest output-voxel indices ``(n, 3)`` (z, y, x), int.

    Output voxel ``(k, j, i)`` has its centre at input ``(2i + 0.5, 2j + 0.5, k)`` for stride 2.
    """
    c = np.asarray(coordinates_xyz, dtype=np.float64).reshape(-1, 3)[:, ::-1]  # (z, y, x)
    st = np.asarray(stride, dtype=np.float64)
    off = (st - 1.0) / 2.0
    return np.floor((c - off) / st + 0.5).astype(np.int64)


def output_to_input_xyz(indices_zyx: np.ndarray, stride: Sequence[int] = (1, 2, 2)) -> np.ndarray:
    """Output-voxel indices (or sub-voxel positions) ``(n, 3)`` (z, y, x) -> input coordinates ``(n, 3)`` (x, y, z)."""
    ind = np.asarray(indices_zyx, dtype=np.float64).reshape(-1, 3)
    st = np.asarray(stride, dtype=np.float64)
    return (ind * st + (st - 1.0) / 2.0)[:, ::-1].copy()


def _patch_slices(centre, half, shape):
    """``(grid slices, patch slices)`` of a ``2 half + 1`` patch centred on voxel ``centre``, clipped
    to a grid of ``shape``; None when nothing of it is inside."""
    lo = np.asarray(centre) - half
    hi = np.asarray(centre) + half + 1
    dst, src = [], []
    for a in range(3):
        d0, d1 = max(int(lo[a]), 0), min(int(hi[a]), int(shape[a]))
        if d0 >= d1:
            return None
        dst.append(slice(d0, d1))
        src.append(slice(d0 - int(lo[a]), d1 - int(lo[a])))
    return tuple(dst), tuple(src)


def make_targets(
    shape_out: Sequence[int],
    centres_out_zyx: np.ndarray,
    *,
    sigma_zyx: Sequence[float],
    floor: float = 1e-3,
) -> torch.Tensor:
    """Target heatmap on the output grid.

    Parameters
    ----------
    shape_out : ``(z, y, x)`` of the output grid
    centres_out_zyx : ``(n, 3)`` integer output-voxel indices (z, y, x) of labelled centres;
        centres outside the grid still contribute their tails
    sigma_zyx : Gaussian sigma per axis in output voxels
    floor : values below it are unlabelled

    Returns
    -------
    torch.Tensor ``shape_out`` float32: 1 at each centre, ``(0, 1)`` around it, -1 elsewhere.
    """
    shape_out = tuple(int(s) for s in shape_out)
    out = torch.zeros(shape_out, dtype=torch.float32)
    cen = np.asarray(centres_out_zyx, dtype=np.int64).reshape(-1, 3)
    sig = np.asarray(sigma_zyx, dtype=np.float64)
    rad = np.ceil(sig * math.sqrt(-2.0 * math.log(floor))).astype(np.int64)
    # one small Gaussian patch, pasted (max-merged) at every centre
    axes = [torch.arange(-r, r + 1, dtype=torch.float32) for r in rad]
    g = torch.ones(1)
    for ax, s in zip(axes, sig):
        g = g[..., None] * torch.exp(-(ax**2) / (2.0 * s * s))
    g = g.reshape(*(2 * rad + 1))
    for c in cen:
        sl = _patch_slices(c, rad, shape_out)
        if sl is not None:
            region = out[sl[0]]
            torch.maximum(region, g[sl[1]], out=region)
    out[out < floor] = UNLABELLED
    return out


def mark_negatives(target: torch.Tensor, centres_out_zyx: np.ndarray, *, radius_zyx: Sequence[float]) -> torch.Tensor:
    """Mark known negatives in place: unlabelled voxels of ``target`` within the ellipsoid of
    semi-axes ``radius_zyx`` (output voxels) around each centre become :data:`NEGATIVE`.

    ``centres_out_zyx`` ``(n, 3)`` integer output-voxel indices (z, y, x); voxels that are
    (soft) positives keep their value. Returns ``target``.
    """
    cen = np.asarray(centres_out_zyx, dtype=np.int64).reshape(-1, 3)
    rad = np.maximum(np.asarray(radius_zyx, dtype=np.float64), 0.5)
    ext = np.ceil(rad).astype(np.int64)
    axes = [torch.arange(-e, e + 1, dtype=torch.float32) / float(r) for e, r in zip(ext, rad)]
    ball = (axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2) <= 1.0
    for c in cen:
        sl = _patch_slices(c, ext, target.shape)
        if sl is not None:
            region = target[sl[0]]
            region[ball[sl[1]] & (region == UNLABELLED)] = NEGATIVE
    return target
