"""Alignment on structures nobody tuned on, through the command a user runs, with acryo side by side (issue 18).

Protocol (the independent test of issue 18): 32³ boxes at 6 Å, ±60° tilt range, CTF at 5 µm
(300 kV), shifts uniform in ±3 voxels, rotations uniform on SO(3), ``--n-per-class`` particles
(default 20) of each of five **held-out** procedurally generated structures
(``procedural:10000`` ... ``procedural:10004``; seeds >= 10000 are never used for training or
tuning, :mod:`napari_cryoalign.backend.simulate.procedural`). The settings of the exhaustive
search (CTF premultiplication, grid, refinement) were chosen on ``procedural:1..5`` and the
packaged structures; nothing here was tuned on these seeds. Each particle is aligned to the
noise-free map of its structure (the map a user would have: no CTF in it).

Methods, every one on the same particles in the same run:

* ``cryoalign align`` with its **defaults** (the user's path: the set is written to disk by
  ``write_subtomogram_set``, read back by the CLI; the STAR file carries ``rlnDefocusU/V``, so
  ``--ctf auto`` scores CTF-premultiplied particles);
* the same command with ``--ctf none`` (a STAR file without defocus: the previous default);
* ``--method learned`` and ``learned+refine`` with the shipped weights (at the SNRs of
  ``--learned-snrs``, default 0.1; ``--no-exhaustive`` runs the learned rows alone);
* **acryo 0.9.1** ``ZNCCAlignment`` (when importable; ``pip install --target DIR acryo==0.9.1
  "polars<1.33"`` and ``PYTHONPATH=DIR``), global + local: a 30° Euler grid over
  ±180°/±90°/±180° (1183 rotations), then the template rotated to the best pose and a local
  ±15° grid in 5° steps (343 rotations), max shift 6 voxels, tilt (-60, 60): once on the raw
  particles (what a user does) and once on the same CTF-premultiplied particles our default
  scores (the same information), on ``--acryo-per-class`` particles per structure.

Errors: rotation Frobenius norm of ``A_est - A_true`` (Gum-Net's metric), geodesic angle
(median, mean, number beyond 20°), translation in voxels. Time: seconds per particle, wall
clock around each method; torch threads as given (``--threads``, default 2).

Writes docs/benchmarks/align_held_out.json; ``--table`` prints the markdown table of docs/align.md.
Run::

    PYTHONPATH=/tmp/acryo_pkg .venv/bin/python benchmarks/bench_align_held_out.py
    .venv/bin/python benchmarks/bench_align_held_out.py --table
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_cryoalign.backend.ctf import ParticleCTF, ctf_premultiply
from napari_cryoalign.backend.geometry import (
    euler_to_matrix,
    geodesic_angle_deg,
    matrix_distance,
    rotate_volume,
)
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms, write_subtomogram_set

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "align_held_out.json"
HELD_OUT = [f"procedural:{s}" for s in range(10000, 10005)]
SNRS = [0.1, 0.05, 0.03, 0.01]
GOAL = {"rotation_frobenius_mean": 0.15, "max_angle_deg": 20.0, "seconds_per_particle": 1.5}
GUMNET = {0.1: (0.62, 2.41), 0.05: (0.87, 3.20), 0.03: (1.13, 4.29), 0.01: (1.50, 6.78)}
#: H-T align (Xu et al. 2012) as measured in the Gum-Net paper's Table 1 (rotation Frobenius, translation voxels)
HT_ALIGN = {0.1: (1.22, 4.76), 0.05: (1.93, 7.26), 0.03: (2.22, 8.86), 0.01: (2.38, 11.33)}


def _errors(rot, ori, true_rot, true_ori) -> dict:
    fro = matrix_distance(rot, true_rot)
    ang = geodesic_angle_deg(rot, true_rot)
    tr = np.linalg.norm(np.asarray(ori) - true_ori, axis=1)
    return {"n": int(len(fro)), "rotation_frobenius_mean": float(fro.mean()), "rotation_frobenius_std": float(fro.std()),
            "angle_deg_median": float(np.median(ang)), "angle_deg_mean": float(ang.mean()),
            "angle_deg_max": float(ang.max()), "n_beyond_20deg": int((ang > 20).sum()),
            "translation_voxels_mean": float(tr.mean())}


def _cli_align(star, reference, out, extra=()) -> tuple[np.ndarray, np.ndarray, float]:
    """``cryoalign align`` in this process (quiet); returns rotations, origins (voxels) and wall seconds."""
    from napari_cryoalign.cli import main
    from napari_cryoalign.io import euler_deg, origins_angstrom, read_particles

    argv = ["-q", "align", "--particles", str(star), "--reference", str(reference), "--out", str(out), *extra]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    dt = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"cryoalign {' '.join(argv)} exited {rc}")
    t = read_particles(out, require=("angles", "origins"))
    vox = float(t.voxel_size or 6.0)
    return euler_to_matrix(euler_deg(t)), origins_angstrom(t) / vox, dt


def _acryo():
    """acryo's global + local ZNCC search as ``fn(particles, reference) -> (rotations, origins)``, or None."""
    try:
        import acryo
        from acryo.alignment import ZNCCAlignment
    except ImportError:
        return None, None

    from bench_align import acryo_pose  # the one zyx -> (A, origin) conversion of both align benchmarks

    def one(model, vol, box):
        return acryo_pose(model.align(np.asarray(vol, np.float32), max_shifts=(6.0, 6.0, 6.0)), box)

    def run(particles, reference):
        box = particles.shape[-1]
        glob = ZNCCAlignment(np.asarray(reference, np.float32), rotations=((180, 30), (90, 30), (180, 30)),
                             tilt=(-60, 60))
        rot, ori = np.empty((len(particles), 3, 3)), np.empty((len(particles), 3))
        for i, vol in enumerate(particles):
            a_g, _ = one(glob, vol, box)
            # local: the template turned to the global pose, a +-15 degree grid around it
            turned = np.asarray(rotate_volume(np.asarray(reference, np.float32), a_g.astype(np.float32)))
            local = ZNCCAlignment(np.asarray(turned, np.float32), rotations=((15, 5), (15, 5), (15, 5)),
                                  tilt=(-60, 60))
            a_l, o_l = one(local, vol, box)
            rot[i], ori[i] = a_l @ a_g, o_l
        return rot, ori

    return run, acryo.__version__


def bench(*, n_per_class: int, snrs, acryo_per_class: int, threads: int, seed: int, learned: bool,
          model: str | None = None, learned_snrs=(0.1,), exhaustive: bool = True) -> dict:
    torch.set_num_threads(threads)
    acryo_fn, acryo_version = _acryo()
    if acryo_fn is None:
        print("acryo not importable: its rows are skipped (see the module docstring)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for snr in snrs:
            for k, name in enumerate(HELD_OUT):
                s = simulate_subtomograms([name], n_per_class=n_per_class, box=32, voxel_size_angstrom=6.0, snr=snr,
                                          seed=seed + 100 * k + int(round(1000 * snr)))
                d = Path(tmp) / f"{name.replace(':', '_')}_snr{snr:g}"
                files = write_subtomogram_set(s, d)
                ref = files["references"][0]
                variants = [("exhaustive (defaults: CTF from the STAR file)", []),
                            ("exhaustive --ctf none", ["--ctf", "none"])] if exhaustive else []
                if learned and any(abs(snr - x) < 1e-9 for x in learned_snrs):
                    which = "shipped weights" if model is None else f"weights {Path(model).name}"
                    extra = [] if model is None else ["--model", str(model)]
                    variants += [(f"learned ({which})", ["--method", "learned", *extra]),
                                 (f"learned+refine ({which})", ["--method", "learned+refine", *extra])]
                for label, extra in variants:
                    rot, ori, dt = _cli_align(files["star"], ref, d / f"out_{len(rows)}.star", extra)
                    rows.append({"snr": snr, "structure": name, "method": label, "seconds": dt, "n": s.n,
                                 "rotations": rot.tolist(), "origins": ori.tolist(),
                                 "true_rotations": s.rotations.tolist(), "true_origins": s.origins_voxels.tolist()})
                    e = _errors(rot, ori, s.rotations, s.origins_voxels)
                    print(f"SNR {snr:g} {name} {label}: frob {e['rotation_frobenius_mean']:.3f}, median "
                          f"{e['angle_deg_median']:.1f}°, >20°: {e['n_beyond_20deg']}, {dt / s.n:.2f} s/particle",
                          flush=True)
                if acryo_fn is not None and acryo_per_class > 0 and abs(snr - 0.1) < 1e-9:
                    sub = np.arange(min(acryo_per_class, s.n))
                    ctf = ParticleCTF(s.defocus_um[sub], voxel_size_angstrom=s.voxel_size_angstrom)
                    for label, vols in ((f"acryo {acryo_version} global+local", s.volumes[sub]),
                                        (f"acryo {acryo_version} global+local, CTF-premultiplied particles",
                                         ctf_premultiply(s.volumes[sub], ctf))):
                        t0 = time.perf_counter()
                        rot, ori = acryo_fn(vols, s.references[0])
                        dt = time.perf_counter() - t0
                        rows.append({"snr": snr, "structure": name, "method": label, "seconds": dt, "n": len(sub),
                                     "rotations": rot.tolist(), "origins": ori.tolist(),
                                     "true_rotations": s.rotations[sub].tolist(),
                                     "true_origins": s.origins_voxels[sub].tolist(), "acryo_subset": True})
                        e = _errors(rot, ori, s.rotations[sub], s.origins_voxels[sub])
                        print(f"SNR {snr:g} {name} {label}: frob {e['rotation_frobenius_mean']:.3f}, median "
                              f"{e['angle_deg_median']:.1f}°, {dt / len(sub):.1f} s/particle", flush=True)
    return {"rows": rows}


def summarize(doc: dict) -> list[dict]:
    """One line per (SNR, method) over the five structures; acryo's subset also scored for the default."""
    rows = doc["rows"]
    out = []
    keys = []
    for r in rows:
        if (r["snr"], r["method"]) not in keys:
            keys.append((r["snr"], r["method"]))
    for snr, method in keys:
        sel = [r for r in rows if r["snr"] == snr and r["method"] == method]
        rot = np.concatenate([np.asarray(r["rotations"]) for r in sel])
        ori = np.concatenate([np.asarray(r["origins"]) for r in sel])
        tr = np.concatenate([np.asarray(r["true_rotations"]) for r in sel])
        to = np.concatenate([np.asarray(r["true_origins"]) for r in sel])
        e = _errors(rot, ori, tr, to)
        e.update(snr=snr, method=method, seconds_per_particle=sum(r["seconds"] for r in sel) / len(rot))
        out.append(e)
        if method.startswith("acryo") and "premultiplied" not in method:
            # the default exhaustive search on the very particles acryo got (the first of each structure)
            dsel = [r for r in rows if r["snr"] == snr and r["method"].startswith("exhaustive (defaults")]
            m = [len(r["rotations"]) for r in sel]
            rot = np.concatenate([np.asarray(r["rotations"])[:k] for r, k in zip(dsel, m)])
            ori = np.concatenate([np.asarray(r["origins"])[:k] for r, k in zip(dsel, m)])
            tr = np.concatenate([np.asarray(r["true_rotations"])[:k] for r, k in zip(dsel, m)])
            to = np.concatenate([np.asarray(r["true_origins"])[:k] for r, k in zip(dsel, m)])
            e2 = _errors(rot, ori, tr, to)
            e2.update(snr=snr, method="exhaustive (defaults), the particles acryo got",
                      seconds_per_particle=float("nan"))
            out.append(e2)
    return out


def table(doc: dict) -> str:
    lines = ["| SNR | method | n | rot. Frobenius mean | median ° | mean ° | > 20° | trans. vox | s / particle |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in summarize(doc):
        sp = "-" if not np.isfinite(e["seconds_per_particle"]) else f"{e['seconds_per_particle']:.2f}"
        lines.append(f"| {e['snr']:g} | {e['method']} | {e['n']} | {e['rotation_frobenius_mean']:.3f} | "
                     f"{e['angle_deg_median']:.1f} | {e['angle_deg_mean']:.1f} | {e['n_beyond_20deg']} | "
                     f"{e['translation_voxels_mean']:.2f} | {sp} |")
    snrs = sorted({e["snr"] for e in summarize(doc)}, reverse=True)
    for name, figs in (("Gum-Net (paper, its own data)", GUMNET), ("H-T align (Gum-Net paper, its own data)", HT_ALIGN)):
        for snr in snrs:
            if snr in figs:
                lines.append(f"| {snr:g} | {name} | 5000 | {figs[snr][0]:.2f} | - | - | - | {figs[snr][1]:.2f} | - |")
    return "\n".join(lines)


def compare(doc: dict, base: dict) -> str:
    """Per particle, each learned+refine row of ``doc`` against the default exhaustive row of ``base`` on
    the same particles (same SNR and structure, the same true poses): particles more than 10° worse and
    better, and beyond 20° in each."""
    lines = ["| SNR | method | n | > 20° | exhaustive > 20° | > 10° worse than exhaustive | > 10° better |",
             "|---|---|---|---|---|---|---|"]
    for snr in sorted({r["snr"] for r in doc["rows"]}, reverse=True):
        for method in dict.fromkeys(r["method"] for r in doc["rows"] if r["snr"] == snr and "refine" in r["method"]):
            n = mine_far = base_far = worse = better = 0
            for r in (r for r in doc["rows"] if r["snr"] == snr and r["method"] == method):
                b = [x for x in base["rows"] if x["snr"] == snr and x["structure"] == r["structure"]
                     and x["method"].startswith("exhaustive (defaults")]
                if not b or not np.allclose(b[0]["true_rotations"], r["true_rotations"]):
                    continue
                a1 = geodesic_angle_deg(np.asarray(r["rotations"]), np.asarray(r["true_rotations"]))
                a0 = geodesic_angle_deg(np.asarray(b[0]["rotations"]), np.asarray(b[0]["true_rotations"]))
                n += a1.size
                mine_far, base_far = mine_far + int((a1 > 20).sum()), base_far + int((a0 > 20).sum())
                worse, better = worse + int((a1 - a0 > 10).sum()), better + int((a0 - a1 > 10).sum())
            if n:
                lines.append(f"| {snr:g} | {method} | {n} | {mine_far} | {base_far} | {worse} | {better} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-per-class", type=int, default=20)
    ap.add_argument("--snrs", default=",".join(f"{s:g}" for s in SNRS))
    ap.add_argument("--acryo-per-class", type=int, default=4, help="particles per structure given to acryo (slow)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the goal's setting)")
    ap.add_argument("--no-learned", action="store_true", help="skip the learned rows")
    ap.add_argument("--learned-snrs", default="0.1", help="SNRs of the learned rows (default 0.1; 'all' = --snrs)")
    ap.add_argument("--no-exhaustive", action="store_true", help="skip the exhaustive rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, metavar="MODEL.pt",
                    help="the learned rows with these weights (cryoalign align --model) instead of the shipped ones")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--table", action="store_true", help="print the table of --out")
    ap.add_argument("--compare", default=None, metavar="BASE.json",
                    help="with --table: also compare the learned+refine rows of --out, particle by particle, with "
                    "the default exhaustive rows of BASE.json (the same particles)")
    args = ap.parse_args(argv)
    if args.table:
        doc = json.loads(Path(args.out).read_text())
        print(table(doc))
        if args.compare:
            print()
            print(compare(doc, json.loads(Path(args.compare).read_text())))
        return 0
    t0 = time.perf_counter()
    load = os.getloadavg()
    snrs = [float(x) for x in args.snrs.split(",") if x]
    learned_snrs = snrs if args.learned_snrs == "all" else [float(x) for x in args.learned_snrs.split(",") if x]
    doc = bench(n_per_class=args.n_per_class, snrs=snrs, acryo_per_class=args.acryo_per_class, threads=args.threads,
                seed=args.seed, learned=not args.no_learned, model=args.model, learned_snrs=learned_snrs,
                exhaustive=not args.no_exhaustive)
    doc.update({
        "command": "python benchmarks/bench_align_held_out.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "protocol": {"structures": HELD_OUT, "held_out": "procedural seeds >= 10000: never trained or tuned on",
                     "tuned_on": "procedural:1..5 and the packaged structures (ribosome, mtor, dengue_e_fab)",
                     "box": 32, "voxel_size_angstrom": 6.0, "tilt_range_deg": [-60, 60], "defocus_um": 5.0,
                     "max_shift_voxels": 3.0, "n_per_class": args.n_per_class, "seed": args.seed,
                     "reference": "noise-free map of the particle's structure (no CTF)"},
        "goal": GOAL, "gumnet_paper": {f"{k:g}": {"rotation_frobenius": v[0], "translation_voxels": v[1]}
                                       for k, v in GUMNET.items()},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "torch": torch.__version__, "loadavg_before": load},
        "total_seconds": time.perf_counter() - t0,
    })
    doc["summary"] = summarize(doc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    os.replace(tmp, out)
    print(table(doc))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
