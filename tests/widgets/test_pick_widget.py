"""The "Pick particles" dock widget, driven with qtbot on the sample tomogram.

The accuracy of training is tested in tests/backend/picking; here the widget's wiring is: real
clicks make labels (undo/redo, autosave, restore), Train runs the real job and the heatmap of a
running job appears, the threshold filters without inference, picks can be removed / promoted,
STAR export is readable by the project's reader, and bad input becomes a message.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qtpy.QtCore import QPoint, Qt

from napari_cryoalign.backend.picking import Picker, save_picker
from napari_cryoalign.io import coordinates_xyz, read_particles, scores, write_mrc
from napari_cryoalign.widgets._pick_state import (
    ACCEPTED,
    REJECTED,
    LabelHistory,
    PickSet,
    labels_path_for,
)
from napari_cryoalign.widgets.pick import LABEL_AVERAGE, TEMPLATE, PickWidget

VOXEL = 10.0


# one intra-op thread (tests/conftest.py): the widget's wiring is what is tested
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sim():
    from napari_cryoalign.backend.simulate.tomogram import sample_tomogram

    return sample_tomogram(seed=0)


@pytest.fixture
def tomo_file(sim, tmp_path):
    path = tmp_path / "tomo_a.mrc"
    write_mrc(path, sim.tomogram, voxel_size=VOXEL)
    return path


def _open(viewer, path):
    """File > Open with the plugin's reader, as a user does."""
    from conftest import open_files

    layer, = open_files(viewer, path)
    return layer


@pytest.fixture
def opened(make_napari_viewer, tomo_file):
    viewer = make_napari_viewer(show=True)
    _open(viewer, tomo_file)
    w = PickWidget(viewer)
    viewer.window.add_dock_widget(w)
    return viewer, w


def click_label(viewer, layer, qtbot, xyz):
    """A real left click on the canvas at voxel (x, y) of slice z, with the labels layer in add mode."""
    x, y, z = xyz
    viewer.layers.selection.active = layer
    layer.mode = "add"
    viewer.dims.set_point(0, float(round(z)) * layer.scale[0])
    qtbot.wait(10)
    canvas = viewer.window._qt_viewer.canvas
    tr = canvas.layer_to_visual[layer].node.get_transform(map_from="visual", map_to="canvas")
    p = tr.map([x, y, 0, 1])
    qtbot.mouseClick(canvas.native, Qt.LeftButton, pos=QPoint(round(p[0] / p[3]), round(p[1] / p[3])))


def test_label_history_and_pickset_units():
    h = LabelHistory()
    assert h.undo() is None and not h.can_undo
    h.record([[1, 2, 3]])
    h.record([[1, 2, 3], [4, 5, 6]])
    assert not h.record([[1, 2, 3], [4, 5, 6]])  # unchanged: no new state
    np.testing.assert_array_equal(h.undo(), [[1, 2, 3]])
    np.testing.assert_array_equal(h.redo(), [[1, 2, 3], [4, 5, 6]])
    h.undo()
    h.record([[7, 8, 9]])  # a new edit drops the redo state
    assert not h.can_redo and h.current.tolist() == [[7, 8, 9]]

    class P:  # a Picks-like record
        def __init__(self, xyz, sc):
            self.coordinates_xyz, self.scores, self.euler_deg = np.asarray(xyz, float), np.asarray(sc, float), None

    ps = PickSet.from_picks(P([[0, 0, 0], [10, 0, 0], [20, 0, 0]], [0.9, 0.5, 0.1]))
    assert ps.shown(0.4).tolist() == [0, 1]
    ps.set_status([0], REJECTED)
    ps.set_status([2], ACCEPTED)
    assert ps.shown(0.4).tolist() == [1, 2]
    moved = ps.replaced_by(P([[0.5, 0, 0], [10, 0, 0], [30, 0, 0]], [0.8, 0.6, 0.7]), match_radius=1.0)
    # the rejected one stays rejected at its new position, the accepted one with no match is kept
    assert moved.shown(0.0).tolist() == [2, 1, 3] and moved.status.tolist() == [REJECTED, 0, 0, ACCEPTED]
    # a removed pick with no new candidate near it stays (never shown): a known negative for training
    gone = moved.replaced_by(P([[10, 0, 0]], [0.6]), match_radius=1.0)
    assert gone.shown(0.0).tolist() == [0, 2] and sorted(gone.status.tolist()) == [REJECTED, 0, ACCEPTED]
    np.testing.assert_allclose(gone.rejected_xyz(), [[0.5, 0, 0]])
    assert labels_path_for("/d/TS_01.rec.gz").name == "TS_01_labels.star"


def test_click_labels_train_threshold_export(opened, qtbot, sim, tomo_file, tmp_path):
    viewer, w = opened
    labels = w.labels_layer
    assert labels is not None and labels.name == "tomo_a.mrc labels" and len(labels.data) == 0
    truth = np.asarray(sim.truth.coordinates_xyz)
    chosen = truth[:5]
    for xyz in chosen:
        click_label(viewer, labels, qtbot, xyz)
    assert len(labels.data) == 5
    got = w.labels_xyz()
    np.testing.assert_allclose(got[:, :2], chosen[:, :2], atol=1.0)  # x, y from the click
    np.testing.assert_allclose(got[:, 2], np.round(chosen[:, 2]), atol=1e-6)  # z = the slice shown
    # undo / redo: buttons and the layer's Ctrl+Z / Ctrl+Shift+Z
    assert w.undo_labels() and len(labels.data) == 4
    assert w.redo_labels() and len(labels.data) == 5
    viewer.layers.selection.active = labels
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier)
    assert len(labels.data) == 4
    qtbot.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    assert len(labels.data) == 5
    # autosave (debounced) next to the tomogram
    star = labels_path_for(tomo_file)
    qtbot.waitUntil(lambda: w.last_autosave == star, timeout=5_000)
    np.testing.assert_allclose(coordinates_xyz(read_particles(star)), got, atol=1e-4)

    # train a few iterations; the heatmap of the *running* job shows up
    w.diameter.value = 200.0
    w.iterations.value = 4
    w.preview_s.value = 0.0
    seen = []
    original = w.on_partial
    w.on_partial = lambda p: (seen.append((p.name, w.runner.running)), original(p))
    qtbot.mouseClick(w.run_button, Qt.LeftButton)
    assert w.runner.running
    heat_name = "tomo_a.mrc heatmap"
    qtbot.waitUntil(lambda: ("heatmap", True) in seen and heat_name in viewer.layers, timeout=90_000)
    heat = viewer.layers[heat_name]
    assert heat.data.shape == (48, 64, 64)
    np.testing.assert_allclose(heat.scale, (VOXEL, 2 * VOXEL, 2 * VOXEL))
    assert ("loss", True) in seen and len(w.loss_plot.losses) >= 1
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    assert w.runner.state.history[-1] == "finished", (w.runner.state, w.status.text())
    assert w.picker is not None and w.picker.training["iterations_done"] == 4
    picks_layer = viewer.layers["tomo_a.mrc picks"]
    assert len(w.picks) > 0
    # the recipe kept the labels' average with the model: the candidates that could reach 0.5 were shape-checked
    assert w.picker.shape_reference is not None and w.shape_check.value
    check = w.candidates.shape_check
    assert check is not None and check.fit.shape == check.delta.shape == (len(check.coordinates_xyz),)
    for p in check.coordinates_xyz:  # every checked place is one of the candidates
        assert np.any(np.all(np.isclose(w.picks.coordinates_xyz, p), axis=1))
    assert f"shape-checked {len(check.coordinates_xyz)} picks" in w.status.text()

    # the threshold filters the kept candidates: no new job
    runs = len(w.runner.state.history)
    s = np.sort(w.picks.scores)
    t = float(np.round(s[len(s) // 2], 2))
    w.threshold.value = t
    assert len(w.runner.state.history) == runs and not w.runner.running
    feats = picks_layer.features
    assert len(picks_layer.data) == int(np.sum(w.picks.scores >= t)) > 0
    assert (feats["score"] >= t).all() and np.all(np.diff(feats["score"].to_numpy()) <= 0)
    assert str(len(picks_layer.data)) in w.n_picks.value
    # min distance reruns only the peak finder on the kept heatmap
    w.min_distance.value = 300.0
    qtbot.waitUntil(lambda: not w.peaks_runner.running, timeout=30_000)  # the peak finder runs in a worker
    assert len(w.runner.state.history) == runs and w.peaks_runner.state.history[-1] == "finished"
    xyz = w.picks.coordinates_xyz
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1) + np.eye(len(xyz)) * 1e9
    assert d.min() >= 30.0 - 1e-6
    # remove one pick (select + button), promote another to labels
    n_before = len(picks_layer.data)
    picks_layer.selected_data = {0}
    assert w.set_selected_status(REJECTED) == 1 and len(picks_layer.data) == n_before - 1
    if len(picks_layer.data):
        picks_layer.selected_data = {0}
        cand = int(picks_layer.features["candidate"][0])
        assert w.promote_selected() == 1 and len(labels.data) == 6
        np.testing.assert_allclose(w.labels_xyz()[-1], w.picks.coordinates_xyz[cand])

    # the layer's own Delete removes (rejects) a pick; a point added by hand is an accepted pick
    n_before = len(picks_layer.data)
    if n_before:
        gone = int(picks_layer.features["candidate"][0])
        picks_layer.selected_data = {0}
        picks_layer.remove_selected()
        qtbot.wait(50)
        assert w.picks.status[gone] == REJECTED and gone not in set(picks_layer.features["candidate"])
    picks_layer.add([[20.0, 60.0, 60.0]])
    qtbot.waitUntil(lambda: np.any(np.all(np.isclose(w.picks.coordinates_xyz, [60.0, 60.0, 20.0]), axis=1)),
                    timeout=2_000)
    assert w.picks.status[-1] == ACCEPTED and len(picks_layer.data) == n_before
    # export STAR in both forms
    shown = w.shown_indices()
    w.star_file.value = tmp_path / "picks.star"
    out = w.export_picks()
    assert out is not None
    table = read_particles(out)
    np.testing.assert_allclose(coordinates_xyz(table), w.picks.coordinates_xyz[shown], atol=1e-4)
    sc = scores(table)
    assert np.all(np.diff(sc) <= 0) and "rlnCenteredCoordinateXAngst" in table.data
    assert set(table.data["rlnTomoName"]) == {"tomo_a"}
    w.star_form.value = "RELION 4"
    w.star_file.value = tmp_path / "picks4.star"
    t4 = read_particles(w.export_picks())
    assert "rlnCenteredCoordinateXAngst" not in t4.data and len(t4) == len(shown)
    assert w.export_picks() is None and "overwrite existing" in w.status.text()  # no silent overwrite
    w.overwrite.value = True
    assert w.export_picks() is not None

    # Train again with the removed picks: the new threshold keeps the count the corrections imply, and says so
    w.iterations.value = 2
    qtbot.mouseClick(w.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    assert w.runner.state.history[-1] == "finished", (w.runner.state, w.status.text())
    tr = w.picker.training
    count = tr["corrected_count"]
    assert tr["threshold_rule"].startswith("the count the corrections imply") and tr["n_negatives"] >= 2
    assert count["target"] == max(1, count["before"] - count["removed"] + count["added"])
    assert w.threshold.value == pytest.approx(round(w.picker.default_threshold, 2))
    assert "the count your corrections imply" in w.status.text()

    # save the model (continuing training is tested with Cancel below)
    w.model_file.value = tmp_path / "model.pt"
    assert w.save_model() is not None and (tmp_path / "model.pt").is_file()
    w.overwrite.value = False
    assert w.save_model() is None and "overwrite existing" in w.status.text()


def test_labels_restored_when_tomogram_reopened(make_napari_viewer, tomo_file, sim, tmp_path):
    from napari_cryoalign.io import write_particles

    xyz = np.asarray(sim.truth.coordinates_xyz)[:4]
    write_particles(labels_path_for(tomo_file), coordinates_xyz=xyz, tomogram_shape=sim.tomogram.shape,
                    voxel_size=VOXEL)
    viewer = make_napari_viewer()
    _open(viewer, tomo_file)
    w = PickWidget(viewer)
    np.testing.assert_allclose(w.labels_xyz(), xyz, atol=1e-4)
    assert "autosaved" in w.labels_info.value
    # import more labels from a STAR file (undoable)
    other = tmp_path / "more.star"
    write_particles(other, coordinates_xyz=np.asarray(sim.truth.coordinates_xyz)[4:7], voxel_size=VOXEL)
    w.labels_star.value = other
    assert w.import_labels() == 3 and len(w.labels_layer.data) == 7
    assert w.undo_labels() and len(w.labels_layer.data) == 4
    # a simulated layer (no file): labels live in memory only
    viewer2 = make_napari_viewer()
    from napari_cryoalign._layers import tomogram_layers

    data, kwargs, _ = tomogram_layers(sim, name="sim")[0]
    viewer2.add_image(data, **kwargs)
    w2 = PickWidget(viewer2)
    w2.add_labels(xyz)
    assert w2.autosave_path is None and w2.flush_autosave() is None and len(w2.labels_xyz()) == 4
    assert "not saved" in w2.labels_info.value


def test_bad_input_messages_and_widget_stays_usable(make_napari_viewer, opened, qtbot, sim, tmp_path):
    viewer, w = opened
    truth = np.asarray(sim.truth.coordinates_xyz)
    w.add_labels(truth[:2])
    assert w.run() is None and "at least 3" in w.status.text() and not w.runner.running
    w.add_labels([[500.0, 10.0, 10.0]])
    assert w.run() is None and "inside the tomogram" in w.status.text()
    w.undo_labels()
    w.add_labels(truth[2:3])
    w.diameter.value = 5000.0
    assert w.run() is None and "diameter" in w.status.text()
    w.diameter.value = 200.0
    # model files: from another tool, corrupted
    foreign = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, foreign)
    w.model_file.value = foreign
    assert not w.load_model() and "format" in w.status.text()
    good = tmp_path / "good.pt"
    save_picker(good, Picker.new(diameter_angstrom=250.0, voxel_size=VOXEL))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good.read_bytes()[:200])
    w.model_file.value = broken
    assert not w.load_model() and "unreadable" in w.status.text() and w.picker is None
    w.model_file.value = good
    assert w.load_model() and w.diameter.value == pytest.approx(250.0)
    w.pick_with_model()  # tiled inference with the loaded model, no training
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert w.runner.state.history[-1] == "finished" and "tomo_a.mrc heatmap" in viewer.layers
    assert len(w.picks) > 0 and "tomo_a.mrc picks" in viewer.layers
    # a tomogram with NaNs: the job reports it, nothing is lost, the widget runs again
    bad = np.array(sim.tomogram, dtype=np.float32)
    bad[3, 5, 7] = np.nan
    viewer.add_image(bad, name="nan tomo", scale=(VOXEL,) * 3)
    w.tomogram.value = "nan tomo"
    w.add_labels(truth[:3])
    w.iterations.value = 1
    w.continue_training.value = False
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert w.runner.state.history[-1] == "failed" and "finite" in w.status.text()
    assert w.picker is not None  # the loaded model is still there
    w.tomogram.value = "tomo_a.mrc"
    assert len(w.labels_layer.data) == 3  # the first tomogram's labels are untouched


def test_template_matching_finds_a_planted_particle(opened, qtbot, sim, tmp_path):
    viewer, w = opened
    # a bright blob planted in a copy of the sample tomogram; the reference is the same blob
    # (round, so that the coarse rotation grid cannot miss it)
    b = 16
    g = np.arange(b) - b // 2
    blob = np.exp(-(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) / (2 * 2.5**2))
    tomo = np.array(sim.tomogram, dtype=np.float32)
    x, y, z = 40, 70, 24
    tomo[z - b // 2:z + b // 2, y - b // 2:y + b // 2, x - b // 2:x + b // 2] += 8 * float(tomo.std()) * blob
    viewer.add_image(tomo, name="planted", scale=(VOXEL,) * 3)
    write_mrc(tmp_path / "ref.mrc", blob.astype(np.float32), voxel_size=VOXEL)
    w.tomogram.value = "planted"
    w.method.value = TEMPLATE
    assert w.run_button.text() == "Match" and not w.angular_step.native.isHidden()
    assert w.iterations.native.isHidden()
    w.reference_file.value = tmp_path / "ref.mrc"
    w.angular_step.value = 180.0  # 4 rotations: the blob is round
    w.diameter.value = 100.0
    w.min_distance.value = 50.0
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    assert w.runner.state.history[-1] == "finished", w.status.text()
    assert "planted template scores" in viewer.layers
    best = w.picks.coordinates_xyz[np.argmax(w.picks.scores)]
    assert np.linalg.norm(best - [x, y, z]) <= 1.0 and w.picks.scores.max() > 0.5
    assert w.picks.euler_deg is not None and w.picks.euler_deg.shape == (len(w.picks), 3)
    # the slider starts at the one-false-alarm cut-off, which the planted blob passes
    assert 0.0 < w.template_cutoff <= w.threshold.value < w.template_cutoff + 0.011
    assert w.threshold.value < w.picks.scores.max()
    assert len(w.shown_indices()) >= 1
    w.threshold.value = 0.5
    assert len(w.shown_indices()) == int(np.sum(w.picks.scores >= 0.5)) >= 1
    w.star_file.value = tmp_path / "tm.star"
    table = read_particles(w.export_picks())
    assert "rlnAngleRot" in table.data and len(table) == len(w.shown_indices())
    np.testing.assert_allclose(coordinates_xyz(table)[0], [x, y, z], atol=1.0)


def test_template_from_the_labels(make_napari_viewer, qtbot, tmp_path):
    """Reference "average of the labels": the template is averaged from 5 labels in the job, shown, saved, and
    finds the 6 planted ribosomes (the sixth unlabelled) as the best-scoring picks."""
    from conftest import write_planted

    from napari_cryoalign.io import read_mrc

    files = write_planted(tmp_path / "data", per_class=6, box=24, voxel=20.0)  # ribosome: 16 voxels across
    viewer = make_napari_viewer(show=True)
    _open(viewer, files.tomogram)
    w = PickWidget(viewer)
    viewer.window.add_dock_widget(w)
    tomo = w.tomogram.value
    w.method.value = TEMPLATE
    assert LABEL_AVERAGE in w.reference.choices and w.reference.value is None
    assert w.labels_info.native.isHidden() and w.template_file.native.isHidden()
    w.reference.value = LABEL_AVERAGE
    assert not w.labels_info.native.isHidden() and not w.save_template_button.native.isHidden()
    w.diameter.value = 320.0
    w.angular_step.value = 60.0
    # no labels yet: a message, nothing runs
    assert w.run() is None and "labelled particles" in w.status.text() and not w.runner.running
    truth = files.zyx[:, ::-1].astype(float)
    w.add_labels(truth[:5] + np.random.default_rng(0).uniform(-1.5, 1.5, (5, 3)))
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=180_000)
    assert w.runner.state.history[-1] == "finished", w.status.text()
    name = f"{tomo} label template"
    assert name in viewer.layers and viewer.layers[name].data.shape == (24, 24, 24)
    lt = w.label_template
    assert lt.method == "aligned average" and lt.n_used == 5 and lt.voxel_size == pytest.approx(20.0)
    # the best picks are the planted particles, the unlabelled one too
    best = w.picks.coordinates_xyz[np.argsort(-w.picks.scores)[:6]]
    d = np.linalg.norm(best[:, None] - truth[None], axis=2)
    assert (d.min(1) <= 2.0).all() and len(set(d.argmin(1))) == 6, d.min(1)
    assert f"{tomo} template scores" in viewer.layers and w.picks.euler_deg is not None
    # the template layer is a reference to choose again, never a tomogram
    w.reference.reset_choices()
    assert name in w.reference.choices and name not in w.tomogram.choices
    # saved next to the tomogram, never over an existing file unless allowed
    assert w.template_file.value.name == "planted_label_template.mrc"
    out = w.save_label_template()
    saved = read_mrc(out)
    assert saved.data.shape == (24, 24, 24) and saved.voxel_size[0] == pytest.approx(20.0)
    np.testing.assert_allclose(saved.data, lt.map)
    assert w.save_label_template() is None and "does not exist yet" in w.status.text()
    # the other references still work: the layer made here, as a reference
    w.reference.value = name
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=180_000)
    assert w.runner.state.history[-1] == "finished", w.status.text()
    best = w.picks.coordinates_xyz[np.argsort(-w.picks.scores)[:6]]
    assert (np.linalg.norm(best[:, None] - truth[None], axis=2).min(1) <= 2.0).all()


def test_cancel_keeps_the_model_and_train_continues(opened, qtbot, sim):
    _, w = opened
    w.add_labels(np.asarray(sim.truth.coordinates_xyz)[:3])
    w.iterations.value = 10_000
    w.preview_s.value = 600.0
    w.run()
    qtbot.waitUntil(lambda: len(w.loss_plot.losses) >= 2, timeout=60_000)
    qtbot.mouseClick(w.cancel_button, Qt.LeftButton)
    assert not w.runner.running and w.status.text() == "cancelled"
    assert w.picker is not None and w.run_button.text() == "Train"
    # Train again at once: the cancelled job is closed first (its clean-up cannot land in the new run)
    picker = w.picker
    n = len(w.loss_plot.losses)  # steps shown before Cancel (the job may finish one more)
    w.iterations.value = 1
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert w.runner.state.history[-1] == "finished" and w.picker is picker
    total = picker.training["iterations_done"]
    assert total in (n + 1, n + 2) and w.loss_plot.steps[-1] == total
    assert picker.optimizer_state is not None and not picker.net.training  # eval mode, usable


def test_removed_picks_are_autosaved_and_trained_as_negatives(make_napari_viewer, qtbot, tomo_file, sim):
    from napari_cryoalign.widgets._pick_state import negatives_path_for

    viewer = make_napari_viewer()
    _open(viewer, tomo_file)
    w = PickWidget(viewer)
    w.add_labels(np.asarray(sim.truth.coordinates_xyz)[:3])
    w.diameter.value = 200.0
    w.iterations.value = 2
    w.preview_s.value = 0.0
    w.threshold.value = 0.0
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    assert w.runner.state.history[-1] == "finished", w.status.text()
    w.threshold.value = 0.0
    layer = viewer.layers["tomo_a.mrc picks"]
    assert len(layer.data) >= 2
    layer.selected_data = {0, 1}
    removed = w.picks.coordinates_xyz[np.asarray(layer.features["candidate"])[[0, 1]]]
    assert w.set_selected_status(REJECTED) == 2 and "removed picks: 2" in w.labels_info.value
    neg_file = negatives_path_for(tomo_file)
    w.flush_autosave()
    np.testing.assert_allclose(np.sort(coordinates_xyz(read_particles(neg_file)), 0), np.sort(removed, 0), atol=1e-4)
    # Train again: the removed picks go in as known negatives
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    assert w.runner.state.history[-1] == "finished", w.status.text()
    assert w.picker.training["n_negatives"] == 2
    assert len(w.picks.rejected_xyz()) >= 2  # verdicts survive the new candidates
    # ... and not when the box is unticked
    w.learn_negatives.value = False
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    assert w.picker.training["n_negatives"] == 0
    # reopening the tomogram restores them
    viewer2 = make_napari_viewer()
    _open(viewer2, tomo_file)
    w2 = PickWidget(viewer2)
    assert len(w2.picks.rejected_xyz()) >= 2 and "removed picks" in w2.labels_info.value


def test_review_loop_one_key_per_uncertain_pick(opened, qtbot, sim):
    """Review: the uncertain picks, the highest-scoring first; A makes a label, X a known negative, S skips;
    Train again learns from them."""
    from napari_cryoalign.backend.picking import Picks

    viewer, w = opened
    truth = np.asarray(sim.truth.coordinates_xyz)
    w.add_labels(truth[:3])
    xyz = np.array([[20.0, 20.0, 10.0], [60.0, 30.0, 20.0], [100.0, 90.0, 30.0], [30.0, 100.0, 24.0],
                    [110.0, 20.0, 12.0], [80.0, 70.0, 36.0]])
    scores = np.array([0.99, 0.72, 0.55, 0.45, 0.30, 0.05])  # 0.99 sure, 0.05 clear reject, the rest uncertain
    w.threshold.value = 0.5
    w._set_candidates(Picks(xyz, scores), "picker")
    assert w.start_review() == 4
    canvas = viewer.window._qt_viewer.canvas.native
    review = viewer.layers["tomo_a.mrc review"]
    np.testing.assert_allclose(review.data[0], xyz[1][::-1])  # 0.72 first
    assert viewer.dims.point[0] == pytest.approx(20 * VOXEL) and "review 1 of 4" in w.status.text()
    qtbot.keyClick(canvas, Qt.Key_A)  # accept: becomes a label
    np.testing.assert_allclose(viewer.layers["tomo_a.mrc review"].data[0], xyz[2][::-1])
    qtbot.keyClick(canvas, Qt.Key_X)  # remove: a known negative
    qtbot.keyClick(canvas, Qt.Key_S)  # skip
    assert w.review_verdict(REJECTED) is None  # the last one, by button; the review is over
    assert "review done: 1 accepted" in w.status.text() and "tomo_a.mrc review" not in viewer.layers
    assert w.picks.status.tolist() == [0, ACCEPTED, REJECTED, 0, REJECTED, 0]
    assert len(w.labels_xyz()) == 4 and np.allclose(w.labels_xyz()[-1], xyz[1])
    # Train again: the removed picks go in as known negatives
    w.iterations.value = 1
    w.reject_lookalikes.value = False
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert w.runner.state.history[-1] == "finished", w.status.text()
    assert w.picker.training["n_negatives"] == 2 and w.picker.training["n_labels"] == 4


def test_run_on_all_tomograms(opened, qtbot, sim, tmp_path):
    """'Run on all tomograms': the current picker on every tomogram of a list (one missing) by the batch job,
    progress in the widget, the merged picks written; a rerun skips finished tomograms."""
    from napari_cryoalign.io import read_star

    viewer, w = opened
    w.batch.button.clicked()  # no picker yet: a message, nothing started
    assert "picker" in w.batch.status.value and not w.batch.runner.running
    w.picker = Picker.new(diameter_angstrom=250.0, voxel_size=VOXEL, seed=0)
    w.threshold.value = 0.05  # an untrained network: low scores, but picks to compare
    for name in ("tomo_b", "tomo_c"):
        write_mrc(tmp_path / f"{name}.mrc", sim.tomogram[:, :96, :96], voxel_size=VOXEL)
    (tmp_path / "all.txt").write_text("tomo_b.mrc\ntomo_c.mrc\nnot_here.mrc\n")
    w.batch.source.value = str(tmp_path / "all.txt")
    w.batch.out.value = str(tmp_path / "batch")
    w.batch.workers.value = 1
    w.batch.button.clicked()
    qtbot.waitUntil(lambda: not w.batch.runner.running, timeout=180_000)
    assert "2 done, 0 finished before, 1 failed of 3 tomograms" in w.batch.status.value
    assert "not_here" in w.batch.status.value
    merged = read_star(tmp_path / "batch" / "particles.star")["particles"]
    assert set(merged["rlnTomoName"]) == {"tomo_b", "tomo_c"} and (merged["rlnAutopickFigureOfMerit"] >= 0.05).all()
    w.batch.button.clicked()
    qtbot.waitUntil(lambda: not w.batch.runner.running, timeout=180_000)
    assert "0 done, 2 finished before, 1 failed" in w.batch.status.value
