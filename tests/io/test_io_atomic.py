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
