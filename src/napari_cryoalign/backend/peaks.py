"""The peak of a correlation map, to sub-voxel precision: one rule for every aligner and shift search.

The maps are circular cross-correlation maps in unshifted FFT layout (what ``irfftn`` /
``ifft2`` of a cross-power spectrum gives): the sample at index ``i`` of an axis of ``n``
samples stands for the displacement ``i`` wrapped to ``[-n/2, n/2)`` (``torch.fft.fftfreq(n) * n``).
Maps come in batches: ``(B, y, x)`` for images, ``(B, z, y, x)`` for volumes. Displacements
are returned in ``(x, y)`` / ``(x, y, z)`` order, in pixels / voxels.

**The integer peak** is the largest sample within the search window ``|d| <= max_shift``: a
disc / ball (``window="ball"``) or, per axis, a square / cube (``window="cube"``).

**The sub-voxel offset** along each axis is the vertex of the parabola through the peak ``c0``
and its two neighbours ``c-`` and ``c+`` on that axis (taken around the edges of the map, which
is periodic, and also where they lie outside the window):
``delta = (c- - c+) / (2 (c- - 2 c0 + c+))``, clipped to ``[-0.5, 0.5]``. Where the three samples
are not strictly concave (``c- - 2 c0 + c+ >= -1e-12``: a flat or convex neighbourhood, e.g. a
plateau, or a peak on the window's edge with a larger neighbour outside it) or a neighbour is
not finite, that axis gets no sub-voxel offset (``delta = 0``).
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["find_peak", "peak_window", "subpixel_offsets"]

_CONCAVE = -1e-12  # c- - 2 c0 + c+ below this: a strictly concave neighbourhood


def _spatial_ndim(maps: torch.Tensor) -> int:
    if maps.ndim not in (3, 4):
        raise ValueError(f"maps must be a batch (B, y, x) or (B, z, y, x), got shape {tuple(maps.shape)}")
    return maps.ndim - 1


def _signed(n: int, device, dtype=torch.float32) -> torch.Tensor:
    """The displacement of each index of an axis of ``n`` samples, wrapped to ``[-n/2, n/2)``."""
    return torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=dtype)


def peak_window(shape: Sequence[int], max_shift: float, *, window: str = "ball", device="cpu") -> torch.Tensor:
    """The displacements a peak search may return, as a boolean mask of the map's ``shape``.

    Parameters
    ----------
    shape : spatial shape of the maps, ``(y, x)`` or ``(z, y, x)``
    max_shift : search radius in pixels / voxels (``>= 0``)
    window : ``"ball"`` (``|d| <= max_shift``) or ``"cube"`` (``|d_i| <= max_shift`` on each axis)

    Returns
    -------
    torch.Tensor ``shape``, bool, in the maps' unshifted layout; a tolerance of 1e-6 keeps
    displacements exactly on the boundary.
    """
    if window not in ("ball", "cube"):
        raise ValueError(f"window must be 'ball' or 'cube', got {window!r}")
    nd = len(shape)
    axes = []
    for axis, n in enumerate(shape):
        view = [1] * nd
        view[axis] = -1
        axes.append(_signed(int(n), device, torch.float64).view(view))
    if window == "ball":
        ok = sum(d * d for d in axes) <= float(max_shift) ** 2 + 1e-6
    else:
        ok = torch.ones((1,) * nd, dtype=torch.bool, device=device)
        for d in axes:
            ok = ok & (d.abs() <= float(max_shift) + 1e-6)
    return ok.expand(*(int(n) for n in shape))


def subpixel_offsets(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Sub-voxel offsets of the peaks at ``index`` by the parabola rule of the module docstring.

    Parameters
    ----------
    maps : ``(B, y, x)`` or ``(B, z, y, x)`` correlation maps (unshifted layout, periodic)
    index : ``(B,)`` flat index of each map's integer peak (``maps.reshape(B, -1)`` order)

    Returns
    -------
    torch.Tensor ``(B, 2)`` ``(x, y)`` or ``(B, 3)`` ``(x, y, z)``, float, each in ``[-0.5, 0.5]``; 0 on
    the axes where the neighbourhood is not strictly concave or a neighbour is not finite. No gradient.
    """
    nd = _spatial_ndim(maps)
    c = maps.detach()
    b, shape = c.shape[0], c.shape[1:]
    ar = torch.arange(b, device=c.device)
    idx = list(torch.unravel_index(index.to(c.device), tuple(shape)))  # array order (z, y, x) / (y, x)
    c0 = c[(ar, *idx)]
    out = []
    for k in range(nd):  # k: x, y[, z]
        axis = nd - 1 - k
        lo, hi = list(idx), list(idx)
        lo[axis] = (idx[axis] - 1) % shape[axis]
        hi[axis] = (idx[axis] + 1) % shape[axis]
        cm, cp = c[(ar, *lo)], c[(ar, *hi)]
        den = cm - 2.0 * c0 + cp
        ok = torch.isfinite(den) & (den < _CONCAVE)
        delta = 0.5 * (cm - cp) / torch.where(ok, den, torch.full_like(den, -1.0))
        out.append(torch.where(ok, delta.clamp(-0.5, 0.5), torch.zeros_like(delta)))
    return torch.stack(out, dim=1)


def find_peak(
    maps: torch.Tensor,
    *,
    max_shift: float | None = None,
    window: str = "ball",
    subpixel: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The displacement of each map's peak within ``max_shift``, to sub-voxel precision.

    Parameters
    ----------
    maps : ``(B, y, x)`` or ``(B, z, y, x)`` circular correlation maps in unshifted layout
        (index ``i`` = displacement ``i`` wrapped to ``[-n/2, n/2)``)
    max_shift : search radius in pixels / voxels; None = the whole map
    window : ``"ball"`` (``|d| <= max_shift``) or ``"cube"`` (each axis within ``max_shift``)
    subpixel : add the parabolic sub-voxel offset (:func:`subpixel_offsets`; none on axes whose
        neighbourhood is not strictly concave)

    Returns
    -------
    displacement : ``(B, 2)`` ``(x, y)`` or ``(B, 3)`` ``(x, y, z)``, pixels / voxels, float (no gradient)
    value : ``(B,)`` the map at the integer peak (differentiable through ``maps``)
    """
    nd = _spatial_ndim(maps)
    b, shape = maps.shape[0], tuple(maps.shape[1:])
    flat = maps.reshape(b, -1)
    search = flat.detach()
    if max_shift is not None:
        ok = peak_window(shape, max_shift, window=window, device=maps.device).reshape(1, -1)
        search = search.masked_fill(~ok, -torch.inf)
    index = search.argmax(dim=1)
    value = flat.gather(1, index[:, None])[:, 0]
    idx = torch.unravel_index(index, shape)  # array order
    dtype = maps.dtype if maps.is_floating_point() else torch.float32
    d = torch.stack([_signed(shape[a], maps.device, dtype)[idx[a]] for a in range(nd - 1, -1, -1)], dim=1)
    if subpixel:
        d = d + subpixel_offsets(maps, index).to(dtype)
    return d, value
