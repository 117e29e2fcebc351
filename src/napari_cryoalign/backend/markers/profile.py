"""The width of a bead's image, measured on the data (when ``sigma_nm`` is not given).

The nominal width :func:`~.forward.default_sigma_nm` follows from the bead diameter and the
pixel size alone. A recorded bead is wider or narrower than that (defocus, the CTF, the
dose filter, binning, the real bead size), and SparseAlign with a too narrow model explains
one bead by several markers (issue 22: 63 markers for 20 beads, E_markers 250 nm²).

:func:`estimate_marker_width` fits the forward model's own profile, a Gaussian sampled at
the pixel centres on a constant background,

    ``f(u, v) = b + a exp(-((u - u0)^2 + (v - v0)^2) / (2 sigma^2))``

on the strongest isolated blobs of the few lowest-tilt images of a *pre-processed* stack
(beads bright, background about 0) and returns the median width. Nothing in it depends on
the nominal width, which is only the fallback when no blob can be measured:

1. candidate blobs: local maxima of a lightly smoothed image (std 0.7 px) above
   ``median + 6 * robust std`` of that image, the strongest first;
2. a first width from each blob's half-maximum area (``pi * 2 ln 2 * sigma^2`` for a
   Gaussian, the smoothing subtracted in quadrature): it sets the isolation distance and the
   fit window;
3. separable blobs only (no other candidate above a quarter of its height within
   ``3 * sigma + 1`` px), the strongest ``max_blobs`` of each image;
4. least-squares fit on a window of half-size ``ceil(3 * sigma) + 1`` px, with the blobs
   within ``6 * sigma + 2`` px as further Gaussians of the same width (their tails reach the
   window; each has its own height and centre); fits whose centre left the peak pixel, whose
   width hit a bound or whose amplitude is not positive are dropped; steps 3-4 run twice,
   the second time with the median of the first fits;
5. the median over all blobs, and its robust spread (MAD) as the uncertainty.

Blobs of two beads overlapping in projection fit wider than one bead; the median over tens
of blobs ignores them. The count of blobs per image also gives the number of beads the data
suggest (``n_blobs_per_image``, used to warn when far more markers are found).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.optimize import least_squares

from ...errors import InputError

__all__ = ["WidthEstimate", "estimate_marker_width"]


@dataclass(frozen=True)
class WidthEstimate:
    """Result of :func:`estimate_marker_width`.

    sigma_nm : the estimated Gaussian width (standard deviation, nm); the fallback
        (``nominal_sigma_nm``) when nothing could be measured
    sigma_px : the same in pixels
    spread_nm : robust spread of the per-blob widths (1.4826 * MAD, nm; NaN when unmeasured)
    n_blobs : number of blobs fitted (0: the estimate is the fallback)
    images : stack indices of the images used (lowest tilts)
    n_blobs_per_image : median number of bead-like blobs per image used (isolated or not):
        roughly the number of beads in the field of view
    source : ``"estimated"`` or ``"nominal"`` (fallback)
    nominal_sigma_nm : the nominal width it can be compared with
    widths_nm : per-blob widths (nm)
    """

    sigma_nm: float
    sigma_px: float
    spread_nm: float
    n_blobs: int
    images: tuple
    n_blobs_per_image: float
    source: str
    nominal_sigma_nm: float | None = None
    widths_nm: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict:
        return {"sigma_nm": float(self.sigma_nm), "spread_nm": float(self.spread_nm), "n_blobs": int(self.n_blobs),
                "images": [int(i) for i in self.images], "n_blobs_per_image": float(self.n_blobs_per_image),
                "source": self.source,
                "nominal_sigma_nm": None if self.nominal_sigma_nm is None else float(self.nominal_sigma_nm)}


_SMOOTH_PX = 0.7


def _candidates(img: np.ndarray, line: bool):
    """Local maxima of the smoothed image above the noise: ``(coords (K, 2) as (y, x), heights (K,), smoothed)``."""
    sm = ndimage.gaussian_filter(img, (0, _SMOOTH_PX) if line else _SMOOTH_PX)
    med = float(np.median(sm))
    mad = 1.4826 * float(np.median(np.abs(sm - med)))
    thr = med + 6.0 * mad if mad > 0 else med + 0.5 * (float(sm.max()) - med)
    size = (1, 3) if line else 3
    peaks = (sm == ndimage.maximum_filter(sm, size=size, mode="nearest")) & (sm > thr)
    yx = np.argwhere(peaks)
    h = sm[peaks] - med
    order = np.argsort(-h)
    return yx[order], h[order], sm - med


def _half_max_sigma(sm: np.ndarray, y: int, x: int, h: float, line: bool) -> float:
    """Width (px) from the area above half the peak of the connected blob at (y, x), smoothing removed."""
    r = 12
    y0, y1 = max(0, y - r), min(sm.shape[0], y + r + 1)
    x0, x1 = max(0, x - r), min(sm.shape[1], x + r + 1)
    lab, _ = ndimage.label(sm[y0:y1, x0:x1] >= 0.5 * h)
    area = float((lab == lab[y - y0, x - x0]).sum())
    if line:  # length above half max = 2 sqrt(2 ln 2) sigma
        s_eff = area / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    else:
        s_eff = math.sqrt(area / (2.0 * math.pi * math.log(2.0)))
    return math.sqrt(max(s_eff * s_eff - _SMOOTH_PX ** 2, 0.09))


def _fit_blob(img: np.ndarray, y: int, x: int, s0: float, line: bool, s_max: float, neighbours=()):
    """Fit ``b + a exp(-r^2 / 2 s^2)`` around pixel (y, x); returns ``(sigma_px, ok)``.

    ``neighbours`` are ``(y, x, height)`` of nearby blobs whose tails reach the window: each
    gets its own amplitude and centre and the same width.
    """
    hw = math.ceil(3.0 * s0) + 1
    y0, y1 = (0, 1) if line else (max(0, y - hw), min(img.shape[0], y + hw + 1))
    x0, x1 = max(0, x - hw), min(img.shape[1], x + hw + 1)
    win = img[y0:y1, x0:x1].astype(np.float64)
    if win.size < (5 if line else 16):
        return float("nan"), False
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    a0 = float(img[y, x] - np.median(win))
    nb = [(float(ny), float(nx), float(h)) for ny, nx, h in neighbours]

    def model(p):
        b, s = p[0], p[1]
        out = np.full(win.shape, b)
        for k in range(1 + len(nb)):
            a, u, v = p[2 + 3 * k: 5 + 3 * k]
            d2 = (xx - u) ** 2 + (0.0 if line else (yy - v) ** 2)
            out = out + a * np.exp(-d2 / (2.0 * s * s))
        return out

    p0 = [0.0, s0, max(a0, 1e-6), x, y]
    lo = [-np.inf, 0.2, 0.0, x - 1.5, y - 1.5]
    hi = [np.inf, s_max, np.inf, x + 1.5, y + 1.5]
    for ny, nx, h in nb:
        p0 += [max(h, 1e-6), nx, ny]
        lo += [0.0, nx - 1.5, ny - 1.5]
        hi += [np.inf, nx + 1.5, ny + 1.5]
    lo, hi = np.array(lo), np.array(hi)
    p0 = np.clip(np.array(p0), lo + 1e-9, hi - 1e-9)
    try:
        r = least_squares(lambda p: (model(p) - win).ravel(), p0, bounds=(lo, hi), x_scale="jac", max_nfev=300)
    except (ValueError, np.linalg.LinAlgError):
        return float("nan"), False
    s, a, u, v = r.x[1], r.x[2], r.x[3], r.x[4]
    ok = (r.success and a > 0 and abs(u - x) < 1.0 and (line or abs(v - y) < 1.0)
          and 0.21 < s < 0.99 * s_max)
    return float(s), bool(ok)


def estimate_marker_width(data, pixel_size_nm: float, *, tilt_angles_deg=None, nominal_sigma_nm: float | None = None,
                          n_images: int = 5, max_blobs: int = 30, line_detector: bool = False) -> WidthEstimate:
    """Estimate the Gaussian width of a bead's image from a pre-processed stack.

    Parameters
    ----------
    data : ``(T, ny, nx)`` pre-processed stack, beads **bright** on a background about 0
        (what :func:`~.preprocess.preprocess_tiltseries` returns; ``(T, 1, nx)`` for a line detector)
    pixel_size_nm : pixel size (nm)
    tilt_angles_deg : ``(T,)`` degrees; the ``n_images`` images nearest 0 degrees are used
        (default: the middle images of the stack)
    nominal_sigma_nm : the fallback (and the value it is reported against) when no blob can be fitted
    n_images : number of lowest-tilt images measured
    max_blobs : at most this many blobs per image (the strongest isolated ones)
    line_detector : 1D images (the 2D geometry): the profile along x only

    Returns
    -------
    :class:`WidthEstimate` (``source="nominal"`` if fewer than 3 blobs could be fitted)
    """
    d = np.asarray(data, dtype=np.float64)
    if d.ndim != 3:
        raise InputError("a stack (n_tilts, y, x)", field="data", got=f"shape {d.shape}")
    if not pixel_size_nm > 0:
        raise InputError("a pixel size > 0 nm", field="pixel_size_nm", got=pixel_size_nm)
    t = d.shape[0]
    if tilt_angles_deg is None:
        key = np.abs(np.arange(t) - (t - 1) / 2.0)
    else:
        key = np.abs(np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1))
        if key.size != t:
            raise InputError(f"{t} tilt angles", field="tilt_angles_deg", got=key.size)
    images = tuple(int(i) for i in np.argsort(key, kind="stable")[: max(1, min(int(n_images), t))])
    line = bool(line_detector) or d.shape[1] == 1
    s_max = 0.25 * (d.shape[2] if line else min(d.shape[1:]))

    found = []  # per image: (img, yx, heights, sm, first sigma per blob)
    counts = []
    for i in images:
        img = d[i]
        yx, h, sm = _candidates(img, line)
        counts.append(len(h))
        yx, h = yx[: 3 * max_blobs], h[: 3 * max_blobs]  # the strongest: enough to find max_blobs separable ones
        first = np.array([_half_max_sigma(sm, int(y), int(x), float(hh), line) for (y, x), hh in zip(yx, h)])
        found.append((img, yx, h, first))

    def measure(s_guess):
        widths = []
        for img, yx, h, first in found:
            if len(h) == 0:
                continue
            used = 0
            for k in range(len(h)):
                s0 = first[k] if s_guess is None else s_guess
                dist = np.hypot(*(yx - yx[k]).T.astype(np.float64))
                if np.any((dist > 0) & (dist < 3.0 * s0 + 1.0) & (h > 0.25 * h[k])):
                    continue  # not separable from a neighbour of comparable height
                near = (dist > 0) & (dist < 6.0 * s0 + 2.0)
                nbrs = [(yx[j, 0], yx[j, 1], h[j]) for j in np.flatnonzero(near)[:6]]
                s, ok = _fit_blob(img, int(yx[k, 0]), int(yx[k, 1]), s0, line, s_max, nbrs)
                if ok:
                    widths.append(s)
                    used += 1
                if used >= max_blobs:
                    break
        return np.asarray(widths)

    widths = measure(None)
    if widths.size >= 3:
        widths2 = measure(float(np.median(widths)))
        if widths2.size >= 3:
            widths = widths2
    p = float(pixel_size_nm)
    per_image = float(np.median(counts)) if counts else 0.0
    if widths.size < 3:
        s = nominal_sigma_nm if nominal_sigma_nm is not None else p
        return WidthEstimate(float(s), float(s) / p, float("nan"), int(widths.size), images, per_image, "nominal",
                             nominal_sigma_nm, widths * p)
    med = float(np.median(widths))
    spread = 1.4826 * float(np.median(np.abs(widths - med)))
    return WidthEstimate(med * p, med, spread * p, int(widths.size), images, per_image, "estimated",
                         nominal_sigma_nm, widths * p)
