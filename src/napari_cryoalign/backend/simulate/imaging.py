"""Image formation shared by the simulators: the interaction constant, analytic bead projections, shot noise.

* :func:`interaction_constant` - phase per volt and nm of an electron at a given voltage;
* :func:`render_projected_spheres` - the projected thickness of spheres (gold beads), anti-aliased;
* :func:`render_markers` - the marker image ``Psi`` of the SparseAlign forward model (:mod:`.markers`);
* :func:`apply_dose_noise` - Poisson or Gaussian noise on expected electron counts.

Images are ``(n_images, y, x)``; projected centres are ``(u, v)`` 0-based pixel indices (``u``
along x, ``v`` along y), as :func:`~napari_cryoalign.backend.tomography.project_points` gives
them after adding the detector centre.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import InputError

__all__ = ["interaction_constant", "render_projected_spheres", "render_markers", "apply_dose_noise"]


def interaction_constant(voltage_kv: float = 300.0) -> float:
    """Electron interaction constant ``sigma`` in rad / (V nm) (0.00653 at 300 kV).

    ``sigma = 2 pi / (lambda V) * (m c^2 + e V) / (2 m c^2 + e V)``, relativistic.
    """
    v = float(voltage_kv) * 1e3
    mc2 = 510998.95  # eV
    lam_nm = 1.0 / math.sqrt(v * (1.0 + v / (2 * mc2))) * 1.2264262862  # nm
    return 2.0 * math.pi / (lam_nm * v) * (mc2 + v) / (2.0 * mc2 + v)


def _scatter_patches(values: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor, shape: tuple[int, int],
                     n_images: int, image_index: torch.Tensor) -> torch.Tensor:
    """Add patch values (N, P, P) at integer pixel positions (N, P, P) into (n_images, y, x)."""
    ny, nx = shape
    ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    flat = image_index[:, None, None].expand_as(iy) * (ny * nx) + iy.clamp(0, ny - 1) * nx + ix.clamp(0, nx - 1)
    out = torch.zeros(n_images * ny * nx, dtype=values.dtype, device=values.device)
    out.index_add_(0, flat[ok], values[ok])
    return out.reshape(n_images, ny, nx)


def render_projected_spheres(centres_px, radius_px: float, shape: tuple[int, int], *, supersample: int = 4,
                             line_detector: bool = False, device="cpu") -> torch.Tensor:
    """Projected thickness of spheres (path length in pixels), anti-aliased.

    Parameters
    ----------
    centres_px : ``(n_images, n_spheres, 2)`` projected centres ``(u, v)`` as pixel indices
        (0-based, may be fractional or outside the image)
    radius_px : sphere radius in pixels
    shape : ``(y, x)`` image size
    supersample : sub-samples per pixel and axis (box-filter anti-aliasing)
    line_detector : a 1D detector (``shape[0] == 1``): the profile depends on ``u`` only
        (the projected *disc* thickness ``2 sqrt(R^2 - du^2)``, 2D geometry)

    Returns
    -------
    torch.Tensor ``(n_images, y, x)`` float32: ``2 sqrt(R^2 - d^2)`` averaged over each pixel.
    """
    c = torch.as_tensor(np.asarray(centres_px, dtype=np.float64), device=device)
    n_img, n_sph = c.shape[:2]
    ny, nx = shape
    if n_sph == 0:
        return torch.zeros((n_img, ny, nx), dtype=torch.float32, device=device)
    r = float(radius_px)
    half = int(math.ceil(r)) + 1
    offs = torch.arange(-half, half + 1, device=device)
    s = int(supersample)
    sub = (torch.arange(s, device=device, dtype=torch.float64) + 0.5) / s - 0.5  # sub-pixel offsets
    cc = c.reshape(-1, 2)
    base_u = torch.round(cc[:, 0]).to(torch.int64)
    base_v = torch.round(cc[:, 1]).to(torch.int64)
    img_idx = torch.arange(n_img, device=device).repeat_interleave(n_sph)
    if line_detector:
        iu = base_u[:, None] + offs[None, :]  # (N, P)
        du = iu[:, :, None].to(torch.float64) + sub[None, None, :] - cc[:, 0, None, None]  # (N, P, s)
        val = (2.0 * torch.sqrt(torch.clamp(r * r - du * du, min=0.0))).mean(-1)  # (N, P)
        iy = torch.zeros_like(iu)
        return _scatter_patches(val[:, None, :].float(), iy[:, None, :], iu[:, None, :], (ny, nx), n_img,
                                img_idx)
    iu = base_u[:, None, None] + offs[None, None, :]  # (N, 1, P)
    iv = base_v[:, None, None] + offs[None, :, None]  # (N, P, 1)
    iu, iv = torch.broadcast_tensors(iu, iv)
    du = iu[..., None, None].to(torch.float64) + sub[None, None, None, None, :] - cc[:, 0, None, None, None, None]
    dv = iv[..., None, None].to(torch.float64) + sub[None, None, None, :, None] - cc[:, 1, None, None, None, None]
    val = (2.0 * torch.sqrt(torch.clamp(r * r - du * du - dv * dv, min=0.0))).mean(dim=(-1, -2))
    return _scatter_patches(val.float(), iv, iu, (ny, nx), n_img, img_idx)


def render_markers(projected_px, shape: tuple[int, int], *, profile: str = "gaussian", sigma_px: float = 1.0,
                   diameter_px: float = 1.0, line_detector: bool = False, weights=None, supersample: int = 4,
                   device="cpu") -> torch.Tensor:
    """The marker image ``Psi``: bead profiles at projected positions (peak about 1 per bead).

    Parameters
    ----------
    projected_px : ``(n_images, n_beads, 2)`` centres ``(u, v)`` as 0-based pixel indices
    shape : ``(y, x)``
    profile : ``"gaussian"`` (``exp(-d^2 / (2 sigma^2))`` at pixel centres) or ``"ball"``
        (sphere thickness / diameter, pixel-averaged)
    sigma_px : Gaussian standard deviation (pixels)
    diameter_px : bead diameter (pixels), for ``"ball"``
    line_detector : 1D detector (2D geometry): the profile depends on ``u`` only
    weights : optional ``(n_beads,)`` amplitude per bead

    Returns
    -------
    torch.Tensor ``(n_images, y, x)`` float32
    """
    c = torch.as_tensor(np.asarray(projected_px, dtype=np.float64), device=device)
    n_img, n_b = c.shape[:2]
    ny, nx = shape
    w = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64), device=device)
    if profile == "ball":
        if w is not None:  # render each bead separately would be slow; weights only with gaussian
            raise InputError("weights only with the gaussian profile", field="weights", got="ball profile")
        img = render_projected_spheres(c, diameter_px / 2.0, shape, supersample=supersample,
                                       line_detector=line_detector, device=device)
        return img / float(diameter_px)
    _check_profile(profile, sigma_px)
    if n_b == 0:
        return torch.zeros((n_img, ny, nx), dtype=torch.float32, device=device)
    half = int(math.ceil(5.0 * sigma_px)) + 1
    offs = torch.arange(-half, half + 1, device=device)
    cc = c.reshape(-1, 2)
    amp = torch.ones(cc.shape[0], dtype=torch.float64, device=device) if w is None else w.repeat(n_img)
    base_u = torch.round(cc[:, 0]).to(torch.int64)
    base_v = torch.round(cc[:, 1]).to(torch.int64)
    img_idx = torch.arange(n_img, device=device).repeat_interleave(n_b)
    inv = 1.0 / (2.0 * sigma_px * sigma_px)
    if line_detector:
        iu = base_u[:, None] + offs[None, :]
        du = iu.to(torch.float64) - cc[:, 0, None]
        val = amp[:, None] * torch.exp(-du * du * inv)
        return _scatter_patches(val[:, None, :].float(), torch.zeros_like(iu)[:, None, :], iu[:, None, :],
                                (ny, nx), n_img, img_idx)
    iu = base_u[:, None, None] + offs[None, None, :]
    iv = base_v[:, None, None] + offs[None, :, None]
    iu, iv = torch.broadcast_tensors(iu, iv)
    du = iu.to(torch.float64) - cc[:, 0, None, None]
    dv = iv.to(torch.float64) - cc[:, 1, None, None]
    val = amp[:, None, None] * torch.exp(-(du * du + dv * dv) * inv)
    return _scatter_patches(val.float(), iv, iu, (ny, nx), n_img, img_idx)



def _check_profile(profile: str, sigma_px: float) -> None:
    """Raise :class:`InputError` unless ``profile`` is ``"gaussian"`` (with ``sigma_px > 0``) or ``"ball"``."""
    if profile == "ball":
        return
    if profile != "gaussian":
        raise InputError("profile 'gaussian' or 'ball'", field="profile", got=profile)
    if sigma_px <= 0:
        raise InputError("a Gaussian width > 0", field="profile_sigma_nm", got=sigma_px)


def apply_dose_noise(expected_counts: torch.Tensor, *, noise: str = "poisson", variance: float | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Shot noise on expected electron counts.

    Parameters
    ----------
    expected_counts : tensor of mean electron counts per pixel (any shape, >= 0)
    noise : ``"poisson"`` (``Poisson(expected)``), ``"gaussian"`` (``expected + N(0, variance)``)
        or ``"none"`` (a copy of ``expected``)
    variance : variance of the Gaussian noise (counts²); None: ``expected`` itself (the
        Gaussian approximation of the Poisson noise)
    generator : torch generator on the CPU that draws the noise

    Returns
    -------
    torch.Tensor of the shape, dtype and device of ``expected_counts``
    """
    e = expected_counts
    if noise == "none":
        return e.clone()
    if noise == "poisson":
        return torch.poisson(e.cpu(), generator=generator).to(e.device)
    if noise == "gaussian":
        n = torch.randn(e.shape, generator=generator, dtype=e.dtype).to(e.device)
        if variance is not None:
            return e + math.sqrt(float(variance)) * n
        return e + torch.sqrt(e.clamp(min=0)) * n
    raise InputError("noise 'poisson', 'gaussian' or 'none'", field="noise", got=noise)
