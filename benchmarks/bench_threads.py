"""A job on a busy 2-core machine: how much it slows beside a second busy process, by OpenMP wait policy.

Issue 20: ``pick train`` ran at 0.12 s per step alone but 1.45 s per step while other processes
shared the 2 cores. PyTorch's CPU kernels run on OpenMP (GNU libgomp) threads, which by default
*spin* while they wait for work; two processes that each spin on both cores take each other's
time slices. ``napari_cryoalign`` now sets ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep)
unless the user set it (``napari_cryoalign/_threads.py``).

Protocol: the measured job is real picker training (``train_picker_job``, the default network and
crop, on a 64 x 128 x 128 noise tomogram with 8 labels), timed per step after a warm-up, in a fresh
process for each setting (the policy is read when libgomp loads). The second busy process is real
work as well: exhaustive alignment of 32^3 particles in a loop (``align_exhaustive``), with 2 torch
threads, started a few seconds before. Settings: libgomp's default wait policy (spin, then sleep) or
passive, for both processes; the measured job with 2 or 1 threads. Each row: seconds per step alone, beside
the busy process, and the slowdown (a fair share of 2 cores between two busy processes is 2x).

    .venv/bin/python benchmarks/bench_threads.py --out docs/benchmarks/threads.json

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_STEP = r"""
import sys, time, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from napari_cryoalign.backend.picking.train import train_picker_job
from napari_cryoalign.backend.jobs import run_job
rng = np.random.default_rng(0)
tomo = rng.normal(size=(64, 128, 128)).astype(np.float32)
labels = rng.uniform([16, 16, 16], [112, 112, 48], size=(8, 3))
kw = dict(diameter_angstrom=100.0, voxel_size=10.0, seed=0, device="cpu")
run_job(train_picker_job(tomo, labels, iterations=5, **kw), progress=False)  # warm-up
n = int(sys.argv[2])
t = time.perf_counter()
run_job(train_picker_job(tomo, labels, iterations=n, **kw), progress=False)
print((time.perf_counter() - t) / n)
"""

_BUSY = r"""
import numpy as np, torch
torch.set_num_threads(2)
from napari_cryoalign.backend.align.exhaustive import align_exhaustive
from napari_cryoalign.backend.simulate.structures import load_structure_map
ref, _ = load_structure_map("ribosome", voxel_size_angstrom=12.0, box=32)
p = np.random.default_rng(1).normal(size=(8, 32, 32, 32)).astype(np.float32)
while True:
    align_exhaustive(p, ref, angular_step_deg=30.0, device="cpu")
"""


def _env(policy: str) -> dict:
    """``"default"``: libgomp's own (spin, then sleep), as before; ``"passive"``: what the package sets now."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    env["CRYOALIGN_OMP_WAIT_POLICY"] = "unset" if policy != "passive" else "passive"  # napari_cryoalign/_threads.py
    if policy.startswith("spin"):  # e.g. "spin10000": spin that many times, then sleep
        env["GOMP_SPINCOUNT"] = policy[4:]
    return env


def _step_time(threads: int, steps: int, policy: str) -> float:
    out = subprocess.run([sys.executable, "-c", _STEP, str(threads), str(steps)], env=_env(policy), check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="training steps timed per setting (default 40)")
    ap.add_argument("--policies", default="default,passive",
                    help="default (libgomp's), passive, spinN (GOMP_SPINCOUNT=N); comma-separated")
    ap.add_argument("--threads", default="2,1", help="threads of the measured job, comma-separated")
    ap.add_argument("--out", default=None, help="JSON results")
    args = ap.parse_args(argv)
    rows = []
    for policy in args.policies.split(","):
        for threads in [int(t) for t in args.threads.split(",")]:
            alone = _step_time(threads, args.steps, policy)
            busy = subprocess.Popen([sys.executable, "-c", _BUSY], env=_env(policy), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                time.sleep(8.0)
                shared = _step_time(threads, args.steps, policy)
            finally:
                busy.kill()
                busy.wait()
            row = {"policy": policy, "threads": threads, "alone_s_per_step": round(alone, 4),
                   "beside_busy_s_per_step": round(shared, 4), "slowdown": round(shared / alone, 2)}
            rows.append(row)
            print(f"{policy:8s} {threads} threads: alone {alone:.3f} s/step, beside a busy 2-thread process "
                  f"{shared:.3f} s/step ({shared / alone:.1f}x)", flush=True)
    res = {"protocol": __doc__.split("Protocol:")[1].split("    .venv")[0].strip(), "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
