"""The whole chain on one tomogram (issue 20): ``cryoalign workflow`` at its defaults, scored step by step.

Protocol (the issue's goal): a 512 x 512 x 128 tomogram at 10 Å (``cryoalign simulate tomogram``,
its defaults: CTF at 3 µm, 100 e/Å², ±60° in 3° steps, WBP) with about 150 particles of three
species (ribosome, CCT, mTOR; equal abundances), 10 % of the particles of *every* species labelled
as one kind, "particle" (the picker learns "a particle", clustering separates the species);
``cryoalign workflow --tomogram T --labels L --diameter D --classes 3 --truth truth.star`` with
every other setting at its default, on 2 threads of the machine. Reported: each step's time, picking
P / R / F1 against all particles, class accuracy on the correctly picked ones, each class average's
FSC 0.143 against its true map, and how many picks' boxes crossed the faces (padded, kept).

Held out: the simulator seeds here (default 101, 102) were used by no other development step; the
picker's recipe was developed on the look-alike scenario (seeds 11-18), the clustering defaults on
``bench_cluster.py``'s subtomograms.

    .venv/bin/python benchmarks/bench_workflow.py --seeds 101,102 --out docs/benchmarks/workflow.json

With a class reference as a user might have one (``--class-reference SPECIES:KIND``, KIND one of
``lowpass<Å>``, ``conformation``, ``subcomplex`` of :meth:`LookalikeSet.mismatched_template`; the map is
written to the scratch folder and passed as ``cryoalign workflow --class-reference``):

    .venv/bin/python benchmarks/bench_workflow.py --seeds 102 --class-reference mtor:conformation \
        --out docs/benchmarks/workflow_reference.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def run_one(seed: int, work: Path, *, size, voxel, n_particles, structures, diameter, label_fraction, threads,
            extra) -> dict:
    import torch

    from napari_cryoalign.cli import main
    from napari_cryoalign.io import classes, coordinates_xyz, read_particles, write_particles

    torch.set_num_threads(int(threads))
    sim = work / f"sim_{seed}"
    t0 = time.perf_counter()
    if not (sim / "truth.star").is_file():
        assert main(["-q", "simulate", "tomogram", "--out", str(sim), "--size", ",".join(map(str, size)),
                     "--voxel-size", str(voxel), "--particles", str(n_particles), "--structures",
                     ",".join(structures), "--seed", str(seed), "--tomo-name", f"tomo_{seed}"]) == 0
    t_sim = time.perf_counter() - t0
    truth = read_particles(sim / "truth.star")
    xyz, cls = coordinates_xyz(truth), classes(truth)
    rng = np.random.default_rng(seed + 7)
    idx = []
    for c in np.unique(cls):  # 10 % of every species, at least one, as one kind
        members = np.flatnonzero(cls == c)
        k = max(1, int(round(label_fraction * len(members))))
        idx.extend(rng.choice(members, size=k, replace=False).tolist())
    labels = sim / "labels.star"
    write_particles(labels, coordinates_xyz=xyz[np.sort(idx)], tomo_name=f"tomo_{seed}", voxel_size=voxel,
                    overwrite=True)
    out = work / f"workflow_{seed}"
    argv = ["workflow", "--tomogram", str(sim / "tomogram.mrc"), "--labels", str(labels), "--diameter",
            str(diameter), "--classes", str(len(structures)), "--out", str(out), "--truth", str(sim / "truth.star"),
            "--overwrite", *extra]
    t0 = time.perf_counter()
    assert main(["-q", *argv]) == 0
    wall = time.perf_counter() - t0
    summary = json.loads((out / "workflow.json").read_text())
    picks = read_particles(out / "particles.star")
    frac = picks.data["cryoalignFractionInside"].to_numpy()
    return {"seed": seed, "particles": int(len(xyz)), "per_species": {str(int(c)): int(np.sum(cls == c))
                                                                      for c in np.unique(cls)},
            "labels": int(len(idx)), "simulate_seconds": round(t_sim, 1), "workflow_seconds": round(wall, 1),
            "threads": int(threads), "steps": summary["steps"], "score": summary["score"],
            "picks_padded": int(np.sum(frac < 1.0)), "picks_kept": int(len(frac)),
            "command": "cryoalign " + " ".join(argv)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="101", help="simulator seeds, comma-separated (default 101)")
    ap.add_argument("--size", default="512,512,128", help="x,y,z voxels (default 512,512,128)")
    ap.add_argument("--voxel", type=float, default=10.0)
    ap.add_argument("--particles", type=int, default=150)
    ap.add_argument("--structures", default="ribosome,cct,mtor")
    ap.add_argument("--diameter", type=float, default=260.0, help="the one diameter given for all species (Å)")
    ap.add_argument("--label-fraction", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/bench_workflow", help="scratch folder")
    ap.add_argument("--workflow-args", default="", help="more flags for cryoalign workflow (tuned runs)")
    ap.add_argument("--class-reference", action="append", default=[], metavar="SPECIES:KIND",
                    help="a user's map of one species (e.g. mtor:conformation), passed as --class-reference")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    extra_refs = []
    for spec in args.class_reference:
        from napari_cryoalign.backend.simulate.lookalikes import lookalike_species
        from napari_cryoalign.io import write_mrc

        species, kind = spec.split(":", 1)
        path = work / f"reference_{species}_{kind}.mrc"
        write_mrc(path, lookalike_species(args.voxel, target=species).mismatched_template(kind),
                  voxel_size=args.voxel, overwrite=True)
        extra_refs += ["--class-reference", str(path)]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        r = run_one(seed, work, size=[int(v) for v in args.size.split(",")], voxel=args.voxel,
                    n_particles=args.particles, structures=args.structures.split(","), diameter=args.diameter,
                    label_fraction=args.label_fraction, threads=args.threads,
                    extra=args.workflow_args.split() + extra_refs)
        rows.append(r)
        s = r["score"]
        times = ", ".join(f"{st['step']} {st['seconds']:.0f}" for st in r["steps"])
        print(f"seed {seed}: {r['particles']} particles, {r['labels']} labels; workflow {r['workflow_seconds']:.0f} s "
              f"({times}); picking F1 "
              f"{s['picking']['f1']:.3f} (P {s['picking']['precision']:.3f} R {s['picking']['recall']:.3f}); "
              f"class accuracy {s['class_accuracy']:.3f}; class FSC 0.143: "
              + ", ".join(f"{c['species']} {c['resolution_0143']:.1f} Å (poses: median {c['pose_median_deg']:.1f}°, "
                          f"{c['poses_beyond_20deg']} of {c['poses_scored']} beyond 20°)" for c in s["classes"])
              + f"; {r['picks_padded']} of {r['picks_kept']} boxes padded", flush=True)
    if args.out:
        doc = {"protocol": __doc__.split("Protocol")[1].split("    .venv")[0].strip(),
               "date": time.strftime("%Y-%m-%d"), "class_references": args.class_reference, "rows": rows}
        Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
