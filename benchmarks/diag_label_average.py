"""The labels' average of a picking scenario, as the look-alike search and the shape check make it: how well its two
half averages agree.

The shape check (:mod:`napari_cryoalign.backend.picking.shape_check`) is not made when the half averages correlate
below ``MIN_HALF_MAP_CORRELATION``; this prints that correlation and the half maps' FSC resolution for the labels
``bench_picking.py`` uses (training tomogram seed 11, the first 10 % of the targets in the permutation of
``default_rng(0)``), with the search's own settings (:func:`~napari_cryoalign.backend.picking.lookalikes.
lookalike_negatives_job`: the particle diameter of the benchmark, tilt range ±60°).

Usage::

    .venv/bin/python benchmarks/diag_label_average.py --scenarios lookalike,lookalike-cct,lookalike-mtor,cellular \
        --threads 1 --out docs/benchmarks/picking_label_average.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "src"))

import bench_picking as B  # noqa: E402

from napari_cryoalign.backend.picking.label_template import label_template  # noqa: E402
from napari_cryoalign.backend.picking.shape_check import MIN_HALF_MAP_CORRELATION, half_map_correlation  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="lookalike,lookalike-cct,lookalike-mtor,cellular")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"command": "python benchmarks/diag_label_average.py " + " ".join(sys.argv[1:]),
           "min_half_map_correlation": MIN_HALF_MAP_CORRELATION, "scenarios": {}}
    for scenario in args.scenarios.split(","):
        t0 = time.perf_counter()
        sim = B.simulate(11, scenario)
        target = B.is_target(sim, scenario)
        labels = B.training_labels(sim, scenario)
        radius = float(np.max(sim.truth.radii_voxels[target]))
        lt = label_template(sim.tomogram, labels, voxel_size=B.VOXEL, diameter_angstrom=2 * radius * B.VOXEL,
                            tilt_range_deg=(-60.0, 60.0))
        rho = half_map_correlation(lt)
        row = {"labels": int(len(labels)), "used": int(lt.n_used), "box": int(lt.box), "method": lt.method,
               "half_map_correlation": rho, "fsc_0.143_angstrom": lt.resolution_angstrom,
               "shape_check": bool(rho >= MIN_HALF_MAP_CORRELATION), "seconds": time.perf_counter() - t0}
        out["scenarios"][scenario] = row
        print(f"{scenario}: half averages correlate {rho:.3f}, FSC 0.143 at {lt.resolution_angstrom} Å, box {lt.box}: "
              f"shape check {'made' if row['shape_check'] else 'not made'}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
