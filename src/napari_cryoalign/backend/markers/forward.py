"""SparseAlign's forward model: Gaussian markers, deformed over time, projected and sampled.

A marker ``j`` with weight ``w_j`` at undeformed position ``r_j = (x, y, z)`` (nm from the
volume centre) appears in tilt image ``i`` at

    ``q_ij = A_theta_i (r_j + D(r_j, t_i))``                      (SparseAlign eq. 7-9)

with the projection of :func:`napari_cryoalign.backend.tomography.project_points`
(``u = x cos + z sin``, ``v = y``) and the deformation
:class:`~napari_cryoalign.backend.deformation.PolynomialDeformation` (eq. 14). The image
is a sum of Gaussians sampled at the pixel centres (eq. 21)::

    Psi_i(v, u) = sum_j w_j exp(-((u - u_ij)^2 + (v - v_ij)^2) / (2 sigma^2))

which is exactly the simulator's ``profile="gaussian"`` marker image ``ideal`` (tested).
Because the Gaussian is separable, a whole stack is one batched product
``Gy^T diag(w) Gx`` per tilt: ``(T, M, ny)`` and ``(T, M, nx)`` profiles, no loop over
pixels, markers or tilts; everything is differentiable (torch autograd).

Coarse levels (SparseAlign section III-e): the data are blurred by an anti-aliasing
Gaussian ``tau = 0.5 * factor`` pixels and every ``factor``-th pixel is kept (the centre
pixel ``N // 2`` is always kept). The coarse forward model samples the Gaussians at the
kept pixel centres, with the width the blurred data really have,
``sigma_c = sqrt(sigma^2 + tau^2)`` and the matching amplitude ``(sigma / sigma_c)^dims``
(the paper keeps ``sigma``; matching the blur keeps weights near 1 at every level).

Pixel coordinates: ``(u, v)`` as 0-based pixel indices of the full-resolution stack,
``u`` along x; the detector centre is pixel ``(nx // 2, ny // 2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InputError
from ..deformation import PolynomialDeformation

__all__ = [
    "Level",
    "MarkerGeometry",
    "correlation_scores",
    "default_sigma_nm",
    "forward_model",
    "gaussian_profiles",
    "make_level",
    "projected_positions_px",
    "render",
]


def default_sigma_nm(bead_diameter_nm: float, pixel_size_nm: float) -> float:
    """Gaussian width (nm) that matches a gold bead of this diameter imaged with this pixel size.

    Second-moment match of the projected sphere (variance ``R^2 / 5`` per axis) and of the
    pixel box (``p^2 / 12``). The SparseAlign 3D experiments use ``sigma = D`` instead (pass
    ``sigma_nm`` explicitly to reproduce them).
    """
    r = 0.5 * float(bead_diameter_nm)
    return math.sqrt(r * r / 5.0 + float(pixel_size_nm) ** 2 / 12.0)


@dataclass(frozen=True, eq=False)
class MarkerGeometry:
    """Acquisition geometry of a marker tilt series.

    Attributes
    ----------
    tilt_angles_deg : ``(T,)`` degrees, stack order
    times : ``(T,)`` acquisition times in [0, 1], stack order
    detector_shape : ``(ny, nx)`` pixels
    pixel_size_nm : nm
    sigma_nm : Gaussian marker width (standard deviation, nm)
    line_detector : the paper's 2D geometry (x-z plane, one detector row; the profile depends on u only)
    """

    tilt_angles_deg: np.ndarray
    times: np.ndarray
    detector_shape: tuple[int, int]
    pixel_size_nm: float
    sigma_nm: float
    line_detector: bool = False

    def __post_init__(self):
        a = np.asarray(self.tilt_angles_deg, dtype=np.float64).reshape(-1)
        t = np.asarray(self.times, dtype=np.float64).reshape(-1)
        if a.size != t.size:
            raise InputError(f"one time per tilt ({a.size})", field="times", got=t.size)
        if not self.pixel_size_nm > 0:
            raise InputError("a pixel size > 0 nm", field="pixel_size_nm", got=self.pixel_size_nm)
        if not self.sigma_nm > 0:
            raise InputError("a marker width > 0 nm", field="sigma_nm", got=self.sigma_nm)
        object.__setattr__(self, "tilt_angles_deg", a)
        object.__setattr__(self, "times", t)
        object.__setattr__(self, "detector_shape", (int(self.detector_shape[0]), int(self.detector_shape[1])))

    @property
    def n_tilts(self) -> int:
        return int(self.tilt_angles_deg.size)

    @property
    def sigma_px(self) -> float:
        return float(self.sigma_nm) / float(self.pixel_size_nm)

    @property
    def centre_px(self) -> tuple[int, int]:
        """Detector centre ``(u0, v0) = (nx // 2, ny // 2)`` (pixel indices)."""
        return self.detector_shape[1] // 2, self.detector_shape[0] // 2

    @property
    def field_of_view_nm(self) -> tuple[float, float]:
        """``(x, y)`` extent of the detector (nm)."""
        return self.detector_shape[1] * self.pixel_size_nm, self.detector_shape[0] * self.pixel_size_nm

    @classmethod
    def from_simulation(cls, ts, *, sigma_nm: float | None = None) -> MarkerGeometry:
        """The geometry of a simulated :class:`~napari_cryoalign.backend.simulate.markers.MarkerTiltSeries`."""
        s = sigma_nm if sigma_nm is not None else ts.params.get("profile_sigma_nm") or default_sigma_nm(
            ts.bead_diameter_nm, ts.pixel_size_nm)
        return cls(ts.tilt_angles_deg, ts.times, tuple(ts.tilt_series.shape[1:]), ts.pixel_size_nm, float(s),
                   line_detector=ts.params.get("geometry") == "2d")


def _trig(geometry: MarkerGeometry, dtype, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos, sin of the tilt angles and the times, cached per dtype and device."""
    key = (dtype, str(device))
    cache = geometry.__dict__.setdefault("_cache", {})
    if key not in cache:
        th = torch.as_tensor(np.radians(geometry.tilt_angles_deg), dtype=dtype, device=device)
        cache[key] = (torch.cos(th), torch.sin(th), torch.as_tensor(geometry.times, dtype=dtype, device=device))
    return cache[key]


def projected_positions_px(positions_nm: torch.Tensor, geometry: MarkerGeometry,
                           deformation: PolynomialDeformation | None = None, *,
                           coefficients: torch.Tensor | None = None) -> torch.Tensor:
    """Deformed projected marker centres ``(T, M, 2)`` as ``(u, v)`` pixel indices (differentiable).

    ``positions_nm`` is ``(M, 3)`` ``(x, y, z)`` nm from the volume centre. The deformation
    (optionally with a coefficient tensor that requires grad) moves image ``i``'s view of
    the marker to ``r + D(r, t_i)``; the line detector keeps ``v = 0``.

    This is :func:`~napari_cryoalign.backend.tomography.project_points` with
    ``PolynomialDeformation.basis`` evaluated once per marker rather than once per marker
    and tilt (``D(r, t) = sum_zeta t^zeta B(r) P[:, :, zeta]``): the same numbers (tested),
    several times faster inside L-BFGS.
    """
    p = torch.as_tensor(positions_nm, dtype=torch.float64) if not isinstance(positions_nm, torch.Tensor) \
        else positions_nm
    cos, sin, t = _trig(geometry, p.dtype, p.device)
    if p.shape[0] == 0:
        return torch.zeros((geometry.n_tilts, 0, 2), dtype=p.dtype, device=p.device)
    if deformation is not None:
        coef = coefficients if coefficients is not None else torch.as_tensor(
            np.array(deformation.coefficients), dtype=p.dtype, device=p.device)
        coef = coef.to(dtype=p.dtype, device=p.device)
        basis = deformation.basis(p)  # (M, n_terms)
        d_mkz = torch.einsum("mn,knz->mkz", basis, coef)  # (M, 3, d_t)
        tpow = torch.stack([t ** (z + 1) for z in range(coef.shape[-1])], dim=-1)  # (T, d_t)
        q = p[None] + torch.einsum("mkz,tz->tmk", d_mkz, tpow)  # (T, M, 3)
    else:
        q = p[None].expand(t.numel(), -1, -1)
    u = (q[..., 0] * cos[:, None] + q[..., 2] * sin[:, None]) / geometry.pixel_size_nm
    u0, v0 = geometry.centre_px
    if geometry.line_detector:
        return torch.stack([u + u0, torch.zeros_like(u)], dim=-1)
    return torch.stack([u + u0, q[..., 1] / geometry.pixel_size_nm + v0], dim=-1)


def gaussian_profiles(centres: torch.Tensor, grid: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``exp(-(grid - c)^2 / (2 sigma^2))``: centres ``(T, M)``, grid ``(n,)`` -> ``(T, M, n)``."""
    d = grid[None, None, :] - centres[..., None]
    return torch.exp(d * d * (-0.5 / (sigma_px * sigma_px)))


def render(projected_px: torch.Tensor, weights: torch.Tensor, *, xs: torch.Tensor, ys: torch.Tensor | None,
           sigma_px: float, amplitude: float = 1.0) -> torch.Tensor:
    """Marker image on the sample grid: ``(T, len(ys), len(xs))`` (``(T, 1, len(xs))`` for a line detector).

    Parameters
    ----------
    projected_px : ``(T, M, 2)`` centres ``(u, v)`` in full-resolution pixel indices
    weights : ``(M,)``
    xs, ys : sample positions along u and v (full-resolution pixel indices); ``ys=None``
        for the line detector (no v dependence)
    sigma_px : Gaussian width in full-resolution pixels
    amplitude : peak of a weight-1 marker
    """
    gx = gaussian_profiles(projected_px[..., 0], xs, sigma_px) * (weights * amplitude)[None, :, None]
    if ys is None:
        return gx.sum(1)[:, None, :]
    gy = gaussian_profiles(projected_px[..., 1], ys, sigma_px)
    return torch.bmm(gy.transpose(1, 2), gx)


def forward_model(positions_nm, weights, geometry: MarkerGeometry, deformation: PolynomialDeformation | None = None,
                  *, coefficients=None, device="cpu", dtype=torch.float64) -> torch.Tensor:
    """Full-resolution marker image ``Psi`` ``(T, ny, nx)`` of markers under a deformation (eq. 15/21)."""
    p = torch.as_tensor(np.asarray(positions_nm, dtype=np.float64), dtype=dtype, device=device)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=dtype, device=device)
    ny, nx = geometry.detector_shape
    q = projected_positions_px(p.reshape(-1, 3), geometry, deformation, coefficients=coefficients)
    xs = torch.arange(nx, dtype=dtype, device=device)
    ys = None if geometry.line_detector else torch.arange(ny, dtype=dtype, device=device)
    return render(q, w, xs=xs, ys=ys, sigma_px=geometry.sigma_px)


# ----------------------------------------------------------------------------------------
# Resolution levels
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Level:
    """One level of the coarse-to-fine pyramid.

    Attributes
    ----------
    factor : integer downsampling factor (1 = full resolution; the paper's eta = 1 / factor)
    data : ``(T, ny_c, nx_c)`` tensor, blurred and subsampled data
    xs, ys : full-resolution pixel positions of the kept samples (``ys`` None for a line detector)
    sigma_px : marker width in the blurred data (full-resolution pixels)
    amplitude : peak of a weight-1 marker in the blurred data
    tau_px : anti-aliasing blur (full-resolution pixels)
    """

    factor: int
    data: torch.Tensor
    xs: torch.Tensor
    ys: torch.Tensor | None
    sigma_px: float
    amplitude: float
    tau_px: float

    def render(self, projected_px: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return render(projected_px, weights, xs=self.xs, ys=self.ys, sigma_px=self.sigma_px,
                      amplitude=self.amplitude)


def _gaussian_filter_fft(x: torch.Tensor, sigma: float, dims: tuple[int, ...]) -> torch.Tensor:
    """Gaussian blur (std ``sigma`` pixels) along ``dims`` by FFT with zero padding (no wrap-around)."""
    if sigma <= 0:
        return x
    pad = int(math.ceil(4 * sigma))
    sizes = [x.shape[d] + 2 * pad for d in dims]
    freq = [torch.fft.fftfreq(n, dtype=x.dtype, device=x.device) for n in sizes[:-1]]
    freq.append(torch.fft.rfftfreq(sizes[-1], dtype=x.dtype, device=x.device))
    h = None
    for i, f in enumerate(freq):
        g = torch.exp(-2.0 * math.pi ** 2 * sigma * sigma * f * f)
        shape = [1] * len(dims)
        shape[i] = -1
        g = g.reshape(shape)
        h = g if h is None else h * g
    spec = torch.fft.rfftn(x, s=sizes, dim=dims)
    out = torch.fft.irfftn(spec * h, s=sizes, dim=dims)
    sl = [slice(None)] * x.ndim
    for d in dims:
        sl[d] = slice(0, x.shape[d])
    return out[tuple(sl)]


def make_level(data: torch.Tensor, geometry: MarkerGeometry, factor: int) -> Level:
    """Anti-aliased downsampling of ``(T, ny, nx)`` data by an integer ``factor`` (section III-e)."""
    f = int(factor)
    if f < 1:
        raise InputError("an integer downsampling factor >= 1", field="levels", got=factor)
    ny, nx = geometry.detector_shape
    tau = 0.5 * f if f > 1 else 0.0
    dims = (-1,) if geometry.line_detector else (-2, -1)
    blurred = _gaussian_filter_fft(data, tau, dims) if f > 1 else data
    u0, v0 = geometry.centre_px
    ox, oy = u0 % f, v0 % f
    xs = torch.arange(ox, nx, f, dtype=data.dtype, device=data.device)
    if geometry.line_detector:
        ys = None
        sub = blurred[:, :, ox::f]
    else:
        ys = torch.arange(oy, ny, f, dtype=data.dtype, device=data.device)
        sub = blurred[:, oy::f, ox::f]
    s = geometry.sigma_px
    sc = math.sqrt(s * s + tau * tau)
    amp = (s / sc) ** len(dims)
    return Level(f, sub.contiguous(), xs, ys, sc, amp, tau)


def correlation_scores(residual: torch.Tensor, level: Level, projected_px: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Linear minimisation oracle (eq. 17-18) for many candidate positions at once.

    Returns ``<residual, psi(r)>`` and ``||psi(r)||^2`` for candidates whose projections are
    ``projected_px`` ``(T, K, 2)`` (full-resolution pixel indices). The residual is
    correlated once with the level's Gaussian (FFT), then sampled (bilinear) at every
    projected candidate and summed over tilts: ``T * K`` samples instead of ``T * K``
    rendered images.
    """
    f = level.factor
    sc = level.sigma_px / f  # in level pixels
    dims = (-1,) if level.ys is None else (-2, -1)
    corr = _gaussian_filter_fft(residual, sc, dims) * level.amplitude
    # The Gaussian filter is normalised (sum 1); the oracle wants the unnormalised profile.
    corr = corr * (math.sqrt(2 * math.pi) * sc) ** len(dims)
    _, H, W = corr.shape
    xs0 = level.xs[0]
    gx = (projected_px[..., 0] - xs0) / f
    gx = 2.0 * gx / max(W - 1, 1) - 1.0
    if level.ys is None:
        gy = torch.zeros_like(gx)
    else:
        gy = (projected_px[..., 1] - level.ys[0]) / f
        gy = 2.0 * gy / max(H - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1)[:, None]  # (T, 1, K, 2)
    samp = torch.nn.functional.grid_sample(corr[:, None], grid.to(corr.dtype), mode="bilinear",
                                           padding_mode="zeros", align_corners=True)  # (T, 1, 1, K)
    score = samp[:, 0, 0, :].sum(0)
    # ||psi||^2 of an in-field marker (continuous approximation), zero for tilts where it is outside
    inside = (gx.abs() <= 1.0) & (gy.abs() <= 1.0)
    per_tilt = (level.amplitude ** 2) * (math.sqrt(math.pi) * sc) ** len(dims)
    norm2 = inside.to(corr.dtype).sum(0) * per_tilt
    return score, norm2
