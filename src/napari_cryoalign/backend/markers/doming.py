"""The doming-model baseline (Fernandez et al. 2018; SparseAlign eq. 10-11): fit from traced markers.

Input: *traced* marker positions, i.e. the projected centre of every marker in every
tilt image with known correspondence (what template matching + tracking gives; here the
simulator's truth). The marker-based loss (eq. 11)

    ``sum_t sum_j || q_tj - A_theta_t (r_j + D_t(r_j, P)) ||^2``

is minimised over the marker positions ``r_j`` and the deformation parameters ``P`` with
the same polynomial model (:class:`PolynomialDeformation`) and projection as SparseAlign
(:func:`~napari_cryoalign.backend.markers.forward.projected_positions_px`), by L-BFGS-B
on all unknowns together (torch autograd gradients). The initial positions come from a
per-marker linear least-squares fit without deformation (``u = x cos + z sin``, ``v = y``).
Global shifts and rotations of the original method are not estimated (the tilt series is
assumed globally aligned, as in SparseAlign's experiments).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InputError
from ..deformation import PolynomialDeformation
from .adcg import _lbfgsb
from .forward import MarkerGeometry, projected_positions_px

__all__ = ["DomingResult", "fit_doming_model", "static_positions_from_traces"]


@dataclass(frozen=True)
class DomingResult:
    """positions_nm ``(M, 3)``, deformation, final loss (px²), iterations, runtime (s)."""

    positions_nm: np.ndarray
    deformation: PolynomialDeformation
    loss_px2: float
    rms_px: float
    runtime_s: float


def static_positions_from_traces(traces_px, geometry: MarkerGeometry) -> np.ndarray:
    """Least-squares ``(x, y, z)`` nm of each marker from its trace, ignoring deformation."""
    q = np.asarray(traces_px, dtype=np.float64)
    th = np.radians(geometry.tilt_angles_deg)
    a = np.stack([np.cos(th), np.sin(th)], 1)  # (T, 2)
    u0, v0 = geometry.centre_px
    u = (q[..., 0] - u0) * geometry.pixel_size_nm  # (T, M)
    xz, *_ = np.linalg.lstsq(a, u, rcond=None)  # (2, M)
    y = np.zeros(q.shape[1]) if geometry.line_detector else (q[..., 1] - v0).mean(0) * geometry.pixel_size_nm
    return np.stack([xz[0], y, xz[1]], 1)


def fit_doming_model(traces_px, geometry: MarkerGeometry, *, degree: int = 2, time_degree: int = 1,
                     variables: str | None = None, components: str = "z", iterations: int = 500,
                     device="cpu") -> DomingResult:
    """Fit marker positions and deformation to traced marker positions (the DM baseline).

    Parameters
    ----------
    traces_px : ``(T, M, 2)`` projected centres ``(u, v)`` in pixel indices (stack order)
    geometry : :class:`MarkerGeometry`
    degree, time_degree, variables, components : the deformation model, as in SparseAlign
    iterations : L-BFGS-B iterations

    Returns
    -------
    :class:`DomingResult`
    """
    t0 = time.perf_counter()
    q = np.asarray(traces_px, dtype=np.float64)
    if q.ndim != 3 or q.shape[0] != geometry.n_tilts or q.shape[2] != 2:
        raise InputError(f"traces of shape ({geometry.n_tilts}, n_markers, 2)", field="traces_px",
                         got=f"shape {q.shape}")
    if variables is None:
        variables = "xz" if geometry.line_detector else "xy"
    model = PolynomialDeformation(degree=degree, time_degree=time_degree, variables=variables,
                                  length_scale_nm=geometry.field_of_view_nm[0])
    m = q.shape[1]
    p = geometry.pixel_size_nm
    pos0 = static_positions_from_traces(q, geometry)
    free_axes = [0, 2] if geometry.line_detector else [0, 1, 2]
    mask = np.zeros(model.coefficients.shape, dtype=bool)
    for c in components:
        mask["xyz".index(c)] = True
    mask_t = torch.as_tensor(mask, device=device)
    target = torch.as_tensor(q, device=device)
    pos_base = torch.as_tensor(pos0, device=device)
    coef_base = torch.zeros(model.coefficients.shape, dtype=torch.float64, device=device)
    n_pos = m * len(free_axes)

    def fun(x):
        x = x.to(device)
        pos = pos_base.clone()
        pos[:, free_axes] = x[:n_pos].reshape(m, len(free_axes)) * p
        coef = coef_base.masked_scatter(mask_t, x[n_pos:] * p)
        r = projected_positions_px(pos, geometry, model, coefficients=coef) - target
        if geometry.line_detector:
            r = r[..., :1]
        return (r * r).sum()

    x0 = np.concatenate([pos0[:, free_axes].ravel() / p, np.zeros(int(mask.sum()))])
    x, loss = _lbfgsb(fun, x0, None, iterations)
    pos = pos0.copy()
    pos[:, free_axes] = x[:n_pos].reshape(m, len(free_axes)) * p
    coef = np.zeros(model.coefficients.shape)
    coef[mask] = x[n_pos:] * p
    n_obs = q.shape[0] * m * (1 if geometry.line_detector else 2)
    return DomingResult(pos, model.with_coefficients(coef), float(loss), float(np.sqrt(loss / max(n_obs, 1))),
                        time.perf_counter() - t0)
