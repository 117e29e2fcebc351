"""``cryoalign cluster``: sort subtomograms into classes and align them within each class, headless.

Writes the input particles with ``rlnClassNumber`` (1-based), the pose of each particle against
its class's average (``rlnAngleRot/Tilt/Psi``, RELION ZYZ, matrix ``A`` reference -> particle;
``rlnOriginX/Y/ZAngst``, the particle centre at ``coordinate - origin / voxel_size``), the
constrained correlation with that average (``cryoalignCorrelation``) and the posterior
probability of the class (``rlnMaxValueProbDistribution``); optionally one MRC per class average.
Methods: ``joint`` (alternating multi-reference alignment and Gaussian-mixture clustering) and
``classical`` (global alignment, wedge-masked PCA, Gaussian mixture); see docs/cluster.md.
"""

from __future__ import annotations

import argparse

from ._align import _add_particle_args, _fourier_masks, _print_skipped
from ._args import resolve_device, show_progress

CONFIDENCE_COLUMN = "rlnMaxValueProbDistribution"
CLASS_COLUMN = "rlnClassNumber"


def _classes(text: str):
    if text == "estimate":
        return text
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of classes >= 1 or 'estimate'") from None
    if k < 1:
        raise argparse.ArgumentTypeError("expected a number of classes >= 1 or 'estimate'")
    return k


def add_refine_args(p, *, rounds_default: int) -> None:
    """The flags of the class refinement after clustering (:mod:`..backend.cluster.refine`), shared by
    ``cryoalign cluster`` (default off) and ``cryoalign workflow`` (default 2 rounds)."""
    when = (f"default {rounds_default}; 0: the clustering's class averages" if rounds_default else
            "default 0: the clustering's class averages, unless --class-reference is given")
    p.add_argument("--refine-rounds", type=int, default=rounds_default, metavar="N",
                   help="after clustering, refine each class on its own: N rounds of local refinement at the "
                        f"class's own resolution, then half-set class averages ({when})")
    p.add_argument("--ab-initio-below", type=float, default=None, metavar="Å",
                   help="in the refinement, a class (without --class-reference) whose half-set FSC 0.143 is worse "
                        "than this gets an ab-initio initial model of its own particles (4-fold cross-validated, "
                        "2 random restarts), is searched globally from it and refined again, and keeps the better "
                        "resolution (default: 4 voxels, 40 Å at 10 Å/voxel; 0: never)")
    p.add_argument("--class-reference", action="append", default=None, metavar="MAP.mrc",
                   help="a map of one expected species (e.g. from a related structure; any box and voxel size, "
                        "resampled): it goes to the class it fits best, whose particles are searched globally from "
                        "it at 60 Å before the local rounds; repeat for several. For species too small to align "
                        "reference-free (docs/workflow.md). Default: none, reference-free throughout")


def check_refine_args(args) -> None:
    from ..errors import InputError

    if args.refine_rounds < 0:
        raise InputError("an integer >= 0", field="--refine-rounds", got=args.refine_rounds)
    if args.ab_initio_below is not None and not args.ab_initio_below >= 0:
        raise InputError("a resolution >= 0 Å (0: never)", field="--ab-initio-below", got=args.ab_initio_below)


def read_class_references(paths, *, voxel_size: float, box: int):
    """``--class-reference`` maps at the particles' voxel size and box (None when none is given)."""
    from ..backend.cluster.refine import read_class_references as read

    return read(paths, voxel_size=voxel_size, box=box, field="--class-reference")


def register(sub) -> None:
    p = sub.add_parser("cluster", help="sort subtomograms into classes and align them within each class",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_particle_args(p)
    p.add_argument("--classes", type=_classes, required=True, metavar="K",
                   help="number of classes, or 'estimate' (lowest BIC of a Gaussian mixture, K = 1 .. --max-classes)")
    p.add_argument("--out", required=True, metavar="CLUSTERS.star", help="particles with rlnClassNumber and poses")
    p.add_argument("--averages-dir", default=None, metavar="DIR",
                   help="write the class averages there as class_001.mrc, class_002.mrc, ...")
    p.add_argument("--method", choices=["joint", "classical"], default="joint",
                   help="joint alignment + clustering (default) or the classical PCA baseline")
    p.add_argument("--iterations", type=int, default=4, metavar="N",
                   help="joint: at most N alignment/clustering rounds (default 4; stops when no class changes)")
    p.add_argument("--init-iterations", type=int, default=2, metavar="N",
                   help="rounds of the reference-free averages (global, or per class for joint; default 2)")
    p.add_argument("--init", choices=["invariant", "classical"], default="invariant",
                   help="joint: first clustering from rotation-invariant spectra (default) or the classical method")
    p.add_argument("--angular-step", type=float, default=30.0, metavar="DEG",
                   help="global rotation grid step in degrees (default 30)")
    p.add_argument("--refine-levels", type=int, default=2, metavar="K",
                   help="local refinement levels after the grid, each 3x finer (default 2)")
    p.add_argument("--max-shift", type=float, default=None, metavar="VOX",
                   help="largest shift searched (default box/4)")
    p.add_argument("--max-classes", type=int, default=8, metavar="K", help="largest K tried by --classes estimate")
    # = backend.cluster.classify.MIN_CLASS_FRACTION (not imported here: the backend pulls in torch,
    # the CLI imports it lazily; tests/cli/test_cluster_cli.py checks the two agree)
    p.add_argument("--min-class-fraction", type=float, default=0.5, metavar="F",
                   help="joint: re-seed a class left with fewer than F x (mean class size) particles after a round "
                   "(default 0.5; 0 = never, for sets where one class is much rarer)")
    p.add_argument("--reseed", choices=("split", "worst"), default="split",
                   help="joint: how a class below --min-class-fraction is re-seeded: split (default) bisects the "
                   "largest class by a 2-class joint clustering and gives it the half that fits worse; worst gives "
                   "it the n/K particles that fit their own class worst")
    p.add_argument("--global-rounds", type=int, default=1, metavar="R",
                   help="joint: the first R rounds search every class globally (default 1; later rounds refine "
                   "locally). More rounds cost a full search each and let poses recover from poor first averages")
    # = backend.cluster.classify.SEARCH_FREQUENCY (checked by tests/cli/test_cluster_cli.py)
    p.add_argument("--search-frequency", type=float, default=0.25, metavar="F",
                   help="joint: highest frequency its searches compare, cycles/voxel (default 0.25; at least what a "
                   "16^3 box holds), on particles and class averages Fourier-cropped to the smallest box that holds "
                   "it (16 for 32^3), shifts and scores re-measured at full size; 0.5 = full box, up to the class "
                   "averages' resolution (the behaviour before 2026-12-05, ~7x slower)")
    add_refine_args(p, rounds_default=0)
    p.add_argument("--seed", type=int, default=0, help="random seed of the mixture starts and the initial models")
    p.set_defaults(func=run_cluster)


def _average_paths(out_dir, k: int):
    from pathlib import Path

    return [Path(out_dir) / f"class_{c + 1:03d}.mrc" for c in range(k)]


def run_cluster(args) -> int:
    from ..backend.align.extract import load_particle_set, write_aligned_star
    from ..backend.cluster.classify import cluster_subtomograms_job
    from ..backend.jobs import run_job
    from ..errors import InputError
    from ..io import check_output_path, ensure_not_input, write_mrc

    device = resolve_device(args.device)
    ensure_not_input(args.out, args.particles, args.tomogram, *(args.class_reference or ()))
    check_output_path(args.out, overwrite=args.overwrite)
    check_refine_args(args)
    for flag, value in (("--iterations", args.iterations), ("--init-iterations", args.init_iterations),
                        ("--global-rounds", args.global_rounds)):
        if value < 1:
            raise InputError("an integer >= 1", field=flag, got=value)
    if not 0.0 < args.search_frequency <= 0.5:
        raise InputError("a frequency in (0, 0.5] cycles/voxel (0.5: no limit)", field="--search-frequency",
                         got=args.search_frequency)
    pset = load_particle_set(args.particles, tomogram=args.tomogram, box=args.box)
    _print_skipped(pset, "cluster")
    n = len(pset.volumes)
    if args.classes != "estimate" and args.classes > n // 2:
        raise InputError(f"at most n/2 = {n // 2} classes for {n} particles", path=args.particles,
                         field="--classes", got=args.classes)
    box = pset.volumes.shape[-1]
    masks = _fourier_masks(args, box, pset.voxel_size)
    refs = read_class_references(args.class_reference, voxel_size=pset.voxel_size, box=box)
    job = cluster_subtomograms_job(pset.volumes, n_classes=args.classes, method=args.method, particle_masks=masks,
                                   iterations=args.iterations, init=args.init,
                                   init_iterations=args.init_iterations, angular_step_deg=args.angular_step,
                                   refine_levels=args.refine_levels, max_shift_voxels=args.max_shift,
                                   voxel_size_angstrom=pset.voxel_size, max_classes=args.max_classes,
                                   min_class_fraction=args.min_class_fraction, global_rounds=args.global_rounds,
                                   reseed=args.reseed, search_frequency=args.search_frequency, seed=args.seed,
                                   inside_masks=pset.inside_masks(), device=device)
    res = run_job(job, progress=show_progress(args), description="cluster")
    refined = None
    if args.refine_rounds > 0 or refs:
        from ..backend.cluster.refine import refine_classes_job

        job = refine_classes_job(pset.volumes, res, particle_masks=masks, inside_masks=pset.inside_masks(),
                                 voxel_size_angstrom=pset.voxel_size, rounds=args.refine_rounds, references=refs,
                                 ab_initio_below=args.ab_initio_below, seed=args.seed, device=device)
        refined = run_job(job, progress=show_progress(args), description="refine classes")
        res = refined.clusters
    paths = []
    if args.averages_dir:
        paths = _average_paths(args.averages_dir, res.n_classes)
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for p in paths:
            ensure_not_input(p, args.particles, args.tomogram)
            check_output_path(p, overwrite=args.overwrite)
    out = write_aligned_star(args.out, pset, res.alignment, overwrite=args.overwrite,
                             extra_columns={CLASS_COLUMN: res.classes + 1, CONFIDENCE_COLUMN: res.confidence})
    for p, avg in zip(paths, res.averages):
        write_mrc(p, avg, voxel_size=pset.voxel_size, overwrite=args.overwrite)
    if show_progress(args):
        sizes = ", ".join(f"{c + 1}: {s}" for c, s in enumerate(res.class_sizes))
        est = f" (estimated by BIC over K = {min(res.bic)}..{max(res.bic)})" if res.bic else ""
        print(f"cryoalign cluster: {n} particles in {res.n_classes} classes{est} ({args.method}, "
              f"{res.seconds:.1f} s); sizes {sizes}; wrote {out}" + (f" and {len(paths)} averages in "
                                                                   f"{args.averages_dir}" if paths else ""))
        if refined is not None:
            ab = refined.initial_models
            print(f"refined classes ({refined.seconds:.1f} s): half-set FSC 0.143 "
                  + ", ".join(f"{c + 1}: {r:.1f} Å" + (f" (reference {refined.references[c] + 1})"
                                                       if c in refined.references else "")
                              + (f" (initial model {'kept' if ab[c]['kept'] else 'not kept'}, "
                                 f"{ab[c]['resolution_before']:.1f} -> {ab[c]['resolution_after']:.1f} Å)"
                                 if c in ab else "") for c, r in enumerate(refined.resolutions)))
    return 0
