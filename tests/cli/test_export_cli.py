"""`cryoalign export relion5` on small files."""

import numpy as np

from napari_cryoalign.cli import main
from napari_cryoalign.io import (
    coordinates_xyz,
    read_particles,
    read_star,
    read_tomograms_star,
    tomo_names,
    write_mrc,
    write_particles,
    write_tomograms_star,
)

XYZ = np.array([[1.0, 2.0, 3.0], [30.5, 20.25, 9.0]])


def _inputs(tmp_path):
    tomo = write_mrc(tmp_path / "TS_07.mrc", np.zeros((12, 25, 32), np.float32), voxel_size=10.0)
    star = write_particles(tmp_path / "picks.star", coordinates_xyz=XYZ, euler_deg=[[10, 20, 30], [0, 90, 0]],
                           scores=[0.5, 0.7], form="relion4")
    return tomo, star


def test_export_relion5_one_tomogram(tmp_path, capsys):
    tomo, star = _inputs(tmp_path)
    out = tmp_path / "relion"
    args = ["export", "relion5", "--particles", str(star), "--tomogram", str(tomo), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 particles from 1 tomogram" in printed and "particles.star" in printed
    t = read_particles(out / "particles.star", tomograms=out / "tomograms.star")
    np.testing.assert_allclose(coordinates_xyz(t), XYZ, atol=1e-6)
    assert set(tomo_names(t)) == {"TS_07"}  # the file's stem
    g = read_star(out / "tomograms.star")["global"]
    assert g["rlnTomoReconstructedTomogram"].iloc[0] == "../TS_07.mrc"
    assert (g["rlnTomoSizeX"].iloc[0], g["rlnVoltage"].iloc[0]) == (32, 300)

    # again: refused without --overwrite (one line, exit 2), done with it
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("cryoalign export: error:") and "output" in err
    assert main(args + ["--overwrite", "--voltage", "200", "--tomo-name", "lam1"]) == 0
    g = read_star(out / "tomograms.star")["global"]
    assert (g["rlnTomoName"].iloc[0], g["rlnVoltage"].iloc[0]) == ("lam1", 200)


def test_export_relion5_named_tomograms_and_tomograms_star(tmp_path, capsys):
    tomo, _ = _inputs(tmp_path)
    tomo2 = write_mrc(tmp_path / "other.mrc", np.zeros((10, 20, 20), np.float32), voxel_size=10.0)
    star = write_particles(tmp_path / "two.star", coordinates_xyz=[[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]],
                           tomo_name=["A", "B"], form="relion4")
    out = tmp_path / "o1"
    assert main(["export", "relion5", "--particles", str(star), "--tomogram", f"A={tomo}",
                 "--tomogram", f"B={tomo2}", "--out", str(out)]) == 0
    assert set(read_tomograms_star(out / "tomograms.star")) == {"A", "B"}

    tstar = write_tomograms_star(tmp_path / "tomograms.star", {"A": tomo, "B": tomo2})
    out = tmp_path / "o2"
    assert main(["export", "relion5", "--particles", str(star), "--tomograms", str(tstar), "--out", str(out)]) == 0
    t = read_particles(out / "particles.star", tomograms=out / "tomograms.star")
    np.testing.assert_allclose(coordinates_xyz(t), [[1, 2, 3], [5, 6, 7]], atol=1e-6)
    assert read_tomograms_star(out / "tomograms.star")["B"]["tomogram_path"].resolve() == tomo2.resolve()
    capsys.readouterr()

    # a name without a tomogram: one line naming file, field and the name; nothing written
    out = tmp_path / "o3"
    assert main(["export", "relion5", "--particles", str(star), "--tomogram", f"A={tomo}",
                 "--tomogram", f"C={tomo2}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "two.star" in err and "rlnTomoName" in err and "B" in err
    assert not (out / "particles.star").exists()
