"""Missing-wedge-aware (constrained) correlation of subtomograms.

The constrained correlation (Förster et al. 2008; used by H-T align, Xu et al. 2012, and
F&A align, Chen et al. 2013) compares two volumes only over the Fourier samples observed in
*both*: with Fourier masks ``M_a`` and ``M_b`` (1 = measured),

    cc(t) = sum_k M_a M_b A(k) conj(B(k)) e^{2 pi i k t}  /  sqrt(sum |A|^2 M_a M_b  *  sum |B|^2 M_a M_b)

with the DC term left out (so the means do not count) and ``|k|`` up to ``max_frequency``.
``cc(0)`` is the Pearson correlation of the two volumes filtered to the common region;
``cc(t)`` for every shift ``t`` comes from one inverse FFT.

Fourier masks are given as the project stores them (``SubtomogramSet.mask``,
``observed_mask.mrc``): real arrays ``(z, y, x)`` on the full grid, **fftshift-ed** (DC at
index ``N // 2``), values in [0, 1]. Internally they are used in the unshifted ``rfftn``
layout ``(z, y, x // 2 + 1)``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..fourier import frequency_radius

__all__ = ["band_mask", "constrained_correlation", "mask_to_rfft", "rfft_weights"]


def _tensor(x, *, device, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    arr = np.ascontiguousarray(np.asarray(x))
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).to(device=device, dtype=dtype)


def mask_to_rfft(mask: torch.Tensor) -> torch.Tensor:
    """fftshift-ed full-grid Fourier mask(s) ``(..., z, y, x)`` -> unshifted rfft layout ``(..., z, y, x//2+1)``."""
    m = torch.fft.ifftshift(mask, dim=(-3, -2, -1))
    return m[..., : mask.shape[-1] // 2 + 1]


def rfft_weights(shape, *, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Multiplicity of each rfft sample in the full spectrum (1 for the x = 0 and Nyquist planes, else 2),
    shape ``(1, 1, x//2+1)``; sums over the rfft half times these equal sums over the full grid."""
    nx = int(shape[-1])
    w = torch.full((nx // 2 + 1,), 2.0, device=device, dtype=dtype)
    w[0] = 1.0
    if nx % 2 == 0:
        w[-1] = 1.0
    return w.view(1, 1, -1)


def band_mask(shape, *, max_frequency: float = 0.5, min_frequency: float = 0.0, device="cpu") -> torch.Tensor:
    """rfft-layout 0/1 mask of ``min_frequency < |k| <= max_frequency`` (cycles/voxel); DC always excluded."""
    r = frequency_radius(tuple(int(s) for s in shape), rfft=True, device=device)
    keep = (r <= float(max_frequency) + 1e-9) & (r > max(float(min_frequency), 0.0) + 1e-9)
    return keep.to(torch.float32)


def constrained_correlation(a, b, *, mask_a=None, mask_b=None, max_frequency: float = 0.5, device="cpu") -> np.ndarray:
    """Constrained correlation at zero shift of volume pairs (the score of an alignment).

    Parameters
    ----------
    a, b : arrays/tensors ``(z, y, x)`` or ``(n, z, y, x)`` (broadcast against each other)
    mask_a, mask_b : Fourier masks (fftshift-ed, full grid) ``(z, y, x)`` or ``(n, z, y, x)``;
        None = everything observed
    max_frequency : highest spatial frequency used, cycles/voxel (0.5 = Nyquist)
    device : torch device

    Returns
    -------
    ndarray ``(n,)`` (or a 0-d array for single volumes), values in [-1, 1].
    """
    ta = _tensor(a, device=device)
    tb = _tensor(b, device=device)
    single = ta.ndim == 3 and tb.ndim == 3
    if ta.ndim == 3:
        ta = ta[None]
    if tb.ndim == 3:
        tb = tb[None]
    shape = tuple(ta.shape[-3:])
    if tuple(tb.shape[-3:]) != shape:
        raise ValueError(f"volumes of one shape needed, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    fa = torch.fft.rfftn(ta, dim=(-3, -2, -1))
    fb = torch.fft.rfftn(tb, dim=(-3, -2, -1))
    m = band_mask(shape, max_frequency=max_frequency, device=device) * rfft_weights(shape, device=device)
    if mask_a is not None:
        m = m * mask_to_rfft(_tensor(mask_a, device=device))
    if mask_b is not None:
        m = m * mask_to_rfft(_tensor(mask_b, device=device))
    cross = (fa * fb.conj()).real * m
    pa = (fa.abs() ** 2) * m
    pb = (fb.abs() ** 2) * m
    dims = (-3, -2, -1)
    num = cross.sum(dims)
    den = torch.sqrt(pa.sum(dims) * pb.sum(dims)).clamp(min=1e-30)
    out = (num / den).detach().cpu().numpy().astype(np.float64)
    return out[0] if single else out
