"""Why unsupervised fine-tuning hurt the shipped learned aligner, and what mends it (issue 18).

For each **tuning** structure (procedural seeds 10700, 10701: never trained on, and not those that judge the
fine-tuning, 10300-10302 of ``bench_align_finetune.py``), a user's set of 160 particles (128 train, the
last 32 held out) and a separate test set of 60 are simulated at 12 Å/voxel, 32³, SNR 0.1, CTF 5 µm,
±60°, shifts ±3 voxels. The shipped weights are fine-tuned without poses against the structure's map,
``--chunks`` chunks of 6 epochs (48 steps), with the unsupervised term maximising

* ``imputed``: Gum-Net's imputed correlation (the default until 2026-12-07), or
* ``constrained``: the correlation over the Fourier region both volumes measured (the default since),

no held-out selection (``validation=0``: the raw course of training). After each chunk the network
alone aligns the test particles (mean Frobenius, median angle: the truth) and the held-out and
training particles (their mean wedge-aware score: what a user can see without poses).

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diag_align_finetune.py [--variants imputed,constrained]

Writes ``docs/benchmarks/align_finetune_diagnosis.json`` and prints one line per chunk.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_cryoalign.backend.align.learned import align_learned, load_default_model
from napari_cryoalign.backend.align.learned_train import train_job
from napari_cryoalign.backend.geometry import geodesic_angle_deg, matrix_distance
from napari_cryoalign.backend.jobs import run_job
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms
from napari_cryoalign.io import write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "align_finetune_diagnosis.json"
TUNING = (10700, 10701)


def _judge(model, s, idx=None) -> dict:
    v = s.volumes if idx is None else s.volumes[idx]
    truth = s.rotations if idx is None else s.rotations[idx]
    res = align_learned(v, s.references[0], particle_masks=s.mask, model=model)
    g = geodesic_angle_deg(res.rotations, truth)
    return {"frobenius_mean": float(matrix_distance(res.rotations, truth).mean()),
            "geodesic_median_deg": float(np.median(g)), "score_mean": float(res.scores.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="imputed,constrained")
    ap.add_argument("--structures", default=",".join(str(s) for s in TUNING))
    ap.add_argument("--chunks", type=int, default=10, help="chunks of 6 epochs (48 steps of 16 pairs)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    kw = dict(box=32, voxel_size_angstrom=12.0, snr=0.1, defocus_um=5.0)
    fit, held = np.arange(128), np.arange(128, 160)
    runs = []
    for seed in (int(s) for s in args.structures.split(",")):
        assert seed >= 10000, "held-out procedural seeds only"
        train = simulate_subtomograms([f"procedural:{seed}"], n_per_class=160, seed=1, **kw)
        test = simulate_subtomograms([f"procedural:{seed}"], n_per_class=60, seed=2, **kw)
        for variant in args.variants.split(","):
            model = load_default_model()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            curve = [{"step": 0, "test": _judge(model, test), "held_out": _judge(model, train, held),
                      "train": _judge(model, train, fit)}]
            t0, step = time.perf_counter(), 0
            for c in range(args.chunks):
                r = run_job(train_job(train.volumes[fit], references=train.references[0], particle_masks=train.mask,
                                      model=model, epochs=6, lr=1e-4, optimizer=opt, seed=c, correlation=variant,
                                      validation=0.0), progress=False)
                step += r.steps
                curve.append({"step": step, "seconds": time.perf_counter() - t0, "loss": float(r.epoch_losses[-1]),
                              "test": _judge(model, test), "held_out": _judge(model, train, held),
                              "train": _judge(model, train, fit)})
                p = curve[-1]
                print(f"{seed} {variant} step {step}: loss {p['loss']:.4f}; test Frobenius "
                      f"{p['test']['frobenius_mean']:.3f} (median {p['test']['geodesic_median_deg']:.1f}°); score "
                      f"held-out {p['held_out']['score_mean']:.4f}, train {p['train']['score_mean']:.4f}", flush=True)
            runs.append({"structure": f"procedural:{seed}", "correlation": variant, "curve": curve})
    write_json(args.out, {"command": "OMP_NUM_THREADS=1 python benchmarks/diag_align_finetune.py",
                          "date": time.strftime("%Y-%m-%d"), "torch_threads": torch.get_num_threads(),
                          "snr": 0.1, "voxel_size_angstrom": 12.0, "n_train": 128, "n_held_out": 32, "n_test": 60,
                          "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
