"""Model files: round trip; corrupted and foreign files give InputError."""

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.picking import NetConfig, Picker, load_picker, predict_heatmap, save_picker
from napari_cryoalign.backend.picking.modelio import FORMAT_NAME
from napari_cryoalign.errors import InputError


@pytest.fixture
def picker():
    p = Picker.new(diameter_angstrom=120.0, voxel_size=10.0, class_prior=0.2,
                   net_config=NetConfig(width=8, feature_channels=8, proj_channels=8), seed=3)
    p.training = {"iterations_done": 7, "lr": 1e-3, "label_scores": [0.9, 0.95], "suggested_threshold": 0.7}
    return p


def test_round_trip_same_outputs(tmp_path, picker):
    path = save_picker(tmp_path / "m.pt", picker)
    back = load_picker(path)
    assert back.diameter_angstrom == 120.0 and back.voxel_size == 10.0 and back.class_prior == 0.2
    assert back.net_config == picker.net_config
    assert back.training["iterations_done"] == 7
    assert back.default_threshold == 0.7  # the calibrated threshold travels with the model
    vol = np.random.default_rng(0).normal(size=(6, 32, 32)).astype(np.float32)
    a = predict_heatmap(picker, vol).data
    b = predict_heatmap(back, vol).data
    np.testing.assert_array_equal(a, b)
    # never overwrites without asking; no temporary files left behind
    with pytest.raises(InputError, match="output"):
        save_picker(path, picker)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_truncated_file(tmp_path, picker):
    path = save_picker(tmp_path / "m.pt", picker)
    data = path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"truncated.pt: file: expected .*picker"):
        load_picker(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all" * 10)
    with pytest.raises(InputError, match="junk.pt: file"):
        load_picker(junk)


def test_foreign_and_incompatible_files(tmp_path, picker):
    other = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(3)}, "epoch": 4}, other)  # another tool's checkpoint
    with pytest.raises(InputError, match="other.pt: format"):
        load_picker(other)
    plain = tmp_path / "plain.pt"
    torch.save(torch.zeros(3), plain)
    with pytest.raises(InputError, match="format"):
        load_picker(plain)
    newer = tmp_path / "newer.pt"
    torch.save({"format": FORMAT_NAME, "version": 99, "header": {}, "state_dict": {}}, newer)
    with pytest.raises(InputError, match="version"):
        load_picker(newer)
    broken = tmp_path / "broken.pt"
    state = {k: v for k, v in picker.net.state_dict().items() if "fusion" not in k}
    torch.save({"format": FORMAT_NAME, "version": 1, "state_dict": state,
                "header": {"diameter_angstrom": 1.0, "voxel_size": 1.0, "class_prior": 0.1,
                           "net_config": picker.net_config.to_dict()}}, broken)
    with pytest.raises(InputError, match="state_dict"):
        load_picker(broken)
    with pytest.raises(InputError, match="path"):
        load_picker(tmp_path / "missing.pt")
