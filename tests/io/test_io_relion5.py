"""RELION 5 export: tomograms.star writer/reader, export_relion5 round trips, files shaped as RELION 5 writes them."""

import numpy as np
import pandas as pd
import pytest

from napari_cryoalign.errors import InputError
from napari_cryoalign.io import (
    classes,
    coordinates_xyz,
    euler_deg,
    export_relion5,
    origins_angstrom,
    read_particles,
    read_star,
    read_tomograms_star,
    tomo_names,
    write_mrc,
    write_particles,
    write_tomograms_star,
)

SHAPES = {"TS_01": (20, 31, 40), "TS_02": (15, 24, 33)}  # (z, y, x), odd sizes: N/2 is a float
VOXELS = {"TS_01": 7.5, "TS_02": 6.0}


def _tomos(tmp_path):
    (tmp_path / "tomos").mkdir(exist_ok=True)
    return {name: write_mrc(tmp_path / "tomos" / f"{name}.rec", np.zeros(shape, np.float32), voxel_size=VOXELS[name])
            for name, shape in SHAPES.items()}


def _particles(tmp_path, *, names=True):
    xyz = np.array([[0.0, 0.0, 0.0], [39.4, 30.4, 19.4], [20.25, 15.5, 10.0], [32.0, 23.0, 14.0]])
    eul = np.array([[10, 20, 30], [40, 50, 60], [-170, 90, 5.5], [0, 0, 0]], dtype=float)
    ori = np.array([[1.5, -2, 3], [0, 0, 0], [7.5, 7.5, -7.5], [-3, 0, 6]])
    cls = np.array([1, 2, 3, 2])
    tn = ["TS_01", "TS_01", "TS_01", "TS_02"] if names else None
    if not names:
        xyz, eul, ori, cls = xyz[:3], eul[:3], ori[:3], cls[:3]
    p = write_particles(tmp_path / "picks.star", coordinates_xyz=xyz, euler_deg=eul, origins_angstrom=ori,
                        classes=cls, scores=np.linspace(0.1, 0.9, len(xyz)), tomo_name=tn, form="relion4",
                        extra_columns={"cryoalignCorrelation": np.arange(len(xyz), dtype=float)})
    return p, xyz, eul, ori, cls, tn


def test_round_trip_two_tomograms(tmp_path):
    tomos = _tomos(tmp_path)
    p, xyz, eul, ori, cls, tn = _particles(tmp_path)
    res = export_relion5(p, tmp_path / "out", tomograms=tomos)
    assert (res.n_particles, res.n_tomograms) == (4, 2)
    assert res.particles_star == tmp_path / "out" / "particles.star"

    t = read_particles(res.particles_star, tomograms=res.tomograms_star)
    assert t.form == "relion5" and t.coordinates_from == "rlnCenteredCoordinateAngst"
    np.testing.assert_allclose(coordinates_xyz(t), xyz, atol=1e-6)
    np.testing.assert_allclose(euler_deg(t), eul, atol=1e-6)
    np.testing.assert_allclose(origins_angstrom(t), ori, atol=1e-6)  # origins stay origins
    np.testing.assert_array_equal(classes(t), cls)
    assert list(tomo_names(t)) == tn
    assert "cryoalignCorrelation" in t.data.columns and "rlnAutopickFigureOfMerit" in t.data.columns

    blocks = read_star(res.particles_star)
    assert list(blocks) == ["general", "optics", "particles"]
    assert int(blocks["general"]["rlnTomoSubTomosAre2DStacks"]) == 0
    df = blocks["particles"]
    assert "rlnCoordinateX" not in df.columns  # the centered form only, as RELION 5 writes it
    assert list(df.columns[:13]) == [
        "rlnTomoName", "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst",
        "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst",
        "rlnClassNumber", "rlnOpticsGroup", "rlnAutopickFigureOfMerit"]
    # the convention pinned by hand: (coordinate - N/2) * voxel size, N/2 a float
    assert df["rlnCenteredCoordinateXAngst"].iloc[0] == pytest.approx((0 - 40 / 2) * 7.5)
    assert df["rlnCenteredCoordinateYAngst"].iloc[0] == pytest.approx((0 - 31 / 2) * 7.5)
    assert df["rlnCenteredCoordinateZAngst"].iloc[3] == pytest.approx((14 - 15 / 2) * 6.0)
    # two pixel sizes -> two optics groups, each with what RELION 5's ParticleSet needs
    opt = blocks["optics"]
    assert list(opt["rlnTomoTiltSeriesPixelSize"]) == [7.5, 6.0]
    assert {"rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnOpticsGroupName"} <= set(opt.columns)
    assert list(df["rlnOpticsGroup"]) == [1, 1, 1, 2]
    text = res.particles_star.read_text()
    assert text.count("# version 50001") == 3

    tomos_out = read_tomograms_star(res.tomograms_star)
    assert tomos_out["TS_01"]["tomogram_shape"] == (20, 31, 40)
    assert tomos_out["TS_02"]["voxel_size"] == pytest.approx(6.0)
    assert tomos_out["TS_01"]["tomogram_path"].resolve() == tomos["TS_01"].resolve()
    assert tomos_out["TS_01"]["columns"]["rlnTomoReconstructedTomogram"] == "../tomos/TS_01.rec"  # relative


def test_single_tomogram_names_particles_by_file_stem(tmp_path):
    tomos = _tomos(tmp_path)
    p, xyz, *_ = _particles(tmp_path, names=False)
    res = export_relion5(p, tmp_path / "out", tomograms=tomos["TS_01"])
    t = read_particles(res.particles_star, tomograms=res.tomograms_star)
    assert set(tomo_names(t)) == {"TS_01"}
    np.testing.assert_allclose(coordinates_xyz(t), xyz, atol=1e-6)
    res = export_relion5(p, tmp_path / "out2", tomograms=tomos["TS_01"], tomo_name="lamella_3")
    assert set(read_tomograms_star(res.tomograms_star)) == {"lamella_3"}


def test_write_tomograms_star_columns_defaults_and_binning(tmp_path):
    tomos = _tomos(tmp_path)
    out = write_tomograms_star(tmp_path / "t.star", {"TS_01": tomos["TS_01"]})
    g = read_star(out)["global"]
    assert list(g.columns) == [
        "rlnTomoName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
        "rlnMicrographOriginalPixelSize", "rlnTomoHand", "rlnOpticsGroupName", "rlnTomoTiltSeriesPixelSize",
        "rlnTomoTomogramBinning", "rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ", "rlnTomoReconstructedTomogram"]
    r = g.iloc[0]
    assert (r.rlnVoltage, r.rlnSphericalAberration, r.rlnAmplitudeContrast, r.rlnTomoHand) == (300, 2.7, 0.1, -1)
    assert (r.rlnTomoSizeX, r.rlnTomoSizeY, r.rlnTomoSizeZ, r.rlnTomoTomogramBinning) == (40, 31, 20, 1)
    with pytest.raises(InputError) as e:
        write_tomograms_star(out, {"TS_01": tomos["TS_01"]})
    assert e.value.field == "output"

    # binning 2: sizes in tilt-series pixels, pixel size halved; read back to the same tomogram
    out = write_tomograms_star(tmp_path / "t2.star", {"a": {"tomogram_shape": (20, 31, 40), "voxel_size": 8.0}},
                               binning=2, voltage=200, hand=1)
    r = read_star(out)["global"].iloc[0]
    assert (r.rlnTomoSizeX, r.rlnTomoSizeY, r.rlnTomoSizeZ) == (80, 62, 40)
    assert r.rlnTomoTiltSeriesPixelSize == pytest.approx(4.0) and (r.rlnVoltage, r.rlnTomoHand) == (200, 1)
    assert "rlnTomoReconstructedTomogram" not in read_star(out)["global"].columns
    back = read_tomograms_star(out)["a"]
    assert back["tomogram_shape"] == (20, 31, 40) and back["voxel_size"] == pytest.approx(8.0)
    assert back["tomogram_path"] is None
    with pytest.raises(InputError) as e:  # 31 x 1.5 is not a whole number of pixels
        write_tomograms_star(tmp_path / "t3.star", {"a": {"tomogram_shape": (20, 31, 40), "voxel_size": 8.0}},
                             binning=1.5)
    assert e.value.field == "rlnTomoTomogramBinning" and not (tmp_path / "t3.star").exists()


# --- files shaped as RELION 5 writes them (column sets of its Reconstruct, Pick and Refine3D jobs) -------
RELION5_TOMOGRAMS = """
# version 50001

data_global

loop_
_rlnTomoName #1
_rlnTomoTiltSeriesStarFile #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnMicrographOriginalPixelSize #6
_rlnTomoTiltSeriesPixelSize #7
_rlnTomoHand #8
_rlnEtomoDirectiveFile #9
_rlnIMODResidualErrorMean #10
_rlnIMODResidualErrorStddev #11
_rlnIMODLeaveOutError #12
_rlnTomoTomogramBinning #13
_rlnTomoSizeX #14
_rlnTomoSizeY #15
_rlnTomoSizeZ #16
_rlnTomoReconstructedTomogram #17
     TS_01 AlignTiltSeries/job005/tilt_series/TS_01.star   300.000000     2.700000     0.100000     0.675000 \
    1.350000    -1.000000 AlignTiltSeries/job005/external/TS_01/TS_01.edf     0.512000     0.301000     0.466000 \
    4.000000          160          128           64 Tomograms/job007/tomograms/rec_TS_01.mrc
     TS_02 AlignTiltSeries/job005/tilt_series/TS_02.star   300.000000     2.700000     0.100000     0.675000 \
    1.350000    -1.000000 AlignTiltSeries/job005/external/TS_02/TS_02.edf     0.498000     0.287000     0.455000 \
    4.000000          160          128           60 Tomograms/job007/tomograms/rec_TS_02.mrc

""".replace(" \\\n", " ")

RELION5_PICKS = """
# version 50001

data_particles

loop_
_rlnTomoName #1
_rlnCenteredCoordinateXAngst #2
_rlnCenteredCoordinateYAngst #3
_rlnCenteredCoordinateZAngst #4
     TS_01   -97.200000    43.200000    10.800000
     TS_01    86.400000   -21.600000   -37.800000
     TS_02     0.000000     0.000000     2.700000

"""

RELION5_REFINED = """
# version 50001

data_general

_rlnTomoSubTomosAre2DStacks                       1


# version 50001

data_optics

loop_
_rlnVoltage #1
_rlnSphericalAberration #2
_rlnAmplitudeContrast #3
_rlnTomoTiltSeriesPixelSize #4
_rlnOpticsGroup #5
_rlnOpticsGroupName #6
_rlnCtfDataAreCtfPremultiplied #7
_rlnImageDimensionality #8
_rlnTomoSubtomogramBinning #9
_rlnImagePixelSize #10
_rlnImageSize #11
  300.000000     2.700000     0.100000     1.350000            1    optics1            1            2 \
    4.000000     5.400000           32


# version 50001

data_particles

loop_
_rlnTomoName #1
_rlnTomoParticleName #2
_rlnTomoVisibleFrames #3
_rlnImageName #4
_rlnCenteredCoordinateXAngst #5
_rlnCenteredCoordinateYAngst #6
_rlnCenteredCoordinateZAngst #7
_rlnOriginXAngst #8
_rlnOriginYAngst #9
_rlnOriginZAngst #10
_rlnAngleRot #11
_rlnAngleTilt #12
_rlnAnglePsi #13
_rlnClassNumber #14
_rlnOpticsGroup #15
_rlnRandomSubset #16
_rlnMaxValueProbDistribution #17
     TS_01    TS_01/1 [1,1,1,0,1] Extract/job010/Subtomograms/TS_01/1_stack2d.mrcs   -97.200000    43.200000 \
   10.800000     2.700000    -1.350000     0.000000    12.500000    88.000000   -45.000000            1 \
           1            1     0.912000
     TS_02    TS_02/1 [1,1,1,1,1] Extract/job010/Subtomograms/TS_02/1_stack2d.mrcs     0.000000     0.000000 \
    2.700000    -5.400000     0.000000     1.350000  -120.000000    30.000000   165.000000            2 \
           1            2     0.655000

""".replace(" \\\n", " ")


def _relion_project(tmp_path):
    """A RELION 5 project: tomograms.star in Tomograms/job007 with paths relative to the project folder."""
    proj = tmp_path / "project"
    job = proj / "Tomograms" / "job007"
    (job / "tomograms").mkdir(parents=True)
    (job / "tomograms.star").write_text(RELION5_TOMOGRAMS)
    # binning 4 of 1.35 A pixels: 40 x 32 x 16 (and 15) voxels of 5.4 A
    write_mrc(job / "tomograms" / "rec_TS_01.mrc", np.zeros((16, 32, 40), np.float32), voxel_size=5.4)
    write_mrc(job / "tomograms" / "rec_TS_02.mrc", np.zeros((15, 32, 40), np.float32), voxel_size=5.4)
    (proj / "picks.star").write_text(RELION5_PICKS)
    (proj / "run_data.star").write_text(RELION5_REFINED)
    return proj, job / "tomograms.star"


def test_read_relion5_tomograms_star(tmp_path):
    proj, tstar = _relion_project(tmp_path)
    t = read_tomograms_star(tstar)
    assert set(t) == {"TS_01", "TS_02"}
    assert t["TS_01"]["tomogram_shape"] == (16, 32, 40) and t["TS_02"]["tomogram_shape"] == (15, 32, 40)
    assert t["TS_01"]["voxel_size"] == pytest.approx(5.4) and t["TS_01"]["binning"] == 4
    # project-relative path: found two folders up
    assert t["TS_01"]["tomogram_path"].resolve() == (tstar.parent / "tomograms" / "rec_TS_01.mrc").resolve()
    assert read_tomograms_star(tstar, base_dir=proj)["TS_02"]["tomogram_path"] == \
        proj / "Tomograms/job007/tomograms/rec_TS_02.mrc"


@pytest.mark.parametrize("name", ["picks.star", "run_data.star"])
def test_relion5_files_round_trip_through_reader_and_export(tmp_path, name):
    proj, tstar = _relion_project(tmp_path)
    src = proj / name
    t_in = read_particles(src, tomograms=tstar)
    assert t_in.form == "relion5" and t_in.coordinates_from == "rlnCenteredCoordinateAngst"
    # -97.2 A / 5.4 A + 40 / 2 = 2.0 voxels; 2.7 / 5.4 + 15 / 2 = 8.0
    np.testing.assert_allclose(coordinates_xyz(t_in)[0], [2.0, 24.0, 10.0], atol=1e-9)
    np.testing.assert_allclose(coordinates_xyz(t_in)[-1], [20.0, 16.0, 8.0], atol=1e-9)

    res = export_relion5(src, tmp_path / "out", tomograms=tstar)
    assert (res.n_particles, res.n_tomograms) == (len(t_in), 2)
    src_df = read_star(src)["particles"]
    out_df = read_star(res.particles_star)["particles"]
    for c in ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"):
        np.testing.assert_allclose(out_df[c], src_df[c], atol=1e-6)  # same Angstrom as RELION wrote
    t_out = read_particles(res.particles_star, tomograms=res.tomograms_star)
    np.testing.assert_allclose(coordinates_xyz(t_out), coordinates_xyz(t_in), atol=1e-6)
    np.testing.assert_allclose(euler_deg(t_out), euler_deg(t_in), atol=1e-6)
    np.testing.assert_allclose(origins_angstrom(t_out), origins_angstrom(t_in), atol=1e-6)
    assert list(tomo_names(t_out)) == list(tomo_names(t_in))
    if name == "run_data.star":
        np.testing.assert_array_equal(classes(t_out), [1, 2])
        assert list(out_df["rlnTomoParticleName"]) == ["TS_01/1", "TS_02/1"]  # other columns kept
        assert "rlnImageName" not in out_df.columns  # RELION extracts its own images

    # the tomograms keep RELION's geometry (binning 4 of 1.35 A) and other columns; the file is
    # now relative to the output folder
    g = read_star(res.tomograms_star)["global"]
    assert list(g["rlnTomoSizeX"]) == [160, 160] and list(g["rlnTomoSizeZ"]) == [64, 60]
    assert list(g["rlnTomoTiltSeriesPixelSize"]) == [1.35, 1.35] and list(g["rlnTomoTomogramBinning"]) == [4, 4]
    assert list(g["rlnMicrographOriginalPixelSize"]) == [0.675, 0.675]
    assert g["rlnTomoTiltSeriesStarFile"].iloc[0] == "AlignTiltSeries/job005/tilt_series/TS_01.star"
    back = read_tomograms_star(res.tomograms_star)
    assert back["TS_02"]["tomogram_path"].resolve() == (tstar.parent / "tomograms" / "rec_TS_02.mrc").resolve()


def test_relion5_picks_with_the_mrc_files_instead_of_tomograms_star(tmp_path):
    proj, tstar = _relion_project(tmp_path)
    mrcs = {k: v["tomogram_path"] for k, v in read_tomograms_star(tstar).items()}
    res = export_relion5(proj / "picks.star", tmp_path / "out", tomograms=mrcs)
    out_df = read_star(res.particles_star)["particles"]
    np.testing.assert_allclose(out_df["rlnCenteredCoordinateXAngst"], [-97.2, 86.4, 0.0], atol=1e-6)
    g = read_star(res.tomograms_star)["global"]
    assert list(g["rlnTomoSizeZ"]) == [16, 15] and list(g["rlnTomoTiltSeriesPixelSize"]) == [5.4, 5.4]
    assert list(g["rlnOpticsGroupName"]) == ["opticsGroup1", "opticsGroup1"]  # one pixel size, one group


# --- errors ---------------------------------------------------------------------------------------------
def test_missing_tomogram_for_a_name(tmp_path):
    tomos = _tomos(tmp_path)
    p, *_ = _particles(tmp_path)
    with pytest.raises(InputError) as e:
        export_relion5(p, tmp_path / "out", tomograms={"TS_01": tomos["TS_01"]})
    assert e.value.field == "rlnTomoName" and "TS_02" in str(e.value) and str(p) in str(e.value)
    assert not (tmp_path / "out" / "particles.star").exists() and not (tmp_path / "out" / "tomograms.star").exists()
    with pytest.raises(InputError) as e:  # one MRC for particles from two tomograms
        export_relion5(p, tmp_path / "out", tomograms=tomos["TS_01"])
    assert e.value.field == "rlnTomoName"


def test_existing_output_needs_overwrite(tmp_path, unchanged):
    tomos = _tomos(tmp_path)
    p, *_ = _particles(tmp_path)
    res = export_relion5(p, tmp_path / "out", tomograms=tomos)
    unchanged(res.particles_star)
    unchanged(res.tomograms_star)
    with pytest.raises(InputError) as e:
        export_relion5(p, tmp_path / "out", tomograms=tomos)
    assert e.value.field == "output"
    # only tomograms.star there: refused too, and particles.star is not written either
    res.particles_star.unlink()
    with pytest.raises(InputError):
        export_relion5(p, tmp_path / "out", tomograms=tomos)
    assert not res.particles_star.exists()
    export_relion5(p, tmp_path / "out", tomograms=tomos, overwrite=True)


def test_coordinates_outside_the_tomogram(tmp_path):
    tomos = _tomos(tmp_path)
    p = write_particles(tmp_path / "far.star", coordinates_xyz=[[1.0, 2.0, 3.0], [41.0, 2.0, 3.0]], form="relion4")
    with pytest.raises(InputError) as e:
        export_relion5(p, tmp_path / "out", tomograms=tomos["TS_01"])
    assert e.value.field == "rlnCoordinateX" and "row 1" in str(e.value)


@pytest.mark.parametrize("column,value", [("rlnTomoSizeX", "abc"), ("rlnTomoTiltSeriesPixelSize", "0"),
                                          ("rlnTomoTomogramBinning", "-2")])
def test_bad_tomograms_star_rows(tmp_path, column, value):
    df = pd.DataFrame({"rlnTomoName": ["a", "b"], "rlnTomoSizeX": ["40", "40"], "rlnTomoSizeY": [30, 30],
                       "rlnTomoSizeZ": [20, 20], "rlnTomoTiltSeriesPixelSize": ["5.0", "5.0"],
                       "rlnTomoTomogramBinning": ["1", "1"]})
    df.loc[1, column] = value
    p = tmp_path / "tomograms.star"
    p.write_text("data_global\n\nloop_\n" + "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(df.columns))
                 + "".join(" ".join(map(str, r)) + "\n" for r in df.itertuples(index=False)))
    with pytest.raises(InputError) as e:
        read_tomograms_star(p)
    assert e.value.field == column and "row 1" in str(e.value) and "b" in str(e.value) and str(p) in str(e.value)


def test_duplicate_tomogram_name(tmp_path):
    p = tmp_path / "tomograms.star"
    p.write_text("data_global\n\nloop_\n_rlnTomoName #1\n_rlnTomoSizeX #2\n_rlnTomoSizeY #3\n_rlnTomoSizeZ #4\n"
                 "_rlnTomoTiltSeriesPixelSize #5\na 10 10 10 1.0\na 12 10 10 1.0\n")
    with pytest.raises(InputError) as e:
        read_tomograms_star(p)
    assert e.value.field == "rlnTomoName"
