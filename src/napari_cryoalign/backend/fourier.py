"""Fourier-space tools: frequency grids, FSC, filters, masks and resampling.

The CTF is in :mod:`.ctf`, the missing-wedge masks in :mod:`.wedge`.

Conventions
-----------
* Arrays are ``(z, y, x)`` volumes or ``(y, x)`` images (see ``shared/CONVENTIONS.md``).
* Frequencies are in cycles per voxel (``1/voxel``); divide by the voxel size in Å to get
  ``1/Å``. Nyquist is 0.5.
* Fourier arrays are *unshifted* (DC at index 0, ``torch.fft.fftfreq`` order). With
  ``rfft=True`` the last axis is the half axis of ``torch.fft.rfftn`` (``x // 2 + 1`` entries).
* Every function accepting an array takes a numpy array or a torch tensor and returns the
  same kind (numpy in -> numpy out, on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ._tensor import as_tensor as _as_tensor
from ._tensor import to_caller as _back

__all__ = [
    "frequency_grid",
    "frequency_radius",
    "FSCResult",
    "fsc",
    "resolution_at",
    "radial_average",
    "lowpass",
    "bandpass",
    "sphere_mask",
    "fourier_crop_pad",
    "resample_voxel_size",
    "pad_or_crop",
    "power_spectrum",
]


# ----------------------------------------------------------------------------------------
# Frequency grids
# ----------------------------------------------------------------------------------------
def frequency_grid(
    shape: Sequence[int], *, rfft: bool = False, device="cpu", dtype=torch.float32
) -> tuple[torch.Tensor, ...]:
    """Per-axis frequency grids (cycles/voxel), unshifted, broadcastable to the Fourier array.

    Parameters
    ----------
    shape : real-space shape, ``(y, x)`` or ``(z, y, x)``
    rfft : if true the last axis has ``n // 2 + 1`` entries (``torch.fft.rfftn`` layout)

    Returns
    -------
    tuple of tensors, one per axis in array order, each shaped to broadcast (e.g. ``(z,1,1)``,
    ``(1,y,1)``, ``(1,1,x')``).
    """
    nd = len(shape)
    out = []
    for axis, n in enumerate(shape):
        if rfft and axis == nd - 1:
            f = torch.fft.rfftfreq(int(n), device=device, dtype=dtype)
        else:
            f = torch.fft.fftfreq(int(n), device=device, dtype=dtype)
        view = [1] * nd
        view[axis] = -1
        out.append(f.view(view))
    return tuple(out)


def frequency_radius(shape: Sequence[int], *, rfft: bool = False, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """``|k|`` in cycles/voxel on the (unshifted, optionally rfft) Fourier grid of ``shape``."""
    grids = frequency_grid(shape, rfft=rfft, device=device, dtype=dtype)
    r2 = sum(g * g for g in grids)
    return torch.sqrt(r2)


_radius = frequency_radius


# ----------------------------------------------------------------------------------------
# FSC
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FSCResult:
    """Fourier shell correlation.

    Attributes
    ----------
    frequency : ndarray ``(n_shells,)``, shell centre in cycles/voxel (0 .. 0.5)
    fsc : ndarray ``(n_shells,)``, correlation per shell (shell 0 = DC)
    n_shells : number of shells (``min(shape) // 2 + 1``)
    """

    frequency: np.ndarray
    fsc: np.ndarray
    n_shells: int


def _shell_index(shape, *, device) -> tuple[torch.Tensor, int]:
    n = min(shape)
    r = _radius(shape, rfft=True, device=device, dtype=torch.float64)
    idx = torch.round(r * n).long()
    n_shells = n // 2 + 1
    return idx, n_shells


def fsc(a, b, *, mask=None) -> FSCResult:
    """Fourier shell correlation of two volumes (or images) of the same shape.

    Parameters
    ----------
    a, b : arrays/tensors ``(z, y, x)`` (or ``(y, x)``)
    mask : optional real-space mask (same shape) multiplied onto both before the transform

    Returns
    -------
    FSCResult; shells are 1/N wide (N = smallest box edge), beyond Nyquist ignored.
    """
    ta, _ = _as_tensor(a, dtype=torch.float64)
    tb, _ = _as_tensor(b, dtype=torch.float64, device=ta.device)
    if ta.shape != tb.shape:
        raise ValueError(f"fsc needs two arrays of the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    if mask is not None:
        tm, _ = _as_tensor(mask, dtype=torch.float64, device=ta.device)
        ta = ta * tm
        tb = tb * tm
    fa = torch.fft.rfftn(ta)
    fb = torch.fft.rfftn(tb)
    idx, n_shells = _shell_index(tuple(ta.shape), device=ta.device)
    # weight 2 for rfft columns that stand for a conjugate pair
    nx = ta.shape[-1]
    w = torch.full((fa.shape[-1],), 2.0, dtype=torch.float64, device=ta.device)
    w[0] = 1.0
    if nx % 2 == 0:
        w[-1] = 1.0
    w = w.expand_as(idx)
    keep = idx < n_shells
    idxk = idx[keep]
    wk = w[keep]
    cross = torch.zeros(n_shells, dtype=torch.float64, device=ta.device)
    pa = torch.zeros_like(cross)
    pb = torch.zeros_like(cross)
    cross.index_add_(0, idxk, wk * (fa * fb.conj()).real[keep])
    pa.index_add_(0, idxk, wk * (fa.abs() ** 2)[keep])
    pb.index_add_(0, idxk, wk * (fb.abs() ** 2)[keep])
    denom = torch.sqrt(pa * pb)
    curve = torch.where(denom > 0, cross / denom.clamp(min=1e-300), torch.zeros_like(cross))
    n = min(ta.shape)
    freq = np.arange(n_shells, dtype=np.float64) / n
    return FSCResult(frequency=freq, fsc=curve.cpu().numpy(), n_shells=int(n_shells))


def resolution_at(result: FSCResult, threshold: float = 0.143, *, voxel_size_angstrom: float) -> float:
    """Resolution (Å) where the FSC first falls below ``threshold`` (0.143 or 0.5).

    Linear interpolation between the last shell above and the first shell below the
    threshold (shell 0 = DC is skipped). If the curve never drops below, returns the
    Nyquist resolution ``2 * voxel_size_angstrom``.
    """
    if voxel_size_angstrom <= 0:
        raise ValueError(f"voxel_size_angstrom must be > 0, got {voxel_size_angstrom}")
    f = np.asarray(result.frequency)
    c = np.asarray(result.fsc)
    for i in range(1, len(c)):
        if c[i] < threshold:
            c0, c1 = c[i - 1], c[i]
            t = min(1.0, max(0.0, (c0 - threshold) / (c0 - c1))) if c0 != c1 else 0.0
            freq = f[i - 1] + t * (f[i] - f[i - 1])
            return float(voxel_size_angstrom / max(freq, 1e-12))
    return float(2.0 * voxel_size_angstrom)


# ----------------------------------------------------------------------------------------
# Radial averages, filters, masks
# ----------------------------------------------------------------------------------------
def radial_average(array, *, center=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``array`` over shells of integer radius around ``center`` (default the box centre N//2).

    Useful for power spectra after ``fftshift``.

    Parameters
    ----------
    array : ``(y, x)`` or ``(z, y, x)`` real array
    center : index tuple in array order; default ``N // 2`` per axis

    Returns
    -------
    radii : ndarray ``(R,)`` integer radii in voxels (0 .. max distance to a corner)
    values : ndarray ``(R,)`` mean per radius (NaN where a shell is empty)
    """
    t, _ = _as_tensor(array, dtype=torch.float64)
    shape = tuple(t.shape)
    if center is None:
        center = tuple(n // 2 for n in shape)
    axes = [torch.arange(n, dtype=torch.float64) - c for n, c in zip(shape, center)]
    grids = torch.meshgrid(*axes, indexing="ij")
    r = torch.sqrt(sum(g * g for g in grids))
    idx = torch.round(r).long().reshape(-1)
    nbin = int(idx.max()) + 1
    s = torch.zeros(nbin, dtype=torch.float64).index_add_(0, idx, t.reshape(-1).cpu())
    cnt = torch.zeros(nbin, dtype=torch.float64).index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
    vals = torch.where(cnt > 0, s / cnt.clamp(min=1), torch.full_like(s, float("nan")))
    return np.arange(nbin), vals.numpy()


def _raised_cosine_lowpass(r: torch.Tensor, cutoff: float, width: float) -> torch.Tensor:
    if width <= 0:
        return (r <= cutoff).to(r.dtype)
    lo = cutoff - width / 2
    t = ((r - lo) / width).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def _filter(volume, make_filter):
    t, was_np = _as_tensor(volume)
    dims = tuple(range(-min(t.ndim, 3), 0)) if t.ndim <= 3 else (-3, -2, -1)
    spatial = tuple(t.shape[d] for d in dims)
    r = _radius(spatial, rfft=True, device=t.device, dtype=torch.float64)
    filt = make_filter(r, spatial).to(t.dtype)
    out = torch.fft.irfftn(torch.fft.rfftn(t, dim=dims) * filt, s=spatial, dim=dims)
    return _back(out.to(t.dtype), was_np)


def lowpass(volume, resolution_angstrom: float, *, voxel_size_angstrom: float, soft_edge: float = 2.0):
    """Low-pass filter to ``resolution_angstrom`` with a raised-cosine edge.

    Parameters
    ----------
    volume : ``(z, y, x)`` or ``(y, x)`` (or a batch ``(B, z, y, x)``)
    resolution_angstrom : cut-off resolution in Å (the filter is 0.5 at ``voxel/resolution`` cycles/voxel)
    voxel_size_angstrom : voxel size in Å
    soft_edge : width of the cosine edge in Fourier voxels (units of ``1/N``, N = largest edge); 0 = hard

    Returns
    -------
    Same kind and shape as ``volume``.
    """
    if resolution_angstrom <= 0 or voxel_size_angstrom <= 0:
        raise ValueError("resolution_angstrom and voxel_size_angstrom must be > 0")
    cutoff = voxel_size_angstrom / resolution_angstrom

    def make(r, spatial):
        return _raised_cosine_lowpass(r, cutoff, soft_edge / max(spatial))

    return _filter(volume, make)


def bandpass(
    volume,
    *,
    low_resolution_angstrom: float | None,
    high_resolution_angstrom: float | None,
    voxel_size_angstrom: float,
    soft_edge: float = 2.0,
):
    """Band-pass: keep spatial frequencies between ``1/low_resolution`` and ``1/high_resolution``.

    ``low_resolution_angstrom`` (e.g. 200 Å) removes coarser features (None = keep DC and all
    low frequencies); ``high_resolution_angstrom`` (e.g. 20 Å) removes finer detail (None =
    up to Nyquist). Raised-cosine edges ``soft_edge`` Fourier voxels wide. Same kind/shape out.
    """
    if voxel_size_angstrom <= 0:
        raise ValueError("voxel_size_angstrom must be > 0")

    def make(r, spatial):
        w = soft_edge / max(spatial)
        f = torch.ones_like(r)
        if high_resolution_angstrom is not None:
            f = f * _raised_cosine_lowpass(r, voxel_size_angstrom / high_resolution_angstrom, w)
        if low_resolution_angstrom is not None:
            f = f * (1.0 - _raised_cosine_lowpass(r, voxel_size_angstrom / low_resolution_angstrom, w))
        return f

    return _filter(volume, make)


def sphere_mask(
    shape: Sequence[int],
    radius: float,
    *,
    soft_edge: float = 0.0,
    center: Sequence[float] | None = None,
    device="cpu",
    dtype=torch.float32,
) -> torch.Tensor:
    """Real-space spherical (circular for 2D shapes) mask.

    Parameters
    ----------
    shape : ``(z, y, x)`` or ``(y, x)``
    radius : in voxels; the mask is 1 inside
    soft_edge : width in voxels of a raised-cosine fall-off outside ``radius`` (0 = hard edge)
    center : index in array order; default ``N // 2`` per axis

    Returns
    -------
    torch.Tensor of ``shape`` with values in [0, 1].
    """
    if center is None:
        center = [n // 2 for n in shape]
    axes = [torch.arange(n, device=device, dtype=torch.float64) - c for n, c in zip(shape, center)]
    grids = torch.meshgrid(*axes, indexing="ij")
    r = torch.sqrt(sum(g * g for g in grids))
    if soft_edge <= 0:
        m = (r <= radius).to(torch.float64)
    else:
        t = ((r - radius) / soft_edge).clamp(0.0, 1.0)
        m = 0.5 * (1.0 + torch.cos(math.pi * t))
    return m.to(dtype)


def power_spectrum(volume, *, log: bool = True, shifted: bool = True):
    """``|FFT|²`` of a volume/image (full layout, ``fftshift``-ed so DC is at N//2 when ``shifted``); ``log1p`` if ``log``."""
    t, was_np = _as_tensor(volume, dtype=torch.float64)
    p = torch.fft.fftn(t).abs() ** 2
    if shifted:
        p = torch.fft.fftshift(p)
    if log:
        p = torch.log1p(p)
    return _back(p.to(torch.float32), was_np)


# ----------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------
def pad_or_crop(volume, shape: Sequence[int], *, value: float = 0.0):
    """Centre-pad (with ``value``) or centre-crop to ``shape`` keeping the box centre ``N // 2`` fixed."""
    t, was_np = _as_tensor(volume)
    if len(shape) != t.ndim:
        raise ValueError(f"target shape {tuple(shape)} does not match array dims {tuple(t.shape)}")
    out = torch.full(tuple(int(s) for s in shape), float(value), dtype=t.dtype, device=t.device)
    src_sl, dst_sl = [], []
    for n_in, n_out in zip(t.shape, shape):
        c_in, c_out = n_in // 2, int(n_out) // 2
        lo = max(-c_in, -c_out)
        hi = min(n_in - c_in, int(n_out) - c_out)
        src_sl.append(slice(c_in + lo, c_in + hi))
        dst_sl.append(slice(c_out + lo, c_out + hi))
    out[tuple(dst_sl)] = t[tuple(src_sl)]
    return _back(out, was_np)


def fourier_crop_pad(volume, shape: Sequence[int]):
    """Resample by cropping or zero-padding the centred Fourier transform to ``shape``.

    The physical extent of the box is kept, so the voxel size changes by ``old_n / new_n``
    per axis; values are scaled so that the *mean density* is preserved. Real input only.
    """
    t, was_np = _as_tensor(volume, dtype=torch.float64)
    shape = tuple(int(s) for s in shape)
    F = torch.fft.fftshift(torch.fft.fftn(t))
    F = pad_or_crop(F.real, shape) + 1j * pad_or_crop(F.imag, shape)
    out = torch.fft.ifftn(torch.fft.ifftshift(F)).real
    out = out * (np.prod(shape) / np.prod(tuple(t.shape)))
    dt = volume.dtype if isinstance(volume, torch.Tensor) else torch.float32
    return _back(out.to(dt), was_np)


def resample_voxel_size(volume, *, from_voxel_angstrom: float, to_voxel_angstrom: float, pad: bool = True):
    """Change the voxel size by Fourier cropping/padding (band-limited resampling).

    A cube of ``n`` voxels becomes ``n' = n * from / to`` voxels covering the same extent. When
    ``n * from / to`` is not an integer and ``pad`` is true, the volume is first zero-padded
    (centred) to the smallest ``n >= n_old`` (up to ``2 n_old``) for which it is, within
    1e-4 relative, so that the voxel size is exactly the requested one; otherwise the nearest
    integer is used and the actual voxel size ``from * n / n'`` differs slightly.

    Parameters
    ----------
    volume : ``(z, y, x)`` real array (cube, or any shape when no padding is needed)
    from_voxel_angstrom, to_voxel_angstrom : voxel sizes in Å

    Returns
    -------
    (volume, actual_voxel_angstrom); values keep the same density scale (mean preserved).
    """
    if from_voxel_angstrom <= 0 or to_voxel_angstrom <= 0:
        raise ValueError("voxel sizes must be > 0")
    t, was_np = _as_tensor(volume)
    ratio = from_voxel_angstrom / to_voxel_angstrom
    n_old = max(t.shape)
    n_use = n_old
    if pad:
        for n in range(n_old, 2 * n_old + 1):
            m = n * ratio
            if abs(m - round(m)) < 1e-4 * max(m, 1.0) and round(m) >= 1:
                n_use = n
                break
    if n_use != n_old:
        t = pad_or_crop(t, tuple(s + (n_use - n_old) for s in t.shape))
    new_shape = tuple(max(1, int(round(n * ratio))) for n in t.shape)
    out = fourier_crop_pad(t, new_shape)
    actual = from_voxel_angstrom * t.shape[-1] / new_shape[-1]
    return _back(out, was_np), float(actual)
