"""Joint alignment + clustering accuracy and speed (Jim-Net protocol) against the classical baseline.

Protocol (Zeng, Howe & Xu, ICCV 2021, on this project's simulator): five structures (ribosome,
cct, mtor, ruvab, dengue_e_fab), 32³ boxes at 12 Å, ±60° tilt range (a 30° missing wedge), CTF at
5 µm, random rotations (uniform on SO(3)) and shifts (uniform in ±3 voxels per axis), SNR 100,
0.1, 0.05, 0.03, 0.01, ``--n-per-class`` particles of each structure, shuffled. Each method sorts
the set into 5 classes without labels.

Reported per SNR and method:
* clustering accuracy after Hungarian matching of predicted to true labels, overall and per
  structure, and the v-measure;
* alignment errors within classes, for the particles of correctly matched classes: a class
  average is an arbitrary rotation ``Q_c`` of the true map, so ``A_i ~ T_i Q_c`` (``T_i`` the true
  matrix); ``Q_c`` is the chordal mean of ``T_i^T A_i`` over the class, and the error of particle
  ``i`` is ``|| A_i - T_i Q_c ||_F`` (Gum-Net / Jim-Net's metric) and its geodesic angle; the
  translation error is ``|o_i - o_true_i - T_i u_c|`` in voxels with ``u_c`` the class's mean
  offset (the average's own centre);
* wall-clock seconds, and seconds per 1000 subtomograms extrapolated linearly (every step is
  linear in the number of particles at a fixed number of classes).

Goals (issue 6): >= 99 % at SNR 0.1, >= 97 % at 0.05, >= 88 % at 0.03. Jim-Net (paper, Tables
S6-S10): 99.7-100 % at 0.1, 94.8-99.4 % at 0.05, 73.8-98.5 % at 0.03, 36-58 % at 0.01.

Writes docs/benchmarks/cluster.json (``--out`` to change).
Run:  .venv/bin/python benchmarks/bench_cluster.py [--n-per-class 20] [--snrs 0.1] [--methods joint,classical]
Runs side by side (one torch thread each), then merged into the docs JSON and printed as the
table in docs/cluster.md::

    .venv/bin/python benchmarks/bench_cluster.py --snrs 0.03 --threads 1 --out /tmp/a.json
    .venv/bin/python benchmarks/bench_cluster.py --snrs 0.05 --threads 1 --out /tmp/b.json
    .venv/bin/python benchmarks/bench_cluster.py --merge /tmp/a.json /tmp/b.json   # into --out
    .venv/bin/python benchmarks/bench_cluster.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_cryoalign.backend.align.average import fsc_report
from napari_cryoalign.backend.align.exhaustive import align_exhaustive
from napari_cryoalign.backend.cluster.classify import MIN_CLASS_FRACTION, SEARCH_FREQUENCY, cluster_subtomograms
from napari_cryoalign.backend.cluster.gmm import clustering_accuracy, v_measure
from napari_cryoalign.backend.geometry import align_particle_to_reference, geodesic_angle_deg, matrix_distance
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms
from napari_cryoalign.io import write_json

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "cluster.json"
FIVE = ["ribosome", "cct", "mtor", "ruvab", "dengue_e_fab"]
SNRS = [100.0, 0.1, 0.05, 0.03, 0.01]
GOALS = {0.1: 0.99, 0.05: 0.97, 0.03: 0.88}
JIMNET = {100.0: (1.0, 1.0), 0.1: (0.988, 1.0), 0.05: (0.948, 0.994), 0.03: (0.738, 0.985), 0.01: (0.36, 0.583)}


def _chordal_mean(rots: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(rots.sum(0))
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def within_class_errors(sset, res, mapping: dict) -> dict:
    """Rotation (Frobenius, degrees) and translation (voxels) errors of particles in correctly matched classes."""
    true_rot = np.asarray(sset.rotations)
    true_ori = np.asarray(sset.origins_angstrom) / sset.voxel_size_angstrom
    est_rot = np.asarray(res.alignment.rotations)
    est_ori = np.asarray(res.alignment.origins_voxels)
    fro, deg, trans = [], [], []
    for c in range(res.n_classes):
        t = mapping.get(c)
        idx = np.flatnonzero((res.classes == c) & (sset.classes == t)) if t is not None else []
        if len(idx) < 2:
            continue
        q = _chordal_mean(np.einsum("nji,njk->nik", true_rot[idx], est_rot[idx]))
        expect = true_rot[idx] @ q
        fro += list(matrix_distance(est_rot[idx], expect))
        deg += list(geodesic_angle_deg(est_rot[idx], expect))
        d = est_ori[idx] - true_ori[idx]
        u = np.einsum("nji,nj->ni", true_rot[idx], d).mean(0)
        trans += list(np.linalg.norm(d - np.einsum("nij,j->ni", true_rot[idx], u), axis=1))
    if not fro:
        return {"n": 0}
    return {"n": len(fro), "rotation_frobenius_mean": float(np.mean(fro)), "rotation_frobenius_std": float(np.std(fro)),
            "rotation_deg_median": float(np.median(deg)), "translation_voxels_mean": float(np.mean(trans)),
            "translation_voxels_std": float(np.std(trans))}


def averages_vs_truth(sset, res, mapping: dict) -> dict:
    """FSC 0.143 and 0.5 (Å) of each class average against the true map of the structure it is matched to (the
    average put onto the map by an exhaustive search first); ``{structure: {"fsc0143": Å, "fsc05": Å}}``."""
    out = {}
    vox = sset.voxel_size_angstrom
    for c in range(res.n_classes):
        t = mapping.get(c)
        if t is None or not np.any(res.classes == c):
            continue
        ref = np.asarray(sset.references[t - 1])
        a = align_exhaustive(res.averages[c][None], ref, angular_step_deg=30.0)
        placed = align_particle_to_reference(res.averages[c], a.rotations[0], a.origins_voxels[0])
        f = fsc_report(placed, ref, voxel_size_angstrom=vox)
        out[sset.class_names[t - 1]] = {"fsc0143": float(f.resolution_0143), "fsc05": float(f.resolution_05)}
    return out


def run_one(sset, method: str, args) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    extra = {"search_frequency": args.search_frequency} if method == "joint" else {}
    res = cluster_subtomograms(sset.volumes, n_classes=len(sset.class_names), method=method,
                               particle_masks=sset.mask, voxel_size_angstrom=sset.voxel_size_angstrom,
                               iterations=args.iterations, init_iterations=args.init_iterations,
                               refine_levels=args.refine_levels, angular_step_deg=args.angular_step,
                               min_class_fraction=args.min_class_fraction, global_rounds=args.global_rounds,
                               reseed=args.reseed, seed=args.seed, device=args.device, **extra)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    acc = clustering_accuracy(sset.classes, res.classes)
    n = len(sset.classes)
    return {
        "method": method,
        "n": n,
        "accuracy": acc.accuracy,
        "per_structure": {sset.class_names[t - 1]: v for t, v in acc.per_class.items()},
        "v_measure": v_measure(sset.classes, res.classes),
        "class_sizes": res.class_sizes.tolist(),
        "within_class_alignment": within_class_errors(sset, res, acc.mapping),
        "averages_vs_truth_angstrom": averages_vs_truth(sset, res, acc.mapping),
        "iterations": [dict(h) for h in res.history],
        "seconds": secs,
        "cpu_seconds": cpu,  # CPU time of the process (all its threads): less sensitive to a shared machine
        "seconds_per_1000_extrapolated": secs * 1000.0 / n,
    }


def _row_key(row: dict, default_n: int | None = None) -> tuple:
    """What identifies a benchmark row: (SNR, method, particles per structure, re-seeding threshold,
    globally searched rounds, rounds, re-seeding rule, search band, rounds of the first averages,
    refinement levels, data seed, structures). Rows from before a setting existed used: the "worst" rule,
    band 0.5 (full box), seed 0, the five structures; their rounds of the first averages and refinement
    levels are None (read off the docs' commands)."""
    st = row.get("settings", {})
    return (float(row["snr"]), row["method"], int(row.get("n_per_class", default_n or 0)),
            float(st.get("min_class_fraction", 0.2)), int(st.get("global_rounds", 1)), st.get("iterations"),
            st.get("reseed", "worst"), float(st.get("search_frequency") or 0.5), st.get("init_iterations"),
            st.get("refine_levels"), int(st.get("seed", 0)), tuple(row.get("structures", FIVE)))


def merge_results(old: dict, new: dict) -> dict:
    """``new`` with the rows of ``old`` that ``new`` does not replace (same :func:`_row_key`) kept before its own."""
    old_n = old.get("protocol", {}).get("n_per_class")
    new_n = new.get("protocol", {}).get("n_per_class")
    rows = [dict(r, n_per_class=r.get("n_per_class", new_n)) for r in new.get("results", [])]
    new_keys = {_row_key(r) for r in rows}
    kept = [dict(r, n_per_class=r.get("n_per_class", old_n)) for r in old.get("results", [])
            if _row_key(r, old_n) not in new_keys]
    return dict(new, results=kept + rows, commands=old.get("commands", []) + new.get("commands", []))


def table(results: list[dict]) -> str:
    """The markdown table of docs/cluster.md, one line per row, sorted by SNR (high first), method, size."""
    head = ("| SNR | method | re-seeding (threshold, rule) | rounds (global) | n | accuracy | per structure ("
            + ", ".join(FIVE) + ") | within-class rot. (Frobenius, median °) | trans. (vox) | seconds | "
            "min per 1000 (extrapolated) |")
    lines = [head, "|" + "---|" * 11]
    for r in sorted(results, key=lambda r: (-float(r["snr"]), r["method"], r.get("n_per_class", 0),
                                            r.get("settings", {}).get("min_class_fraction", 0.2),
                                            r.get("settings", {}).get("global_rounds", 1),
                                            r.get("settings", {}).get("reseed", "worst"))):
        ali = r["within_class_alignment"]
        st = r.get("settings", {})
        per = ", ".join(f"{100 * r['per_structure'][k]:.0f}" for k in FIVE if k in r["per_structure"])
        mcf = ("-" if r["method"] == "classical"
               else f"{st.get('min_class_fraction', 0.2):g}, {st.get('reseed', 'worst')}")
        rounds = "-" if r["method"] == "classical" else (
            f"{len(r['iterations'])} of {st.get('iterations', '?')} ({st.get('global_rounds', 1)})"
            if "iterations" in r else f"{st.get('iterations', '?')} ({st.get('global_rounds', 1)})")
        rot = (f"{ali['rotation_frobenius_mean']:.2f} ± {ali['rotation_frobenius_std']:.2f}, "
               f"{ali['rotation_deg_median']:.0f}°") if ali.get("n") else "-"
        trans = f"{ali['translation_voxels_mean']:.2f}" if ali.get("n") else "-"
        lines.append(f"| {float(r['snr']):g} | {r['method']} | {mcf} | {rounds} | {r['n']} | "
                     f"**{100 * r['accuracy']:.0f} %** | "
                     f"{per} | {rot} | {trans} | {r['seconds']:.0f} | {r['seconds_per_1000_extrapolated'] / 60:.0f} |")
    return "\n".join(lines)


def speed_table(results: list[dict]) -> str:
    """The markdown table of docs/cluster.md "Defaults and speed": one line per row, in the file's order."""
    lines = ["| settings | SNR | seed | n (K) | accuracy | per structure | class averages vs truth, FSC 0.143 (Å) | "
             "rounds | seconds, wall (CPU) | load before | s per particle (CPU) |", "|" + "---|" * 11]
    for r in results:
        names = list(r["per_structure"])
        per = ", ".join(f"{k} {100 * r['per_structure'][k]:.0f}" for k in names)
        fsc = r.get("averages_vs_truth_angstrom", {})
        fsc_s = ", ".join(f"{fsc[k]['fsc0143']:.0f}" for k in names if k in fsc) or "-"
        cpu = f"{r['cpu_seconds']:.0f}" if "cpu_seconds" in r else "-"
        per_p = (f"{r['cpu_seconds'] / r['n']:.2f}" if "cpu_seconds" in r else f"{r['seconds'] / r['n']:.2f} (wall)")
        load = f"{r['load_average_before'][0]:.1f}" if r.get("load_average_before") else "-"
        lines.append(f"| {r.get('label', '-')} | {float(r['snr']):g} | {r.get('settings', {}).get('seed', 0)} | "
                     f"{r['n']} ({len(names)}) | **{100 * r['accuracy']:.1f} %** | {per} | {fsc_s} | "
                     f"{len(r.get('iterations', []))} | {r['seconds']:.0f} ({cpu}) | {load} | {per_p} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-per-class", type=int, default=100)
    ap.add_argument("--snrs", default=",".join(str(s) for s in SNRS))
    ap.add_argument("--methods", default="joint,classical")
    ap.add_argument("--structures", default=",".join(FIVE))
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--init-iterations", type=int, default=2)
    ap.add_argument("--refine-levels", type=int, default=2)
    ap.add_argument("--angular-step", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--min-class-fraction", type=float, default=MIN_CLASS_FRACTION,
                    help=f"joint: re-seeding threshold (default: the backend's, {MIN_CLASS_FRACTION:g})")
    ap.add_argument("--reseed", choices=("split", "worst"), default="split",
                    help="joint: re-seeding rule (default split, the backend's)")
    ap.add_argument("--global-rounds", type=int, default=1,
                    help="joint: rounds in which every class is searched globally (default 1, the backend's)")
    ap.add_argument("--search-frequency", type=float, default=SEARCH_FREQUENCY,
                    help=f"joint: highest frequency searched, cycles/voxel, on cropped volumes (default: the "
                    f"backend's, {SEARCH_FREQUENCY:g}; 0.5 = full box, the behaviour before 2026-12-05)")
    ap.add_argument("--label", default=None, help="a name for these settings in the rows (e.g. 'defaults')")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--replace", action="store_true",
                    help="overwrite the JSON; by default rows with another key (_row_key: SNR, method, n per class, "
                    "threshold, rounds, re-seeding rule) are kept")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="merge the rows of these result files (runs done side by side) into --out and stop")
    ap.add_argument("--table", action="store_true",
                    help="print the rows of --out as the markdown table of docs/cluster.md")
    ap.add_argument("--speed-table", action="store_true",
                    help="print the rows of --out as the table of docs/cluster.md 'Defaults and speed'")
    args = ap.parse_args(argv)
    path = Path(args.out)
    if args.table or args.speed_table:
        print((speed_table if args.speed_table else table)(json.loads(path.read_text())["results"]))
        return 0
    if args.merge:
        out = json.loads(path.read_text()) if path.is_file() and not args.replace else {"results": [], "commands": []}
        for f in args.merge:
            out = merge_results(out, json.loads(Path(f).read_text()))
        print(f"wrote {write_json(path, out, overwrite=True)} ({len(out['results'])} rows)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    structures = args.structures.split(",")
    snrs = [float(s) for s in args.snrs.split(",")]
    methods = args.methods.split(",")
    rows = []
    for snr in snrs:
        sset = simulate_subtomograms(structures, n_per_class=args.n_per_class, box=args.box, voxel_size_angstrom=12.0,
                                     snr=snr, tilt_range_deg=(-60.0, 60.0), max_shift_voxels=3.0, defocus_um=5.0,
                                     seed=args.seed)
        for method in methods:
            row = {"snr": snr, "n_per_class": args.n_per_class, "structures": structures, "label": args.label,
                   "settings": {"iterations": args.iterations, "init_iterations": args.init_iterations,
                                "refine_levels": args.refine_levels, "angular_step_deg": args.angular_step,
                                "seed": args.seed, "torch_threads": torch.get_num_threads(),
                                "min_class_fraction": args.min_class_fraction,
                                "global_rounds": args.global_rounds, "reseed": args.reseed,
                                "search_frequency": args.search_frequency if method == "joint" else None},
                   "load_average_before": os.getloadavg(), **run_one(sset, method, args)}
            rows.append(row)
            ali = row["within_class_alignment"]
            print(f"SNR {snr:g} {method:9s} n={row['n']} accuracy {100 * row['accuracy']:.1f} % "
                  f"(per structure {', '.join(f'{k} {100 * v:.0f}' for k, v in row['per_structure'].items())}) "
                  f"rot {ali.get('rotation_frobenius_mean', float('nan')):.2f} trans "
                  f"{ali.get('translation_voxels_mean', float('nan')):.2f} vox, {row['seconds']:.0f} s "
                  f"({row['seconds_per_1000_extrapolated'] / 60:.0f} min per 1000)", flush=True)
    out = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "device": args.device, "torch": torch.__version__,
                    "load_average_at_end": os.getloadavg()},
        "protocol": {"structures": structures, "box": args.box, "voxel_size_angstrom": 12.0,
                     "tilt_range_deg": [-60, 60], "defocus_um": 5.0, "max_shift_voxels": 3.0,
                     "n_per_class": args.n_per_class, "seed": args.seed, "iterations": args.iterations,
                     "init_iterations": args.init_iterations, "refine_levels": args.refine_levels,
                     "angular_step_deg": args.angular_step},
        "goals": {str(k): v for k, v in GOALS.items()},
        "jimnet_paper_range_over_structures": {str(k): list(v) for k, v in JIMNET.items()},
        "results": rows,
    }
    out["commands"] = [" ".join(argv if argv is not None else sys.argv[1:])]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and not args.replace:
        out = merge_results(json.loads(path.read_text()), out)
    print(f"wrote {write_json(path, out, overwrite=True)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
