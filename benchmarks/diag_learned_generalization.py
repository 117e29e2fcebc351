"""Why the shipped learned aligner fails on new structures (issue 18): structure and imaging conditions.

The shipped Gum-Net weights (grid head) are applied, network alone, to 20 particles (SNR 100)
of the packaged ribosome (one of its training structures) and of each of five held-out
procedural structures (``procedural:10000..10004``), at the training voxel size (12 Å) and at
6 Å, with the CTF (5 µm) and without. Chance level for comparison: the geodesic angle between
independent uniform rotations has **median 132.3°** and mean 126.5° (density ∝ 1 - cos θ;
mean Frobenius 2.40), from 2000 simulated pairs as well.

Writes docs/benchmarks/learned_generalization.json and prints a markdown table.
Run: ``.venv/bin/python benchmarks/diag_learned_generalization.py``
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from napari_cryoalign.backend.align.learned import align_learned, load_default_model
from napari_cryoalign.backend.geometry import geodesic_angle_deg, matrix_distance, random_rotations
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "learned_generalization.json"
HELD_OUT = [f"procedural:{s}" for s in range(10000, 10005)]


def main() -> int:
    torch.set_num_threads(1)
    model = load_default_model()
    rnd = geodesic_angle_deg(random_rotations(2000, seed=1), random_rotations(2000, seed=2))
    rows = [{"case": "chance (independent uniform rotations)", "n": 2000, "median_deg": float(np.median(rnd)),
             "mean_deg": float(rnd.mean()), "fraction_within_30deg": float((rnd < 30).mean()),
             "frobenius_mean": float(matrix_distance(random_rotations(2000, seed=1),
                                                     random_rotations(2000, seed=2)).mean())}]
    for label, structs in (("ribosome (training structure)", ["ribosome"]), ("held-out procedural", HELD_OUT)):
        for vox in (12.0, 6.0):
            for ctf in (True, False):
                errs, fro = [], []
                for st in structs:
                    s = simulate_subtomograms([st], n_per_class=20, box=32, voxel_size_angstrom=vox, snr=100.0, seed=5,
                                              defocus_um=5.0 if ctf else None)
                    r = align_learned(s.volumes, s.references[0], particle_masks=s.mask, model=model)
                    errs.append(geodesic_angle_deg(r.rotations, s.rotations))
                    fro.append(matrix_distance(r.rotations, s.rotations))
                e, f = np.concatenate(errs), np.concatenate(fro)
                rows.append({"case": f"{label}, {vox:g} Å, {'CTF 5 µm' if ctf else 'no CTF'}", "n": int(len(e)),
                             "median_deg": float(np.median(e)), "mean_deg": float(e.mean()),
                             "fraction_within_30deg": float((e < 30).mean()), "frobenius_mean": float(f.mean())})
                print(rows[-1], flush=True)
    lines = ["| case | n | median ° | mean ° | within 30° | Frobenius mean |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['n']} | {r['median_deg']:.0f} | {r['mean_deg']:.0f} | "
              f"{r['fraction_within_30deg']:.2f} | {r['frobenius_mean']:.2f} |" for r in rows]
    print("\n".join(lines))
    tmp = OUT.with_name(f".{OUT.name}.tmp")
    tmp.write_text(json.dumps({"command": "python benchmarks/diag_learned_generalization.py", "rows": rows},
                              indent=1) + "\n")
    os.replace(tmp, OUT)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
