"""``cryoalign workflow``: from a tomogram and a few labelled particles to class averages, headless.

Runs pick train -> pick predict -> extract (boxes at the faces padded, none dropped) ->
reference-free average -> cluster into K classes -> each class refined at full resolution
(``backend/workflow.py``), writes every
intermediate file and prints each step's time and numbers:

  DIR/picker.pt                       the trained picker
  DIR/picks.star                      every pick, scored (rlnAutopickFigureOfMerit)
  DIR/particles.star                  every pick kept, with poses against its class average
                                      (rlnAngleRot/Tilt/Psi, rlnOriginX/Y/ZAngst), rlnClassNumber
                                      (1-based), 0-based voxel coordinates, cryoalignFractionInside
  DIR/average.mrc (+ _half1/_half2, FSC table and plot)   the reference-free average of all picks
  DIR/classes/class_<k>.mrc           the class averages (k = rlnClassNumber)
  DIR/relion5/particles.star, tomograms.star              for RELION 5's import
  DIR/workflow.json                   per-step times and numbers (and scores with --truth)

With ``--truth TRUTH.star`` (true centres and rlnClassNumber, e.g. ``cryoalign simulate tomogram``'s
truth.star; class names from the params.json beside it) every step is scored: picking F1 against
all particles, class accuracy on the correctly picked ones, and the FSC of each class average
against its true map.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ._args import device_arg, float_pair, resolve_device, show_progress
from ._cluster import add_refine_args, check_refine_args, read_class_references


def register(sub) -> None:
    p = sub.add_parser("workflow", help="pick, extract, average and cluster one tomogram in one command",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tomogram", required=True, metavar="T.mrc", help="tomogram (MRC)")
    p.add_argument("--labels", required=True, metavar="L.star", help="a few labelled particles (STAR), any species")
    p.add_argument("--diameter", required=True, type=float, metavar="D_ANGSTROM", help="particle diameter in Å")
    p.add_argument("--classes", required=True, type=int, metavar="K", help="number of classes")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--box", type=int, default=None, metavar="N",
                   help="box edge in voxels (default: the smallest even box of 1.5 diameters)")
    p.add_argument("--truth", default=None, metavar="TRUTH.star",
                   help="true particles (coordinates, rlnClassNumber): score every step")
    p.add_argument("--negatives", default=None, metavar="N.star", help="known non-particles (removed picks)")
    p.add_argument("--pick-iterations", type=int, default=None, metavar="N",
                   help="picker training steps (default: pick train's, 600)")
    p.add_argument("--average-iterations", type=int, default=2, metavar="N",
                   help="rounds of the reference-free average (default 2)")
    add_refine_args(p, rounds_default=2)
    p.add_argument("--tilt-range", type=float_pair, default=(-60.0, 60.0), metavar="MIN,MAX",
                   help="tilt range of the data, for the missing-wedge masks (default -60,60)")
    p.add_argument("--no-wedge", action="store_true", help="treat the particles as fully observed")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--device", type=device_arg, default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run_workflow)


def _outputs(out: Path, k: int) -> dict:
    from ._align import half_map_paths

    names = {"picker": out / "picker.pt", "picks": out / "picks.star", "particles": out / "particles.star",
             "average": out / "average.mrc", "summary": out / "workflow.json"}
    for i, p in enumerate(half_map_paths(names["average"])):
        names[f"average_extra_{i}"] = p
    for c in range(k):
        names[f"class_{c + 1}"] = out / "classes" / f"class_{c + 1}.mrc"
    names["relion5_particles"] = out / "relion5" / "particles.star"
    names["relion5_tomograms"] = out / "relion5" / "tomograms.star"
    return names


def _truth(path, *, vol, vs, box):
    """True centres, classes, names and maps (from params.json's class_names beside the STAR file)."""
    import numpy as np

    from ..errors import InputError
    from ..io import classes, coordinates_xyz, read_particles

    table = read_particles(path, tomogram_shape=vol.shape, voxel_size=vs, require=("coordinates3d",))
    cls = classes(table)
    if cls is None:
        raise InputError("true classes (rlnClassNumber)", path=path, field="rlnClassNumber", got="absent")
    names, maps = {}, {}
    params = Path(path).with_name("params.json")
    if params.is_file():
        try:
            names = {int(k): str(v) for k, v in json.loads(params.read_text()).get("class_names", {}).items()}
        except (ValueError, AttributeError):
            names = {}
    if names:
        from ..backend.simulate.structures import load_structure_map

        for k, name in names.items():
            try:
                maps[k] = load_structure_map(name, voxel_size_angstrom=vs, box=box)[0]
            except Exception as exc:  # an unknown name: no FSC for it, said below
                print(f"  truth: no map for class {k} ({name}): {exc}")
    from ..backend.geometry import euler_to_matrix
    from ..io.star_columns import ANGLE_COLUMNS, euler_deg

    rotations = None  # pose errors only where the truth has every angle
    if all(c in table.data.columns for c in ANGLE_COLUMNS):
        rotations = euler_to_matrix(euler_deg(table))
    return coordinates_xyz(table), np.asarray(cls).astype(int), names, maps, rotations


def run_workflow(args) -> int:
    import numpy as np
    import torch

    from ..backend.align.extract import relion_origins_angstrom
    from ..backend.geometry import matrix_to_euler
    from ..backend.jobs import run_job
    from ..backend.picking import save_picker
    from ..backend.workflow import default_box, score_workflow, workflow_job
    from ..errors import InputError
    from ..io import ensure_not_input, export_relion5, write_mrc, write_particles
    from ..io._atomic import atomic_write, check_output_path
    from ._align import write_half_maps
    from ._pick import _read_labels, _read_tomogram, _write_picks

    device = resolve_device(args.device)
    if args.classes < 1:
        raise InputError("a number of classes >= 1", field="--classes", got=args.classes)
    check_refine_args(args)
    if args.average_iterations < 1:
        raise InputError("an integer >= 1", field="--average-iterations", got=args.average_iterations)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("an output folder", path=out, field="--out", got="an existing file")
    names = _outputs(out, args.classes)
    for sub in (out, out / "classes", out / "relion5"):
        sub.mkdir(parents=True, exist_ok=True)
    for p in names.values():
        ensure_not_input(p, args.tomogram, args.labels, args.truth, args.negatives, *(args.class_reference or ()))
        check_output_path(p, overwrite=args.overwrite)
    vol, vs = _read_tomogram(args.tomogram)
    labels = _read_labels(args.labels, vol, vs)
    negatives = _read_labels(args.negatives, vol, vs) if args.negatives else None
    box = default_box(args.diameter, vs) if args.box is None else args.box
    truth = _truth(args.truth, vol=vol, vs=vs, box=box) if args.truth else None
    class_refs = read_class_references(args.class_reference, voxel_size=vs, box=box)
    print(f"cryoalign workflow: {Path(args.tomogram).name} {tuple(vol.shape)} at {vs:g} Å, {len(labels)} labels, "
          f"diameter {args.diameter:g} Å, box {box}, {args.classes} classes, {torch.get_num_threads()} threads")

    t_all = time.perf_counter()
    job = workflow_job(vol.data, labels, diameter_angstrom=args.diameter, voxel_size=vs, n_classes=args.classes,
                       box=box, negatives_xyz=negatives, average_iterations=args.average_iterations,
                       refine_rounds=args.refine_rounds, class_references=class_refs,
                       ab_initio_below=args.ab_initio_below,
                       tilt_range_deg=None if args.no_wedge else tuple(args.tilt_range), seed=args.seed,
                       picker_options=None if args.pick_iterations is None else {"iterations": args.pick_iterations},
                       device=device, path=args.tomogram, labels_path=args.labels)
    res = run_job(job, progress=show_progress(args), description="workflow")
    seconds = time.perf_counter() - t_all

    save_picker(names["picker"], res.picker, overwrite=args.overwrite)
    _write_picks(names["picks"], res.picks, vol=vol, vs=vs, overwrite=args.overwrite)
    ext, clu = res.extraction, res.clusters
    kept = np.asarray(ext.rows)
    ori = relion_origins_angstrom(clu.alignment.origins_voxels, ext.residual_origins_voxels, vs)
    write_particles(names["particles"], coordinates_xyz=res.picks.coordinates_xyz[kept],
                    euler_deg=matrix_to_euler(np.asarray(clu.alignment.rotations)), origins_angstrom=ori,
                    classes=clu.classes + 1, scores=res.picks.scores[kept], tomo_name=Path(args.tomogram).stem,
                    tomogram_shape=vol.shape, voxel_size=vs, overwrite=args.overwrite, image_size=res.box,
                    extra_columns={"cryoalignCorrelation": np.asarray(clu.alignment.scores, dtype=float),
                                   "rlnMaxValueProbDistribution": np.asarray(clu.confidence, dtype=float),
                                   "cryoalignFractionInside": np.round(ext.fraction_inside, 4)})
    write_mrc(names["average"], res.average.average, voxel_size=vs, overwrite=args.overwrite)
    write_half_maps(names["average"], res.average, voxel_size=vs, overwrite=args.overwrite)
    for c, avg in enumerate(clu.averages):
        write_mrc(names[f"class_{c + 1}"], avg, voxel_size=vs, overwrite=args.overwrite)
    export_relion5(names["particles"], out / "relion5", tomograms=args.tomogram, overwrite=args.overwrite)

    summary = {"tomogram": str(args.tomogram), "labels": str(args.labels), "diameter_angstrom": args.diameter,
               "voxel_size": vs, "box": res.box, "classes": args.classes, "threads": torch.get_num_threads(),
               "seconds": round(seconds, 1), "steps": res.steps}
    print(f"cryoalign workflow: done in {seconds:.1f} s")
    for st in res.steps:
        extra = ", ".join(f"{k} {v}" for k, v in st.items() if k not in ("step", "seconds"))
        print(f"  {st['step']:<13} {st['seconds']:8.1f} s   {extra}")
    if truth is not None:
        txyz, tcls, tnames, tmaps, trot = truth
        sc = score_workflow(res, txyz, tcls, radius_voxels=0.5 * args.diameter / vs, class_maps=tmaps or None,
                            class_names=tnames, truth_rotations=trot, device=device)
        summary["score"] = sc.as_dict()
        print(f"  truth: picking P {sc.precision:.3f} R {sc.recall:.3f} F1 {sc.f1:.3f} ({sc.true_particles} "
              f"particles); class accuracy {sc.class_accuracy:.3f} on the correctly picked")
        for c in sc.classes:
            print(f"    class {c.class_number}: {c.particles} particles, mostly {c.species}; FSC vs its true map "
                  f"0.143 at {c.resolution_0143:.1f} Å, 0.5 at {c.resolution_05:.1f} Å"
                  + (f"; poses: median error {c.pose_median_deg:.1f}°, {c.poses_beyond_20deg} of "
                     f"{c.poses_scored} beyond 20° (C1)" if c.poses_scored else ""))
    with atomic_write(names["summary"], mode="w", overwrite=args.overwrite) as f:
        json.dump(summary, f, indent=1, default=float)
    print(f"  wrote {out}/ (picks.star, particles.star, average.mrc, classes/, relion5/, workflow.json)")
    return 0
