"""Atomic writes and the protection of inputs."""

from __future__ import annotations

import os

import pytest

from napari_cryoalign.errors import InputError
from napari_cryoalign.io import atomic_path, atomic_write, ensure_not_input


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("old")
    with atomic_write(out, mode="w") as f:
        f.write("new")
        assert out.read_text() == "old"  # not visible before the block ends
    assert out.read_text() == "new"
    assert _leftovers(tmp_path) == []
    mask = os.umask(0)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_atomic_write_error_keeps_old_file_and_removes_temp(tmp_path):
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(out) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert out.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_refuses_existing_without_overwrite(tmp_path):
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")
    with pytest.raises(InputError) as e:
        with atomic_write(out, overwrite=False) as f:
            f.write(b"x")
    assert e.value.field == "output" and str(out) in str(e.value)
    assert out.read_bytes() == b"old"


def test_atomic_write_missing_folder(tmp_path):
    with pytest.raises(InputError) as e:
        with atomic_write(tmp_path / "nope" / "a.bin"):
            pass
    assert e.value.field == "output folder"


def test_atomic_path_keeps_suffix_and_cleans_up(tmp_path):
    out = tmp_path / "m.mrc.gz"
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".mrc.gz")
        tmp.write_bytes(b"data")
    assert out.read_bytes() == b"data"
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "n.mrc") as tmp:
            tmp.write_bytes(b"x")
            raise ValueError
    assert not (tmp_path / "n.mrc").exists()
    assert _leftovers(tmp_path) == []


def test_ensure_not_input(tmp_path):
    inp = tmp_path / "in.mrc"
    inp.write_bytes(b"x")
    ensure_not_input(tmp_path / "out.mrc", inp, None)  # different: fine
    with pytest.raises(InputError) as e:
        ensure_not_input(inp, tmp_path / "other.mrc", inp)
    assert e.value.field == "output" and "in.mrc" in str(e.value)
    # the same file under another name: relative path, symbolic link, hard link
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        with pytest.raises(InputError):
            ensure_not_input("in.mrc", inp)
    finally:
        os.chdir(cwd)
    (tmp_path / "link.mrc").symlink_to(inp)
    with pytest.raises(InputError):
        ensure_not_input(tmp_path / "link.mrc", inp)
    os.link(inp, tmp_path / "hard.mrc")
    with pytest.raises(InputError):
        ensure_not_input(tmp_path / "hard.mrc", inp)


def test_write_json_atomic_and_refuses_overwrite(tmp_path):
    import json

    import numpy as np
    import pytest

    from napari_cryoalign.errors import InputError
    from napari_cryoalign.io import write_json

    p = write_json(tmp_path / "a.json", {"x": np.float32(1.5), "n": 3})
    assert json.loads(p.read_text()) == {"x": 1.5, "n": 3}
    with pytest.raises(InputError):
        write_json(p, {"x": 2})
    assert json.loads(p.read_text())["x"] == 1.5
    write_json(p, {"x": 2}, overwrite=True)
    assert json.loads(p.read_text()) == {"x": 2}
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]  # no temporary files left


def test_model_file_round_trip_and_plain_header(tmp_path):
    import numpy as np
    import torch

    from napari_cryoalign.io.modelfile import jsonable, model_file_bytes, read_model_file, write_model_file

    class Version(str):
        pass

    header = {"n": np.int64(3), "x": np.float32(0.5), "shape": (2, 3), "arr": np.arange(3), "v": Version("2.13"),
              1: None}
    state = {"w": torch.ones(2, requires_grad=True)}
    path = write_model_file(tmp_path / "m.pt", format_name="napari-cryoalign-test", version=1, header=header,
                            state_dict=state, extra={"optimizer_state": None})
    obj = read_model_file(path, format_name="napari-cryoalign-test", max_version=1, what="test model")
    assert obj["header"]["n"] == 3 and type(obj["header"]["n"]) is int
    assert obj["header"]["shape"] == [2, 3] and obj["header"]["arr"] == [0, 1, 2]
    assert type(obj["header"]["v"]) is str and obj["header"]["1"] is None and "created" in obj["header"]
    assert torch.equal(obj["state_dict"]["w"], torch.ones(2)) and obj["optimizer_state"] is None
    assert jsonable({"a": (np.float64(1.5),)}) == {"a": [1.5]}
    with pytest.raises(InputError):  # never replaced silently
        write_model_file(path, format_name="napari-cryoalign-test", version=1, header={}, state_dict=state)
    raw = model_file_bytes(format_name="napari-cryoalign-test", version=1, header={}, state_dict=state)
    assert raw[:2] == b"PK"  # a torch zip archive
