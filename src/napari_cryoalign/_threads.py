"""OpenMP threads that soon sleep while they wait, so that a job on a shared machine slows only in proportion
to its share of the cores.

PyTorch's CPU kernels run on GNU OpenMP (libgomp) threads. By default they *spin* for a while when they
wait for work; two processes that each spin on both cores of a 2-core machine take each other's time
slices, and a job slowed by 12x beside another busy process (issue 20; ``benchmarks/bench_threads.py``
measures it). Measured (picker training, 2 threads, beside a busy 2-thread alignment): libgomp's
default 0.080 s/step alone, 5.9x slower beside it; ``OMP_WAIT_POLICY=PASSIVE`` 0.104 s alone, 3.4x;
``GOMP_SPINCOUNT=1000`` (spin briefly, then sleep) 0.087 s alone, 2.5x (a fair share is 2x). So the
package sets ``GOMP_SPINCOUNT=1000``.

libgomp reads the variable once, when it is loaded (at ``import torch``), so this must run before
torch is imported: the package's ``__init__`` calls :func:`configure_openmp`. A value the user set
is kept; ``CRYOALIGN_OMP_WAIT_POLICY=unset`` leaves libgomp's default (for benchmarks).
"""

from __future__ import annotations

import os
import sys

__all__ = ["configure_openmp"]


def configure_openmp(environ=None) -> str | None:
    """Set ``GOMP_SPINCOUNT=1000`` in ``environ`` (default ``os.environ``) unless ``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT`` is set, torch is already loaded, or ``CRYOALIGN_OMP_WAIT_POLICY`` is ``unset``
    (``passive``: ``OMP_WAIT_POLICY=PASSIVE`` instead). Returns what is in force (None: libgomp's default)."""
    env = os.environ if environ is None else environ
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if key in env:
            return f"{key}={env[key]}"
    choice = env.get("CRYOALIGN_OMP_WAIT_POLICY", "spin").lower()
    if choice == "unset" or "torch" in sys.modules:
        return None
    if choice == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        return "OMP_WAIT_POLICY=PASSIVE"
    env["GOMP_SPINCOUNT"] = "1000"
    return "GOMP_SPINCOUNT=1000"
