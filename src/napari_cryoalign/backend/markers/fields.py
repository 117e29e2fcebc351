"""The deformation as fields on the detector grid, for display (vectors, |D| image).

Coordinates: grid points are pixel indices ``(v, u)`` of the tilt images (``v`` along y,
``u`` along x); the sample point under pixel ``(v, u)`` at tilt 0 is
``x = (u - nx // 2) p``, ``y = (v - ny // 2) p``, ``z = z_nm`` (default 0: the slab centre).
"""

from __future__ import annotations

import numpy as np

from ..deformation import PolynomialDeformation
from .forward import MarkerGeometry

__all__ = ["DeformationField", "deformation_field", "image_index_at_time"]


class DeformationField:
    """``points_vu (N, 2)`` pixel indices, ``displacement_nm (N, 3)`` (D_x, D_y, D_z), ``apparent_px (N, 2)``
    (dv, du) shift seen in the tilt image ``image_index``, ``magnitude_nm (ny_g, nx_g)`` |D| on the grid,
    ``grid_shape``, ``step_px``, ``t``."""

    def __init__(self, points_vu, displacement_nm, apparent_px, magnitude_nm, grid_shape, step_px, t, image_index):
        self.points_vu = points_vu
        self.displacement_nm = displacement_nm
        self.apparent_px = apparent_px
        self.magnitude_nm = magnitude_nm
        self.grid_shape = grid_shape
        self.step_px = step_px
        self.t = t
        self.image_index = image_index


def image_index_at_time(geometry: MarkerGeometry, t: float) -> int:
    """Stack index of the image acquired closest to time ``t``."""
    return int(np.argmin(np.abs(np.asarray(geometry.times) - float(t))))


def deformation_field(deformation: PolynomialDeformation, geometry: MarkerGeometry, *, t: float = 1.0,
                      step_px: int | None = None, z_nm: float = 0.0) -> DeformationField:
    """``D(r, t)`` on a regular grid of the field of view (every ``step_px`` pixels; default 16 arrows per side)."""
    ny, nx = geometry.detector_shape
    step = int(step_px) if step_px else max(1, max(nx, ny) // 16)
    u0, v0 = geometry.centre_px
    us = np.arange(u0 % step, nx, step)
    vs = np.array([0]) if geometry.line_detector else np.arange(v0 % step, ny, step)
    vv, uu = np.meshgrid(vs, us, indexing="ij")
    p = geometry.pixel_size_nm
    pts = np.stack([(uu - u0) * p, (0 * vv if geometry.line_detector else (vv - v0) * p),
                    np.full(uu.shape, float(z_nm))], -1).reshape(-1, 3)
    d = np.asarray(deformation.displacement_at(pts, float(t)))
    i = image_index_at_time(geometry, t)
    th = np.radians(geometry.tilt_angles_deg[i])
    du = (d[:, 0] * np.cos(th) + d[:, 2] * np.sin(th)) / p
    dv = np.zeros_like(du) if geometry.line_detector else d[:, 1] / p
    mag = np.linalg.norm(d, axis=1).reshape(uu.shape)
    return DeformationField(np.stack([vv.ravel(), uu.ravel()], 1).astype(np.float64), d, np.stack([dv, du], 1), mag,
                            uu.shape, step, float(t), i)
