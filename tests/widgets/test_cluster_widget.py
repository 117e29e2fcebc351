"""The "Cluster" dock widget with qtbot: a background run, the plot <-> layer link, edits and export."""

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_cryoalign.backend.cluster.gmm import clustering_accuracy
from napari_cryoalign.backend.geometry import (
    random_rotations,
    transform_reference_to_particle,
)
from napari_cryoalign.backend.simulate.structures import load_structure_map
from napari_cryoalign.io import read_mrc, read_particles
from napari_cryoalign.io.mrc import voxel_size_isotropic
from napari_cryoalign.widgets.cluster import CLASS, CONFIDENCE, ClusterWidget

VOX = 12.0
PER_CLASS = 6


@pytest.fixture
def scene(make_napari_viewer, qtbot):
    """Two structures (ribosome, mTOR), 6 randomly rotated copies each, planted in a noisy tomogram."""
    maps = [load_structure_map(name, voxel_size_angstrom=VOX, box=24)[0] for name in ("ribosome", "mtor")]
    maps = [m / m.std() for m in maps]
    rng = np.random.default_rng(0)
    truth = rng.permutation(np.repeat([1, 2], PER_CLASS))
    rots = random_rotations(len(truth), seed=3)
    tomo = np.zeros((32, 4 * 28, 3 * 28 + 8), np.float32)
    zyx = np.array([[16, 14 + 28 * (i // 3), 14 + 28 * (i % 3)] for i in range(len(truth))])
    for (z, y, x), r, c in zip(zyx, rots, truth):
        tomo[z - 12:z + 12, y - 12:y + 12, x - 12:x + 12] += transform_reference_to_particle(maps[c - 1], r)
    tomo += rng.normal(0, 0.7, tomo.shape).astype(np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(tomo, name="tomo", scale=(VOX,) * 3)
    viewer.add_points(zyx.astype(float), name="picks", scale=(VOX,) * 3)
    w = ClusterWidget(viewer)
    viewer.window.add_dock_widget(w)
    return viewer, w, truth


def test_cluster_run_link_edit_export(scene, qtbot, tmp_path):
    viewer, w, truth = scene
    w.points.value, w.tomogram.value = "picks", "tomo"
    w.box.value = 24
    w.n_classes.value = 2
    w.method.value = "joint"
    w.iterations.value = 1
    w.refine_levels.value = 1
    w.tilt_min.value, w.tilt_max.value = -90.0, 90.0  # the planted copies have no missing wedge
    qtbot.mouseClick(w.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: "class 1 average" in viewer.layers, timeout=120_000)  # live, before the end
    qtbot.waitUntil(lambda: not w.runner.running and w.result is not None, timeout=120_000)
    pts = viewer.layers["picks"]
    classes = pts.features[CLASS].to_numpy()
    assert set(np.unique(classes)) == {1, 2}
    assert clustering_accuracy(truth, classes).accuracy >= 0.9
    conf = pts.features[CONFIDENCE].to_numpy()
    assert np.all((conf >= 0) & (conf <= 1))
    assert viewer.layers["class 2 average"].data.shape == (24, 24, 24)
    # face colour by class: points of one class share a colour, the two classes differ
    fc = np.asarray(pts.face_color)
    one, two = np.flatnonzero(classes == 1), np.flatnonzero(classes == 2)
    assert np.allclose(fc[one], fc[one[0]]) and not np.allclose(fc[one[0]], fc[two[0]])

    # plot -> layer: a lasso around class 1's points in the embedding selects exactly them in the viewer
    xy = w.plot.xy
    assert xy.shape == (len(truth), 2)
    lo, hi = xy[one].min(0) - 1e-6, xy[one].max(0) + 1e-6
    others_inside = [i for i in two if np.all(xy[i] >= lo) and np.all(xy[i] <= hi)]
    if not others_inside:  # a box polygon around class 1 (the usual case: classes apart in the plot)
        w.plot.select_polygon([(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])])
        assert set(pts.selected_data) == set(one.tolist())
    w.plot.select_nearest(*xy[two[0]])
    assert set(pts.selected_data) == {int(two[0])}
    w.plot.select_nearest(*xy[one[0]], add=True)
    assert set(pts.selected_data) == {int(two[0]), int(one[0])}
    # layer -> plot: selecting points in the viewer highlights them in the plot
    pts.selected_data = {int(one[1]), int(two[1])}
    assert w.plot.selected == {int(one[1]), int(two[1])}
    assert np.allclose(np.sort(w.plot._highlight.get_offsets(), 0), np.sort(xy[[one[1], two[1]]], 0))

    # export everything, then discard class 2 and export again
    w.export_file.value = str(tmp_path / "clusters.star")
    path = w.export()
    t = read_particles(path, require=("coordinates3d", "angles"))
    assert len(t) == len(truth)
    assert clustering_accuracy(truth, t.data[CLASS].to_numpy()).accuracy >= 0.9
    avg = read_mrc(tmp_path / "clusters_class_001.mrc")
    assert avg.data.shape == (24, 24, 24) and voxel_size_isotropic(avg) == pytest.approx(VOX)
    assert w.discard_class(1) == len(two)
    assert "class 2 average" not in viewer.layers
    assert np.all(pts.features[CLASS].to_numpy()[two] == 0)
    w.export_file.value = str(tmp_path / "kept.star")
    t = read_particles(w.export(), require=("coordinates3d",))
    assert len(t) == len(one) and set(t.data[CLASS]) == {1}
    # merge: undo the discard by a fresh state, then move class 1 into class 2
    w.classes = np.asarray(w.result.classes).copy()
    assert w.merge_class(0, 1) == len(one)
    assert set(pts.features[CLASS].to_numpy()) == {2}


def test_defaults_are_the_clis(make_napari_viewer):
    """The settings the widget shows start at the CLI's (and so the backend's) defaults."""
    from napari_cryoalign.cli import build_parser

    w = ClusterWidget(make_napari_viewer())
    args = build_parser().parse_args(["cluster", "--particles", "p.star", "--classes", "3", "--out", "c.star"])
    assert (w.method.value, w.iterations.value, w.angular_step.value, w.refine_levels.value) == \
        (args.method, args.iterations, args.angular_step, args.refine_levels)
    assert w.search_frequency.value == pytest.approx(args.search_frequency)
    assert w.refine_rounds.value == args.refine_rounds == 0  # the class refinement is off in both
    assert w.ab_initio.value == (args.ab_initio_below is None)  # both: initial models at the default threshold
    assert w.class_references.value == () and args.class_reference is None
    assert not w.search_frequency.native.isHidden()  # (the viewer is not shown: ask whether it was hidden)
    w.method.value = "classical"  # the band is the joint method's
    assert w.search_frequency.native.isHidden()


def test_bad_input_is_a_message(scene):
    _viewer, w, _ = scene
    w.points.value, w.tomogram.value = "picks", "tomo"
    w.box.value = 40  # larger than the tomogram's z edge (32)
    assert w.run() is None
    assert "box" in w.status.text()


def test_cluster_files_opened_with_the_reader(make_napari_viewer, qtbot, tmp_path):
    """The user's path: the tomogram (MRC) and its particles (STAR) opened with the plugin's reader."""
    from conftest import open_files, write_planted

    f = write_planted(tmp_path / "data", structures=("ribosome", "mtor"), per_class=PER_CLASS, noise=0.7)
    viewer = make_napari_viewer()
    tomo, pts = open_files(viewer, f.tomogram, f.particles)
    w = ClusterWidget(viewer)
    w.points.value, w.tomogram.value = pts.name, tomo.name
    w.box.value, w.n_classes.value, w.iterations.value, w.refine_levels.value = 24, 2, 1, 1
    w.tilt_min.value, w.tilt_max.value = -90.0, 90.0  # the planted copies have no missing wedge
    assert w.run() is not None, w.status.text()
    qtbot.waitUntil(lambda: not w.runner.running and w.result is not None, timeout=120_000)
    classes = pts.features[CLASS].to_numpy()
    assert clustering_accuracy(f.classes, classes).accuracy >= 0.9
    w.export_file.value = str(tmp_path / "clusters.star")
    t = read_particles(w.export(), require=("coordinates3d", "angles"))
    assert len(t) == len(f.classes) and set(t.data["rlnTomoName"]) == {"planted"}
    avg = read_mrc(tmp_path / "clusters_class_002.mrc")
    assert voxel_size_isotropic(avg) == pytest.approx(f.voxel)
    # a second export to the same names is refused (all files checked before any is written)
    (tmp_path / "clusters_class_001.mrc").unlink()
    assert w.export() is None and "overwrite existing files" in w.status.text()
    assert not (tmp_path / "clusters_class_001.mrc").exists()


def test_refine_classes_with_a_class_reference_from_disk(scene, qtbot, tmp_path):
    """After the clustering each class is refined; a user's map of one species (another voxel size and box,
    read from an MRC file) goes to that species' class; the status reports the half-set resolutions."""
    from napari_cryoalign.io import write_mrc

    viewer, w, truth = scene
    mtor = load_structure_map("mtor", voxel_size_angstrom=6.0, box=48)[0]  # finer and bigger than the particles
    write_mrc(tmp_path / "mtor.mrc", mtor, voxel_size=6.0)
    w.points.value, w.tomogram.value = "picks", "tomo"
    w.box.value, w.n_classes.value, w.iterations.value, w.refine_levels.value = 24, 2, 1, 1
    w.tilt_min.value, w.tilt_max.value = -90.0, 90.0
    w.refine_rounds.value = 1
    w.class_references.value = [str(tmp_path / "mtor.mrc")]
    assert w.ab_initio.enabled
    assert w.run() is not None, w.status.text()
    qtbot.waitUntil(lambda: not w.runner.running and w.result is not None, timeout=180_000)
    assert w.refined is not None and "refined, half-set FSC 0.143" in w.status.text()
    classes = viewer.layers["picks"].features[CLASS].to_numpy()
    mtor_class = int(np.bincount(classes[truth == 2]).argmax()) - 1  # 0-based
    assert w.refined.references == {mtor_class: 0}
    assert "(reference 1)" in w.status.text()
    assert np.all(np.isfinite(w.refined.resolutions))
    # the refined averages are the ones shown
    assert np.allclose(viewer.layers[f"class {mtor_class + 1} average"].data, w.refined.clusters.averages[mtor_class])


def test_a_bad_class_reference_is_a_message(scene, tmp_path):
    _viewer, w, _ = scene
    from napari_cryoalign.io import write_mrc

    write_mrc(tmp_path / "flat.mrc", np.zeros((4, 8, 8), np.float32), voxel_size=12.0)  # not a cube
    w.points.value, w.tomogram.value = "picks", "tomo"
    w.box.value = 24
    w.class_references.value = [str(tmp_path / "flat.mrc")]
    assert w.run() is None
    assert "flat.mrc" in w.status.text() and "cubic" in w.status.text()
