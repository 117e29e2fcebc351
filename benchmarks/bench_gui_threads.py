"""A job inside napari: how much the GUI thread slows it, and how much it slows the GUI (issue 20).

``bench_threads.py`` measures a job beside a second busy *process*. Inside napari the job runs in a
worker thread (``napari.qt.threading.thread_worker``, as every widget of this package does) of the
same process as the GUI thread, which draws the canvas whenever the user moves through the
tomogram. On 2 cores the job's 2 torch threads and the GUI thread compete.

Protocol: the measured job is real picker training (``train_picker_job``, the default network and crop, on a
64 x 128 x 128 noise tomogram with 8 labels), timed per step after a warm-up, in a fresh process per
setting, with the package's OpenMP setting (``GOMP_SPINCOUNT=1000``). Modes:

* ``plain``: the job in a Python thread, no Qt (the baseline);
* ``viewer``: a napari viewer (under Xvfb) showing a 64 x 256 x 256 tomogram, the job in a
  ``thread_worker`` whose yielded progress updates a label, as the widgets do; nobody touches the GUI;
* ``browse``: the same while a timer moves the viewer one z-slice every 40 ms (a user scrolling
  through the tomogram: every move redraws the canvas), and, every 10th move, the points layer of
  the picks is replaced (live picks).

Each row: seconds per training step, its slowdown against ``plain`` with the same threads, and in
``browse`` the GUI's side: the median and 95th-percentile interval between slice moves (40 ms asked;
longer means the viewer lags while the job runs) and the same for a run with no job.

    xvfb-run -a .venv/bin/python benchmarks/bench_gui_threads.py --out docs/benchmarks/gui_threads.json

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

_CHILD = r"""
import json, sys, threading, time
import numpy as np
mode, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import napari_cryoalign  # noqa: F401  (the package's OpenMP setting, before torch loads)
import torch
torch.set_num_threads(threads)
from napari_cryoalign.backend.jobs import run_job
from napari_cryoalign.backend.picking.train import train_picker_job
rng = np.random.default_rng(0)
tomo = rng.normal(size=(64, 128, 128)).astype(np.float32)
labels = rng.uniform([16, 16, 16], [112, 112, 48], size=(8, 3))
kw = dict(diameter_angstrom=100.0, voxel_size=10.0, seed=0, device="cpu")
run_job(train_picker_job(tomo, labels, iterations=5, **kw), progress=False)  # warm-up

def job():
    torch.set_num_threads(threads)  # the worker thread's own OpenMP setting
    t = time.perf_counter()
    if steps:
        yield from train_picker_job(tomo, labels, iterations=steps, **kw)
    else:
        time.sleep(4.0)
    return (time.perf_counter() - t) / max(steps, 1)

out = {"mode": mode, "threads": threads, "steps": steps}
if mode == "plain":
    box = {}
    th = threading.Thread(target=lambda: box.setdefault("s", run_job(job(), progress=False)))
    th.start()
    th.join()
    out["s_per_step"] = box["s"]
else:
    import napari
    from napari.qt.threading import thread_worker
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QLabel

    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(1).normal(size=(64, 256, 256)).astype(np.float32), name="tomogram")
    pts = viewer.add_points(np.zeros((0, 3)), name="picks")
    label = QLabel("")
    viewer.window.add_dock_widget(label, name="progress")
    ticks = []
    timer = QTimer()
    timer.setInterval(40)

    def tick():
        ticks.append(time.perf_counter())
        z = (viewer.dims.current_step[0] + 1) % 64
        viewer.dims.set_current_step(0, z)
        if len(ticks) % 10 == 0:
            pts.data = rng.uniform(0, [64, 256, 256], size=(50, 3))

    timer.timeout.connect(tick)
    worker = thread_worker(job)()
    worker.yielded.connect(lambda ev: label.setText(str(getattr(ev, "message", ""))[:80]))

    def done(s):
        out["s_per_step"] = s
        timer.stop()
        QTimer.singleShot(100, QApplication.instance().quit)

    worker.returned.connect(done)
    if mode == "browse":
        timer.start()
    worker.start()
    napari.run()
    if len(ticks) > 3:
        gaps = np.diff(ticks) * 1000.0
        out["gui_interval_ms_median"] = float(np.median(gaps))
        out["gui_interval_ms_p95"] = float(np.percentile(gaps, 95))
        out["gui_moves"] = len(ticks)
print("RESULT " + json.dumps(out))
"""


def _run(mode: str, threads: int, steps: int) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(threads), str(steps)], env=env, check=True,
                         capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="training steps timed per setting (default 40)")
    ap.add_argument("--threads", default="2,1", help="torch threads of the job, comma-separated")
    ap.add_argument("--out", default=None, help="JSON results")
    args = ap.parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        print("needs a display: run it under xvfb-run -a", file=sys.stderr)
        return 2
    rows = []
    gui_alone = _run("browse", 1, 0)  # the GUI's own pace while no job runs (4 s)
    print(f"no job: slice moves every {gui_alone['gui_interval_ms_median']:.1f} ms (median), "
          f"{gui_alone['gui_interval_ms_p95']:.1f} ms (95th percentile)", flush=True)
    for threads in [int(t) for t in args.threads.split(",")]:
        base = None
        for mode in ("plain", "viewer", "browse"):
            r = _run(mode, threads, args.steps)
            base = r["s_per_step"] if mode == "plain" else base
            row = {"mode": mode, "threads": threads, "s_per_step": round(r["s_per_step"], 4),
                   "slowdown": round(r["s_per_step"] / base, 2)}
            for k in ("gui_interval_ms_median", "gui_interval_ms_p95"):
                if k in r and mode == "browse":
                    row[k] = round(r[k], 1)
            rows.append(row)
            extra = (f", slice moves every {row['gui_interval_ms_median']} ms (median), "
                     f"{row['gui_interval_ms_p95']} ms (95th)" if "gui_interval_ms_median" in row else "")
            print(f"{threads} threads, {mode:6s}: {row['s_per_step']:.3f} s/step ({row['slowdown']:.2f}x){extra}",
                  flush=True)
    res = {"protocol": __doc__.split("Protocol:")[1].split("    xvfb-run")[0].strip(), "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d"), "gui_without_job": {k: round(v, 1) for k, v in gui_alone.items()
                                                                   if k.startswith("gui_interval")},
           "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
