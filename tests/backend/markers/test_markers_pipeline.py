"""Pre-processing, input validation, the doming baseline, metrics and export of SparseAlign."""

import json

import numpy as np
import pytest

from napari_cryoalign.backend.deformation import PolynomialDeformation
from napari_cryoalign.backend.markers import MarkerGeometry, find_markers
from napari_cryoalign.backend.markers.doming import fit_doming_model, static_positions_from_traces
from napari_cryoalign.backend.markers.export import (
    positions_to_voxels,
    read_deformation_json,
    write_results,
)
from napari_cryoalign.backend.markers.metrics import deformation_errors, match_markers
from napari_cryoalign.backend.markers.preprocess import anscombe, otsu_threshold, preprocess_tiltseries
from napari_cryoalign.backend.simulate.markers import simulate_marker_tiltseries
from napari_cryoalign.errors import InputError
from napari_cryoalign.io import coordinates_xyz as star_xyz
from napari_cryoalign.io import read_mrc, read_particles


@pytest.fixture(scope="module")
def small():
    model = PolynomialDeformation.from_terms({"z": {"1": 60.0, "x": -40.0, "y": 25.0}}, degree=1, variables="xy",
                                             length_scale_nm=409.6)
    return simulate_marker_tiltseries(geometry="3d", n_markers=4, bead_diameter_nm=15.0,
                                      field_of_view_nm=(409.6, 409.6), thickness_nm=80.0, detector_shape=(32, 32),
                                      tilt_range_deg=(-60, 60), n_tilts=21, endpoint=True, deformation=model,
                                      profile="gaussian", profile_sigma_nm=15.0, noise="none",
                                      acquisition="dose-symmetric", seed=3)


def test_anscombe_and_otsu():
    np.testing.assert_allclose(anscombe(np.array([0.0, 1.0])), [2 * np.sqrt(0.375), 2 * np.sqrt(1.375)])
    v = np.concatenate([np.random.default_rng(0).normal(0, 1, 1000), np.random.default_rng(1).normal(10, 1, 1000)])
    assert 3.0 < otsu_threshold(v) < 7.0


def test_preprocess_makes_bright_unit_beads(small):
    # recorded counts: beads dark, I0 = 1024; after pre-processing the bead peaks are about 1, background about 0
    counts = 1024.0 * np.exp(-0.528 * small.ideal.astype(np.float64))
    for transform in ("anscombe", "log"):
        pre = preprocess_tiltseries(counts, transform=transform, sigma_px=15.0 / small.pixel_size_nm)
        assert pre.polarity == "dark" and pre.n_peaks > 0
        assert abs(float(np.median(pre.data))) < 0.02
        bead = small.ideal > 0.9
        ratio = float(np.median(pre.data[bead]) / np.median(small.ideal[bead]))
        assert 0.8 < ratio < 1.2, transform
    # log is linear in the projected gold: the normalised data equal the marker image
    pre = preprocess_tiltseries(counts, transform="log", sigma_px=15.0 / small.pixel_size_nm)
    assert float(np.abs(pre.data - small.ideal).max()) < 0.1
    with pytest.raises(InputError, match="transform"):
        preprocess_tiltseries(counts, transform="sqrt")
    with pytest.raises(InputError, match="beads"):
        preprocess_tiltseries(np.ones((3, 8, 8)))


def test_input_errors(small):
    ts, a = small.tilt_series, small.tilt_angles_deg
    kw = dict(bead_diameter_nm=15.0, pixel_size_nm=small.pixel_size_nm)
    with pytest.raises(InputError, match="21 tilt angles"):
        find_markers(ts, a[:-1], **kw)
    with pytest.raises(InputError, match="permutation"):
        find_markers(ts, a, acquisition_order=np.zeros(21, int), **kw)
    with pytest.raises(InputError, match="permutation"):
        find_markers(ts, a, acquisition_order=np.arange(20), **kw)
    with pytest.raises(InputError, match="bead diameter > 0"):
        find_markers(ts, a, bead_diameter_nm=0.0, pixel_size_nm=small.pixel_size_nm)
    with pytest.raises(InputError, match="smaller than the field of view"):
        find_markers(ts, a, bead_diameter_nm=500.0, pixel_size_nm=small.pixel_size_nm)
    with pytest.raises(InputError, match="pixel size"):
        find_markers(ts, a, bead_diameter_nm=15.0, pixel_size_nm=0.0)


def test_find_markers_on_counts_with_acquisition_order(small):
    res = find_markers(small.tilt_series, small.tilt_angles_deg, bead_diameter_nm=15.0,
                       pixel_size_nm=small.pixel_size_nm, acquisition_order=small.acquisition_order, sigma_nm=15.0,
                       thickness_nm=80.0, degree=1, levels="1", preprocess="log")
    m = match_markers(res.positions_nm, small.bead_positions_nm, pixel_size_nm=small.pixel_size_nm,
                      max_distance_nm=15)
    assert m.n_missed == 0 and m.n_spurious == 0 and m.max_error_px < 0.1
    np.testing.assert_allclose(res.geometry.times[small.acquisition_order], np.arange(21) / 20)
    e = deformation_errors(small.deformation, res.deformation, small.bead_positions_nm, extent_nm=(409.6, 409.6, 80))
    assert e["E_markers"] < 2.0
    assert res.params["preprocess"]["transform"] == "log"


def test_doming_baseline_from_true_traces(small):
    g = MarkerGeometry.from_simulation(small)
    static = static_positions_from_traces(small.projected_px, g)
    assert np.abs(static[:, 1] - small.bead_positions_nm[:, 1]).max() < 1e-6  # y is not deformed (D_y = 0)
    dm = fit_doming_model(small.projected_px, g, degree=1)
    np.testing.assert_allclose(dm.positions_nm, small.bead_positions_nm, atol=0.05)
    np.testing.assert_allclose(dm.deformation.coefficients, small.deformation.coefficients, atol=0.1)
    assert dm.rms_px < 1e-3


def test_match_markers_counts_missed_and_spurious():
    true = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0]], float)
    est = np.array([[1, 0, 0], [101, 0, 0], [500, 500, 0]], float)
    m = match_markers(est, true, pixel_size_nm=1.0, max_distance_nm=10)
    assert m.n_missed == 1 and m.n_spurious == 1 and m.missed.tolist() == [2] and m.spurious.tolist() == [2]
    assert m.max_error_px == pytest.approx(1.0)


def test_export_files_roundtrip(small, tmp_path):
    res = find_markers(small.ideal, small.tilt_angles_deg, bead_diameter_nm=15.0, pixel_size_nm=small.pixel_size_nm,
                       sigma_nm=15.0, thickness_nm=80.0, degree=1, levels="1", preprocess=None)
    paths = write_results(tmp_path / "out", res, acquisition_order=small.acquisition_order, volume_shape=(7, 32, 32))
    table = read_particles(paths["star"], tomogram_shape=(7, 32, 32), voxel_size=10 * small.pixel_size_nm)
    xyz = star_xyz(table)
    np.testing.assert_allclose(xyz, positions_to_voxels(res.positions_nm, small.pixel_size_nm, (7, 32, 32)), atol=1e-4)
    # voxel (x, y, z) = nm / pixel + N // 2
    np.testing.assert_allclose(xyz[:, 0], res.positions_nm[:, 0] / small.pixel_size_nm + 16, atol=1e-4)
    model, d = read_deformation_json(paths["deformation"])
    np.testing.assert_allclose(model.coefficients, res.deformation.coefficients)
    assert d["time_mapping"]["acquisition_order"] == small.acquisition_order.tolist()
    assert d["units"]["coefficients"] == "nm" and "coordinate_origin" in d
    assert len(d["time_mapping"]["times"]) == 21
    rep = read_mrc(paths["reprojection"], is_stack=True)
    assert rep.data.shape == (21, 32, 32)
    lines = paths["imod"].read_text().splitlines()
    assert len(lines) == res.n_markers and all(len(s.split()) == 5 for s in lines)
    fid = paths["fiducials"].read_text().splitlines()
    assert len(fid) == 21 * res.n_markers
    with pytest.raises(InputError):  # never overwrite without asking
        write_results(tmp_path / "out", res)
    json.loads(paths["deformation"].read_text())
