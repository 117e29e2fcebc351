"""Fixtures for the file I/O tests.

Real files written by other software are fetched once by ``scripts/fetch_test_data.sh``
into ``.test-data`` (or ``$CRYOALIGN_TEST_DATA``). Tests that need them skip with a clear
reason when they are absent locally, and fail in CI (``CI=true``), where the fetch always
runs first.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_NEEDED = ("mrcfile/EMD-3197.map", "mrcfile/fei-extended.mrc", "cryodrgn/relion31.star",
           "cryodrgn/relion31.mrcs")


def _data_root() -> Path:
    env = os.environ.get("CRYOALIGN_TEST_DATA")
    return Path(env) if env else REPO / ".test-data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Folder with ``mrcfile/`` and ``cryodrgn/`` real test files."""
    root = _data_root()
    missing = [f for f in _NEEDED if not (root / f).is_file()]
    if missing:
        msg = (f"real test files of other software are missing in {root} ({', '.join(missing)}); "
               "run `bash scripts/fetch_test_data.sh` (or set CRYOALIGN_TEST_DATA)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def mrcfile_data(test_data: Path) -> Path:
    """mrcfile's tests/test_data: EMDB maps, FEI/EPU images."""
    return test_data / "mrcfile"


@pytest.fixture(scope="session")
def cryodrgn_data(test_data: Path) -> Path:
    """cryoDRGN's tests/data: RELION STAR files and particle stacks."""
    return test_data / "cryodrgn"


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def unchanged():
    """Record files' digests; call the returned function again at the end to assert that
    none of them changed (inputs are never overwritten)."""
    recorded: dict[Path, str] = {}

    def check(*paths):
        for p in paths:
            recorded[Path(p)] = file_digest(p)

    yield check
    for p, digest in recorded.items():
        assert file_digest(p) == digest, f"{p} was modified"
