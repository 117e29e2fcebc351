"""Pre-processing of recorded marker tilt series for SparseAlign (paper section IV-C c).

SparseAlign's forward model wants bright markers of peak about 1 on a zero background.
Recorded counts have dark gold beads (absorption) and Poisson noise. The paper's steps:

1. shift the data by its minimum and apply the **Anscombe transform**
   ``2 sqrt(x + 3/8)`` (variance stabilisation: Poisson noise becomes about unit Gaussian).
   We shift only data with negative values: counts are left as they are, because moving
   the darkest bead pixel to 0 puts it where the square root is steepest and distorts the
   bead profile (peaks up to 30 % too high on noiseless counts);
2. subtract the **average background** intensity;
3. divide by the **average bead intensity**.

The paper segmented beads with Otsu's method on *noiseless* data; we have no noiseless
data, so the segmentation here is done on the noisy stack itself: a light Gaussian
smoothing, then a threshold ``max(Otsu, median + 6 * robust std)`` (Otsu alone fails when
beads cover under 1 % of the pixels). The background is the median of each tilt image
(beads are sparse; per tilt because the dose and the path length change with the tilt).
The bead intensity is the median of the local maxima inside the bead mask, corrected for
the smoothing and for the average loss of a peak sampled off-centre, so that a bead's
*peak* becomes 1 as in the forward model.

``transform="log"`` (Beer-Lambert, ``-log(I / background)``) is offered as an
alternative: it is linear in the projected gold thickness, so the Gaussian model fits
noiseless data better; ``"none"`` leaves the values as they are (then only background and
bead normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ...errors import InputError

__all__ = ["PreprocessedStack", "anscombe", "linear_marker_image", "otsu_threshold", "preprocess_tiltseries"]


@dataclass(frozen=True)
class PreprocessedStack:
    """Result of :func:`preprocess_tiltseries`.

    data : ``(T, ny, nx)`` float32, beads bright with peak about 1, background about 0
    background : ``(T,)`` per-tilt background after the transform (before the sign flip)
    bead_intensity : the bead peak the data were divided by
    polarity : ``"dark"`` or ``"bright"`` (beads in the input)
    transform : ``"anscombe"``, ``"log"`` or ``"none"``
    threshold : segmentation threshold used (in the transformed, background-subtracted units)
    n_peaks : number of bead peaks the intensity was measured on
    input_offset : what was added to the input before the transform (non-zero when it had values
        <= 0, i.e. it was not intensities)
    """

    data: np.ndarray
    background: np.ndarray
    bead_intensity: float
    polarity: str
    transform: str
    threshold: float
    n_peaks: int
    input_offset: float = 0.0


def anscombe(x: np.ndarray) -> np.ndarray:
    """Anscombe transform ``2 sqrt(x + 3/8)`` of non-negative counts."""
    return 2.0 * np.sqrt(np.maximum(x, 0.0) + 0.375)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of a set of values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m0 / w0
        mu1 = (mt - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between[~np.isfinite(between)] = -1
    return float(centres[int(np.argmax(between))])


def _polarity(x: np.ndarray) -> str:
    med = float(np.median(x))
    lo, hi = np.percentile(x, [0.01, 99.99])
    return "dark" if med - lo > hi - med else "bright"


def preprocess_tiltseries(tilt_series, *, transform: str = "anscombe", polarity: str = "auto",
                          sigma_px: float = 1.0, line_detector: bool = False,
                          bead_intensity: float | None = None) -> PreprocessedStack:
    """Normalise a recorded marker tilt series for SparseAlign.

    Parameters
    ----------
    tilt_series : ``(T, ny, nx)`` counts (or any intensities), beads dark or bright
    transform : ``"anscombe"`` (paper), ``"log"`` or ``"none"``
    polarity : ``"dark"``, ``"bright"`` or ``"auto"`` (decided from the tails of the histogram)
    sigma_px : marker Gaussian width in pixels (for the peak corrections)
    line_detector : 2D geometry (one detector row): smoothing along x only
    bead_intensity : use this bead peak (transformed units) instead of measuring it

    Returns
    -------
    :class:`PreprocessedStack`
    """
    x = np.asarray(tilt_series, dtype=np.float64)
    if x.ndim != 3:
        raise InputError("a tilt series (n_tilts, y, x)", field="tilt_series", got=f"shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("finite pixel values", field="tilt_series", got="NaN or inf")
    if transform not in ("anscombe", "log", "none"):
        raise InputError("transform 'anscombe', 'log' or 'none'", field="transform", got=transform)
    pol = _polarity(x) if polarity == "auto" else polarity
    if pol not in ("dark", "bright"):
        raise InputError("polarity 'dark', 'bright' or 'auto'", field="polarity", got=polarity)
    offset = 0.0
    if transform == "anscombe":
        offset = -min(0.0, float(x.min()))
        x = anscombe(x + offset)
    elif transform == "log":
        if x.min() <= 0:
            offset = 1.0 - float(x.min())
            x = x + offset
        x = np.log(x)
    background = np.median(x.reshape(x.shape[0], -1), axis=1)
    y = x - background[:, None, None]
    if pol == "dark":
        y = -y
    s = max(0.5, min(1.0, 0.5 * float(sigma_px)))
    sm = ndimage.gaussian_filter(y, (0, 0, s) if line_detector else (0, s, s))
    med = float(np.median(sm))
    mad = 1.4826 * float(np.median(np.abs(sm - med)))
    thr = max(otsu_threshold(sm), med + 6.0 * mad) if mad > 0 else otsu_threshold(sm)
    n_peaks = 0
    if bead_intensity is None:
        size = (1, 1, 3) if line_detector else (1, 3, 3)
        peaks = (sm == ndimage.maximum_filter(sm, size=size)) & (sm > thr)
        n_peaks = int(peaks.sum())
        if n_peaks == 0:
            raise InputError("visible gold beads (none found above the noise)", field="tilt_series",
                             got="no bead peaks")
        val = float(np.median(sm[peaks]))
        sg = max(float(sigma_px), 0.3)
        dims = 1 if line_detector else 2
        smooth_loss = (sg * sg / (sg * sg + s * s)) ** (dims / 2.0)
        # mean of exp(-d^2 / 2 sg^2) for a centre uniformly within +-0.5 px of the peak pixel
        xs = np.linspace(-0.5, 0.5, 201)
        off_centre = float(np.mean(np.exp(-xs * xs / (2 * (sg * sg + s * s))))) ** dims
        bead_intensity = val / (smooth_loss * off_centre)
    if not bead_intensity > 0:
        raise InputError("a bead intensity > 0", field="bead_intensity", got=bead_intensity)
    data = (y / bead_intensity).astype(np.float32)
    return PreprocessedStack(data, background, float(bead_intensity), pol, transform, float(thr), n_peaks, offset)


def linear_marker_image(pre: PreprocessedStack, *, with_kind: bool = False):
    """The pre-processed stack taken back to a domain linear in the beads' projected density.

    A bead's recorded image is ``I = I0 exp(-c Psi)`` (Beer-Lambert; ``Psi`` the Gaussian of the
    forward model, ``simulate.markers``). The Anscombe transform (``sqrt I``) and even the counts
    themselves (``1 - exp(-c Psi)``) flatten a strong bead's peak, so a width measured on them is
    too large: +8-10 % on the Anscombe data and +6-8 % on the counts for beads of peak contrast
    ``c`` about 0.5-0.7 (the paper's 3D case). Here, per image, with ``I0`` the median:

    * intensities (``transform`` ``"anscombe"`` or ``"log"`` of non-negative input): dark beads
      ``-log(I / I0)``; bright beads are taken as the mirror image of dark ones
      (``2 I0 - I``, e.g. a series whose contrast was inverted): ``-log(2 - I / I0)``;
    * anything else (values <= 0 in the input, ``transform="none"``): ``I - I0`` with the sign
      that makes beads bright.

    Returns ``(T, ny, nx)`` float32, beads bright, background about 0 (with ``with_kind``, also
    ``"beer-lambert"`` or ``"difference"``: which of the two it is). The marker width is measured on
    it (:func:`~.profile.estimate_marker_width`), and the markers' positions are polished on it
    (:func:`~.adcg.polish_markers`) when it is Beer-Lambert.
    """
    z = np.asarray(pre.data, dtype=np.float64) * float(pre.bead_intensity)
    t = pre.background[:, None, None] + (z if pre.polarity == "bright" else -z)  # the transformed input
    if pre.transform == "anscombe":
        raw = np.maximum(0.25 * t * t - 0.375, 0.0)
    elif pre.transform == "log":
        raw = np.exp(t)
    else:
        raw = t
    i0 = np.median(raw.reshape(raw.shape[0], -1), axis=1)[:, None, None]
    beer_lambert = pre.transform in ("anscombe", "log") and pre.input_offset == 0.0 and float(i0.min()) > 0
    if beer_lambert:
        ratio = raw / i0 if pre.polarity == "dark" else 2.0 - raw / i0
        out = -np.log(np.clip(ratio, 0.02, None))
    else:
        out = raw - i0 if pre.polarity == "bright" else i0 - raw
    out = out.astype(np.float32)
    return (out, "beer-lambert" if beer_lambert else "difference") if with_kind else out
