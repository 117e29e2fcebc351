"""OpenMP threads that sleep while they wait, so that a job on a shared machine slows only in proportion
to its share of the cores.

PyTorch's CPU kernels run on GNU OpenMP (libgomp) threads. By default they *spin* for a while when they
wait for work; two processes that each spin on both cores of a 2-core machine take each other's time
slices, and a job slowed by 12x beside another busy process (issue 20; ``benchmarks/bench_threads.py``
measures it). With ``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep instead.

libgomp reads the variable once, when it is loaded (at ``import torch``), so this must run before
torch is imported: the package's ``__init__`` calls :func:`configure_openmp`. A value the user set
is kept; ``CRYOALIGN_OMP_WAIT_POLICY=unset`` leaves libgomp's default (for benchmarks).
"""

from __future__ import annotations

import os
import sys

__all__ = ["configure_openmp"]


def configure_openmp(environ=None) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default ``os.environ``) unless it is set, torch is
    already loaded, or ``CRYOALIGN_OMP_WAIT_POLICY`` is ``unset``. Returns the policy in force (None: libgomp's
    default)."""
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env:
        return env["OMP_WAIT_POLICY"]
    if env.get("CRYOALIGN_OMP_WAIT_POLICY", "passive").lower() == "unset" or "torch" in sys.modules:
        return None
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"
