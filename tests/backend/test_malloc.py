"""keep_freed_memory(): glibc tuning for the console script (in a child process: it is process-wide)."""

import os
import subprocess
import sys

import pytest

CODE = "from napari_cryoalign.backend._malloc import keep_freed_memory; print(keep_freed_memory())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_sets_glibc_thresholds_and_can_be_turned_off():
    env = {k: v for k, v in os.environ.items() if k != "CRYOALIGN_NO_MALLOC_TUNING"}
    on = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    assert on.stdout.strip() == "True"
    off = subprocess.run([sys.executable, "-c", CODE], env={**env, "CRYOALIGN_NO_MALLOC_TUNING": "1"},
                         capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "False"
