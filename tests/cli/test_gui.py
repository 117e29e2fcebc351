"""`cryoalign gui`: napari opens with every dock widget of the manifest and the sample."""

from napari_cryoalign.cli._gui import open_viewer, widget_names


def test_gui_opens_sample_and_widgets(qtbot):
    names = widget_names()
    assert "Simulate data" in names
    viewer = open_viewer(sample="tomogram", show=False)
    try:
        docked = [name for name in viewer.window.dock_widgets]
        for name in names:
            assert any(name in d for d in docked), (name, docked)
        kinds = sorted(layer._type_string for layer in viewer.layers)
        assert kinds.count("image") == 1 and "points" in kinds
        tomo = next(layer for layer in viewer.layers if layer._type_string == "image")
        assert tomo.scale[0] == tomo.metadata["napari_cryoalign"]["voxel_size_angstrom"]
    finally:
        viewer.close()


def test_gui_opens_files(qtbot, tmp_path):
    import numpy as np

    from napari_cryoalign.io import write_mrc

    write_mrc(tmp_path / "t.mrc", np.zeros((8, 16, 16), np.float32), voxel_size=4.0)
    viewer = open_viewer([str(tmp_path / "t.mrc")], show=False)
    try:
        images = [layer for layer in viewer.layers if layer._type_string == "image"]
        assert [layer.name for layer in images] == ["t.mrc"]
        assert tuple(images[0].scale) == (4.0, 4.0, 4.0)
        # the Pick particles widget offers a labels layer for the new tomogram
        assert "t.mrc labels" in viewer.layers
    finally:
        viewer.close()
