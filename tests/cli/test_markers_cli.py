"""``cryoalign markers``: writes markers.star, deformation.json, reprojection.mrc; bad input -> InputError."""

import argparse

import numpy as np
import pytest

from napari_cryoalign.backend.deformation import PolynomialDeformation
from napari_cryoalign.backend.markers.export import read_deformation_json
from napari_cryoalign.backend.markers.metrics import match_markers
from napari_cryoalign.backend.simulate.markers import simulate_marker_tiltseries, write_marker_tiltseries
from napari_cryoalign.cli import _markers
from napari_cryoalign.errors import InputError
from napari_cryoalign.io import coordinates_xyz, read_mrc, read_particles


def _parser():
    parser = argparse.ArgumentParser(prog="cryoalign")
    parser.add_argument("-q", "--quiet", action="store_true")
    _markers.register(parser.add_subparsers(dest="command"))
    return parser


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    model = PolynomialDeformation.from_terms({"z": {"1": 60.0, "x": -40.0, "y": 25.0}}, degree=1, variables="xy",
                                             length_scale_nm=409.6)
    ts = simulate_marker_tiltseries(geometry="3d", n_markers=4, bead_diameter_nm=15.0,
                                    field_of_view_nm=(409.6, 409.6), thickness_nm=80.0, detector_shape=(32, 32),
                                    tilt_range_deg=(-60, 60), n_tilts=21, endpoint=True, deformation=model,
                                    profile="gaussian", profile_sigma_nm=15.0, noise="poisson",
                                    electrons_per_pixel=4096.0, acquisition="bidirectional", seed=3)
    folder = tmp_path_factory.mktemp("mk")
    write_marker_tiltseries(ts, folder)
    return ts, folder


def test_markers_cli_writes_outputs(data, tmp_path):
    ts, d = data
    out = tmp_path / "res"
    rc = _run(["-q", "markers", "--tiltseries", str(d / "tiltseries.mrc"), "--angles", str(d / "tiltseries.tlt"),
               "--bead-diameter", "15", "--out", str(out), "--degree", "1", "--order", str(d / "order.txt"),
               "--levels", "1/2,1", "--thickness", "80", "--sigma", "15"])
    assert rc == 0
    for name in ("markers.star", "deformation.json", "reprojection.mrc", "markers_imod.txt", "markers_fid.txt"):
        assert (out / name).is_file()
    model, meta = read_deformation_json(out / "deformation.json")
    assert meta["time_mapping"]["acquisition_order"] == ts.acquisition_order.tolist()
    assert meta["fit"]["levels"] == [2, 1]
    assert meta["geometry"]["marker_sigma_nm"] == 15.0 and meta["geometry"]["marker_sigma_source"] == "given"
    shape = (int(np.ceil(80 / ts.pixel_size_nm)), 32, 32)
    table = read_particles(out / "markers.star", tomogram_shape=shape, voxel_size=10 * ts.pixel_size_nm)
    xyz = coordinates_xyz(table)
    pos_nm = (xyz - np.array([16, 16, shape[0] // 2])) * ts.pixel_size_nm
    m = match_markers(pos_nm, ts.bead_positions_nm, pixel_size_nm=ts.pixel_size_nm, max_distance_nm=15)
    assert m.n_missed == 0 and m.n_spurious == 0 and m.max_error_px < 0.3
    assert abs(model.coefficients[2, 0, 0] - 60.0) < 5.0
    rep = read_mrc(out / "reprojection.mrc", is_stack=True)
    assert rep.data.shape == (21, 32, 32) and rep.voxel_size[0] == pytest.approx(128.0, rel=1e-4)
    # outputs exist: refused without --overwrite, before any computation
    with pytest.raises(InputError, match="exist"):
        _run(["markers", "--tiltseries", str(d / "tiltseries.mrc"), "--angles", str(d / "tiltseries.tlt"),
              "--bead-diameter", "15", "--out", str(out)])


def test_markers_cli_measures_the_width_without_sigma(data, tmp_path, capsys):
    # the beads' images have std 15 nm, three times the nominal width of a 15 nm bead at 12.8 nm pixels (5 nm)
    _, d = data
    out = tmp_path / "res"
    rc = _run(["markers", "--tiltseries", str(d / "tiltseries.mrc"), "--angles", str(d / "tiltseries.tlt"),
               "--bead-diameter", "15", "--out", str(out), "--degree", "1", "--order", str(d / "order.txt"),
               "--levels", "1", "--thickness", "80"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "marker width sigma" in printed and "estimated from" in printed and "warning" not in printed
    _, meta = read_deformation_json(out / "deformation.json")
    geo = meta["geometry"]
    assert geo["marker_sigma_source"] == "estimated" and abs(geo["marker_sigma_nm"] - 15.0) < 1.5
    assert geo["nominal_marker_sigma_nm"] == pytest.approx(5.0, abs=0.05)
    assert geo["marker_width_estimate"]["n_blobs"] >= 3 and meta["warnings"] == []
    assert meta["markers"]["n"] == 4


def test_markers_cli_bad_inputs(data, tmp_path):
    ts, d = data
    base = ["markers", "--tiltseries", str(d / "tiltseries.mrc"), "--bead-diameter", "15", "--out", str(tmp_path / "o")]
    short = tmp_path / "short.tlt"
    short.write_text("\n".join(str(a) for a in ts.tilt_angles_deg[:-1]) + "\n")
    with pytest.raises(InputError, match="21 tilt angles"):
        _run(base + ["--angles", str(short)])
    bad_order = tmp_path / "order.txt"
    bad_order.write_text("\n".join(["0"] * 21) + "\n")
    with pytest.raises(InputError, match="permutation"):
        _run(base + ["--angles", str(d / "tiltseries.tlt"), "--order", str(bad_order)])
    args = ["markers", "--tiltseries", str(d / "tiltseries.mrc"), "--angles", str(d / "tiltseries.tlt"),
            "--out", str(tmp_path / "o2"), "--bead-diameter"]
    with pytest.raises(InputError, match="bead diameter > 0"):
        _run(args + ["-5"])
    with pytest.raises(InputError, match="field of view"):
        _run(args + ["1000"])
