"""The widgets as one workflow (issue 20): a simulated tomogram opened through the reader, a few labels
-> *Pick particles* -> *Align & average* (reference-free, from the picks layer, no export/import) ->
*Cluster*; poses, the fraction of each box inside the tomogram and classes land on the same points,
the averages appear as image layers, a class shows its particles."""

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

from napari_cryoalign.cli import main
from napari_cryoalign.io import classes, coordinates_xyz, read_particles
from napari_cryoalign.widgets.align import AlignWidget
from napari_cryoalign.widgets.cluster import ClusterWidget
from napari_cryoalign.widgets.pick import PickWidget

VOXEL = 30.0


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    assert main(["-q", "simulate", "tomogram", "--out", str(d), "--size", "112,112,28", "--voxel-size", str(VOXEL),
                 "--particles", "14", "--structures", "ribosome,cct", "--seed", "5", "--tomo-name", "tomogram"]) == 0
    t = read_particles(d / "truth.star")
    return d / "tomogram.mrc", coordinates_xyz(t), classes(t)


def test_labels_to_picks_to_average_to_classes(make_napari_viewer, qtbot, sim):
    from conftest import open_files

    tomo_path, truth_xyz, truth_cls = sim
    viewer = make_napari_viewer()
    tomo_layer, = open_files(viewer, tomo_path)
    pick, align, cluster = PickWidget(viewer), AlignWidget(viewer), ClusterWidget(viewer)
    for w in (pick, align, cluster):
        viewer.window.add_dock_widget(w)

    # labels: two of each species, as one kind
    idx = np.r_[np.flatnonzero(truth_cls == 1)[:2], np.flatnonzero(truth_cls == 2)[:2]]
    pick.labels_layer.add(truth_xyz[idx][:, ::-1])
    pick.diameter.value = 350.0
    pick.iterations.value = 60
    pick.preview_s.value = 0.0
    qtbot.mouseClick(pick.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not pick.runner.running, timeout=240_000)
    assert pick.runner.state.history[-1] == "finished", pick.status.text()
    picks_name = next(lay.name for lay in viewer.layers if lay.name.endswith(" picks"))
    picks = viewer.layers[picks_name]
    n = len(picks.data)
    assert n >= 8

    # the picks layer is already the input of both widgets, on its tomogram
    for w in (align, cluster):
        assert w.points.value == picks_name and w.tomogram.value == tomo_layer.name
    # reference-free average from the picks: one click (box and iterations set small for the test)
    align.box.value = 18
    align.iterations.value = 1
    qtbot.mouseClick(align.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not align.runner.running, timeout=240_000)
    assert align.runner.state.history[-1] == "finished", align.status.text()
    f = picks.features
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "cryoalignCorrelation",
                "cryoalignFractionInside"):
        assert col in f.columns and f[col].notna().all(), col  # every pick aligned: none lost at the faces
    assert (f["cryoalignFractionInside"] < 1.0).any()  # a 28-voxel slab: boxes of 18 cross its faces
    assert "aligned average" in viewer.layers and f"{picks_name} orientations" in viewer.layers
    assert viewer.layers[f"{picks_name} orientations"].data.shape == (n, 2, 3)

    cluster.box.value = 18
    cluster.n_classes.value = 2
    cluster.iterations.value = 2
    qtbot.mouseClick(cluster.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not cluster.runner.running and cluster.result is not None, timeout=300_000)
    f = picks.features
    assert set(f["rlnClassNumber"]) <= {1, 2} and f["cryoalignFractionInside"].notna().all()
    assert "class 1 average" in viewer.layers and "class 2 average" in viewer.layers
    assert viewer.layers["class 1 average"].data.shape == (18, 18, 18)
    # classes against the truth (ribosome vs CCT), on the picks that are particles
    from napari_cryoalign.backend.cluster.gmm import clustering_accuracy
    from napari_cryoalign.backend.picking.metrics import match_picks

    xyz = np.asarray(picks.data)[:, ::-1]
    m = match_picks(xyz, np.arange(n, 0, -1), truth_xyz, radius=5.0)
    which = np.full(n, -1)
    which[m.order] = m.matched_truth
    ok = which >= 0
    acc = clustering_accuracy(truth_cls[which[ok]], f["rlnClassNumber"].to_numpy()[ok]).accuracy
    assert acc >= 0.8, acc
    # a class shows its particles
    size1 = int(np.sum(f["rlnClassNumber"] == 1))
    assert cluster.show_class(0) == size1 and int(np.sum(picks.shown)) == size1
    assert picks.selected_data == set(np.flatnonzero(f["rlnClassNumber"].to_numpy() == 1).tolist())
    assert cluster.show_class(None) == n and picks.shown.all()
