"""The "Markers & deformation" dock widget, driven with qtbot on a small simulated tilt series."""

import numpy as np
import pytest

from napari_cryoalign import _layers
from napari_cryoalign.backend.deformation import PolynomialDeformation
from napari_cryoalign.backend.simulate.markers import simulate_marker_tiltseries
from napari_cryoalign.io import write_tlt
from napari_cryoalign.widgets.markers import MAGNITUDE, POINTS, RESIDUAL, VECTORS, MarkersWidget


def _small_tiltseries():
    """4 beads of 15 nm, 21 tilts of 32² px, a known degree-1 deformation, no noise."""
    model = PolynomialDeformation.from_terms({"z": {"1": 60.0, "x": -40.0, "y": 25.0}}, degree=1, variables="xy",
                                             length_scale_nm=409.6)
    return simulate_marker_tiltseries(geometry="3d", n_markers=4, bead_diameter_nm=15.0,
                                      field_of_view_nm=(409.6, 409.6), thickness_nm=80.0, detector_shape=(32, 32),
                                      tilt_range_deg=(-60, 60), n_tilts=21, endpoint=True, deformation=model,
                                      profile="gaussian", profile_sigma_nm=15.0, noise="none", seed=3)


@pytest.fixture
def setup(make_napari_viewer, tmp_path):
    ts = _small_tiltseries()
    viewer = make_napari_viewer()
    for ld in _layers.marker_tiltseries_layers(ts, name="ts"):
        viewer._add_layer_from_data(*ld)
    w = MarkersWidget(viewer)
    viewer.window.add_dock_widget(w)
    tlt = write_tlt(tmp_path / "ts.tlt", ts.tilt_angles_deg)
    return viewer, w, ts, tlt


def test_run_shows_markers_vectors_and_exports(setup, qtbot, tmp_path):
    viewer, w, ts, tlt = setup
    assert w.layer.choices == ("ts",)
    w.layer.value = "ts"
    w.tlt.value = str(tlt)
    w.bead.value, w.sigma.value, w.thickness.value = 15.0, 15.0, 80.0
    w.degree.value = 1
    w.levels.value = "1"
    w.preprocess.value = "log"  # exact for noiseless counts (Beer-Lambert)
    seen = []
    w.runner._on_partial_user = None
    orig = w.on_partial

    def spy(partial):
        seen.append((partial.name, len(viewer.layers[POINTS].data) if POINTS in viewer.layers else 0))
        orig(partial)

    w.on_partial = spy
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.result is not None, timeout=120_000)
    # live: markers appeared while the job ran, one tilt-series-worth of points per marker
    live = [n for name, n in seen if name == "markers"]
    assert live and live[0] <= live[-1]
    assert {"markers", "loss", "deformation", "geometry"} <= {name for name, _ in seen}
    res = w.result
    assert res.n_markers == 4
    assert "marker_width" in {name for name, _ in seen}
    assert w.width_label.text().startswith("marker sigma 15 nm (given; measured 1")  # the beads' std is 15 nm
    pts = viewer.layers[POINTS]
    assert pts.data.shape == (21 * 4, 3) and set(pts.features) >= {"weight", "x_nm", "z_nm"}
    # the projected points sit on the true bead projections
    true = ts.projected_px  # (T, n, 2) (u, v)
    d = np.linalg.norm(pts.data[:, None, 1:] - true[pts.data[:, 0].astype(int)][:, :, ::-1], axis=-1).min(1)
    assert d.max() < 0.3
    vec = viewer.layers[VECTORS]
    assert vec.data.shape[1:] == (2, 3) and "D_z_nm" in vec.features
    # the vectors carry the estimated D(r, t=1) at the grid points: compare with the truth
    grid = vec.data[:, 0, 1:]  # (v, u) pixel indices
    r_nm = np.c_[(grid[:, 1] - 16) * ts.pixel_size_nm, (grid[:, 0] - 16) * ts.pixel_size_nm, np.zeros(len(grid))]
    np.testing.assert_allclose(vec.features["D_z_nm"], ts.deformation.displacement_at(r_nm, 1.0)[:, 2], atol=3.0)
    assert MAGNITUDE in viewer.layers and RESIDUAL in viewer.layers
    assert np.abs(viewer.layers[RESIDUAL].data).max() < 0.05
    assert w.table.rowCount() == 3 and abs(float(w.table.item(0, 3).text()) - 60.0) < 2.0
    # changing the time updates the vectors in place: at t = 0 there is no deformation
    w.time.value = 0.0
    assert np.abs(viewer.layers[VECTORS].data[:, 1]).max() < 1e-9
    # the weight threshold hides markers and leaves them out of the export
    w.threshold.value = 1.0
    assert pts.shown.sum() < len(pts.data) or res.weights.min() >= 1.0
    w.threshold.value = 0.5
    assert pts.shown.all()
    w.out_dir.value = str(tmp_path / "export")
    paths = w.export()
    assert paths is not None and paths["star"].is_file() and paths["deformation"].is_file()
    assert w.export() is None  # exists: refused without "overwrite", shown as a message
    assert "error" in w.status.text()


def test_missing_angles_is_a_message(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((5, 16, 16), np.float32), name="plain")
    w = MarkersWidget(viewer)
    w.layer.value = "plain"
    assert w.run() is None
    assert "angle" in w.status.text()


def test_tilt_series_file_opened_with_the_reader(make_napari_viewer, qtbot, tmp_path):
    """The user's path: the stack opened with the plugin's reader; its angles come from the IMOD ``.tlt``
    beside it, the pixel size from the MRC header (not from a layer scale in nm)."""
    from conftest import open_files

    from napari_cryoalign.backend.simulate.markers import write_marker_tiltseries

    ts = _small_tiltseries()
    files = write_marker_tiltseries(ts, tmp_path / "ts", write_ideal=False)
    viewer = make_napari_viewer()
    layer, = open_files(viewer, files["tilt_series"])
    meta = layer.metadata["napari_cryoalign"]
    np.testing.assert_allclose(meta["tilt_angles_deg"], ts.tilt_angles_deg)
    w = MarkersWidget(viewer)
    w.layer.value = layer.name
    assert str(w.tlt.value) in ("", ".")  # no angle file chosen: the one beside the stack is used
    w.bead.value, w.sigma.value, w.thickness.value = 15.0, 15.0, 80.0
    w.degree.value = 1
    w.levels.value = "1"
    w.preprocess.value = "log"
    assert w.run() is not None, w.status.text()
    qtbot.waitUntil(lambda: w.result is not None, timeout=120_000)
    assert w.result.n_markers == 4
    pts = viewer.layers[POINTS]
    true = ts.projected_px
    d = np.linalg.norm(pts.data[:, None, 1:] - true[pts.data[:, 0].astype(int)][:, :, ::-1], axis=-1).min(1)
    assert d.max() < 0.3
    # positions in nm: right only with the header's pixel size (each true bead has a marker within 2 nm in x, y)
    est, truth = np.asarray(w.result.positions_nm)[:, :2], np.asarray(ts.bead_positions_nm)[:, :2]
    assert np.linalg.norm(truth[:, None] - est[None], axis=-1).min(1).max() < 2.0
    # with "overwrite" ticked, the export refuses a folder that holds its inputs (the stack, the .tlt)
    w.out_dir.value = str(tmp_path / "ts")
    w.overwrite.value = True
    before = files["tlt"].read_bytes()
    assert w.export() is None and "holds the input" in w.status.text() and files["tlt"].read_bytes() == before
    w.out_dir.value = str(tmp_path / "markers")
    paths = w.export()
    assert paths is not None and paths["star"].is_file()
