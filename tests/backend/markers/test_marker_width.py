"""The marker width measured on the data (issue 22): the estimator, and SparseAlign without ``sigma_nm``."""

import numpy as np
import pytest

from napari_cryoalign.backend.deformation import PolynomialDeformation
from napari_cryoalign.backend.markers import find_markers
from napari_cryoalign.backend.markers.find import marker_warnings, merge_distance_for
from napari_cryoalign.backend.markers.forward import default_sigma_nm
from napari_cryoalign.backend.markers.metrics import match_markers
from napari_cryoalign.backend.markers.preprocess import preprocess_tiltseries
from napari_cryoalign.backend.markers.profile import estimate_marker_width
from napari_cryoalign.backend.simulate.markers import simulate_marker_tiltseries


def _small(sigma_nm, *, noise="poisson", seed=3, n_markers=4, n_tilts=21, pixel_nm=12.8, n_px=32):
    fov = pixel_nm * n_px
    model = PolynomialDeformation.from_terms({"z": {"1": 60.0, "x": -40.0, "y": 25.0}}, degree=1, variables="xy",
                                             length_scale_nm=fov)
    return simulate_marker_tiltseries(geometry="3d", n_markers=n_markers, bead_diameter_nm=15.0,
                                      field_of_view_nm=(fov, fov), thickness_nm=80.0, detector_shape=(n_px, n_px),
                                      tilt_range_deg=(-60, 60), n_tilts=n_tilts, endpoint=True, deformation=model,
                                      profile="gaussian", profile_sigma_nm=sigma_nm, noise=noise,
                                      electrons_per_pixel=1024.0, acquisition="dose-symmetric", seed=seed)


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0])
def test_estimator_recovers_the_width(factor):
    # nominal width of a 40 nm bead at 6.4 nm pixels: 9.1 nm (1.4 px); the data are 0.5x, 1x, 2x that
    nominal = default_sigma_nm(40.0, 6.4)
    true = factor * nominal
    ts = _small(true, n_markers=12, n_tilts=7, pixel_nm=6.4, n_px=64, seed=1)
    pre = preprocess_tiltseries(ts.tilt_series, sigma_px=nominal / 6.4)  # Poisson counts, dark beads
    est = estimate_marker_width(pre.data, 6.4, tilt_angles_deg=ts.tilt_angles_deg, nominal_sigma_nm=nominal)
    assert est.source == "estimated" and est.n_blobs >= 10
    assert abs(est.sigma_nm / true - 1.0) < 0.1, (est.sigma_nm, true)
    assert 8 <= est.n_blobs_per_image <= 13  # about the 12 beads
    # the noiseless marker image (bright, no pre-processing) gives the width almost exactly
    ideal = estimate_marker_width(ts.ideal, 6.4, tilt_angles_deg=ts.tilt_angles_deg)
    assert abs(ideal.sigma_nm / true - 1.0) < 0.03
    # bright beads: the same after pre-processing (the polarity is detected)
    bright = preprocess_tiltseries(2 * 1024.0 - ts.tilt_series, sigma_px=nominal / 6.4)
    assert bright.polarity == "bright"
    est_b = estimate_marker_width(bright.data, 6.4, tilt_angles_deg=ts.tilt_angles_deg)
    assert abs(est_b.sigma_nm / true - 1.0) < 0.1, (est_b.sigma_nm, true)


@pytest.mark.parametrize("polarity", ["dark", "bright"])
def test_width_measured_in_the_beer_lambert_domain_is_unbiased(polarity):
    """Noiseless counts of strong beads: the Anscombe domain widens them, -log(I/I0) does not."""
    from napari_cryoalign.backend.markers.preprocess import linear_marker_image

    true = 20.0
    ts = _small(true, noise="none", n_markers=12, n_tilts=7, pixel_nm=6.4, n_px=64, seed=1)
    counts = ts.tilt_series.astype(np.float64)
    i0 = float(np.median(counts))
    assert counts.min() < 0.8 * i0  # beads of real contrast: the transform's curvature matters
    if polarity == "bright":
        counts = 2.0 * i0 - counts
    pre = preprocess_tiltseries(counts, sigma_px=true / 6.4)
    assert pre.polarity == polarity
    on_transform = estimate_marker_width(pre.data, 6.4, tilt_angles_deg=ts.tilt_angles_deg).sigma_nm
    linear = estimate_marker_width(linear_marker_image(pre), 6.4, tilt_angles_deg=ts.tilt_angles_deg).sigma_nm
    assert abs(linear / true - 1.0) < 0.01, linear
    assert abs(on_transform / true - 1.0) > abs(linear / true - 1.0)
    if polarity == "bright":
        return
    # data that are not intensities (values <= 0) keep the linear difference, beads bright
    shifted = preprocess_tiltseries(counts - i0, sigma_px=true / 6.4)
    assert shifted.input_offset > 0
    lin = linear_marker_image(shifted)
    assert np.median(lin) == pytest.approx(0.0, abs=1e-3) and lin.max() > 10 * np.abs(np.median(lin) + 1e-3)


def test_estimator_falls_back_to_the_nominal_width_on_noise():
    noise = np.random.default_rng(0).normal(0.0, 1.0, (5, 32, 32)) * 1e-6
    est = estimate_marker_width(noise, 12.8, nominal_sigma_nm=5.0)
    assert est.source == "nominal" and est.sigma_nm == 5.0
    assert any("could not be measured" in w for w in marker_warnings(3, est, sigma_nm=5.0, source="nominal"))


def test_twice_the_nominal_width_found_without_sigma():
    nominal = default_sigma_nm(15.0, 12.8)  # 5.0 nm
    # Poisson counts, I0 = 2^10, dark beads of twice the nominal width (with the nominal width the same run
    # localises the beads 0.42-0.45 px off: too narrow a model pulls each marker to one side of the bead)
    ts = _small(2.0 * nominal, n_markers=6, n_tilts=31)
    res = find_markers(ts.tilt_series, ts.tilt_angles_deg, bead_diameter_nm=15.0, pixel_size_nm=ts.pixel_size_nm,
                       acquisition_order=ts.acquisition_order, thickness_nm=80.0, degree=1, levels="1")
    assert res.marker_width["source"] == "estimated"
    assert res.marker_width["nominal_sigma_nm"] == pytest.approx(nominal)
    assert abs(res.geometry.sigma_nm / (2.0 * nominal) - 1.0) < 0.15
    m = match_markers(res.positions_nm, ts.bead_positions_nm, pixel_size_nm=ts.pixel_size_nm, max_distance_nm=15)
    assert m.n_missed == 0 and m.n_spurious == 0 and m.max_error_px < 0.3, (res.n_markers, m.max_error_px)
    assert res.warnings == ()


def test_merge_distance_and_too_many_markers_warning():
    assert merge_distance_for(15.0, 5.0) == 7.5 and merge_distance_for(15.0, 10.0) == 10.0
    assert merge_distance_for(15.0, 22.5) == 15.0
    ts = _small(10.0, noise="none", n_markers=6, n_tilts=5)
    est = estimate_marker_width(ts.ideal, ts.pixel_size_nm, tilt_angles_deg=ts.tilt_angles_deg)
    assert marker_warnings(6, est, sigma_nm=10.0, source="estimated") == []
    w = marker_warnings(30, est, sigma_nm=10.0, source="estimated")
    assert len(w) == 1 and "30 markers" in w[0]
    w = marker_warnings(6, est, sigma_nm=30.0, source="given")
    assert len(w) == 1 and "differs from the width measured" in w[0]


def test_positions_polished_on_the_beer_lambert_image():
    """Wide, strong, bright beads (1.5 D) that overlap: in the Anscombe domain their images are not a sum of
    Gaussians, which pulls the markers off; the polish on -log(2 - I/I0) fixes them, adding or removing none."""
    ts = _small(22.5, noise="none", n_markers=8, n_tilts=21, seed=3)
    counts = ts.tilt_series.astype(np.float64)
    counts = 2.0 * np.median(counts) - counts  # bright beads
    kw = dict(bead_diameter_nm=15.0, pixel_size_nm=ts.pixel_size_nm, acquisition_order=ts.acquisition_order,
              thickness_nm=80.0, degree=1, levels="1")
    plain = find_markers(counts, ts.tilt_angles_deg, polish_linear=False, **kw)
    polished = find_markers(counts, ts.tilt_angles_deg, **kw)
    errs = [match_markers(r.positions_nm, ts.bead_positions_nm, pixel_size_nm=ts.pixel_size_nm, max_distance_nm=15)
            for r in (plain, polished)]
    assert [(m.n_missed, m.n_spurious) for m in errs] == [(0, 0), (0, 0)]
    assert polished.n_markers == plain.n_markers == 8
    assert errs[1].max_error_px < 0.25 and errs[1].max_error_px < errs[0].max_error_px - 0.2, \
        (errs[0].max_error_px, errs[1].max_error_px)
    assert polished.params["polished_on_linear"]["mean_shift_nm"] > 0
    assert "polished_on_linear" not in plain.params
    # the weights and the reprojection stay in the domain the markers were found in
    assert polished.reprojection.shape == polished.data.shape and polished.weights.max() <= 1.0 + 1e-9
