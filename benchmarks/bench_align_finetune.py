"""Unsupervised fine-tuning of the learned aligner on a user's set (issue 18): before and after.

For each of three **held-out** procedural structures (default seeds 10303-10305: never trained or
tuned on; disjoint from the learning curve's 10100-10109, the benchmark's 10000-10004, the
fine-tuning diagnosis's 10700-10702 and 10300-10302, whose first run showed the held-out score
dipping for a few epochs before it rose and so informed ``--patience 0``), a user's set of
``--n-train`` particles and a separate test set of ``--n-test`` particles of the same structure
(another seed: no particle in both) are simulated at 12 Å/voxel, 32³, SNR ``--snr``, CTF 5 µm,
±60° tilts, shifts ±3 voxels, and written to disk. The user's path is run as a user runs it:

1. ``cryoalign align train --particles train.star --reference ref.mrc --model START.pt --out tuned.pt``
   with the **previous defaults** (``--correlation imputed --validation 0 --epochs 5``: Gum-Net's
   imputed correlation, no held-out particles, the last epoch kept), for comparison in the same run;
2. the same at the **defaults** (the constrained correlation; 20 % of the user's particles held out
   and scored after each epoch without poses, the best epoch kept if its rise is significant; 50
   epochs or 10 minutes, whichever ends first; batch 16, lr 1e-4), then
3. the defaults with ``--minutes M --epochs 1000 --patience 0`` (a time budget, no early stop: the
   held-out selection alone guards the result); ``--minutes 0`` skips this row.

Each model is judged on the **test** particles with the network alone (``align_learned``,
``candidates=1``): mean and median geodesic error, mean Frobenius, fraction below 30°. Chance:
mean 126.5°, median 132.3°, Frobenius 2.40.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_align_finetune.py [--model START.pt] [--minutes 3]

Writes ``docs/benchmarks/align_finetune.json`` (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_cryoalign.backend.align.learned import align_learned, load_default_model, load_model
from napari_cryoalign.backend.geometry import geodesic_angle_deg, matrix_distance
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms
from napari_cryoalign.cli import main as cli
from napari_cryoalign.io import write_mrc, write_subtomograms

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "align_finetune.json"
HELD_OUT = (10303, 10304, 10305)
VOXEL = 12.0


def _judge(model, s) -> dict:
    res = align_learned(s.volumes, s.references[0], particle_masks=s.mask, model=model)
    g = geodesic_angle_deg(res.rotations, s.rotations)
    return {"n": int(g.size), "geodesic_mean_deg": float(g.mean()), "geodesic_median_deg": float(np.median(g)),
            "frobenius_mean": float(matrix_distance(res.rotations, s.rotations).mean()),
            "fraction_below_30deg": float((g < 30).mean())}


def _simulate(seed, n, data_seed, snr):
    return simulate_subtomograms([f"procedural:{seed}"], n_per_class=n, box=32, voxel_size_angstrom=VOXEL, snr=snr,
                                 seed=data_seed, defocus_um=5.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="start from these weights (default: the shipped ones)")
    ap.add_argument("--minutes", type=float, default=5.0, help="the time-budget run: minutes of training per set")
    ap.add_argument("--n-train", type=int, default=160)
    ap.add_argument("--n-test", type=int, default=60)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--structures", default=",".join(str(s) for s in HELD_OUT))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    start = args.model
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in (int(s) for s in args.structures.split(",")):
            assert seed >= 10000, "held-out procedural seeds only"
            train = _simulate(seed, args.n_train, 1, args.snr)
            test = _simulate(seed, args.n_test, 2, args.snr)
            d = tmp / str(seed)
            d.mkdir()
            star = write_subtomograms(d / "train.star", train.volumes, voxel_size=VOXEL,
                                      euler_deg=np.zeros((len(train.volumes), 3)))  # no poses: unsupervised
            write_mrc(d / "ref.mrc", train.references[0], voxel_size=VOXEL)
            base = load_model(start) if start is not None else load_default_model()
            row = {"structure": f"procedural:{seed}", "before": _judge(base, test)}
            print(seed, "before", row["before"], flush=True)
            runs = [("previous defaults", ["--correlation", "imputed", "--validation", "0", "--epochs", "5"]),
                    ("defaults", [])]
            if args.minutes > 0:
                runs.append((f"{args.minutes:g} min", ["--minutes", f"{args.minutes:g}", "--epochs", "1000",
                                                       "--patience", "0"]))
            for label, extra in runs:
                out = d / f"tuned_{len(row)}.pt"
                cmd = ["-q", "align", "train", "--particles", str(star), "--reference", str(d / "ref.mrc"),
                       "--out", str(out)] + (["--model", str(start)] if start is not None else []) + extra
                t0 = time.perf_counter()
                assert cli(cmd) == 0
                seconds = time.perf_counter() - t0
                tuned = load_model(out)
                meta = getattr(tuned, "metadata", None) or {}
                row[label] = dict(_judge(tuned, test), best_epoch=meta.get("best_epoch"),
                                  validation_scores=meta.get("validation_scores"),
                                  epochs_run=None if meta.get("validation_scores") is None
                                  else len(meta["validation_scores"]) - 1, command="cryoalign " + " ".join(
                    c if not c.startswith(str(tmp)) else Path(c).name for c in cmd[1:]), seconds=seconds)
                print(seed, label, row[label], flush=True)
            rows.append(row)
    labels = ["before", "previous defaults", "defaults"] + ([f"{args.minutes:g} min"] if args.minutes > 0 else [])
    mean = {k: {m: float(np.mean([r[k][m] for r in rows])) for m in
                ("geodesic_mean_deg", "geodesic_median_deg", "frobenius_mean", "fraction_below_30deg")}
            for k in labels}
    for k in labels[1:]:
        mean[k]["seconds"] = float(np.mean([r[k]["seconds"] for r in rows]))
    res = {"command": "OMP_NUM_THREADS=1 python benchmarks/bench_align_finetune.py"
           + (f" --model {start.name}" if start else "") + f" --minutes {args.minutes:g}"
           + (f" --structures {args.structures}" if args.structures != ",".join(map(str, HELD_OUT)) else ""),
           "start_weights": str(start.name) if start else "shipped default", "snr": args.snr,
           "n_train": args.n_train, "n_test": args.n_test, "voxel_size_angstrom": VOXEL,
           "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "rows": rows, "mean": mean,
           "chance": {"geodesic_mean_deg": 126.5, "geodesic_median_deg": 132.3, "frobenius_mean": 2.40}}
    lines = ["| structure | model | mean ° | median ° | < 30° | Frobenius | training s | epoch kept |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows + [dict(structure=f"mean of {len(rows)}", **mean)]:
        for k in labels:
            v = r[k]
            lines.append(f"| {r['structure']} | {k} | {v['geodesic_mean_deg']:.1f} | {v['geodesic_median_deg']:.1f} | "
                         f"{v['fraction_below_30deg']:.2f} | {v['frobenius_mean']:.2f} | "
                         f"{v.get('seconds', 0):.0f} | {v.get('best_epoch', '')} / {v.get('epochs_run', '')} |")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
