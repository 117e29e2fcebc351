"""`cryoalign cluster` end to end on a small simulated two-structure set."""

import argparse

import numpy as np
import pytest

from napari_cryoalign.backend.cluster.gmm import clustering_accuracy
from napari_cryoalign.backend.simulate.subtomograms import (
    simulate_subtomograms,
    write_subtomogram_set,
)
from napari_cryoalign.cli import _cluster, build_parser
from napari_cryoalign.errors import InputError
from napari_cryoalign.io import euler_deg, read_mrc, read_particles
from napari_cryoalign.io.mrc import voxel_size_isotropic


def _run(argv):
    parser = argparse.ArgumentParser(prog="cryoalign")
    parser.add_argument("-q", "--quiet", action="store_true")
    _cluster.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def sset_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster")
    s = simulate_subtomograms(["ribosome", "mtor"], n_per_class=8, box=24, snr=1.0, seed=2)
    files = write_subtomogram_set(s, d / "set")
    return d, s, files


def test_cluster_round_trip_writes_classes_matching_truth(sset_files, capsys):
    d, s, files = sset_files
    out = d / "clusters.star"
    avg_dir = d / "averages"
    assert _run(["cluster", "--particles", str(files["star"]), "--classes", "2", "--out", str(out),
                 "--averages-dir", str(avg_dir), "--method", "joint", "--refine-levels", "1",
                 "--iterations", "2", "--init-iterations", "1"]) == 0
    text = capsys.readouterr().out
    assert "16 particles in 2 classes" in text
    table = read_particles(out, require=("angles", "origins", "image_names"))
    assert len(table) == 16
    classes = table.data[_cluster.CLASS_COLUMN].to_numpy()
    assert set(np.unique(classes)) == {1, 2}  # 1-based
    assert clustering_accuracy(s.classes, classes).accuracy >= 0.9
    conf = table.data[_cluster.CONFIDENCE_COLUMN].to_numpy()
    assert np.all((conf >= 0) & (conf <= 1))
    assert np.all(np.isfinite(euler_deg(table)))
    assert "cryoalignCorrelation" in table.data.columns
    # input columns kept (defocus), image names re-pointed relative to the new file
    assert "rlnDefocusU" in table.data.columns
    assert (out.parent / table.data["rlnImageName"].iloc[0]).exists()
    for c in (1, 2):
        vol = read_mrc(avg_dir / f"class_{c:03d}.mrc")
        assert vol.data.shape == (24, 24, 24)
        assert voxel_size_isotropic(vol) == pytest.approx(s.voxel_size_angstrom)
    # existing outputs are refused without --overwrite
    with pytest.raises(InputError, match="does not exist yet"):
        _run(["cluster", "--particles", str(files["star"]), "--classes", "2", "--out", str(out)])


def test_cluster_refuses_bad_requests(sset_files):
    d, _, files = sset_files
    with pytest.raises(InputError):  # never overwrite the input
        _run(["cluster", "--particles", str(files["star"]), "--classes", "2", "--out", str(files["star"]),
              "--overwrite"])
    with pytest.raises(InputError, match="classes"):
        _run(["cluster", "--particles", str(files["star"]), "--classes", "9", "--out", str(d / "x.star")])
    with pytest.raises(SystemExit):
        _run(["cluster", "--particles", str(files["star"]), "--classes", "zero", "--out", str(d / "x.star")])


def test_cluster_is_a_cryoalign_command():
    args = build_parser().parse_args(["cluster", "--particles", "p.star", "--classes", "estimate",
                                      "--out", "c.star", "--method", "classical"])
    assert args.classes == "estimate" and args.method == "classical" and args.func is _cluster.run_cluster
    from napari_cryoalign.backend.cluster.classify import MIN_CLASS_FRACTION

    assert args.min_class_fraction == 0.5 == MIN_CLASS_FRACTION  # the backend's default re-seeding threshold
    args = build_parser().parse_args(["cluster", "--particles", "p.star", "--classes", "3", "--out", "c.star",
                                      "--min-class-fraction", "0", "--global-rounds", "3"])
    assert args.min_class_fraction == 0.0 and args.global_rounds == 3
    import inspect

    from napari_cryoalign.backend.cluster.classify import cluster_subtomograms_job

    default = inspect.signature(cluster_subtomograms_job).parameters["reseed"].default
    assert build_parser().parse_args(["cluster", "--particles", "p.star", "--classes", "3",
                                      "--out", "c.star"]).reseed == default == "split"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cluster", "--particles", "p.star", "--classes", "3", "--out", "c.star",
                                   "--reseed", "farthest"])


def test_cluster_passes_the_reseeding_rule_to_the_backend(sset_files, monkeypatch):
    from napari_cryoalign.backend.cluster import classify

    d, _, files = sset_files
    seen = {}
    real = classify.cluster_subtomograms_job

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(classify, "cluster_subtomograms_job", spy)
    assert _run(["cluster", "--particles", str(files["star"]), "--classes", "2", "--out", str(d / "worst.star"),
                 "--reseed", "worst", "--refine-levels", "1", "--iterations", "1", "--init-iterations", "1"]) == 0
    assert seen["reseed"] == "worst"
    assert _run(["cluster", "--particles", str(files["star"]), "--classes", "2", "--out", str(d / "full.star"),
                 "--search-frequency", "0.5", "--refine-levels", "1", "--iterations", "1",
                 "--init-iterations", "1"]) == 0
    assert seen["search_frequency"] == 0.5
    with pytest.raises(InputError, match="--search-frequency"):
        _run(["cluster", "--particles", str(files["star"]), "--classes", "2", "--out", str(d / "bad.star"),
              "--search-frequency", "0"])


def test_cluster_defaults_are_the_backends_and_the_widgets():
    """Every default the CLI sets agrees with the backend's keyword default (the widget leaves the ones it does not
    show to the backend and shows the others with the same values)."""
    import inspect

    from napari_cryoalign.backend.cluster.classify import SEARCH_FREQUENCY, cluster_subtomograms_job

    args = build_parser().parse_args(["cluster", "--particles", "p.star", "--classes", "3", "--out", "c.star"])
    backend = {k: v.default for k, v in inspect.signature(cluster_subtomograms_job).parameters.items()}
    pairs = {"iterations": "iterations", "init_iterations": "init_iterations", "init": "init",
             "angular_step": "angular_step_deg", "refine_levels": "refine_levels", "max_shift": "max_shift_voxels",
             "max_classes": "max_classes", "min_class_fraction": "min_class_fraction", "reseed": "reseed",
             "global_rounds": "global_rounds", "search_frequency": "search_frequency", "seed": "seed",
             "method": "method"}
    for cli, be in pairs.items():
        assert getattr(args, cli) == backend[be], (cli, getattr(args, cli), backend[be])
    assert args.search_frequency == SEARCH_FREQUENCY == 0.25


def test_cluster_refines_the_classes_with_a_class_reference(sset_files, capsys):
    """`--refine-rounds` refines each class after the clustering; `--class-reference` (an MRC of another box and
    voxel size) goes to its species' class; bad values are refused before any work."""
    from napari_cryoalign.backend.simulate.structures import load_structure_map
    from napari_cryoalign.io import write_mrc

    d, s, files = sset_files
    ref = d / "mtor_ref.mrc"
    write_mrc(ref, load_structure_map("mtor", voxel_size_angstrom=s.voxel_size_angstrom / 2, box=48)[0],
              voxel_size=s.voxel_size_angstrom / 2, overwrite=True)
    out = d / "refined.star"
    assert _run(["cluster", "--particles", str(files["star"]), "--classes", "2", "--out", str(out),
                 "--refine-levels", "1", "--iterations", "1", "--init-iterations", "1", "--refine-rounds", "1",
                 "--class-reference", str(ref), "--ab-initio-below", "0", "--averages-dir", str(d / "refined")]) == 0
    text = capsys.readouterr().out
    assert "refined classes" in text and "(reference 1)" in text
    table = read_particles(out, require=("angles", "origins"))
    classes = table.data[_cluster.CLASS_COLUMN].to_numpy()
    mtor_class = int(np.bincount(classes[s.classes == 2]).argmax())  # 1-based
    import re

    assert re.search(r"(\d+): [\d.]+ Å \(reference 1\)", text).group(1) == str(mtor_class)
    for bad, flag in ((["--refine-rounds", "-1"], "--refine-rounds"),
                      (["--ab-initio-below", "-2"], "--ab-initio-below")):
        with pytest.raises(InputError, match=flag):
            _run(["cluster", "--particles", str(files["star"]), "--classes", "2", "--out", str(d / "bad.star"), *bad])
