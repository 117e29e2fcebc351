"""Evaluation of marker localisation and deformation estimates (SparseAlign eq. 27-29).

* :func:`match_markers`: one-to-one matching of estimated and true markers (Hungarian, on
  3D distance), with a maximum match distance; unmatched estimates are *spurious*,
  unmatched true markers *missed*.
* :func:`deformation_errors`: ``E_markers`` (mean squared deformation error at ``t = 1``
  over the true marker positions, eq. 29) and ``E_global`` (over a regular grid of the
  whole sample box, eq. 28), in nm², via
  :func:`napari_cryoalign.backend.deformation.deformation_error`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..deformation import PolynomialDeformation, deformation_error

__all__ = ["MarkerMatch", "deformation_errors", "match_markers", "sample_grid_nm"]


@dataclass(frozen=True)
class MarkerMatch:
    """Matching of estimated to true markers.

    pairs : ``(K, 2)`` indices (estimate, truth) of matched markers
    distances_nm : ``(K,)`` 3D distances of the pairs (nm)
    errors_px : ``(K, 3)`` absolute (x, y, z) errors of the pairs in pixels
    missed : indices of true markers without a match
    spurious : indices of estimates without a match
    """

    pairs: np.ndarray
    distances_nm: np.ndarray
    errors_px: np.ndarray
    missed: np.ndarray
    spurious: np.ndarray

    @property
    def n_missed(self) -> int:
        return int(self.missed.size)

    @property
    def n_spurious(self) -> int:
        return int(self.spurious.size)

    @property
    def max_error_px(self) -> float:
        """Largest 3D distance of a matched pair, in pixels (nan when nothing matched)."""
        return float(np.max(np.linalg.norm(self.errors_px, axis=1))) if len(self.errors_px) else float("nan")

    @property
    def mean_error_px(self) -> float:
        return float(np.mean(np.linalg.norm(self.errors_px, axis=1))) if len(self.errors_px) else float("nan")


def match_markers(estimated_nm, true_nm, *, pixel_size_nm: float, max_distance_nm: float) -> MarkerMatch:
    """Hungarian matching on 3D distance; pairs further apart than ``max_distance_nm`` do not count."""
    e = np.asarray(estimated_nm, dtype=np.float64).reshape(-1, 3)
    t = np.asarray(true_nm, dtype=np.float64).reshape(-1, 3)
    if len(e) == 0 or len(t) == 0:
        return MarkerMatch(np.zeros((0, 2), int), np.zeros(0), np.zeros((0, 3)), np.arange(len(t)), np.arange(len(e)))
    d = np.linalg.norm(e[:, None] - t[None], axis=-1)
    big = 1e6 + d.max()
    cost = np.where(d <= max_distance_nm, d, big)
    i, j = linear_sum_assignment(cost)
    ok = d[i, j] <= max_distance_nm
    i, j = i[ok], j[ok]
    missed = np.setdiff1d(np.arange(len(t)), j)
    spurious = np.setdiff1d(np.arange(len(e)), i)
    return MarkerMatch(np.stack([i, j], 1), d[i, j], np.abs(e[i] - t[j]) / pixel_size_nm, missed, spurious)


def sample_grid_nm(extent_nm, n: int | tuple[int, int, int] = (41, 41, 11)) -> np.ndarray:
    """Regular grid ``(N, 3)`` over the box ``|x| <= X/2, |y| <= Y/2, |z| <= Z/2`` (``extent_nm = (X, Y, Z)``)."""
    ext = np.asarray(extent_nm, dtype=np.float64).reshape(3)
    ns = (n, n, n) if isinstance(n, int) else tuple(n)
    axes = [np.linspace(-e / 2, e / 2, k) if e > 0 else np.zeros(1) for e, k in zip(ext, ns)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def deformation_errors(true: PolynomialDeformation, estimate: PolynomialDeformation, true_positions_nm, *,
                       extent_nm, component: str | None = "z", grid=(41, 41, 11), t: float = 1.0) -> dict:
    """``{"E_markers": ..., "E_global": ...}`` in nm² (SparseAlign eq. 28-29) at time ``t``.

    ``extent_nm = (X, Y, Z)`` is the sample box (field of view and slab thickness; Y = 0 for
    the 2D geometry); ``component="z"`` compares D_z only as the paper does, None the full vector.
    """
    pts = np.asarray(true_positions_nm, dtype=np.float64).reshape(-1, 3)
    g = sample_grid_nm(extent_nm, grid)
    return {
        "E_markers": deformation_error(true, estimate, pts, t=t, component=component) if len(pts) else float("nan"),
        "E_global": deformation_error(true, estimate, g, t=t, component=component),
    }
