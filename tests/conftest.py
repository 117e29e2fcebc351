"""Test-wide set-up: napari's settings and caches go to a temporary folder, never the user's."""

import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="cryoalign-tests-")
for _var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "XDG_DATA_HOME"):
    _path = os.path.join(_TMP, _var.lower())
    os.makedirs(_path, mode=0o700, exist_ok=True)
    os.environ[_var] = _path
os.environ.setdefault("NAPARI_CONFIG", os.path.join(_TMP, "napari-settings.yaml"))
# no progress bars from the backend in test logs
os.environ.setdefault("TQDM_DISABLE", "1")
