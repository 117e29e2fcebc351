"""cryoalign batch: one step over every tomogram of a project, on Dask distributed.

Inputs: a copick project (``--copick CONFIG.json [--runs A,B]``), a RELION 5 ``tomograms.star``
(``--tomograms``) or a list of tomogram files (``--tomogram-list``). Each tomogram's outputs go to
``OUT/<rlnTomoName>/`` (the files the single command writes), then one merged ``OUT/particles.star``
and ``OUT/tomograms.star``. Rerunning skips finished tomograms; a tomogram that fails is reported
and the others go on; the exit status is the number that failed (0: all finished). docs/batch.md.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from ._args import device_arg, float_pair, show_progress

__all__ = ["register"]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {v}")
    return v


def _names(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _add_sources(p, *, required: bool = True) -> None:
    """The tomograms of a batch: --copick [--runs --voxel-spacing --tomo-type] | --tomograms | --tomogram-list."""
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--copick", metavar="CONFIG.json", help="a copick project (filesystem configuration)")
    src.add_argument("--tomograms", metavar="tomograms.star",
                     help="RELION 5 tomograms.star: rlnTomoName and rlnTomoReconstructedTomogram per tomogram")
    src.add_argument("--tomogram-list", metavar="LIST.txt",
                     help="text file, one tomogram (MRC) per line, optionally followed by its name")
    p.add_argument("--runs", type=_names, default=None, metavar="A,B,...", help="copick: only these runs")
    p.add_argument("--voxel-spacing", type=float, default=None, metavar="Å",
                   help="copick: the voxel spacing to use (default the project's smallest)")
    p.add_argument("--tomo-type", default=None, metavar="TYPE",
                   help="copick: the tomogram type (default the run's only one, else wbp)")


def _add_inputs(p) -> None:
    _add_sources(p)
    p.add_argument("--out", required=True, metavar="OUT", help="output folder (made if missing)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler (tcp://host:8786, or a scheduler file .json); "
                   "default: a local cluster of --workers processes")
    p.add_argument("--workers", type=_positive_int, default=2, metavar="N", help="local worker processes (default 2)")
    p.add_argument("--threads-per-worker", type=_positive_int, default=1, metavar="T",
                   help="threads per worker, and torch threads per task (default 1)")


def _add_average_args(a) -> None:
    """The options `batch align` and `batch average` share: where the particles come from, shards, wedge, CTF,
    symmetry, the cluster."""
    _add_sources(a, required=False)
    a.add_argument("--box", type=_positive_int, default=None, metavar="N",
                   help="with --tomograms, --tomogram-list or --copick: cut boxes of N voxels (even) around the "
                   "particles' coordinates, on the workers, from the tomogram each row's rlnTomoName names")
    a.add_argument("--shard-size", type=_positive_int, default=None, metavar="N",
                   help="particles per task (default 1000)")
    a.add_argument("--tilt-range", type=float_pair, default=(-60.0, 60.0), metavar="MIN,MAX",
                   help="tilt range for the missing wedge (default -60,60)")
    a.add_argument("--no-wedge", action="store_true", help="no missing-wedge compensation")
    a.add_argument("--ctf", choices=("auto", "none"), default="auto",
                   help="auto: CTF-aware when the STAR file has rlnDefocusU (default)")
    a.add_argument("--symmetry", default="C1", metavar="GROUP", help="point group (default C1)")
    a.add_argument("--scheduler", default=None, metavar="ADDRESS", help="an existing Dask scheduler")
    a.add_argument("--workers", type=_positive_int, default=2, metavar="N", help="local worker processes (default 2)")
    a.add_argument("--threads-per-worker", type=_positive_int, default=1, metavar="T",
                   help="threads per worker (default 1)")
    a.add_argument("--device", type=device_arg, default="cpu", help="cpu (default) or cuda, on each worker")
    a.add_argument("--overwrite", action="store_true")


def register(sub) -> None:
    parser = sub.add_parser("batch", help="run a step on every tomogram of a project (Dask distributed)",
                            description=__doc__)
    kinds = parser.add_subparsers(dest="batch_kind", metavar="STEP", required=True)
    pick = kinds.add_parser("pick", help="picking on every tomogram")
    steps = pick.add_subparsers(dest="batch_step", metavar="STEP", required=True)
    p = steps.add_parser("predict", help="apply a trained picker to every tomogram",
                         description="cryoalign pick predict on every tomogram: OUT/<rlnTomoName>/picks.star, "
                         "OUT/particles.star, OUT/tomograms.star; for copick also the picks in each run "
                         "(user cryoalign).")
    _add_inputs(p)
    p.add_argument("--model", required=True, metavar="MODEL.pt", help="picker model (cryoalign pick train)")
    p.add_argument("--threshold", type=float, default=None, metavar="X",
                   help="minimum score (default: the model's calibrated threshold)")
    p.add_argument("--min-distance", type=float, default=None, metavar="D_ANGSTROM",
                   help="minimum distance between picks in Å (default: the particle radius)")
    p.add_argument("--heatmap", action="store_true", help="also write OUT/<rlnTomoName>/heatmap.mrc")
    p.add_argument("--object", default=None, metavar="NAME",
                   help="copick: the pickable object the picks are written as (default: the project's only "
                   "particle object; with several, required)")
    p.add_argument("--session-id", default="0", metavar="ID", help="copick: session id of the picks (default 0)")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu (default), cuda or auto, on each worker")
    p.set_defaults(func=run_pick_predict)

    t = steps.add_parser("template", help="template matching on every tomogram",
                         description="cryoalign pick template --template on every tomogram: OUT/<rlnTomoName>/"
                         "picks.star (with Euler angles), OUT/particles.star, OUT/tomograms.star; for copick also "
                         "the picks in each run (user cryoalign, with orientations).")
    _add_inputs(t)
    t.add_argument("--template", required=True, metavar="REF.mrc",
                   help="reference (protein with the tomograms' contrast sign), centred in its box")
    t.add_argument("--angular-step", type=float, default=30.0, metavar="DEG", help="rotation grid step (default 30)")
    t.add_argument("--threshold", type=float, default=None, metavar="NCC", help="minimum score (default none)")
    t.add_argument("--false-positives", type=float, default=None, metavar="K",
                   help="without --threshold: cut where noise is expected K times per tomogram (try 1)")
    t.add_argument("--max-picks", type=_positive_int, default=None, metavar="N", help="at most N picks per tomogram")
    t.add_argument("--min-distance", type=float, default=None, metavar="D_ANGSTROM",
                   help="minimum distance between picks in Å (default: the template mask radius)")
    t.add_argument("--tilt-range", type=float_pair, default=(-60.0, 60.0), metavar="MIN,MAX",
                   help="tilt range for the missing wedge (default -60,60)")
    t.add_argument("--no-wedge", action="store_true", help="no missing wedge on the template")
    t.add_argument("--lowpass", type=float, default=None, metavar="A", help="low-pass the template to A Å")
    t.add_argument("--defocus", type=float, default=None, metavar="UM", help="multiply the template by |CTF|")
    t.add_argument("--heatmap", action="store_true", help="also write OUT/<rlnTomoName>/heatmap.mrc (best NCC)")
    t.add_argument("--object", default=None, metavar="NAME", help="copick: the pickable object (see pick predict)")
    t.add_argument("--session-id", default="0", metavar="ID", help="copick: session id of the picks (default 0)")
    t.add_argument("--device", type=device_arg, default="cpu", help="cpu (default), cuda or auto, on each worker")
    t.set_defaults(func=run_pick_template)

    e = kinds.add_parser("extract", help="subtomograms of every tomogram's particles into one particle set",
                         description="Cut a box around every particle of a STAR file (rows matched to tomograms "
                         "by rlnTomoName): OUT/<rlnTomoName>/particles.star and its subtomograms, then one "
                         "OUT/particles.star over all of them (rlnImageName relative to OUT) for `batch average` "
                         "or `average`, and OUT/tomograms.star.")
    _add_inputs(e)
    e.add_argument("--particles", required=True, metavar="P.star",
                   help="particles with rlnTomoName and coordinates (e.g. a batch's merged particles.star)")
    e.add_argument("--box", required=True, type=_positive_int, metavar="N", help="box edge in voxels (even)")
    e.set_defaults(func=run_extract)

    g = kinds.add_parser("align", help="align a large subtomogram set to a reference, sharded over workers",
                         description="cryoalign align on the particles of a subtomogram STAR file (rlnImageName), "
                         "in shards on Dask workers with the reference broadcast; writes the aligned STAR file and, "
                         "with --average, the average of the aligned particles (summed over the shards). The poses "
                         "and maps equal the single-process run's.")
    g.add_argument("--particles", required=True, metavar="P.star",
                   help="subtomograms (rlnImageName), or coordinates with rlnTomoName and a tomogram source + --box")
    g.add_argument("--reference", required=True, metavar="R.mrc", help="reference map (same box and voxel size)")
    g.add_argument("--out", required=True, metavar="ALIGNED.star", help="aligned particles (STAR)")
    g.add_argument("--average", default=None, metavar="MAP.mrc", help="also write the average of the aligned set")
    g.add_argument("--half-maps", action="store_true", help="with --average: the half maps and the FSC too")
    g.add_argument("--method", choices=["exhaustive", "learned", "learned+refine"], default="exhaustive")
    g.add_argument("--angular-step", type=float, default=30.0, metavar="DEG", help="global grid step (default 30)")
    g.add_argument("--refine-levels", type=int, default=2, metavar="K", help="local refinement levels (default 2)")
    g.add_argument("--max-shift", type=float, default=None, metavar="VOX",
                   help="largest shift searched (default box/4)")
    g.add_argument("--lowpass", type=float, default=None, metavar="A", help="compare frequencies up to 1/A only")
    g.add_argument("--model", default=None, metavar="MODEL.pt", help="learned aligner weights (default: shipped)")
    g.add_argument("--candidates", type=int, default=1, metavar="K", help="learned: grid rotations compared")
    _add_average_args(g)
    g.set_defaults(func=run_align)

    a = kinds.add_parser("average", help="average a large subtomogram set, sharded over workers",
                         description="Average the particles of a subtomogram STAR file (rlnImageName) with their "
                         "STAR poses: shards of particles on Dask workers, their partial sums reduced. The maps "
                         "equal `cryoalign average`'s to float precision; no worker holds more than one shard.")
    a.add_argument("--particles", required=True, metavar="P.star",
                   help="subtomograms (rlnImageName) with poses, or coordinates with rlnTomoName and poses and a "
                   "tomogram source + --box")
    a.add_argument("--out", required=True, metavar="MAP.mrc", help="the average")
    a.add_argument("--half-maps", action="store_true", help="also write the half maps and the FSC (csv, png)")
    _add_average_args(a)
    a.set_defaults(func=run_average)


def _inputs(args):
    from ..backend.batch import tomograms_from_copick, tomograms_from_list, tomograms_from_star

    if args.copick:
        return tomograms_from_copick(args.copick, runs=args.runs, voxel_size=args.voxel_spacing,
                                     tomo_type=args.tomo_type)
    for flag in ("runs", "voxel_spacing", "tomo_type"):
        if getattr(args, flag) is not None:
            from ..errors import InputError

            raise InputError("--copick with this flag", field="--" + flag.replace("_", "-"), got="no --copick")
    if args.tomograms:
        return tomograms_from_star(args.tomograms)
    return tomograms_from_list(args.tomogram_list)


def _copick_object(args) -> str | None:
    if not args.copick:
        return None
    from ..errors import InputError
    from ..io.copick_project import open_copick

    objects = [o for o in open_copick(args.copick).config.pickable_objects]
    if args.object is not None:
        if args.object not in [o.name for o in objects]:
            raise InputError("a pickable object of the copick project", path=args.copick, field="--object",
                             got=f"{args.object!r} (it has: {', '.join(o.name for o in objects) or 'none'})")
        return args.object
    particles = [o.name for o in objects if o.is_particle]
    if len(particles) != 1:
        raise InputError("--object NAME: the project has " + (f"{len(particles)} particle objects "
                         f"({', '.join(particles)})" if particles else "no particle object"),
                         path=args.copick, field="--object", got="none given")
    return particles[0]


def _digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def _check_out(args, *inputs) -> Path:
    from ..errors import InputError

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("an output folder", path=out, field="--out", got="an existing file")
    res = out.resolve()
    for i in inputs:
        if i and Path(i).resolve() in (res, *res.parents):
            raise InputError("an output folder that is not an input or holds one", path=out, field="--out",
                             got=str(i))
    return out


def _run(args, step, task, params, merge) -> int:
    from ..backend.batch import batch_job
    from ..backend.jobs import run_job

    inputs = _inputs(args)
    out = Path(args.out)

    def on_partial(p):
        if p.name == "dashboard":
            print(f"Dask dashboard: {p.value}" if p.value else
                  "Dask: no dashboard (install bokeh>=3.1 for one)", file=sys.stderr)
        elif p.name == "tomogram" and p.value.status == "failed":
            print(f"  {p.value.name}: failed: {p.value.error}", file=sys.stderr)

    job = batch_job(step, task, inputs, out, params=params, scheduler=args.scheduler, workers=args.workers,
                    threads_per_worker=args.threads_per_worker, merge=merge)
    report = run_job(job, progress=show_progress(args), description=f"batch {step}", on_partial=on_partial,
                     should_stop=None)
    done, skipped, failed = report.count("done"), report.count("skipped"), report.count("failed")
    print(f"batch {step}: {done} done, {skipped} finished before, {failed} failed of {len(report.outcomes)} "
          f"tomograms in {report.seconds:.1f} s" + (f" on {report.workers} workers" if report.workers else ""))
    for key, path in report.merged.items():
        print(f"  wrote {path}")
    for o in report.failed:
        print(f"  failed: {o.name}: {o.error}")
    return min(failed, 125)


def run_pick_predict(args) -> int:
    from ..backend.batch import merge_picks, pick_predict_task
    from ..backend.picking import load_picker

    _check_out(args, args.model, args.copick, args.tomograms, args.tomogram_list)
    load_picker(args.model, device="cpu")  # a bad model file fails here, once, not on every worker
    params = {"model": str(Path(args.model).resolve()), "model_digest": _digest(args.model),
              "threshold": args.threshold, "min_distance_angstrom": args.min_distance, "heatmap": bool(args.heatmap),
              "device": args.device, "copick_object": _copick_object(args), "copick_session": args.session_id}
    return _run(args, "pick predict", pick_predict_task, params, merge_picks)


def _particle_sources(args):
    """The tomograms to cut `batch align` / `batch average` particles from (None: subtomogram files)."""
    from ..errors import InputError

    if not (args.copick or args.tomograms or args.tomogram_list):
        if args.box is not None:
            raise InputError("--box only with a tomogram source (--tomograms, --tomogram-list or --copick)",
                             field="--box", got=args.box)
        for flag in ("runs", "voxel_spacing", "tomo_type"):
            if getattr(args, flag) is not None:
                raise InputError("--copick with this flag", field="--" + flag.replace("_", "-"), got="no --copick")
        return None
    if args.box is None:
        raise InputError("--box N: the box to cut around each particle from its tomogram", field="--box",
                         got="none")
    from ..backend.align.extract import check_box_size

    check_box_size(args.box, path=args.particles)
    return _inputs(args)


def _report_skipped(skipped) -> None:
    """One line per reason (particles of tomograms not in the batch, boxes outside the tomogram, ...)."""
    from collections import Counter

    for why, k in Counter(w for _, w in skipped).most_common(5):
        print(f"skipped {k} particle{'s' if k > 1 else ''}: {why}", file=sys.stderr)


def run_average(args) -> int:
    from ..backend.batch.average import DEFAULT_SHARD_SIZE, sharded_average_job
    from ..backend.jobs import run_job
    from ..io import check_output_path, ensure_not_input, write_mrc
    from ._align import half_map_paths, write_half_maps

    out = Path(args.out)
    ensure_not_input(out, args.particles)
    for o in [out] + (half_map_paths(out) if args.half_maps else []):
        check_output_path(o, overwrite=args.overwrite)
    sources = _particle_sources(args)
    job = sharded_average_job(args.particles, shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
                              tilt_range=None if args.no_wedge else tuple(args.tilt_range), ctf=args.ctf,
                              symmetry=args.symmetry, tomograms=sources, box=args.box, scheduler=args.scheduler,
                              workers=args.workers, threads_per_worker=args.threads_per_worker, device=args.device)
    res = run_job(job, progress=show_progress(args), description="batch average")
    _report_skipped(res.skipped)
    write_mrc(out, res.average.average, voxel_size=res.voxel_size, overwrite=args.overwrite)
    written = [out]
    if args.half_maps:
        written += write_half_maps(out, res.average, voxel_size=res.voxel_size, overwrite=args.overwrite)
    fsc = res.average.fsc
    print(f"averaged {res.n_particles} particles ({len(res.skipped)} skipped) in {len(res.shards)} shards of at most "
          f"{res.max_shard_particles} on {res.workers} workers in {res.seconds:.1f} s; half-map FSC 0.143: "
          f"{fsc.resolution_0143:.1f} Å; wrote " + ", ".join(str(p) for p in written))
    return 0


def run_pick_template(args) -> int:
    from ..backend.batch import merge_picks
    from ..backend.batch.tasks import pick_template_task
    from ..io import read_mrc

    _check_out(args, args.template, args.copick, args.tomograms, args.tomogram_list)
    read_mrc(args.template)  # a bad template fails here, once
    params = {"template": str(Path(args.template).resolve()), "template_digest": _digest(args.template),
              "angular_step_deg": args.angular_step, "threshold": args.threshold,
              "false_positives": args.false_positives, "max_picks": args.max_picks,
              "min_distance_angstrom": args.min_distance,
              "tilt_range": None if args.no_wedge else list(args.tilt_range), "lowpass_angstrom": args.lowpass,
              "defocus_um": args.defocus, "heatmap": bool(args.heatmap), "device": args.device,
              "copick_object": _copick_object(args), "copick_session": args.session_id}
    return _run(args, "pick template", pick_template_task, params, merge_picks)


def run_extract(args) -> int:
    from ..backend.align.extract import check_box_size
    from ..backend.batch.tasks import extract_task, merge_extracted
    from ..io import read_star

    _check_out(args, args.particles, args.copick, args.tomograms, args.tomogram_list)
    check_box_size(args.box, path=args.particles)
    read_star(args.particles)  # a bad STAR file fails here, once
    params = {"particles": str(Path(args.particles).resolve()), "particles_digest": _digest(args.particles),
              "box": int(args.box)}
    return _run(args, "extract", extract_task, params, merge_extracted)


def run_align(args) -> int:
    from ..backend.align.extract import ParticleSet, write_aligned_star
    from ..backend.batch.align import sharded_align_job
    from ..backend.batch.average import DEFAULT_SHARD_SIZE
    from ..backend.jobs import run_job
    from ..io import check_output_path, ensure_not_input, read_mrc, write_mrc
    from ..io.mrc import voxel_size_isotropic
    from ._align import half_map_paths, write_half_maps

    outs = [Path(args.out)]
    if args.average:
        outs += [Path(args.average)] + (half_map_paths(Path(args.average)) if args.half_maps else [])
    for o in outs:
        ensure_not_input(o, args.particles, args.reference, args.model)
        check_output_path(o, overwrite=args.overwrite)
    ref = read_mrc(args.reference)
    sources = _particle_sources(args)
    job = sharded_align_job(args.particles, ref.data, shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
                            method=args.method, angular_step_deg=args.angular_step, refine_levels=args.refine_levels,
                            max_shift_voxels=args.max_shift, lowpass_angstrom=args.lowpass,
                            tilt_range=None if args.no_wedge else tuple(args.tilt_range), ctf=args.ctf,
                            symmetry=args.symmetry, model=None if args.model is None else str(Path(args.model)),
                            candidates=args.candidates, tomograms=sources, box=args.box, scheduler=args.scheduler,
                            workers=args.workers, threads_per_worker=args.threads_per_worker, device=args.device)
    res = run_job(job, progress=show_progress(args), description="batch align")
    _report_skipped(res.skipped)
    rv = voxel_size_isotropic(ref)
    if abs(rv - res.voxel_size) > 1e-3 * res.voxel_size:
        from ..errors import InputError

        raise InputError(f"the particles' voxel size ({res.voxel_size:g} Å)", path=args.reference,
                         field="voxel_size", got=f"{rv:g} Å")
    import numpy as np

    n = len(res.rows)
    pset = ParticleSet(volumes=np.empty((0,)), rows=res.rows, table=res.table, voxel_size=res.voxel_size,
                       euler_deg=np.zeros((n, 3)), origins_angstrom=np.zeros((n, 3)),
                       extraction_origins_voxels=res.extraction_origins_voxels, skipped=[],
                       source="subtomograms" if sources is None else "tomogram")
    written = [write_aligned_star(args.out, pset, res.alignment, overwrite=args.overwrite)]
    if args.average:
        written.append(write_mrc(args.average, res.average.average, voxel_size=res.voxel_size,
                                 overwrite=args.overwrite))
        if args.half_maps:
            written += write_half_maps(Path(args.average), res.average, voxel_size=res.voxel_size,
                                       overwrite=args.overwrite)
    print(f"aligned {n} particles ({len(res.skipped)} skipped) with {res.alignment.method} in {len(res.shards)} "
          f"shards of at most {res.max_shard_particles} on {res.workers} workers in {res.seconds:.1f} s; half-map "
          f"FSC 0.143: {res.average.fsc.resolution_0143:.1f} Å; wrote " + ", ".join(str(p) for p in written))
    return 0
