"""From a recorded tilt series to markers and deformation: validation, pre-processing, SparseAlign.

:func:`find_markers_job` is what the CLI (``cryoalign markers``) and the widget run:

1. check the inputs (angles per image, acquisition order a permutation, bead diameter
   positive and smaller than the field of view) and raise
   :class:`~napari_cryoalign.errors.InputError` naming what is wrong;
2. times from the acquisition order (:func:`~napari_cryoalign.backend.deformation.times_from_order`);
3. pre-processing (:func:`~napari_cryoalign.backend.markers.preprocess.preprocess_tiltseries`,
   skipped with ``preprocess=None`` for data that already are a marker image);
4. the marker width: measured on the pre-processed lowest-tilt images
   (:func:`~napari_cryoalign.backend.markers.profile.estimate_marker_width`) unless ``sigma_nm``
   is given (then the bead normalisation is redone with the measured width);
5. SparseAlign (:func:`~napari_cryoalign.backend.markers.adcg.sparse_align_job`), merging markers
   closer than the width (clipped to half a diameter ... a diameter);
6. warnings: far more markers than bead-like blobs, a given width far from the measured one.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ...errors import InputError
from ..deformation import times_from_order
from ..jobs import Job, Partial, Progress, run_job
from .adcg import SparseAlignResult, polish_markers, sparse_align_job
from .forward import MarkerGeometry, default_sigma_nm
from .preprocess import linear_marker_image, preprocess_tiltseries
from .profile import estimate_marker_width

__all__ = ["find_markers", "find_markers_job", "marker_warnings", "merge_distance_for", "validate_inputs"]

log = logging.getLogger(__name__)


def validate_inputs(tilt_series, tilt_angles_deg, *, bead_diameter_nm: float, pixel_size_nm: float,
                    acquisition_order=None, path=None, angles_path=None, order_path=None):
    """Check the inputs; returns ``(stack (T, ny, nx) float array, angles (T,), order (T,))``."""
    ts = np.asarray(tilt_series)
    if ts.ndim == 2:
        ts = ts[:, None, :]  # (T, n): the 2D geometry's sinogram
    if ts.ndim != 3 or ts.shape[0] < 2:
        raise InputError("a tilt series (n_tilts >= 2, y, x)", path=path, field="shape", got=f"shape {ts.shape}")
    n = ts.shape[0]
    a = np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1)
    if a.size != n:
        raise InputError(f"{n} tilt angles (one per image of the stack)", path=angles_path, field="tilt angles",
                         got=f"{a.size} angles")
    if not np.all(np.isfinite(a)) or np.any(np.abs(a) >= 90):
        raise InputError("finite tilt angles between -90 and 90 degrees", path=angles_path, field="tilt angles",
                         got=f"min {np.nanmin(a):g}, max {np.nanmax(a):g}")
    if acquisition_order is None:
        order = np.arange(n)
    else:
        o = np.asarray(acquisition_order).reshape(-1)
        if o.size != n or not np.all(np.mod(o, 1) == 0) or sorted(o.astype(np.int64).tolist()) != list(range(n)):
            raise InputError(f"a permutation of 0..{n - 1} (0-based stack indices, first acquired first)",
                             path=order_path, field="acquisition order", got=o.tolist()[:10])
        order = o.astype(np.int64)
    if not (pixel_size_nm is not None and np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise InputError("a pixel size > 0 nm", path=path, field="pixel size", got=pixel_size_nm)
    fov = min(ts.shape[2], ts.shape[1] if ts.shape[1] > 1 else ts.shape[2]) * float(pixel_size_nm)
    if not (bead_diameter_nm is not None and np.isfinite(bead_diameter_nm) and bead_diameter_nm > 0):
        raise InputError("a bead diameter > 0 nm", field="bead diameter", got=bead_diameter_nm)
    if bead_diameter_nm >= fov:
        raise InputError(f"a bead diameter smaller than the field of view ({fov:g} nm)", field="bead diameter",
                         got=f"{bead_diameter_nm:g} nm")
    return ts, a, order


def find_markers_job(
    tilt_series,
    tilt_angles_deg,
    *,
    bead_diameter_nm: float,
    pixel_size_nm: float,
    acquisition_order=None,
    sigma_nm: float | None = None,
    preprocess: str | None = "anscombe",
    polarity: str = "auto",
    thickness_nm: float | None = None,
    degree: int = 2,
    levels="auto",
    polish_linear: bool = True,
    device="cpu",
    **options,
) -> Job[SparseAlignResult]:
    """Localise gold markers and estimate the beam-induced deformation of a tilt series.

    Parameters
    ----------
    tilt_series : ``(T, ny, nx)`` recorded images (counts; beads dark or bright), stack order;
        ``(T, 1, nx)`` or ``(T, nx)`` for the 2D geometry (one detector row)
    tilt_angles_deg : ``(T,)`` degrees, stack order
    bead_diameter_nm : gold bead diameter (nm); sets the marker width and the merge distance
    pixel_size_nm : detector pixel size (nm)
    acquisition_order : ``(T,)`` stack indices, first acquired first (default: stack order)
    sigma_nm : Gaussian marker width (nm); default: measured on the pre-processed data
        (:func:`~.profile.estimate_marker_width`, the strongest isolated blobs of the lowest-tilt
        images), the nominal :func:`~.forward.default_sigma_nm` only if nothing can be measured
    preprocess : ``"anscombe"`` (paper), ``"log"``, ``"none"`` (background and bead
        normalisation only) or None (the data already are the marker image: bright, peak 1)
    polarity : beads ``"dark"``, ``"bright"`` or ``"auto"``
    thickness_nm : sample thickness (markers lie within ``|z| <= thickness / 2``); default a
        quarter of the field of view on each side
    degree : polynomial degree of the deformation in space
    levels : coarse-to-fine levels (``"auto"``, ``"1/16,1/8,1/4,1/2"``, ...)
    polish_linear : after the markers are found (on the Anscombe-transformed stack, as in the paper),
        re-fit their positions and the deformation on the stack taken back to the Beer-Lambert domain
        (:func:`~.adcg.polish_markers`), where a sum of Gaussians models overlapping beads exactly;
        only for intensity data (``preprocess`` ``"anscombe"`` or ``"log"``)
    device : torch device
    **options : passed to :func:`~.adcg.sparse_align_job` (``time_degree``, ``components``,
        ``variables``, ``max_markers``, ``min_weight``, ...)

    Yields
    ------
    ``Progress`` (pre-processing, width), ``Partial("geometry", MarkerGeometry)``,
    ``Partial("marker_width", dict)`` (``sigma_nm``, ``source``: ``"estimated"``, ``"given"`` or
    ``"nominal"``, ``nominal_sigma_nm``, ``estimate``), then the events of :func:`~.adcg.sparse_align_job`.

    Returns
    -------
    :class:`~.adcg.SparseAlignResult` (``params["preprocess"]`` records the normalisation,
    ``marker_width`` the width and where it came from, ``warnings`` what the user should check)
    """
    ts, angles, order = validate_inputs(tilt_series, tilt_angles_deg, bead_diameter_nm=bead_diameter_nm,
                                        pixel_size_nm=pixel_size_nm, acquisition_order=acquisition_order)
    line = ts.shape[1] == 1
    times = times_from_order(order, ts.shape[0])
    nominal = default_sigma_nm(bead_diameter_nm, pixel_size_nm)
    yield Progress(0, None, "pre-processing")
    pre_sigma_px = (float(sigma_nm) if sigma_nm is not None else nominal) / float(pixel_size_nm)

    def _pre(sigma_px):
        pre = preprocess_tiltseries(ts, transform=preprocess, polarity=polarity, sigma_px=sigma_px,
                                    line_detector=line)
        info = {"transform": pre.transform, "polarity": pre.polarity, "bead_intensity": pre.bead_intensity,
                "threshold": pre.threshold, "n_peaks": pre.n_peaks}
        return pre.data, info, pre

    if preprocess is None:
        data = np.asarray(ts, dtype=np.float32)
        pre_info = None
        linear, kind = data, "given"
    else:
        data, pre_info, pre = _pre(pre_sigma_px)
        # the width of the recorded bead image, not of its transform
        linear, kind = linear_marker_image(pre, with_kind=True)
    yield Progress(0, None, "measuring the marker width")
    width = estimate_marker_width(linear, pixel_size_nm, tilt_angles_deg=angles, nominal_sigma_nm=nominal,
                                  line_detector=line)
    if sigma_nm is not None:
        sigma, source = float(sigma_nm), "given"
    else:
        sigma, source = float(width.sigma_nm), width.source
        if preprocess is not None and source == "estimated":  # the bead-peak normalisation depends on the width
            data, pre_info, _ = _pre(sigma / float(pixel_size_nm))
    geometry = MarkerGeometry(angles, times, tuple(ts.shape[1:]), float(pixel_size_nm), sigma, line_detector=line)
    width_info = {"sigma_nm": sigma, "source": source, "nominal_sigma_nm": nominal,
                  "estimate": width.to_dict()}
    yield Partial("geometry", geometry)
    yield Partial("marker_width", width_info)
    # Two real beads are at least a diameter apart; two markers closer than the image width cannot be told
    # apart in any projection: both are one bead explained twice.
    options.setdefault("merge_distance_nm", merge_distance_for(bead_diameter_nm, sigma))
    z_range = None if thickness_nm is None else 0.5 * float(thickness_nm)
    result = yield from sparse_align_job(data, geometry, degree=degree, levels=levels, z_range_nm=z_range,
                                         device=device, **options)
    if polish_linear and kind == "beer-lambert" and result.n_markers:
        yield Progress(0, None, "polishing the markers on the Beer-Lambert image")
        result = polish_markers(result, _unit_peak(linear, result.projected_px), device=device)
    result.params.update(preprocess=pre_info, bead_diameter_nm=float(bead_diameter_nm),
                         acquisition_order=order.tolist(), thickness_nm=thickness_nm, marker_sigma_source=source,
                         nominal_sigma_nm=nominal)
    warnings = marker_warnings(result.n_markers, width, sigma_nm=sigma, source=source)
    for w in warnings:
        log.warning("markers: %s", w)
    return dataclasses.replace(result, marker_width=width_info, warnings=tuple(warnings))


def _unit_peak(linear: np.ndarray, projected_px: np.ndarray) -> np.ndarray:
    """``linear`` scaled so that the median value at the markers' projected centres is 1 (the scale the
    forward model's weights are bounded for)."""
    t, m = projected_px.shape[:2]
    u = np.rint(projected_px[..., 0]).astype(int)
    v = np.rint(projected_px[..., 1]).astype(int) if linear.shape[1] > 1 else np.zeros_like(u)
    ok = (u >= 0) & (u < linear.shape[2]) & (v >= 0) & (v < linear.shape[1])
    ti = np.broadcast_to(np.arange(t)[:, None], (t, m))
    peak = float(np.median(linear[ti[ok], v[ok], u[ok]])) if ok.any() else 0.0
    return linear / peak if peak > 0 else linear


def merge_distance_for(bead_diameter_nm: float, sigma_nm: float) -> float:
    """Merge distance (nm) of :func:`find_markers_job`: the marker width, clipped to [D / 2, D].

    Below half a diameter two markers are one bead whatever the width; above a diameter two
    beads may really touch.
    """
    d = float(bead_diameter_nm)
    return float(min(max(float(sigma_nm), 0.5 * d), d))


def marker_warnings(n_markers: int, width, *, sigma_nm: float, source: str) -> list[str]:
    """Messages for the user: far more markers than bead-like blobs; a given width far from the measured one.

    ``width`` is the :class:`~.profile.WidthEstimate` of the run. "Far more" means more than
    ``1.5 * n + 3`` markers for ``n`` blobs per low-tilt image (beads that overlap in projection or
    leave the field at high tilt explain a few more markers than blobs, not 50 % more).
    """
    out = []
    n_exp = float(width.n_blobs_per_image)
    if n_exp >= 1 and n_markers > 1.5 * n_exp + 3:
        out.append(f"{n_markers} markers for about {n_exp:g} bead-like blobs per low-tilt image: beads are probably "
                   f"explained by several markers (marker width {sigma_nm:.3g} nm, {source}); check --sigma, "
                   f"--bead-diameter and --min-weight")
    if source == "given" and width.source == "estimated" and width.n_blobs >= 5:
        ratio = float(sigma_nm) / float(width.sigma_nm)
        if ratio < 0.67 or ratio > 1.5:
            out.append(f"the given marker width {sigma_nm:.3g} nm differs from the width measured on the data "
                       f"({width.sigma_nm:.3g} nm from {width.n_blobs} blobs) by a factor {ratio:.2g}")
    if source == "nominal":
        out.append(f"the marker width could not be measured on the data (no isolated bead-like blobs); using the "
                   f"nominal {sigma_nm:.3g} nm from the bead diameter and pixel size")
    return out


def find_markers(tilt_series, tilt_angles_deg, **kwargs) -> SparseAlignResult:
    """Run :func:`find_markers_job` to completion."""
    return run_job(find_markers_job(tilt_series, tilt_angles_deg, **kwargs), progress=False)
