"""The "Align & average" dock widget, driven with qtbot: live average, FSC plot, features, export."""

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_cryoalign.backend.geometry import (
    euler_to_matrix,
    geodesic_angle_deg,
    random_rotations,
)
from napari_cryoalign.io import euler_deg, read_particles
from napari_cryoalign.widgets.align import SCORE, AlignWidget

VOX = 12.0


@pytest.fixture
def scene(make_napari_viewer, qtbot):
    from napari_cryoalign.backend.geometry import transform_reference_to_particle
    from napari_cryoalign.backend.simulate.structures import load_structure_map

    ref, vox = load_structure_map("ribosome", voxel_size_angstrom=VOX, box=24)
    rots = random_rotations(4, seed=8)
    tomo = np.zeros((32, 64, 96), np.float32)
    zyx = np.array([[16, 16, 16], [16, 16, 44], [16, 44, 30], [15, 46, 72]])
    for (z, y, x), r in zip(zyx, rots):
        tomo[z - 12:z + 12, y - 12:y + 12, x - 12:x + 12] += transform_reference_to_particle(ref, r)
    tomo += np.random.default_rng(0).normal(0, 0.5 * tomo.std(), tomo.shape).astype(np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(tomo, name="tomo", scale=(vox,) * 3)
    junk = [[16, 16, 72]]  # a pick on empty (noisy) ice: the one to find and remove
    viewer.add_points(np.concatenate([zyx, junk]).astype(float), name="picks", scale=(vox,) * 3)
    viewer.add_image(ref, name="ref", scale=(vox,) * 3)
    w = AlignWidget(viewer)
    viewer.window.add_dock_widget(w)
    return viewer, w, rots


def test_align_average_live_update_features_and_export(scene, qtbot, tmp_path):
    viewer, w, rots = scene
    w.points.value, w.tomogram.value = "picks", "tomo"
    w.box.value = 24
    w.ref_kind.value = "image layer"
    w.ref_layer.value = "ref"
    w.iterations.value = 1
    w.angular_step.value = 30.0
    w.tilt_min.value, w.tilt_max.value = -90.0, 90.0  # the planted copies have no missing wedge
    qtbot.mouseClick(w.run_button, Qt.LeftButton)
    # the live update: the average appears while the job still finishes (gallery comes last)
    qtbot.waitUntil(lambda: "aligned average" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: not w.runner.running and w.last_result is not None, timeout=60_000)
    assert viewer.layers["aligned average"].data.shape == (24, 24, 24)
    assert w.fsc_plot.report is not None
    pts = viewer.layers["picks"]
    score = pts.features[SCORE].to_numpy()
    assert np.all(score[:4] > 0.3) and score[4] < 0.2
    eul = pts.features[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()[:4]
    assert geodesic_angle_deg(euler_to_matrix(eul), rots).max() < 6.0
    assert "picks orientations" in viewer.layers
    assert viewer.layers["aligned gallery (worst first)"].data.shape == (5, 24, 48)
    assert w.table.rowCount() == 5
    # export, then remove the worst particle
    w.export_file.value = str(tmp_path / "aligned.star")
    path = w.export_star()
    t = read_particles(path, require=("angles",))
    assert len(t) == 5 and geodesic_angle_deg(euler_to_matrix(euler_deg(t))[:4], rots).max() < 6.0
    w.threshold.value = 0.25
    assert w.remove_below() == 1 and len(pts.data) == 4


def test_bad_input_is_a_message(scene, qtbot):
    _viewer, w, _ = scene
    w.points.value, w.tomogram.value = "picks", "tomo"
    w.box.value = 40  # larger than the tomogram's z edge (32)
    assert w.run() is None
    assert "box" in w.status.text()
    w.box.value = 24
    w.ref_kind.value = "image layer"
    w.ref_layer.value = "tomo"  # wrong shape
    assert w.run() is None and "reference" in w.status.text()


def test_candidates_shown_for_the_learned_methods_and_passed_to_the_job(scene, monkeypatch):
    import napari_cryoalign.backend.align.average as average

    _viewer, w, _ = scene
    w.points.value, w.tomogram.value = "picks", "tomo"
    w.box.value = 24
    w.ref_kind.value = "image layer"
    w.ref_layer.value = "ref"
    assert w.candidates.native.isHidden()  # exhaustive
    w.method.value = "learned"
    assert not w.candidates.native.isHidden()
    w.candidates.value = 4
    seen = {}
    monkeypatch.setattr(average, "align_average_job", lambda *a, **kw: seen.update(kw) or iter(()))
    w.make_job()
    assert seen["method"] == "learned" and seen["candidates"] == 4


def test_align_files_opened_with_the_reader(make_napari_viewer, qtbot, planted_files, tmp_path):
    """The user's path: tomogram, particles and reference are files opened with the plugin's reader.

    The reader stores the MRC header's voxel size (x, y, z) in the layer's metadata; reading
    it as one number crashed this widget before (TypeError).
    """
    from conftest import open_files

    f = planted_files
    viewer = make_napari_viewer()
    tomo, = open_files(viewer, f.tomogram)
    pts, = open_files(viewer, f.particles)
    assert tuple(tomo.metadata["napari_cryoalign"]["voxel_size_angstrom"]) == (VOX, VOX, VOX)
    w = AlignWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.points.value, w.tomogram.value = pts.name, tomo.name
    w.box.value = 24
    w.ref_kind.value = "MRC file"
    w.ref_file.value = str(f.references[0])
    w.iterations.value = 1
    w.tilt_min.value, w.tilt_max.value = -90.0, 90.0  # the planted copies have no missing wedge
    assert w.run() is not None, w.status.text()
    qtbot.waitUntil(lambda: not w.runner.running and w.last_result is not None, timeout=90_000)
    eul = pts.features[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()[:4]
    assert geodesic_angle_deg(euler_to_matrix(eul), f.rotations).max() < 6.0
    score = pts.features[SCORE].to_numpy()
    assert np.all(score[:4] > 0.3) and score[4] < 0.2
    # export: never over an opened file, never over an existing file unless ticked
    before = f.tomogram.read_bytes()
    w.export_file.value = str(f.tomogram)
    assert w.export_star() is None and "input" in w.status.text() and f.tomogram.read_bytes() == before
    out = tmp_path / "aligned.star"
    w.export_file.value = str(out)
    assert w.export_star() == out
    t = read_particles(out, require=("angles",))
    assert set(t.data["rlnTomoName"]) == {"planted"} and "rlnCenteredCoordinateXAngst" in t.data
    assert geodesic_angle_deg(euler_to_matrix(euler_deg(t))[:4], f.rotations).max() < 6.0
    assert w.export_star() is None and "overwrite existing files" in w.status.text()
    w.overwrite.value = True
    assert w.export_star() == out


def test_a_failing_job_and_a_failing_button_become_messages(make_napari_viewer, qtbot, planted_files, monkeypatch,
                                                            caplog):
    """Any exception in a job or a button handler: a napari notification, the traceback in the log, the
    widget usable for the next run."""
    import logging

    import napari.utils.notifications as notifications

    from napari_cryoalign.backend.align import average
    from napari_cryoalign.backend.jobs import Progress
    from conftest import open_files

    shown = []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    real_job = average.align_average_job

    def broken_job(*args, **kwargs):
        yield Progress(0, 2, "about to fail")
        raise RuntimeError("injected failure")

    monkeypatch.setattr(average, "align_average_job", broken_job)
    viewer = make_napari_viewer()
    tomo, pts = open_files(viewer, planted_files.tomogram, planted_files.particles)
    w = AlignWidget(viewer)
    w.points.value, w.tomogram.value, w.box.value, w.iterations.value = pts.name, tomo.name, 24, 1
    caplog.set_level(logging.ERROR)
    assert w.run() is not None
    qtbot.waitUntil(lambda: not w.runner.running, timeout=30_000)
    assert w.runner.state.history[-1] == "failed"
    assert any("injected failure" in m for m in shown) and "RuntimeError: injected failure" in w.status.text()
    assert any(r.exc_info and "injected failure" in str(r.exc_info[1]) for r in caplog.records)  # the traceback
    # the widget is usable: the next run works
    monkeypatch.setattr(average, "align_average_job", real_job)
    assert w.run() is not None
    qtbot.waitUntil(lambda: not w.runner.running, timeout=90_000)
    assert w.runner.state.history[-1] == "finished" and w.last_result is not None
    # a button handler that fails (here the writer): a message, the traceback logged, nothing raised
    shown.clear()
    caplog.clear()

    def broken_writer(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(type(w.pset), "write_star", broken_writer)
    w.export_file.value = str(planted_files.tomogram.with_name("out.star"))
    assert w.export_star() is None
    assert any("disk full" in m for m in shown) and "OSError" in w.status.text()
    assert any(r.exc_info for r in caplog.records)
    # and a bad parameter is a message, not an exception
    w.ref_kind.value = "MRC file"
    w.ref_file.value = str(planted_files.tomogram)  # the tomogram: not the particles' box
    assert w.run() is None and "box size" in w.status.text()


def test_star_file_with_defocus_aligns_ctf_aware_and_symmetry_is_offered(make_napari_viewer, qtbot, tmp_path):
    """From a subtomogram STAR file on disk (as a user opens it): the CTF of rlnDefocusU is used."""
    from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms, write_subtomogram_set

    s = simulate_subtomograms(["procedural:10012"], n_per_class=4, box=32, voxel_size_angstrom=6.0, snr=0.1, seed=4)
    files = write_subtomogram_set(s, tmp_path / "set")
    viewer = make_napari_viewer()
    w = AlignWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.source.value = "subtomogram STAR file"
    w.star.value = str(files["star"])
    w.ref_kind.value = "MRC file"
    w.ref_file.value = str(files["references"][0])
    assert w.use_ctf.value and w.symmetry.value == "C1" and "D8" in w.symmetry.choices
    ctf = w.particle_ctf(w._load_particles())
    assert ctf is not None and np.allclose(ctf.defocus_um, s.defocus_um)
    w.use_ctf.value = False
    assert w.particle_ctf(w._load_particles()) is None
    w.use_ctf.value = True
    w.method.value = "exhaustive"
    w.iterations.value = 1
    qtbot.mouseClick(w.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.runner.running and w.last_result is not None, timeout=120_000)
    # one gold-standard round from the map low-passed to 48 Å (two particles per half): a coarse pose
    ang = geodesic_angle_deg(w.last_alignment.rotations, s.rotations)
    assert ang.max() < 20.0 and np.median(ang) < 10.0, ang
