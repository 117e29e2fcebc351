"""`cryoalign workflow` on a tiny simulated tomogram: pick -> extract -> average -> cluster, every
intermediate file written, no pick lost at the faces, every step scored against the truth."""

import json

import numpy as np
import pytest

from napari_cryoalign.cli import main
from napari_cryoalign.io import classes, coordinates_xyz, read_mrc, read_particles, read_tomograms_star, write_particles

VOXEL = 30.0


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A 28-voxel-thick slab (a thin lamella: most 18-voxel boxes cross a face) of ribosomes and CCTs, 2 of
    each labelled as one kind."""
    d = tmp_path_factory.mktemp("workflow")
    assert main(["-q", "simulate", "tomogram", "--out", str(d / "sim"), "--size", "112,112,28", "--voxel-size",
                 str(VOXEL), "--particles", "14", "--structures", "ribosome,cct", "--seed", "5",
                 "--tomo-name", "tomogram"]) == 0
    files = {"tomogram": d / "sim" / "tomogram.mrc", "truth": d / "sim" / "truth.star"}
    t = read_particles(files["truth"])
    xyz, c = coordinates_xyz(t), classes(t)
    idx = np.r_[np.flatnonzero(c == 1)[:2], np.flatnonzero(c == 2)[:2]]
    write_particles(d / "labels.star", coordinates_xyz=xyz[idx], tomo_name="tomogram", voxel_size=VOXEL)
    return d, files


def test_workflow_writes_every_file_and_scores_every_step(sim, capsys):
    d, files = sim
    out = d / "out"
    argv = ["-q", "workflow", "--tomogram", str(files["tomogram"]), "--labels", str(d / "labels.star"),
            "--diameter", "350", "--classes", "2", "--out", str(out), "--truth", str(files["truth"]),
            "--pick-iterations", "60", "--average-iterations", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for step in ("pick train", "pick predict", "extract", "average", "cluster", "refine classes", "truth: picking"):
        assert step in text
    picks = read_particles(out / "picks.star")
    parts = read_particles(out / "particles.star", require=("angles",))
    assert len(picks) >= 8
    assert len(parts) == len(picks)  # every pick kept: the boxes crossing the faces are padded
    frac = parts.data["cryoalignFractionInside"].to_numpy()
    assert np.any(frac < 1.0) and np.all(frac > 0.4)
    assert set(classes(parts)) <= {1, 2} and "rlnOriginXAngst" in parts.data.columns
    # 0-based voxel coordinates, the picks' own
    assert np.allclose(np.sort(coordinates_xyz(parts), axis=0), np.sort(coordinates_xyz(picks), axis=0))
    for name in ("average.mrc", "average_half1.mrc", "average_half2.mrc", "classes/class_1.mrc",
                 "classes/class_2.mrc", "picker.pt"):
        assert (out / name).is_file(), name
    assert read_mrc(out / "classes" / "class_1.mrc").data.shape == (18, 18, 18)
    tomos = read_tomograms_star(out / "relion5" / "tomograms.star")
    assert list(tomos) == ["tomogram"]
    r5 = read_particles(out / "relion5" / "particles.star", tomograms=out / "relion5" / "tomograms.star")
    assert np.allclose(np.sort(coordinates_xyz(r5), axis=0), np.sort(coordinates_xyz(parts), axis=0), atol=1e-4)
    summary = json.loads((out / "workflow.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["pick train", "pick predict", "extract", "average", "cluster",
                                                         "refine classes"]
    score = summary["score"]
    assert score["picking"]["f1"] >= 0.7 and score["picking"]["precision"] >= 0.8
    assert score["class_accuracy"] >= 0.9  # ribosome vs CCT: two very different species
    species = {c["species"] for c in score["classes"]}
    assert species == {"ribosome", "cct"}
    assert all(c["resolution_0143"] < 150.0 for c in score["classes"])  # each class resembles its true map
    assert all(c["poses_scored"] >= 2 and 0.0 <= c["pose_median_deg"] <= 180.0 for c in score["classes"])
    # a second run does not overwrite without --overwrite
    assert main(argv) == 2


def test_workflow_names_a_bad_class_reference(sim, tmp_path, capsys):
    from napari_cryoalign.io import write_mrc

    d, files = sim
    bad = tmp_path / "flat.mrc"
    write_mrc(bad, np.zeros((4, 18, 18), np.float32), voxel_size=VOXEL)
    argv = ["-q", "workflow", "--tomogram", str(files["tomogram"]), "--labels", str(d / "labels.star"),
            "--diameter", "350", "--classes", "2", "--out", str(tmp_path / "out"), "--class-reference", str(bad)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "flat.mrc" in err and "--class-reference" in err and "cubic" in err
