"""Single-axis tilt geometry: projection, (weighted) back-projection and point projection.

Geometry (see ``shared/CONVENTIONS.md`` and ``docs/simulate_tomograms_tiltseries.md``)
-------------------------------------------------------------------------------------
* Volumes are ``(z, y, x)``; tilt series are ``(n_tilts, y, u)`` stacks; angles in degrees
  (IMOD ``.tlt``), in stack order.
* Parallel beam along z, tilt axis = the image **y** axis. Coordinates are measured from
  the centres, index ``N // 2`` on every axis (volume and detector).
* **Projection convention**: a point at ``(x, y, z)`` relative to the volume centre projects,
  at tilt angle ``theta``, onto detector coordinates

      ``u = x cos(theta) + z sin(theta)``,  ``v = y``

  (detector pixel index ``u + U // 2``, ``v + Y // 2``). This is the specimen turned by the
  right-handed rotation about +y and projected along z, i.e. SparseAlign's
  ``rho = z sin(a) + x cos(a)``; the tilt image at ``theta`` measures the central Fourier
  plane through ``ky`` and ``(kx, kz) = (cos theta, sin theta)``, as
  :func:`napari_cryoalign.backend.wedge.missing_wedge_mask` assumes.

Implementation
--------------
The projector is voxel-driven: every voxel deposits its value on the detector as its
footprint, a box of width ``|cos| + |sin|`` pixels centred on its projection, spread with
linear interpolation; the weights sum to 1 and have their centroid exactly at the projected
position (no holes, mass conserved, exact sub-pixel positions, no moire at 45°; at 0° it is
linear interpolation). For a chunk of tilts this is one sparse matrix ``A`` of shape
``(n_tilts * U, Z * X)`` (four non-zeros per voxel and tilt)
applied to the volume viewed as a ``(Z * X, Y)`` matrix: the y axis (the tilt axis) is the
dense batch dimension, so a whole chunk of tilts is a single sparse-dense product on the
device. Back-projection is the transpose ``A.T`` (the same footprint weights), so projection and
back-projection are exact adjoints. Memory is bounded by chunking tilts
(``max_nonzeros``) and y rows (``y_chunk``). Non-cubic slabs (e.g. ``z = 128, y = x = 512``)
are handled exactly: each ray collects every voxel it crosses, whatever the tilt.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ._tensor import as_tensor, to_caller as _back

__all__ = [
    "tilt_angles",
    "angular_weights",
    "project_tilt_series",
    "back_project",
    "wbp_filter",
    "filter_tilt_series",
    "weighted_back_projection",
    "project_points",
    "detector_center",
]

_FILTERS = ("ramp", "shepp-logan", "cosine", "hann", "none")


# ----------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------
def _as_tensor(x, *, device=None, dtype=None):
    """numpy float64 input is computed in float32 here (projections of big volumes)."""
    return as_tensor(x, device=device, dtype=dtype, float64_to_float32=True)


def _angles(tilt_angles_deg, *, field: str = "tilt_angles_deg") -> np.ndarray:
    a = np.asarray(
        tilt_angles_deg.detach().cpu() if isinstance(tilt_angles_deg, torch.Tensor) else tilt_angles_deg,
        dtype=np.float64,
    ).reshape(-1)
    if a.size == 0:
        raise InputError("at least one tilt angle", field=field, got="none")
    if not np.all(np.isfinite(a)):
        raise InputError("finite tilt angles in degrees", field=field, got="NaN or inf")
    if np.any(np.abs(a) >= 90.0):
        raise InputError("tilt angles strictly between -90 and +90 degrees", field=field,
                         got=f"{a[np.abs(a) >= 90.0][0]:g}")
    return a


def detector_center(shape: Sequence[int]) -> tuple[int, ...]:
    """Index of the detector (or volume) centre on each axis: ``N // 2``."""
    return tuple(int(n) // 2 for n in shape)


def tilt_angles(tilt_min_deg: float = -60.0, tilt_max_deg: float = 60.0, step_deg: float = 3.0) -> np.ndarray:
    """Equally spaced tilt angles from ``tilt_min_deg`` to ``tilt_max_deg`` inclusive (degrees).

    ``tilt_angles(-60, 60, 3)`` gives the 41 angles -60, -57, ..., 60.
    """
    if step_deg <= 0:
        raise InputError("a tilt step > 0 degrees", field="tilt_step_deg", got=step_deg)
    if tilt_max_deg < tilt_min_deg:
        raise InputError("tilt_max_deg >= tilt_min_deg", field="tilt range", got=(tilt_min_deg, tilt_max_deg))
    n = int(math.floor((tilt_max_deg - tilt_min_deg) / step_deg + 1e-6)) + 1
    return tilt_min_deg + step_deg * np.arange(n, dtype=np.float64)


def angular_weights(tilt_angles_deg) -> np.ndarray:
    """Angular interval (radians) each projection stands for, in stack order.

    Sorted angles ``a_0 < ... < a_{n-1}`` get ``(a_{i+1} - a_{i-1}) / 2``; the first and last
    one get the gap to their single neighbour (so equally spaced angles all get the step).
    A single angle gets ``pi``. Used by :func:`weighted_back_projection` (R-weighting with
    uneven angular sampling).
    """
    a = np.radians(_angles(tilt_angles_deg))
    n = a.size
    if n == 1:
        return np.array([math.pi])
    order = np.argsort(a, kind="stable")
    s = a[order]
    g = np.diff(s)
    gl = np.concatenate([[g[0]], g])  # gap to the left neighbour
    gr = np.concatenate([g, [g[-1]]])  # gap to the right neighbour
    w_sorted = 0.5 * (gl + gr)
    w = np.empty(n)
    w[order] = w_sorted
    return w


# ----------------------------------------------------------------------------------------
# The sparse system matrix
# ----------------------------------------------------------------------------------------
_GUARD = 3  # guard pixels on each side of the detector inside the system matrix
_TAPS = 4  # detector pixels touched by one voxel (footprint width <= sqrt(2) + 2 pixels)


def _hat_integral(t: torch.Tensor) -> torch.Tensor:
    """``H(t) = integral_{-inf}^{t} hat(s) ds`` for the linear-interpolation hat of half-width 1."""
    t = t.clamp(-1.0, 1.0)
    return torch.where(t <= 0, 0.5 * (t + 1.0) ** 2, 1.0 - 0.5 * (1.0 - t) ** 2)


def _system_matrix_t(theta_rad: torch.Tensor, nz: int, nx: int, nu: int, *, device, dtype) -> torch.Tensor:
    """Back-projection matrix ``A.T``: CSR ``(Z * X, T * (U + 6))`` for the tilts ``theta_rad`` (T,).

    Weights: the voxel's footprint on the detector is a box of width ``W = |cos| + |sin|``
    pixels centred at ``u = x cos + z sin``, deposited with linear interpolation (box
    convolved with the hat): ``w_j = (H(b - j) - H(a - j)) / W`` with ``[a, b]`` the box and
    ``H`` the integral of the hat. The weights sum to 1 and their centroid is exactly ``u``
    (sub-pixel positions are exact); at 0° this is plain linear interpolation, and there is
    no moire at 45° (where a 2-tap splat aliases). Four taps per voxel and tilt. The detector
    has three guard pixels on each side (index shift +3), so the columns of a row are
    distinct and sorted; entries outside the real detector get weight 0.
    """
    t = theta_rad.to(device=device, dtype=torch.float64)
    n_t = t.numel()
    xr = torch.arange(nx, device=device, dtype=torch.float64) - (nx // 2)
    zr = torch.arange(nz, device=device, dtype=torch.float64) - (nz // 2)
    c, s = torch.cos(t), torch.sin(t)
    # (Z, X, T) detector coordinate in pixel indices of the real detector
    u = xr[None, :, None] * c[None, None, :] + zr[:, None, None] * s[None, None, :] + (nu // 2)
    width = (c.abs() + s.abs())[None, None, :]
    a = u - 0.5 * width
    b = u + 0.5 * width
    j0 = torch.floor(a)
    j0c = j0.clamp(-_GUARD, nu - 1)
    keep = j0c == j0
    cols, vals = [], []
    for k in range(_TAPS):
        j = j0c + k
        w = (_hat_integral(b - j) - _hat_integral(a - j)) / width
        w = torch.where(keep & (j >= 0) & (j <= nu - 1), w, torch.zeros((), dtype=w.dtype, device=device))
        cols.append(j.to(torch.int64) + _GUARD + torch.arange(n_t, device=device)[None, None, :] * (nu + 2 * _GUARD))
        vals.append(w.to(dtype))
    cols = torch.stack(cols, dim=-1).reshape(nz * nx, _TAPS * n_t)
    vals = torch.stack(vals, dim=-1).reshape(nz * nx, _TAPS * n_t)
    crow = torch.arange(0, _TAPS * n_t * nz * nx + 1, _TAPS * n_t, device=device, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            crow, cols.reshape(-1), vals.reshape(-1), (nz * nx, n_t * (nu + 2 * _GUARD)), device=device, dtype=dtype
        )


def _transpose_csr(mt: torch.Tensor) -> torch.Tensor:
    """CSR of ``mt.T`` (via the CSC layout of ``mt``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        csc = mt.to_sparse_csc()
        n_rows, n_cols = mt.shape
        return torch.sparse_csr_tensor(
            csc.ccol_indices(), csc.row_indices(), csc.values(), (n_cols, n_rows), device=mt.device, dtype=mt.dtype
        )


def _tilt_chunks(n_tilts: int, nz: int, nx: int, max_nonzeros: int) -> list[slice]:
    per_tilt = _TAPS * nz * nx
    step = max(1, int(max_nonzeros) // per_tilt)
    return [slice(i, min(n_tilts, i + step)) for i in range(0, n_tilts, step)]


def _y_chunk(ny: int, rows: int, y_chunk: int | None, budget: int = 1 << 23) -> int:
    if y_chunk is not None:
        if y_chunk < 1:
            raise InputError("y_chunk >= 1", field="y_chunk", got=y_chunk)
        return min(int(y_chunk), ny)
    return max(1, min(ny, budget // max(1, rows)))


# ----------------------------------------------------------------------------------------
# Projection
# ----------------------------------------------------------------------------------------
def project_tilt_series(
    volume,
    tilt_angles_deg,
    *,
    detector_width: int | None = None,
    device="cpu",
    max_nonzeros: int = 20_000_000,
    y_chunk: int | None = None,
):
    """Parallel-beam projections of a volume about the y axis (line integrals, in voxel units).

    Parameters
    ----------
    volume : array or tensor ``(z, y, x)``
        Any slab shape (``z`` need not equal ``x``).
    tilt_angles_deg : ``(n_tilts,)`` angles in degrees, ``|angle| < 90``
    detector_width : number of detector pixels ``U`` along u (default ``x``)
    device : torch device for the computation
    max_nonzeros : bound on the sparse matrix size per tilt chunk (memory)
    y_chunk : number of y rows per product (default: about 8 M dense elements)

    Returns
    -------
    ``(n_tilts, y, U)`` float32, the same kind as ``volume`` (numpy -> numpy on CPU; tensor
    -> tensor on ``device``). Pixel ``[i, v, u]`` is the sum of the volume along the ray at
    ``u - U // 2 = x cos(theta_i) + z sin(theta_i)``, ``v = y`` (unit voxel length), so
    multiply by the voxel size to get a physical line integral.
    """
    vol, was_np = _as_tensor(volume, device=device)
    if vol.ndim != 3:
        raise InputError("a (z, y, x) volume", field="volume", got=f"shape {tuple(vol.shape)}")
    vol = vol.to(torch.float32) if vol.dtype not in (torch.float32, torch.float64) else vol
    nz, ny, nx = vol.shape
    nu = int(detector_width) if detector_width is not None else nx
    if nu < 1:
        raise InputError("detector_width >= 1", field="detector_width", got=detector_width)
    ang = _angles(tilt_angles_deg)
    theta = torch.from_numpy(np.radians(ang))
    n_t = ang.size
    out = torch.zeros((n_t, ny, nu), dtype=vol.dtype, device=vol.device)
    yc = _y_chunk(ny, nz * nx, y_chunk)
    for ts in _tilt_chunks(n_t, nz, nx, max_nonzeros):
        a = _transpose_csr(_system_matrix_t(theta[ts], nz, nx, nu, device=vol.device, dtype=vol.dtype))
        nt = ts.stop - ts.start
        for y0 in range(0, ny, yc):
            y1 = min(ny, y0 + yc)
            cols = vol[:, y0:y1, :].permute(0, 2, 1).reshape(nz * nx, y1 - y0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                p = a @ cols  # (nt * (U + 6), yc)
            p = p.reshape(nt, nu + 2 * _GUARD, y1 - y0)[:, _GUARD : nu + _GUARD, :]
            out[ts, y0:y1, :] = p.permute(0, 2, 1)
    return _back(out, was_np)


def back_project(
    tilt_series,
    tilt_angles_deg,
    *,
    thickness: int,
    width: int | None = None,
    weights=None,
    device="cpu",
    max_nonzeros: int = 20_000_000,
    y_chunk: int | None = None,
):
    """Plain (unfiltered) back-projection, the exact adjoint of :func:`project_tilt_series`.

    Parameters
    ----------
    tilt_series : ``(n_tilts, y, U)``
    tilt_angles_deg : ``(n_tilts,)`` degrees
    thickness : number of z slices ``Z`` of the output
    width : number of x columns ``X`` of the output (default ``U``)
    weights : optional ``(n_tilts,)`` factor per projection
    device, max_nonzeros, y_chunk : as in :func:`project_tilt_series`

    Returns
    -------
    ``(Z, y, X)`` volume, ``out[z, y, x] = sum_i w_i P_i(y, x cos + z sin)``, ``P_i`` averaged
    over the voxel footprint along u; same kind as ``tilt_series``.
    """
    ts_t, was_np = _as_tensor(tilt_series, device=device)
    if ts_t.ndim != 3:
        raise InputError("an (n_tilts, y, x) tilt series", field="tilt_series", got=f"shape {tuple(ts_t.shape)}")
    n_t, ny, nu = ts_t.shape
    ang = _angles(tilt_angles_deg)
    if ang.size != n_t:
        raise InputError(f"one tilt angle per image ({n_t})", field="tilt_angles_deg", got=ang.size)
    nz = int(thickness)
    nx = int(width) if width is not None else nu
    if nz < 1 or nx < 1:
        raise InputError("thickness and width >= 1", field="thickness", got=(thickness, width))
    theta = torch.from_numpy(np.radians(ang))
    if weights is not None:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64).reshape(-1), dtype=ts_t.dtype, device=ts_t.device)
        if w.numel() != n_t:
            raise InputError(f"one weight per image ({n_t})", field="weights", got=w.numel())
        ts_t = ts_t * w[:, None, None]
    # guarded detector (zero pixels on each side), u-major: (n_t, U + 2 * guard, y)
    padded = torch.zeros((n_t, nu + 2 * _GUARD, ny), dtype=ts_t.dtype, device=ts_t.device)
    padded[:, _GUARD : nu + _GUARD, :] = ts_t.permute(0, 2, 1)
    out = torch.zeros((nz, ny, nx), dtype=ts_t.dtype, device=ts_t.device)
    yc = _y_chunk(ny, nz * nx, y_chunk)
    for tsl in _tilt_chunks(n_t, nz, nx, max_nonzeros):
        at = _system_matrix_t(theta[tsl], nz, nx, nu, device=ts_t.device, dtype=ts_t.dtype)
        block = padded[tsl].reshape(-1, ny)
        for y0 in range(0, ny, yc):
            y1 = min(ny, y0 + yc)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                r = at @ block[:, y0:y1].contiguous()  # (Z * X, yc)
            out[:, y0:y1, :] += r.reshape(nz, nx, y1 - y0).permute(0, 2, 1)
    return _back(out, was_np)


# ----------------------------------------------------------------------------------------
# Weighted back-projection
# ----------------------------------------------------------------------------------------
def _fast_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n."""
    best = 1 << max(0, (n - 1).bit_length())
    a = 1
    while a < 2 * n:
        b = a
        while b < 2 * n:
            c = b
            while c < n:
                c *= 5
            best = min(best, c)
            b *= 3
        a *= 2
    return best


def wbp_filter(
    width: int,
    *,
    filter: str = "ramp",
    radial_cutoff: float = 0.5,
    radial_falloff: float = 0.0,
    padded_width: int | None = None,
    device="cpu",
    dtype=torch.float32,
) -> torch.Tensor:
    """The 1D R-weighting filter along u, in the rfft layout of the zero-padded detector.

    The ramp is the discrete Ram-Lak kernel of Kak & Slaney (``h[0] = 1/4``,
    ``h[odd n] = -1/(pi n)^2``) transformed with the padded length, which gives the correct
    small DC value instead of 0; windows multiply it: ``"shepp-logan"`` (``sinc(f)``),
    ``"cosine"`` (``cos(pi f)``), ``"hann"`` (``cos^2(pi f)``) with ``f`` in cycles/pixel
    (Nyquist 0.5); ``"none"`` is 1 (plain back-projection). Like IMOD's ``RADIAL``, the
    filter is kept up to ``radial_cutoff`` (cycles/pixel) and falls off beyond it as a
    Gaussian of width ``radial_falloff`` (a hard cut when 0).

    Returns
    -------
    torch.Tensor ``(padded_width // 2 + 1,)``; ``padded_width`` defaults to a fast size
    ``>= 2 * width``.
    """
    if filter not in _FILTERS:
        raise InputError(f"one of {', '.join(_FILTERS)}", field="filter", got=filter)
    n = int(padded_width) if padded_width is not None else _fast_size(2 * int(width))
    f = torch.fft.rfftfreq(n, device=device, dtype=torch.float64)
    if filter == "none":
        h = torch.ones_like(f)
    else:
        k = torch.arange(n, device=device, dtype=torch.float64)
        k = torch.where(k > n // 2, k - n, k)  # signed offsets, circular
        kern = torch.zeros(n, device=device, dtype=torch.float64)
        kern[k == 0] = 0.25
        odd = (k.remainder(2) != 0)
        kern[odd] = -1.0 / (math.pi * k[odd]) ** 2
        h = torch.fft.rfft(kern).real
        if filter == "shepp-logan":
            h = h * torch.sinc(f)
        elif filter == "cosine":
            h = h * torch.cos(math.pi * f)
        elif filter == "hann":
            h = h * torch.cos(math.pi * f) ** 2
    if radial_cutoff < 0.5:
        if radial_falloff > 0:
            fall = torch.exp(-0.5 * ((f - radial_cutoff) / radial_falloff) ** 2)
            h = torch.where(f > radial_cutoff, h * fall, h)
        else:
            h = torch.where(f > radial_cutoff, torch.zeros_like(h), h)
    return h.to(dtype)


def filter_tilt_series(
    tilt_series,
    *,
    filter: str = "ramp",
    radial_cutoff: float = 0.5,
    radial_falloff: float = 0.0,
    device="cpu",
):
    """Apply :func:`wbp_filter` along u (the last axis) of every image, with zero padding.

    ``tilt_series``: ``(n_tilts, y, U)``; returns the same shape and kind.
    """
    ts_t, was_np = _as_tensor(tilt_series, device=device)
    nu = ts_t.shape[-1]
    n = _fast_size(2 * nu)
    h = wbp_filter(nu, filter=filter, radial_cutoff=radial_cutoff, radial_falloff=radial_falloff,
                   padded_width=n, device=ts_t.device, dtype=ts_t.dtype)
    spec = torch.fft.rfft(ts_t, n=n, dim=-1)
    out = torch.fft.irfft(spec * h, n=n, dim=-1)[..., :nu]
    return _back(out.contiguous(), was_np)


def weighted_back_projection(
    tilt_series,
    tilt_angles_deg,
    *,
    thickness: int,
    width: int | None = None,
    filter: str = "ramp",
    radial_cutoff: float = 0.5,
    radial_falloff: float = 0.0,
    device="cpu",
    max_nonzeros: int = 20_000_000,
    y_chunk: int | None = None,
):
    """Weighted (filtered) back-projection of a single-axis tilt series (R-weighting).

    Each image is filtered along u (perpendicular to the tilt axis) with the ramp of
    :func:`wbp_filter`, weighted by the angular interval it covers
    (:func:`angular_weights`, radians) and back-projected (:func:`back_project`). With
    this normalisation ``weighted_back_projection(project_tilt_series(v, a), a)`` equals ``v``
    inside the measured region of Fourier space (for ``a`` covering -90..90 it equals ``v``).

    Parameters
    ----------
    tilt_series : ``(n_tilts, y, U)`` images (projections in voxel units)
    tilt_angles_deg : ``(n_tilts,)`` degrees, in stack order
    thickness : ``Z``, number of z slices of the tomogram (voxels)
    width : ``X`` (default ``U``)
    filter : ``"ramp"`` (Ram-Lak), ``"shepp-logan"``, ``"cosine"``, ``"hann"`` or ``"none"``
    radial_cutoff, radial_falloff : cycles/pixel; low-pass like IMOD's ``RADIAL`` option
    device, max_nonzeros, y_chunk : see :func:`project_tilt_series`

    Returns
    -------
    ``(Z, y, X)`` tomogram (same kind as the input), x/z centres at ``X // 2`` / ``Z // 2``.
    """
    ts_t, was_np = _as_tensor(tilt_series, device=device)
    if ts_t.ndim != 3:
        raise InputError("an (n_tilts, y, x) tilt series", field="tilt_series", got=f"shape {tuple(ts_t.shape)}")
    filt = filter_tilt_series(ts_t, filter=filter, radial_cutoff=radial_cutoff, radial_falloff=radial_falloff)
    w = angular_weights(tilt_angles_deg)
    out = back_project(filt, tilt_angles_deg, thickness=thickness, width=width, weights=w, device=ts_t.device,
                       max_nonzeros=max_nonzeros, y_chunk=y_chunk)
    return _back(out, was_np)


# ----------------------------------------------------------------------------------------
# Points
# ----------------------------------------------------------------------------------------
def project_points(xyz, tilt_angles_deg, *, deformation=None, times=None, coefficients=None):
    """Detector coordinates of 3D points in every tilt image.

    Parameters
    ----------
    xyz : ``(n_points, 3)`` positions ``(x, y, z)`` relative to the volume centre, in any
        length unit (pixels, nm). With ``deformation`` the unit must be the model's (nm).
    tilt_angles_deg : ``(n_tilts,)`` degrees
    deformation : optional :class:`napari_cryoalign.backend.deformation.PolynomialDeformation`;
        image ``i`` then sees the point at ``r + D(r, t_i)``
    times : ``(n_tilts,)`` acquisition times in [0, 1] (required with ``deformation``)
    coefficients : optional coefficient tensor passed to ``deformation.evaluate`` (so that a
        caller can differentiate with respect to it)

    Returns
    -------
    ``(n_tilts, n_points, 2)`` detector coordinates ``(u, v) = (x cos + z sin, y)`` relative
    to the detector centre, in the unit of ``xyz``; numpy in -> numpy out, tensor in ->
    tensor out (differentiable).
    """
    if isinstance(xyz, torch.Tensor):
        pts, was_np = xyz, False
        if not pts.is_floating_point():
            pts = pts.to(torch.float32)
    else:
        pts, was_np = torch.from_numpy(np.asarray(xyz, dtype=np.float64)), True
    if pts.ndim != 2 or pts.shape[-1] != 3:
        raise InputError("points as an (n, 3) array of (x, y, z)", field="xyz", got=f"shape {tuple(pts.shape)}")
    ang = _angles(tilt_angles_deg)
    th = torch.as_tensor(np.radians(ang), dtype=pts.dtype, device=pts.device)
    p = pts[None].expand(ang.size, -1, -1)  # (T, n, 3)
    if deformation is not None:
        if times is None:
            raise InputError("one acquisition time per tilt with a deformation", field="times", got=None)
        t = torch.as_tensor(np.asarray(times.detach().cpu() if isinstance(times, torch.Tensor) else times,
                                       dtype=np.float64).reshape(-1), dtype=pts.dtype, device=pts.device)
        if t.numel() != ang.size:
            raise InputError(f"one time per tilt ({ang.size})", field="times", got=t.numel())
        d = deformation.evaluate(p, t[:, None].expand(-1, pts.shape[0]), coefficients=coefficients)
        p = p + d.to(p.dtype)
    u = p[..., 0] * torch.cos(th)[:, None] + p[..., 2] * torch.sin(th)[:, None]
    v = p[..., 1]
    out = torch.stack([u, v], dim=-1)
    return _back(out, was_np)
