"""Project the learned aligner's held-out curve to issue 18's goal (the network alone <= 0.62 Frobenius at SNR 0.1).

Reads training curves written by ``scripts/train_gumnet_default.py --curve-out`` (the held-out procedural shapes
10100-10109), puts them end to end (``FILE:OFFSET``: the steps the run started from), keeps the points of one
held-out set from ``--from-steps`` on, and fits two shapes of decline to the mean Frobenius ``F`` against the
total training steps ``t``:

* log-linear, ``F = a + b ln t`` (a steady gain per doubling of the steps);
* power law, ``ln F = c + d ln t`` (slower: the gain per doubling shrinks with ``F``).

Each gives the steps at which ``F`` reaches ``--goal``; a bootstrap over the points gives their spread (the
curve's sets are 40 particles each, so each point is noisy). Steps become CPU hours at the runs' own pace
(steps per second of wall time, one thread). A projection from one curve is a guess about how the curve goes
on, not a measurement; docs/align_learned.md says so where it is used.

``--bench FILE:STEPS`` (instead of ``--curve``) fits the user's path instead: the network alone at SNR 0.1 in
``bench_align_held_out.py``'s JSON files (the five held-out structures at 6 Å, resampled to the model's voxel
size), one point per file at the total steps of the weights it ran (``--pace`` steps per second, since those
files carry no training time).

    .venv/bin/python benchmarks/project_learned_curve.py \\
        --curve docs/benchmarks/align_learned_curriculum_curve.json:0 --curve CURVE23.json:5669 --from-steps 7100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from napari_cryoalign.io import write_json


def load(specs: list[str], name: str) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    steps, fro, pace = [], [], []
    for spec in specs:
        path, _, off = spec.rpartition(":")
        curve = json.loads(Path(path).read_text())["curve"]
        for p in curve:
            if name in p:
                steps.append(p["steps"] + float(off))
                fro.append(p[name]["frobenius_mean"])
        last = curve[-1]
        if last["seconds"] > 0:
            pace.append((float(last["steps"]), float(last["seconds"])))
    order = np.argsort(steps)
    return np.asarray(steps)[order], np.asarray(fro)[order], pace


def load_bench(specs: list[str], snr: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The network alone's mean Frobenius at ``snr`` in each ``bench_align_held_out.py`` JSON (``FILE:STEPS``)."""
    steps, fro = [], []
    for spec in specs:
        path, _, at = spec.rpartition(":")
        rows = [r for r in json.loads(Path(path).read_text())["summary"]
                if r["snr"] == snr and r["method"].startswith("learned (")]
        if len(rows) != 1:
            raise SystemExit(f"{path}: expected one 'learned (...)' row at SNR {snr:g}, found {len(rows)}")
        steps.append(float(at))
        fro.append(float(rows[0]["rotation_frobenius_mean"]))
    order = np.argsort(steps)
    return np.asarray(steps)[order], np.asarray(fro)[order]


def fits(t: np.ndarray, f: np.ndarray, goal: float) -> dict:
    out = {}
    b, a = np.polyfit(np.log(t), f, 1)
    out["log_linear"] = {"a": float(a), "b_per_ln_step": float(b),
                         "steps_to_goal": float(np.exp((goal - a) / b)) if b < 0 else float("inf")}
    d, c = np.polyfit(np.log(t), np.log(f), 1)
    out["power_law"] = {"c": float(c), "d": float(d),
                        "steps_to_goal": float(np.exp((np.log(goal) - c) / d)) if d < 0 else float("inf")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curve", action="append", default=[], metavar="FILE:OFFSET")
    ap.add_argument("--bench", action="append", default=[], metavar="FILE:STEPS",
                    help="bench_align_held_out.py JSON files and the total training steps of the weights each ran")
    ap.add_argument("--pace", type=float, default=None,
                    help="steps per second of one thread (with --bench; default: that of the --curve files)")
    ap.add_argument("--set", default="snr0.1_12A_ctf5", help="the held-out set of the curve (default SNR 0.1, 12 Å)")
    ap.add_argument("--from-steps", type=float, default=0.0, help="fit the points from this many total steps on")
    ap.add_argument("--goal", type=float, default=0.62)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.curve and not args.bench:
        raise SystemExit("give --curve FILE:OFFSET or --bench FILE:STEPS")
    if args.bench:
        t, f = load_bench(args.bench)
        pace = load(args.curve, args.set)[2] if args.curve else []
        if args.pace is not None:
            pace = [(args.pace, 1.0)]
        if not pace:
            raise SystemExit("--bench needs --pace or --curve files (their steps per second)")
        set_name = "user's path: bench_align_held_out.py, learned at SNR 0.1"
    else:
        t, f, pace = load(args.curve, args.set)
        set_name = args.set
    keep = t >= args.from_steps
    t, f = t[keep], f[keep]
    if len(t) < 3:
        raise SystemExit(f"{len(t)} points from {args.from_steps:g} steps on: at least 3 are needed")
    steps_per_s = sum(s for s, _ in pace) / sum(sec for _, sec in pace)
    res = fits(t, f, args.goal)
    rng = np.random.default_rng(0)
    boot = {"log_linear": [], "power_law": []}
    for _ in range(args.bootstrap):
        i = rng.integers(len(t), size=len(t))
        if len(np.unique(t[i])) < 3:
            continue
        for k, v in fits(t[i], f[i], args.goal).items():
            boot[k].append(v["steps_to_goal"])
    for k, v in res.items():
        arr = np.asarray(boot[k])
        lo, mid, hi = (float(np.percentile(arr, q, method="nearest")) for q in (10, 50, 90))  # inf: never reached
        v.update(bootstrap_steps_p10_p50_p90=[lo, mid, hi], finite_fraction=float(np.isfinite(arr).mean()),
                 cpu_hours_one_thread=v["steps_to_goal"] / steps_per_s / 3600.0,
                 more_steps_than_now=v["steps_to_goal"] - float(t[-1]),
                 more_cpu_hours_one_thread=(v["steps_to_goal"] - float(t[-1])) / steps_per_s / 3600.0)
        print(f"{k}: goal {args.goal} at {v['steps_to_goal']:.3g} steps (10-90 %: {lo:.3g}-{hi:.3g}), "
              f"{v['cpu_hours_one_thread']:.3g} CPU hours on one thread at {steps_per_s:.2f} steps/s in all, "
              f"{v['more_cpu_hours_one_thread']:.3g} more")
    result = {"command": "python benchmarks/project_learned_curve.py " + " ".join(argv or sys.argv[1:]),
              "set": set_name, "goal": args.goal, "points": [[float(a), float(b)] for a, b in zip(t, f)],
              "steps_per_second_one_thread": steps_per_s, "fits": res}
    print(json.dumps({"points": result["points"]}))
    if args.out:
        write_json(args.out, result, overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
