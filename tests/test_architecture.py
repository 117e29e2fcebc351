"""The backend and io never pull in a GUI toolkit; the manifest and the package agree."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "napari_cryoalign"
GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy")


def _backend_modules():
    mods = []
    for sub in ("backend", "io"):
        for path in sorted((PKG / sub).rglob("*.py")):
            rel = path.relative_to(PKG.parent).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods.append(".".join(parts))
    return mods


def test_importing_backend_and_io_loads_no_gui_module():
    mods = _backend_modules()
    assert "napari_cryoalign.backend.geometry" in mods and "napari_cryoalign.backend.jobs" in mods
    code = (
        "import importlib, json, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {GUI_MODULES!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"backend/io import pulled in GUI modules: {loaded}"


def test_no_gui_import_statements_in_backend_source():
    offenders = []
    for sub in ("backend", "io"):
        for path in (PKG / sub).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for n in names:
                    if n.split(".")[0] in GUI_MODULES:
                        offenders.append(f"{path.relative_to(ROOT)}: {n}")
    assert offenders == []


def test_no_hardcoded_cuda_and_safe_torch_load():
    bad = []
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        if ".cuda()" in text:
            bad.append(f"{path.name}: .cuda()")
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                bad.append(f"{path.name}: torch.load without weights_only=True")
    assert bad == []


def test_top_level_manifest_is_the_shipped_one():
    top = ROOT / "napari.yaml"
    assert top.exists()
    assert top.read_text() == (PKG / "napari.yaml").read_text()


def test_manifest_validates_with_imports():
    pytest.importorskip("npe2")
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-cryoalign")
    pm.validate_imports()
    ids = {c.id for c in pm.contributions.commands}
    assert {"napari-cryoalign.get_reader", "napari-cryoalign.write_points"} <= ids
    assert len(pm.contributions.sample_data) >= 4


def test_npe2_validate_command():
    exe = Path(sys.executable).with_name("npe2")
    if not exe.exists():
        pytest.skip("npe2 console script not installed next to this Python")
    res = subprocess.run([str(exe), "validate", "napari-cryoalign", "--imports"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _sources(*parts):
    for part in parts:
        path = PKG / part
        yield from ([path] if path.suffix == ".py" else sorted(path.rglob("*.py")))


def test_one_place_reads_layer_metadata_and_one_writes_star():
    """The drifted copies stay gone: what a layer says (voxel size, file, tomogram) is read by
    ``_layer_geometry`` only; STAR files are written by ``io`` only; every widget writes files through
    ``JobWidget.export_files`` (no direct ``overwrite=True``)."""
    import re

    reading = re.compile(r'(\.get\(\s*"napari_cryoalign"|\["napari_cryoalign"\]|\.scale\[-1\])')
    meta_readers = [p.relative_to(PKG).as_posix() for p in _sources("widgets", "_writer.py", "cli")
                    if reading.search(p.read_text())]
    assert meta_readers == []
    star_writers = [p.relative_to(PKG).as_posix() for p in _sources("backend", "widgets", "cli", "_reader.py",
                                                                   "_writer.py") if "starfile" in p.read_text()]
    assert star_writers == []
    overwriting = [p.relative_to(PKG).as_posix() for p in _sources("widgets")
                   if any(re.search(r"overwrite=True\s*[,)]", line) and "bind_key" not in line
                          for line in p.read_text().splitlines())]  # (key bindings replace keys, not files)
    assert overwriting == ["widgets/_pick_labels.py"]  # the labels autosave (next to the tomogram, its own file)
