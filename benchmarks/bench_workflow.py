"""The whole chain on one tomogram (issue 20): ``cryoalign workflow`` at its defaults, scored step by step.

Protocol (the issue's goal): a 512 x 512 x 128 tomogram at 10 Å (``cryoalign simulate tomogram``,
its defaults: CTF at 3 µm, 100 e/Å², ±60° in 3° steps, WBP) with about 150 particles of three
species (ribosome, CCT, mTOR; equal abundances), 10 % of the particles of *every* species labelled
as one kind, "particle" (the picker learns "a particle", clustering separates the species);
``cryoalign workflow --tomogram T --labels L --diameter D --classes 3 --truth truth.star`` with
every other setting at its default, on 2 threads of the machine. Reported: each step's time, picking
P / R / F1 against all particles, class accuracy on the correctly picked ones, each class average's
FSC 0.143 against its true map, and how many picks' boxes crossed the faces (padded, kept).

The peer, on the same tomogram and labels in the same run (``--no-peer`` leaves it out): template
matching with the template a user really has, averaged from the same 15 labels
(``cryoalign pick template --template-from-labels L --diameter D`` at its defaults: 3 alignment rounds,
40 Å, 30° grid), scored at its own default cut-off (one expected noise peak in the whole search, as
pytom-match-pick's ``--number-of-false-positives 1``) and at its best threshold. The picker's best
F1 is over thresholds at or above its default (only those picks are written).

Held out: the picker's recipe was developed on the look-alike scenario (seeds 11-18), the clustering
defaults on ``bench_cluster.py``'s subtomograms. Seeds 101-103 of this benchmark were then used to
develop step 6 (the class refinement and its ab-initio initial models, ``docs/workflow.md``); seeds
104 and 105 judged it and were used for nothing else.

    .venv/bin/python benchmarks/bench_workflow.py --seeds 104,105 --out docs/benchmarks/workflow.json

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
            extra, with_peer: bool = True, reuse: bool = False) -> dict:
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
    if reuse and (out / "run.json").is_file():  # the workflow's outputs of an earlier run of this benchmark
        wall = json.loads((out / "run.json").read_text())["workflow_seconds"]
    else:
        assert main(["-q", *argv]) == 0
        wall = time.perf_counter() - t0
        (out / "run.json").write_text(json.dumps({"workflow_seconds": wall, "command": argv}))
    summary = json.loads((out / "workflow.json").read_text())
    picks = read_particles(out / "particles.star")
    frac = picks.data["cryoalignFractionInside"].to_numpy()
    radius = 0.5 * diameter / voxel
    all_picks = read_particles(out / "picks.star")
    from napari_cryoalign.backend.picking import best_f1

    best, thr = best_f1(coordinates_xyz(all_picks), all_picks.data["rlnAutopickFigureOfMerit"].to_numpy(), xyz,
                        radius=radius)
    picker_best = {"best_f1": round(best.f1, 4), "best_threshold": round(float(thr), 4)}
    peer = template_peer(sim, labels, xyz, diameter=diameter, voxel=voxel, radius=radius) if with_peer else None
    return {"seed": seed, "particles": int(len(xyz)), "per_species": {str(int(c)): int(np.sum(cls == c))
                                                                      for c in np.unique(cls)},
            "labels": int(len(idx)), "simulate_seconds": round(t_sim, 1), "workflow_seconds": round(wall, 1),
            "threads": int(threads), "steps": summary["steps"], "score": summary["score"],
            "picks_padded": int(np.sum(frac < 1.0)), "picks_kept": int(len(frac)), "picker_best": picker_best,
            "template_matching": peer, "command": "cryoalign " + " ".join(argv)}


def template_peer(sim: Path, labels: Path, truth_xyz, *, diameter: float, voxel: float, radius: float) -> dict:
    """Template matching with a template averaged from the labels, as ``cryoalign pick template
    --template-from-labels`` runs it at its defaults; F1 at its false-alarm cut-off and at its best threshold."""
    from napari_cryoalign.backend.jobs import run_job
    from napari_cryoalign.backend.picking import best_f1, precision_recall_f1
    from napari_cryoalign.backend.picking.label_template import label_template_job
    from napari_cryoalign.backend.picking.template import template_match_job
    from napari_cryoalign.io import coordinates_xyz, read_mrc, read_particles

    tomo = read_mrc(sim / "tomogram.mrc")
    lab = coordinates_xyz(read_particles(labels))
    t0 = time.perf_counter()
    lt = run_job(label_template_job(tomo.data, lab, voxel_size=voxel, diameter_angstrom=diameter), progress=False)
    res = run_job(template_match_job(tomo.data, lt.map, voxel_size=voxel, template_voxel_size=voxel,
                                     mask_radius=lt.mask_radius_voxels), progress=False)
    seconds = time.perf_counter() - t0
    xyz, sc = res.picks.coordinates_xyz, res.picks.scores
    at = precision_recall_f1(xyz, sc, truth_xyz, radius=radius, threshold=res.suggested_threshold)
    best, thr = best_f1(xyz, sc, truth_xyz, radius=radius)
    return {"seconds": round(seconds, 1), "rotations": int(len(res.euler_deg)), "candidates": int(len(sc)),
            "default_threshold": round(float(res.suggested_threshold), 4), "f1": round(at.f1, 4),
            "precision": round(at.precision, 4), "recall": round(at.recall, 4), "best_f1": round(best.f1, 4),
            "best_threshold": round(float(thr), 4),
            "command": f"cryoalign pick template --tomogram {sim / 'tomogram.mrc'} --template-from-labels {labels} "
                       f"--diameter {diameter:g} --false-positives 1 --out PICKS.star"}


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
    ap.add_argument("--no-peer", action="store_true", help="leave out template matching (the peer)")
    ap.add_argument("--reuse", action="store_true",
                    help="take the workflow's results (and its time) from an earlier run in --work with the same "
                         "seed; run only what is missing (e.g. the peer)")
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
                    extra=args.workflow_args.split() + extra_refs, with_peer=not args.no_peer,
                    reuse=args.reuse)
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
        tm = r["template_matching"]
        if tm:
            print(f"  peer, template matching (template from the labels, {tm['seconds']:.0f} s): F1 {tm['f1']:.3f} "
                  f"(P {tm['precision']:.3f} R {tm['recall']:.3f}) at its default cut-off, "
                  f"best F1 {tm['best_f1']:.3f}; "
                  f"picker best F1 {r['picker_best']['best_f1']:.3f}", flush=True)
    if args.out:
        doc = {"protocol": __doc__.split("Protocol")[1].split("    .venv")[0].strip(),
               "date": time.strftime("%Y-%m-%d"), "class_references": args.class_reference, "rows": rows}
        Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
