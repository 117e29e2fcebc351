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

import pytest  # noqa: E402


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test, restored after it. Small convolutions run faster on one thread,
    much faster when other jobs share the cores (OpenMP threads spin-waiting for each other made a picker
    training step ~30x slower on a busy 2-core machine), and float reductions do not depend on how the
    threads split them (bit-identical repeats). Modules use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    """The tests that start Dask clusters (tests/backend/batch) run last: the other tests ran up to 1.3x
    slower after them in one process (measured on the picker's look-alike test, cause not yet found)."""
    items.sort(key=lambda item: "tests/backend/batch/" in str(item.fspath).replace("\\", "/"))
