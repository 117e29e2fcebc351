"""OpenMP threads sleep while they wait (issue 20: a job beside another busy process must not stall)."""

import os
import subprocess
import sys

from napari_cryoalign._threads import configure_openmp


def test_passive_unless_the_user_chose():
    env = {}
    # torch is loaded in this test process already: too late to change it here
    assert configure_openmp(env) in (None, "GOMP_SPINCOUNT=1000")
    assert configure_openmp({"OMP_WAIT_POLICY": "ACTIVE"}) == "OMP_WAIT_POLICY=ACTIVE"
    assert configure_openmp({"CRYOALIGN_OMP_WAIT_POLICY": "unset"}) is None


def test_importing_the_package_sets_it_before_torch_loads():
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "CRYOALIGN_OMP_WAIT_POLICY")}
    code = ("import napari_cryoalign, os, torch; "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1000 None"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None ACTIVE"
