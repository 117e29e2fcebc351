"""Which Fourier samples a subtomogram holds: the missing wedge times the Nyquist sphere.

The one place the front ends (``cryoalign align / average / cluster``, the "Align & average"
and "Cluster" widgets) and the simulators get a particle's observed Fourier mask from.
Geometry (tilt axis y, beam along z) as in :func:`..fourier.missing_wedge_mask`.
"""

from __future__ import annotations

import numpy as np
import torch

from .fourier import frequency_radius, missing_wedge_mask

__all__ = ["observed_fourier_mask", "particle_fourier_mask"]


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
