"""`cryoalign pick train / predict / template` end to end on a tiny tomogram."""

import argparse

import numpy as np
import pytest
import torch

from napari_cryoalign.cli import _pick
from napari_cryoalign.errors import InputError
from napari_cryoalign.io import read_mrc, read_particles, write_mrc, write_particles

VOXEL = 10.0


def _run(argv):
    parser = argparse.ArgumentParser(prog="cryoalign")
    parser.add_argument("-q", "--quiet", action="store_true")
    _pick.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["-q", *argv])
    return args.func(args)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 24 x 64 x 64 tomogram with 8 planted copies of a small structure, and its files."""
    from napari_cryoalign.backend.geometry import random_rotations, transform_reference_to_particle
    from napari_cryoalign.backend.simulate.structures import load_structure_map

    d = tmp_path_factory.mktemp("pick")
    ref, _ = load_structure_map("enolase", voxel_size_angstrom=VOXEL, box=12)
    rng = np.random.default_rng(0)
    shape = (24, 64, 64)
    vol = np.zeros(shape, np.float32)
    pos = np.array([[12, 12, 12], [40, 10, 11], [20, 34, 12], [50, 40, 13], [12, 52, 11], [34, 54, 12],
                    [54, 20, 12], [30, 22, 12]])
    for (x, y, z), r in zip(pos, random_rotations(len(pos), seed=2)):
        vol[z - 6 : z + 6, y - 6 : y + 6, x - 6 : x + 6] += transform_reference_to_particle(ref, r)
    vol += rng.normal(0, 0.3 * vol.std(), shape).astype(np.float32)
    write_mrc(d / "tomo.mrc", vol, voxel_size=VOXEL)
    write_mrc(d / "ref.mrc", ref, voxel_size=VOXEL)
    write_particles(d / "labels.star", coordinates_xyz=pos[:4].astype(float), tomo_name="tomo")
    return d, pos


def test_train_predict_template_end_to_end(data, capsys):
    d, pos = data
    assert _run(["pick", "train", "--tomogram", str(d / "tomo.mrc"), "--labels", str(d / "labels.star"),
                 "--diameter", "80", "--out", str(d / "model.pt"), "--iterations", "40", "--device", "cpu",
                 "--seed", "1"]) == 0
    assert (d / "model.pt").is_file()
    # continue with known negatives (places that are not the particle)
    write_particles(d / "neg.star", coordinates_xyz=np.array([[30.0, 44, 12], [6, 30, 12]]), tomo_name="tomo")
    assert _run(["pick", "train", "--tomogram", str(d / "tomo.mrc"), "--labels", str(d / "labels.star"),
                 "--negatives", str(d / "neg.star"), "--continue-from", str(d / "model.pt"), "--diameter", "80",
                 "--out", str(d / "model_neg.pt"), "--iterations", "3", "--device", "cpu"]) == 0
    from napari_cryoalign.backend.picking import load_picker

    trained = load_picker(d / "model_neg.pt").training
    assert trained["n_negatives"] == 2 and trained["iterations_done"] == 43
    assert load_picker(d / "model_neg.pt").default_threshold == 0.5  # the recipe with known negatives: Bayes cut
    assert _run(["pick", "train", "--tomogram", str(d / "tomo.mrc"), "--labels", str(d / "labels.star"),
                 "--diameter", "80", "--out", str(d / "model_plain.pt"), "--iterations", "2",
                 "--no-lookalike-rejection"]) == 0
    assert "lookalike_negatives" not in load_picker(d / "model_plain.pt").training
    assert _run(["pick", "predict", "--tomogram", str(d / "tomo.mrc"), "--model", str(d / "model.pt"),
                 "--out", str(d / "picks.star"), "--threshold", "0.05", "--min-distance", "60",
                 "--heatmap", str(d / "heat.mrc")]) == 0
    t = read_particles(d / "picks.star")
    xyz = t.data[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    sc = t.data["rlnAutopickFigureOfMerit"].to_numpy()
    assert len(sc) >= 1 and np.all(np.diff(sc) <= 0) and sc.min() >= 0.05
    assert np.all(xyz >= 0) and np.all(xyz < [64, 64, 24])
    if len(xyz) > 1:
        dd = np.linalg.norm(xyz[:, None] - xyz[None], axis=2) + np.eye(len(xyz)) * 1e9
        assert dd.min() >= 6.0 - 1e-6  # --min-distance 60 Å = 6 voxels
    assert set(t.data["rlnTomoName"]) == {"tomo"}
    heat = read_mrc(d / "heat.mrc")
    assert heat.data.shape == (24, 64, 64) and heat.voxel_size[0] == pytest.approx(VOXEL)
    assert 0.0 <= float(heat.data.min()) and float(heat.data.max()) <= 1.0
    # a model with a shape reference (the recipe keeps one when the search had >= 5 labels): predict weighs each
    # pick by its fit to the reference, unless --no-shape-check
    from napari_cryoalign.backend.picking import save_picker
    from napari_cryoalign.backend.picking.shape_check import ShapeReference

    shaped = load_picker(d / "model.pt")
    shaped.shape_reference = ShapeReference(map=read_mrc(d / "ref.mrc").data, voxel_size=VOXEL, centre=0.2,
                                            scale=0.05, tilt_range_deg=None)
    save_picker(d / "model_shape.pt", shaped)
    scores = {}
    for flag in ([], ["--no-shape-check"]):
        capsys.readouterr()
        out = d / f"picks_shape{len(flag)}.star"
        assert _run(["pick", "predict", "--tomogram", str(d / "tomo.mrc"), "--model", str(d / "model_shape.pt"),
                     "--out", str(out), "--threshold", "0.05", "--min-distance", "60", *flag]) == 0
        assert ("shape-checked" in capsys.readouterr().out) == (not flag)
        scores[len(flag)] = read_particles(out).data["rlnAutopickFigureOfMerit"].to_numpy()
    assert np.allclose(scores[1], sc)  # --no-shape-check: the network's scores, as the model without a reference
    assert len(scores[0]) != len(scores[1]) or not np.allclose(scores[0], scores[1])
    # template matching finds the planted copies
    assert _run(["pick", "template", "--tomogram", str(d / "tomo.mrc"), "--template", str(d / "ref.mrc"),
                 "--out", str(d / "tm.star"), "--angular-step", "60", "--max-picks", "8",
                 "--heatmap", str(d / "tm.mrc")]) == 0
    tm = read_particles(d / "tm.star", require=("coordinates3d", "angles", "scores"))
    txyz = tm.data[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    dist = np.linalg.norm(txyz[:, None] - pos[None], axis=2).min(1)
    assert len(txyz) == 8 and np.sum(dist <= 2.0) >= 7
    assert np.all(np.diff(tm.data["rlnAutopickFigureOfMerit"].to_numpy()) <= 0)
    # cut at one expected false alarm instead of a number of picks: the planted copies, little else
    assert _run(["pick", "template", "--tomogram", str(d / "tomo.mrc"), "--template", str(d / "ref.mrc"),
                 "--out", str(d / "tm_fa.star"), "--angular-step", "60", "--false-positives", "1"]) == 0
    fa = read_particles(d / "tm_fa.star").data[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    dist = np.linalg.norm(fa[:, None] - pos[None], axis=2)
    assert np.sum(dist.min(0) <= 2.0) >= len(pos) - 1 and len(fa) <= len(pos) + 3, (len(fa), len(pos))
    # outputs are never overwritten without --overwrite, inputs never
    with pytest.raises(InputError, match="output"):
        _run(["pick", "template", "--tomogram", str(d / "tomo.mrc"), "--template", str(d / "ref.mrc"),
              "--out", str(d / "tm.star")])
    with pytest.raises(InputError, match="input"):
        _run(["pick", "predict", "--tomogram", str(d / "tomo.mrc"), "--model", str(d / "model.pt"),
              "--out", str(d / "tomo.mrc"), "--overwrite"])


def test_bad_inputs(data, tmp_path):
    d, pos = data
    base = ["pick", "train", "--tomogram", str(d / "tomo.mrc"), "--iterations", "1", "--device", "cpu"]
    write_particles(tmp_path / "two.star", coordinates_xyz=pos[:2].astype(float))
    with pytest.raises(InputError, match=r"labels: expected at least 3"):
        _run(base + ["--labels", str(tmp_path / "two.star"), "--diameter", "80", "--out", str(tmp_path / "a.pt")])
    write_particles(tmp_path / "out.star", coordinates_xyz=np.array([[1.0, 1, 1], [2, 2, 2], [80, 3, 3]]))
    with pytest.raises(InputError, match="out.star: rlnCoordinateX"):
        _run(base + ["--labels", str(tmp_path / "out.star"), "--diameter", "80", "--out", str(tmp_path / "a.pt")])
    with pytest.raises(InputError, match="diameter"):
        _run(base + ["--labels", str(d / "labels.star"), "--diameter", "400", "--out", str(tmp_path / "a.pt")])
    with pytest.raises(InputError, match="out.star: rlnCoordinateX"):  # negatives are checked like labels
        _run(base + ["--labels", str(d / "labels.star"), "--negatives", str(tmp_path / "out.star"), "--diameter", "80",
                     "--out", str(tmp_path / "a.pt")])
    nan = read_mrc(d / "tomo.mrc").data.copy()
    nan[3, 4, 5] = np.nan
    import warnings

    import mrcfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns about the NaN we plant
        with mrcfile.new(tmp_path / "nan.mrc") as m:
            m.set_data(nan)
            m.voxel_size = VOXEL
    with pytest.raises(InputError, match="nan.mrc: data"):
        _run(["pick", "train", "--tomogram", str(tmp_path / "nan.mrc"), "--labels", str(d / "labels.star"),
              "--diameter", "80", "--out", str(tmp_path / "a.pt")])
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="foreign.pt: format"):
        _run(["pick", "predict", "--tomogram", str(d / "tomo.mrc"), "--model", str(tmp_path / "foreign.pt"),
              "--out", str(tmp_path / "p.star")])
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "p.star").exists()


def test_template_from_labels(data, tmp_path, capsys):
    """``pick template --template-from-labels``: no map, the template averaged from 6 labels finds all 8 copies."""
    d, pos = data
    write_particles(tmp_path / "six.star", coordinates_xyz=pos[:6].astype(float) + 0.7, tomo_name="tomo")
    base = ["pick", "template", "--tomogram", str(d / "tomo.mrc"), "--angular-step", "60"]
    labels = ["--template-from-labels", str(tmp_path / "six.star"), "--diameter", "80"]
    assert _run(base + labels + ["--out", str(tmp_path / "tm.star"), "--max-picks", "8",
                                 "--template-out", str(tmp_path / "template.mrc")]) == 0
    out = capsys.readouterr().out
    assert "aligned average of 6 labels" in out and "box 16 voxels" in out and "FSC 0.143" in out
    tm = read_particles(tmp_path / "tm.star", require=("coordinates3d", "angles", "scores"))
    txyz = tm.data[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    dist = np.linalg.norm(txyz[:, None] - pos[None], axis=2)
    # the 8 best picks are the 8 planted copies (the 2 unlabelled ones too), each found once
    assert len(txyz) == 8 and (dist.min(1) <= 2.0).all() and len(set(dist.argmin(1))) == 8
    tmpl = read_mrc(tmp_path / "template.mrc")
    assert tmpl.data.shape == (16, 16, 16) and tmpl.voxel_size[0] == pytest.approx(VOXEL)
    assert float(tmpl.data.std()) > 0 and np.isfinite(tmpl.data).all()
    # 4 labels: a rotational average, still the planted copies first
    assert _run(base + ["--template-from-labels", str(d / "labels.star"), "--diameter", "80",
                        "--out", str(tmp_path / "tm4.star"), "--max-picks", "4"]) == 0
    assert "rotational average of 4 labels" in capsys.readouterr().out
    t4 = read_particles(tmp_path / "tm4.star").data[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]]
    assert (np.linalg.norm(t4.to_numpy()[:, None] - pos[None], axis=2).min(1) <= 2.0).all()

    # --template-out respects --overwrite (checked before anything runs or is written) and never replaces an input
    with pytest.raises(InputError, match="template.mrc.*output|output.*template.mrc"):
        _run(base + labels + ["--out", str(tmp_path / "new.star"), "--template-out", str(tmp_path / "template.mrc")])
    assert not (tmp_path / "new.star").exists()
    with pytest.raises(InputError, match="input"):
        _run(base + labels + ["--out", str(tmp_path / "new.star"), "--template-out", str(tmp_path / "six.star"),
                              "--overwrite"])
    # the flags: one template source, a diameter with labels, the label options only with labels
    with pytest.raises(SystemExit):
        _run(base + labels + ["--template", str(d / "ref.mrc"), "--out", str(tmp_path / "x.star")])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(base + ["--out", str(tmp_path / "x.star")])
    assert "one of the arguments --template --template-from-labels is required" in capsys.readouterr().err
    with pytest.raises(InputError, match="--diameter"):
        _run(base + ["--template-from-labels", str(tmp_path / "six.star"), "--out", str(tmp_path / "x.star")])
    with pytest.raises(InputError, match="--template-out only with --template-from-labels"):
        _run(base + ["--template", str(d / "ref.mrc"), "--out", str(tmp_path / "x.star"),
                     "--template-out", str(tmp_path / "t.mrc")])
    assert not (tmp_path / "x.star").exists() and not (tmp_path / "t.mrc").exists()
