"""The learned aligner's network alone at several data voxel sizes and boxes, with and without resampling the
particles to the model's working voxel size (``GumNetConfig.voxel_size``, issue 18).

Particles: ``simulate_subtomograms`` of procedural shapes, SNR 0.1, CTF 5 µm, ±60°, shifts ±3 voxels, 20 per
shape. ``--shapes validation`` (seeds 10100-10104: the training curve's held-out shapes, where the working voxel
size was chosen) or ``test`` (seeds 10000-10004: the held-out benchmark's shapes, judged once). Each model is
run as stored and with ``--working`` voxel sizes written into a copy of its architecture (the weights are the
same). Prints one line per (data, model, working voxel size) and writes ``--out`` (JSON).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diag_learned_voxel.py --model M.pt --working 8,10,12,14 \\
        --shapes validation --out docs/benchmarks/learned_voxel_validation.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_cryoalign.backend.align.gumnet import GumNet  # noqa: E402
from napari_cryoalign.backend.align.learned import align_learned, load_model  # noqa: E402
from napari_cryoalign.backend.geometry import geodesic_angle_deg, matrix_distance  # noqa: E402
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms  # noqa: E402
from napari_cryoalign.io import write_json  # noqa: E402

SHAPES = {"validation": range(10100, 10105), "test": range(10000, 10005)}
DATA = [(6.0, 32), (6.0, 48), (8.0, 32), (12.0, 32)]


def with_voxel(model: GumNet, voxel: float | None) -> GumNet:
    out = GumNet(replace(model.config, voxel_size=voxel))
    out.load_state_dict(model.state_dict())
    return out.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--working", default="12", help="working voxel sizes to try (Å, comma-separated)")
    ap.add_argument("--shapes", choices=sorted(SHAPES), default="validation")
    ap.add_argument("--n-per-shape", type=int, default=20)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    base = load_model(args.model)
    workings = [None] + [float(v) for v in args.working.split(",") if v]
    rows = []
    seed0 = 5 if args.shapes == "validation" else 7
    for vox, box in DATA:
        sets = [simulate_subtomograms([f"procedural:{s}"], n_per_class=args.n_per_shape, box=box,
                                      voxel_size_angstrom=vox, snr=args.snr, seed=seed0 + 100 * k)
                for k, s in enumerate(SHAPES[args.shapes])]
        for w in workings:
            if w is None and box != base.config.box:
                continue  # without resampling only the model's own box runs
            model = with_voxel(base, w)
            fro, ang = [], []
            t0 = time.perf_counter()
            for s in sets:
                r = align_learned(s.volumes, s.references[0], particle_masks=s.mask, model=model,
                                  voxel_size=vox if w is not None else None)
                fro.append(matrix_distance(r.rotations, s.rotations))
                ang.append(geodesic_angle_deg(r.rotations, s.rotations))
            fro, ang = np.concatenate(fro), np.concatenate(ang)
            row = {"data_voxel_angstrom": vox, "box": box, "working_voxel_angstrom": w, "n": int(fro.size),
                   "frobenius_mean": float(fro.mean()), "angle_median_deg": float(np.median(ang)),
                   "angle_mean_deg": float(ang.mean()), "fraction_below_30deg": float((ang < 30).mean()),
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"{vox:g} Å, box {box}, working voxel {w if w is not None else 'none (as given)'}: Frobenius "
                  f"{row['frobenius_mean']:.3f}, median {row['angle_median_deg']:.1f}°, "
                  f"within 30° {row['fraction_below_30deg']:.2f}", flush=True)
    if args.out:
        result = {"command": "python benchmarks/diag_learned_voxel.py " + " ".join(argv or sys.argv[1:]),
                  "model": args.model.name, "shapes": args.shapes, "seeds": list(SHAPES[args.shapes]),
                  "snr": args.snr, "torch_threads": torch.get_num_threads(), "rows": rows}
        write_json(args.out, result, overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
