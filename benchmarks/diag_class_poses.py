"""Why a class average misses its goal: is it the data or the reference-free start? (issue 20, mTOR)

For one class of a ``cryoalign workflow`` run on simulated data (``bench_workflow.py``), this takes the
class's particles (the workflow's picks, boxes as the workflow cut them) and reports, against the true
poses (:func:`napari_cryoalign.backend.workflow.pose_errors_deg`, C1):

* **oracle**: each particle aligned to the *true* map low-passed to 30 / 40 / 60 / 80 Å
  (``align_exhaustive`` at the workflow's box and wedge): can these particles be aligned at all, and
  from how coarse a reference?
* **reference-free**: the workflow's own reference-free average (step 4's settings) on the class alone,
  and the same from a random-orientation start;
* **objective**: the mean alignment score of the particles against their own average, at the oracle
  poses and at the reference-free ones (is the right answer the better one by the score the search
  maximises?), and each average's FSC 0.143 against the true map.

    .venv/bin/python benchmarks/bench_workflow.py --seeds 101 --work /tmp/bw
    .venv/bin/python benchmarks/diag_class_poses.py --workflow /tmp/bw/workflow_101 --sim /tmp/bw/sim_101 \\
        --species mtor --out docs/benchmarks/class_poses_mtor.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", required=True, help="a cryoalign workflow output folder")
    ap.add_argument("--sim", required=True, help="its simulated tomogram's folder (truth.star, params.json)")
    ap.add_argument("--species", default="mtor")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import mrcfile
    import torch

    from napari_cryoalign.backend.align.average import iterative_average_job, wedge_compensated_average
    from napari_cryoalign.backend.align.exhaustive import align_exhaustive
    from napari_cryoalign.backend.align.extract import extract_subtomograms
    from napari_cryoalign.backend.align.types import AlignmentResult
    from napari_cryoalign.backend.fourier import lowpass
    from napari_cryoalign.backend.geometry import euler_to_matrix, random_rotations
    from napari_cryoalign.backend.jobs import run_job
    from napari_cryoalign.backend.simulate.structures import load_structure_map
    from napari_cryoalign.backend.wedge import particle_fourier_mask
    from napari_cryoalign.backend.workflow import SEARCH_FREQUENCY, _fsc_against_map, pose_errors_deg
    from napari_cryoalign.io import classes, coordinates_xyz, read_particles
    from napari_cryoalign.io.star_columns import euler_deg

    torch.set_num_threads(int(args.threads))
    wf, sim = Path(args.workflow), Path(args.sim)
    summary = json.loads((wf / "workflow.json").read_text())
    vs, box = float(summary["voxel_size"]), int(summary["box"])
    names = {int(k): v for k, v in json.loads((sim / "params.json").read_text())["class_names"].items()}
    species = {v: k for k, v in names.items()}[args.species]
    parts, truth = read_particles(wf / "particles.star"), read_particles(sim / "truth.star")
    pxyz, txyz, tcls = coordinates_xyz(parts), coordinates_xyz(truth), classes(truth)
    trot = euler_to_matrix(euler_deg(truth))
    d = np.linalg.norm(pxyz[:, None] - txyz[None], axis=2)
    near = d.argmin(1)
    radius = 0.5 * float(summary["diameter_angstrom"]) / vs
    mine = (d.min(1) < radius) & (tcls[near] == species)
    cls_of = np.bincount(classes(parts)[mine]).argmax()
    sel = np.flatnonzero(mine & (classes(parts) == cls_of))
    vol = mrcfile.mmap(str(sim / "tomogram.mrc"), mode="r").data
    ext = extract_subtomograms(vol, pxyz[sel], box, pad=True)
    p, inside = ext.volumes, ext.inside_masks()
    true_rot = trot[near[sel]][ext.rows]
    mask = particle_fourier_mask(box, tilt_range_deg=(-60.0, 60.0))
    true_map = load_structure_map(args.species, voxel_size_angstrom=vs, box=box)[0]
    out = {"species": args.species, "class_number": int(cls_of), "particles": int(len(p)), "box": box,
           "voxel_size": vs, "workflow": str(wf), "oracle": [], "reference_free": []}

    def errors(rot):
        e = pose_errors_deg(rot, true_rot)
        return {"median_deg": round(float(np.median(e)), 1), "beyond_20deg": int(np.sum(e > 20.0))}

    def self_score(ali):  # the particles against the average they make (40 Å, the workflow's search band)
        avg = wedge_compensated_average(p, ali, particle_masks=mask, inside_masks=inside)
        ref = lowpass(avg, 40.0, voxel_size_angstrom=vs)
        again = align_exhaustive(p, ref, particle_masks=mask, max_frequency=SEARCH_FREQUENCY, crop_to_band=True)
        fsc = _fsc_against_map(avg, true_map, voxel_size=vs, device="cpu")[0]
        return float(np.mean(again.scores)), round(fsc, 1)

    for lp in (30.0, 40.0, 60.0, 80.0):
        t0 = time.perf_counter()
        ali = align_exhaustive(p, lowpass(true_map, lp, voxel_size_angstrom=vs), particle_masks=mask,
                               max_frequency=min(0.5, vs / lp + 2.0 / box))
        row = {"reference": f"true map low-passed to {lp:g} Å", **errors(ali.rotations),
               "seconds": round(time.perf_counter() - t0, 1)}
        if lp == 40.0:
            row["self_score"], row["fsc_0143_vs_true"] = self_score(ali)
        out["oracle"].append(row)
        print(row, flush=True)
    n = len(p)
    starts = {"one particle (the workflow's reference-free start)": {},
              "random orientations": {"initial": AlignmentResult(random_rotations(n, seed=1), np.zeros((n, 3)),
                                                                 np.zeros(n), "random")}}
    for name, kw in starts.items():
        t0 = time.perf_counter()
        res = run_job(iterative_average_job(p, particle_masks=mask, iterations=6, voxel_size_angstrom=vs,
                                            inside_masks=inside, max_search_frequency=SEARCH_FREQUENCY,
                                            crop_to_band=True, **kw), progress=False)
        row = {"start": name, "iterations": 6, **errors(res.alignment.rotations),
               "half_set_fsc_0143": round(float(res.fsc.resolution_0143), 1),
               "seconds": round(time.perf_counter() - t0, 1)}
        row["self_score"], row["fsc_0143_vs_true"] = self_score(res.alignment)
        out["reference_free"].append(row)
        print(row, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
