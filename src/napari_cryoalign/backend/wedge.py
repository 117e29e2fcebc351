"""Which Fourier samples a subtomogram holds: the missing wedge times the Nyquist sphere.

* :func:`missing_wedge_mask` -- the Fourier samples a single-axis tilt series measures
  (tilt axis y, beam along z);
* :func:`observed_fourier_mask` -- that times the Nyquist sphere;
* :func:`particle_fourier_mask` -- the one place the front ends (``cryoalign align / average /
  cluster``, the "Align & average" and "Cluster" widgets) and the simulators get a particle's
  observed Fourier mask from.

Fourier layouts as in :mod:`.fourier` (unshifted; ``rfft=True``: the half last axis of ``rfftn``).
"""

from __future__ import annotations

import numpy as np
import torch

from .fourier import frequency_grid, frequency_radius

__all__ = ["missing_wedge_mask", "observed_fourier_mask", "particle_fourier_mask"]


def missing_wedge_mask(
    shape: tuple[int, int, int],
    *,
    tilt_min_deg: float = -60.0,
    tilt_max_deg: float = 60.0,
    rfft: bool = False,
    device="cpu",
    dtype=torch.float32,
) -> torch.Tensor:
    """Binary mask of the Fourier samples a single-axis tilt series measures.

    Geometry: tilt axis = y, beam along z. A tilt by ``theta`` (the specimen rotated by the
    right-handed rotation about +y, acting on (x, y, z)) measures the central plane that
    contains the ky axis and the direction ``(kx, kz) = (cos theta, sin theta)``. A sample
    ``(kx, ky, kz)`` is kept iff ``atan(kz / kx)`` (degrees, in [-90, 90]) lies within
    ``[tilt_min_deg, tilt_max_deg]`` (continuous tilt range); samples with ``kx = kz = 0``
    (the ky axis, including DC) lie in every plane and are always kept.

    Parameters
    ----------
    shape : ``(z, y, x)`` real-space shape
    tilt_min_deg, tilt_max_deg : tilt range in degrees (default -60..60: the missing wedge is
        the 60° double cone of directions within 30° of the beam axis kz)
    rfft : unshifted rfft layout ``(z, y, x//2+1)`` if true, else unshifted ``(z, y, x)``

    Returns
    -------
    torch.Tensor of 0/1 values, dtype ``dtype``. ``torch.fft.fftshift`` it for display.
    """
    if len(shape) != 3:
        raise ValueError(f"shape must be (z, y, x), got {shape}")
    tilt_min_deg, tilt_max_deg = float(tilt_min_deg), float(tilt_max_deg)  # numpy scalars would broadcast as tensors
    if not -90.0 <= tilt_min_deg <= tilt_max_deg <= 90.0:
        raise ValueError(f"need -90 <= tilt_min_deg <= tilt_max_deg <= 90, got {tilt_min_deg}, {tilt_max_deg}")
    fz, fy, fx = frequency_grid(shape, rfft=rfft, device=device, dtype=torch.float64)
    fz, fy, fx = torch.broadcast_tensors(fz, fy, fx)
    # angle of (kx, kz) from the kx axis, folded into [-90, 90] (a plane contains k and -k)
    ang = torch.rad2deg(torch.atan2(fz, fx))
    ang = torch.where(ang > 90.0, ang - 180.0, ang)
    ang = torch.where(ang < -90.0, ang + 180.0, ang)
    eps = 1e-9
    inside = (ang >= tilt_min_deg - eps) & (ang <= tilt_max_deg + eps)
    # kx == 0 with kz != 0 is at +-90: both ends identify
    vertical = (fx.abs() < eps) & (fz.abs() > eps)
    inside = inside | (vertical & ((tilt_max_deg >= 90.0 - eps) | (tilt_min_deg <= -90.0 + eps)))
    on_axis = (fx.abs() < eps) & (fz.abs() < eps)
    return (inside | on_axis).to(dtype)


def observed_fourier_mask(
    shape: tuple[int, int, int],
    *,
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
    rfft: bool = True,
    device="cpu",
) -> torch.Tensor:
    """Missing-wedge mask times the Nyquist sphere ``|k| <= 1/2`` (unshifted; rfft layout by default).

    ``shape`` is ``(z, y, x)``; ``tilt_range_deg`` (min, max) in degrees, None for the sphere
    alone (no wedge). Returns 0/1 float32 values, ``(z, y, x // 2 + 1)`` with ``rfft`` else
    ``(z, y, x)``, unshifted (DC at index 0).
    """
    sphere = (frequency_radius(shape, rfft=rfft, device=device) <= 0.5 + 1e-9).to(torch.float32)
    if tilt_range_deg is None:
        return sphere
    lo, hi = tilt_range_deg
    return sphere * missing_wedge_mask(shape, tilt_min_deg=lo, tilt_max_deg=hi, rfft=rfft, device=device)


def particle_fourier_mask(box: int, *, tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0)) -> np.ndarray | None:
    """The observed Fourier mask of ``box``³ particles as the alignment, averaging and clustering jobs take it.

    Parameters
    ----------
    box : edge of the cubic particle boxes in voxels
    tilt_range_deg : the tilt series' range (min, max) in degrees; None: the particles are
        fully observed (no mask at all)

    Returns
    -------
    ``(box, box, box)`` float32 of 0/1, **fftshift-ed** (DC at index ``box // 2``, the layout
    of ``particle_masks`` in :mod:`.align`), or None for fully observed particles.
    """
    if tilt_range_deg is None:
        return None
    lo, hi = (float(v) for v in tilt_range_deg)
    mask = observed_fourier_mask((int(box),) * 3, tilt_range_deg=(lo, hi), rfft=False)
    return torch.fft.fftshift(mask).numpy().astype(np.float32)
