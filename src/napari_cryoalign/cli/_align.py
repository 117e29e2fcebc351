"""``cryoalign align`` / ``align train`` / ``average`` / ``fsc``: subtomogram alignment, averaging and FSC, headless.

Orientations and shifts follow docs/conventions.md: ``rlnAngleRot/Tilt/Psi`` (RELION ZYZ, the
matrix ``A`` maps reference to particle coordinates) and ``rlnOriginX/Y/ZAngst`` (the particle
centre is at ``coordinate - origin / voxel_size``). Particles cut from a tomogram keep their
``rlnCoordinateX/Y/Z``; the refinement goes into the origins. The per-particle score after
alignment (constrained, missing-wedge-aware correlation, higher is better) is written in the
extra column ``cryoalignCorrelation``.
"""

from __future__ import annotations

from pathlib import Path

from ._args import device_arg, float_pair, resolve_device, show_progress

SCORE_COLUMN = "cryoalignCorrelation"  # = backend.align.extract.SCORE_COLUMN (not imported: keeps --help fast)


def _add_particle_args(p) -> None:
    p.add_argument("--particles", required=True, metavar="P.star",
                   help="particles: rlnImageName naming one MRC per particle, or coordinates with --tomogram")
    p.add_argument("--tomogram", default=None, metavar="T.mrc", help="cut boxes around rlnCoordinateX/Y/Z from it")
    p.add_argument("--box", type=int, default=None, metavar="N", help="box size in voxels (even), with --tomogram")
    p.add_argument("--tilt-range", type=float_pair, default=(-60.0, 60.0), metavar="MIN,MAX",
                   help="tilt range of the data, for the missing-wedge masks (default -60,60)")
    p.add_argument("--no-wedge", action="store_true", help="treat the particles as fully observed")
    p.add_argument("--fourier-mask", default=None, metavar="M.mrc",
                   help="observed Fourier mask (fftshift-ed, DC at N//2), instead of --tilt-range")
    p.add_argument("--device", type=device_arg, default="cpu", help="torch device: cpu, cuda or auto (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _add_ctf_symmetry_args(p) -> None:
    p.add_argument("--ctf", choices=["auto", "none"], default="auto",
                   help="auto (default): when the STAR file has rlnDefocusU, score CTF-premultiplied particles "
                   "and CTF-correct the averages (optics from the file); none: ignore the CTF")
    p.add_argument("--symmetry", default="C1", metavar="GROUP",
                   help="point group of the reference (C1, Cn, Dn, T, O, I): the search covers its asymmetric "
                   "unit, averages are symmetrised (default C1)")


def register(sub) -> None:
    p = sub.add_parser(
        "align",
        help="align subtomograms to a reference (exhaustive search, learned, learned+refine); `align train`",
        description=__doc__,
    )
    p.add_argument("action", nargs="?", choices=["train"], default=None,
                   help="`train`: fine-tune the learned aligner on these particles (unsupervised: no poses; "
                   "a part of them is held out to choose the epoch, docs/align_learned.md)")
    _add_particle_args(p)
    p.add_argument("--reference", default=None, metavar="R.mrc", help="reference map (same box and voxel size)")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="ALIGNED.star (align) or MODEL.pt (align train)")
    p.add_argument("--method", choices=["exhaustive", "learned", "learned+refine"], default="exhaustive",
                   help="exhaustive grid + FFT search (default), the learned aligner, or learned then local search")
    p.add_argument("--angular-step", type=float, default=30.0, metavar="DEG",
                   help="global rotation grid step in degrees (default 30; refined locally to step/9)")
    p.add_argument("--refine-levels", type=int, default=2, metavar="K",
                   help="local refinement levels after the grid, each 3x finer (default 2)")
    p.add_argument("--max-shift", type=float, default=None, metavar="VOX", help="largest shift searched (default box/4)")
    p.add_argument("--lowpass", type=float, default=None, metavar="A", help="compare frequencies up to 1/A only")
    p.add_argument("--model", default=None, metavar="MODEL.pt", help="learned aligner weights (default: shipped)")
    p.add_argument("--candidates", type=int, default=1, metavar="K",
                   help="learned (grid model): compare the network's K most probable rotations by the "
                   "wedge-aware correlation and keep the best (default 1: fastest; 8 is more accurate, ~2x slower)")
    _add_ctf_symmetry_args(p)
    p.add_argument("--epochs", type=int, default=50, help="align train: at most this many epochs (default 50)")
    p.add_argument("--batch-size", type=int, default=16, help="align train: batch size (default 16)")
    p.add_argument("--lr", type=float, default=1e-4, help="align train: learning rate (default 1e-4)")
    p.add_argument("--minutes", type=float, default=10.0, metavar="M",
                   help="align train: stop after M minutes of training (default 10)")
    p.add_argument("--validation", type=float, default=0.2, metavar="F",
                   help="align train: fraction of the particles held out; after each epoch they are aligned and "
                   "scored (no poses), and the model keeps the best epoch's weights if its rise over the start is "
                   "significant (paired t >= 2), else the starting ones (default 0.2; 0 = train on all, keep the "
                   "last epoch)")
    p.add_argument("--patience", type=int, default=0, metavar="N",
                   help="align train: stop after N epochs without a higher mean held-out score (default 0: never; "
                   "the held-out score can dip for some epochs before it rises)")
    p.add_argument("--correlation", choices=["constrained", "imputed"], default="constrained",
                   help="align train: the correlation maximised: over the Fourier region both measured (default) "
                   "or Gum-Net's imputed one (rewards hiding the reference in the missing wedge)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_align)

    p = sub.add_parser("average", help="average aligned subtomograms (wedge-compensated), half maps, FSC",
                       description="Average the particles with the poses of the STAR file; with --iterations N "
                       "refine them first by N rounds of gold-standard iterative alignment to the half-set averages.")
    _add_particle_args(p)
    p.add_argument("--out", required=True, metavar="AVG.mrc", help="the average (MRC)")
    p.add_argument("--iterations", type=int, default=0, metavar="N",
                   help="alignment rounds before the final average (default 0: use the STAR poses)")
    p.add_argument("--half-maps", action="store_true",
                   help="also write AVG_half1.mrc, AVG_half2.mrc, their FSC (AVG_fsc.csv, AVG_fsc.png)")
    p.add_argument("--angular-step", type=float, default=30.0, metavar="DEG", help="with --iterations (default 30)")
    p.add_argument("--out-star", default=None, metavar="ALIGNED.star", help="with --iterations: the refined poses")
    _add_ctf_symmetry_args(p)
    p.set_defaults(func=run_average)

    p = sub.add_parser("fsc", help="Fourier shell correlation of two maps: table and PNG plot",
                       description="FSC of two maps of the same box and voxel size; prints the curve and the "
                       "resolutions at 0.143 and 0.5 (Å), and writes a PNG plot.")
    p.add_argument("map_a", metavar="A.mrc")
    p.add_argument("map_b", metavar="B.mrc")
    p.add_argument("--mask", default=None, metavar="M.mrc", help="real-space mask applied to both maps")
    p.add_argument("--plot", default=None, metavar="FSC.png", help="plot file (default: fsc_<A>_<B>.png here)")
    p.add_argument("--csv", default=None, metavar="FSC.csv", help="also write the table as CSV")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_fsc)


# ----------------------------------------------------------------------------- helpers
def _fourier_masks(args, box: int, voxel: float):
    """The particles' observed Fourier mask (N, N, N), fftshift-ed, or None."""
    import numpy as np

    from ..errors import InputError

    if args.fourier_mask:
        from ..io import read_mrc

        m = read_mrc(args.fourier_mask).data
        if m.shape != (box,) * 3:
            raise InputError(f"a Fourier mask of the particles' box {(box,) * 3}", path=args.fourier_mask,
                             field="shape", got=f"{m.shape}")
        return np.asarray(m, dtype=np.float32)
    from ..backend.wedge import particle_fourier_mask

    return particle_fourier_mask(box, tilt_range_deg=None if args.no_wedge else tuple(args.tilt_range))


def _print_skipped(pset, command: str) -> None:
    import numpy as np

    frac = getattr(pset, "fraction_inside", None)
    if frac is not None and np.any(np.asarray(frac) < 1.0):
        f = np.asarray(frac)
        print(f"cryoalign {command}: {int(np.sum(f < 1.0))} of {len(f)} boxes cross the tomogram's faces and are "
              f"padded (fraction inside: min {f.min():.2f}, median of those {np.median(f[f < 1.0]):.2f}; "
              "column cryoalignFractionInside)")
    if pset.skipped:
        print(f"cryoalign {command}: skipped {len(pset.skipped)} of {len(pset.table)} particles:")
        for s in pset.skipped:
            print(f"  row {s.row}: {s.reason}")


def _read_reference(path, *, box: int, voxel: float, particles_path):
    import numpy as np

    from ..errors import InputError
    from ..io import read_mrc
    from ..io.mrc import voxel_size_isotropic

    vol = read_mrc(path)
    if vol.data.shape != (box,) * 3:
        raise InputError(f"a reference of the particles' box {(box,) * 3} (z, y, x)", path=path, field="shape",
                         got=f"{vol.data.shape}")
    rv = voxel_size_isotropic(vol)
    if abs(rv - voxel) > 1e-3 * voxel:
        raise InputError(f"the particles' voxel size ({voxel:g} Å, from {particles_path})", path=path,
                         field="voxel_size", got=f"{rv:g} Å")
    return np.asarray(vol.data, dtype=np.float32)


def _star_origin_voxels(pset):
    """Origins (voxels) to apply to the loaded boxes: STAR origin plus the extraction's sub-voxel remainder."""
    return pset.origins_angstrom / pset.voxel_size + pset.extraction_origins_voxels


# ----------------------------------------------------------------------------- align
def run_align(args) -> int:
    import time

    from ..backend.align.extract import load_particle_set, write_aligned_star
    from ..backend.align.methods import align_job, learned_aligner
    from ..backend.jobs import run_job
    from ..errors import InputError
    from ..io import ensure_not_input

    device = resolve_device(args.device)
    ensure_not_input(args.out, args.particles, args.tomogram, args.reference)
    if args.action == "train":
        return _run_train(args, device)
    if args.reference is None:
        raise InputError("a reference map (--reference R.mrc)", field="--reference", got="none")
    from ..io import check_output_path

    check_output_path(args.out, overwrite=args.overwrite)
    pset = load_particle_set(args.particles, tomogram=args.tomogram, box=args.box)
    _print_skipped(pset, "align")
    box = pset.volumes.shape[-1]
    ref = _read_reference(args.reference, box=box, voxel=pset.voxel_size, particles_path=args.particles)
    masks = _fourier_masks(args, box, pset.voxel_size)
    ctf, symmetry = _ctf_and_symmetry(args, pset)
    fmax = 0.5 if args.lowpass is None else min(0.5, pset.voxel_size / args.lowpass)
    t0 = time.perf_counter()
    model = None
    if args.method != "exhaustive" and args.model:
        model = learned_aligner().load_model(args.model, device=device)
    job = align_job(pset.volumes, ref, method=args.method, particle_masks=masks, angular_step_deg=args.angular_step,
                    refine_levels=args.refine_levels, max_shift_voxels=args.max_shift, max_frequency=fmax, model=model,
                    candidates=args.candidates, ctf=ctf, symmetry=symmetry, voxel_size=pset.voxel_size, device=device)
    result = run_job(job, progress=show_progress(args), description="align")
    seconds = time.perf_counter() - t0
    out = write_aligned_star(args.out, pset, result, overwrite=args.overwrite)
    import numpy as np

    print(f"aligned {len(pset.rows)} particles ({box}^3 at {pset.voxel_size:g} Å) with {result.method} in "
          f"{seconds:.1f} s; {SCORE_COLUMN}: median {np.median(result.scores):.3f}, "
          f"min {np.min(result.scores):.3f}")
    print(f"  wrote {out}")
    return 0


def _ctf_and_symmetry(args, pset):
    """The particles' CTF (``--ctf``, from the STAR file) and the point group (``--symmetry``), printed."""
    from ..backend.align.extract import particle_ctf
    from ..backend.symmetry import normalize_symmetry
    from ..errors import InputError

    try:
        symmetry = normalize_symmetry(args.symmetry)
    except InputError as exc:
        raise InputError(exc.expected, field="--symmetry", got=args.symmetry) from None
    ctf = particle_ctf(pset, mode=args.ctf)
    if ctf is not None:
        print(f"CTF: {ctf.describe()} (from {args.particles}; --ctf none ignores it)")
    elif args.ctf == "auto":
        print("CTF: none in the STAR file (no rlnDefocusU): particles compared as they are")
    if symmetry != "C1":
        print(f"symmetry: {symmetry}")
    return ctf, symmetry


def _run_train(args, device: str) -> int:
    from ..backend.align.extract import load_particle_set
    from ..backend.align.methods import learned_aligner
    from ..backend.jobs import run_job
    from ..errors import InputError
    from ..io import check_output_path

    check_output_path(args.out, overwrite=args.overwrite)
    learned = learned_aligner()
    from ..backend.align.learned_train import train_job

    pset = load_particle_set(args.particles, tomogram=args.tomogram, box=args.box)
    _print_skipped(pset, "align train")
    box = pset.volumes.shape[-1]
    masks = _fourier_masks(args, box, pset.voxel_size)
    model = learned.load_model(args.model, device=device) if args.model else None
    if model is None:
        try:
            model = learned.load_default_model(device=device)
        except (InputError, OSError):  # no shipped weights: train from scratch
            model = None
    ref = None
    if args.reference:  # pairs (particle, reference) instead of random particle pairs
        from ..io import read_mrc

        ref = read_mrc(args.reference).data
        if ref.shape != (box,) * 3:
            raise InputError(f"a reference of the particles' box {(box,) * 3}", path=args.reference, field="shape",
                             got=f"{ref.shape}")
    if args.minutes is not None and not args.minutes > 0:
        raise InputError("a positive number of minutes", field="--minutes", got=args.minutes)
    if args.patience < 0:
        raise InputError("an integer >= 0", field="--patience", got=args.patience)
    job = train_job(pset.volumes, references=ref, particle_masks=masks, model=model, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, voxel_size=pset.voxel_size, device=device, seed=args.seed,
                    max_seconds=None if args.minutes is None else 60.0 * args.minutes, validation=args.validation,
                    patience=args.patience or None, correlation=args.correlation)
    res = run_job(job, progress=show_progress(args), description="train")
    meta = {"particles": str(args.particles), "training": res.settings}
    meta.update(validation_scores=None if res.best_epoch is None else [round(float(v), 5) for v in
                                                                       res.validation_scores],
                best_epoch=res.best_epoch)
    path = learned.save_model(res.model, args.out, metadata=meta, overwrite=args.overwrite)
    print(f"trained {res.steps} steps ({len(res.epoch_losses)} epochs) in {res.seconds:.1f} s on "
          f"{res.settings['n_particles'] - res.settings['n_validation']} particles"
          + (f"; final epoch loss {res.epoch_losses[-1]:.4f}" if len(res.epoch_losses) else ""))
    if res.best_epoch is not None:
        v = res.validation_scores
        n_val = res.settings["n_validation"]
        if res.best_epoch == 0:
            print(f"  no epoch raised the score of the {n_val} held-out particles ({v[0]:.4f}, best "
                  f"{max(v):.4f}) significantly: the weights written are the starting ones")
        else:
            print(f"  held-out score ({n_val} particles, no poses) {v[0]:.4f} -> {v[res.best_epoch]:.4f}: "
                  f"kept epoch {res.best_epoch} of {len(v) - 1}")
    print(f"  wrote {path}")
    return 0


# ----------------------------------------------------------------------------- average
def run_average(args) -> int:
    import numpy as np

    from ..backend.align.average import average_particles, iterative_average_job
    from ..backend.align.extract import load_particle_set, write_aligned_star
    from ..backend.align.types import AlignmentResult
    from ..backend.geometry import euler_to_matrix
    from ..backend.jobs import run_job
    from ..io import check_output_path, ensure_not_input, write_mrc

    device = resolve_device(args.device)
    out = Path(args.out)
    ensure_not_input(out, args.particles, args.tomogram)
    outs = [out] + (half_map_paths(out) if args.half_maps else [])
    if args.out_star:
        outs.append(Path(args.out_star))
    for o in outs:
        check_output_path(o, overwrite=args.overwrite)
    pset = load_particle_set(args.particles, tomogram=args.tomogram, box=args.box)
    _print_skipped(pset, "average")
    box = pset.volumes.shape[-1]
    masks = _fourier_masks(args, box, pset.voxel_size)
    ctf, symmetry = _ctf_and_symmetry(args, pset)
    poses = AlignmentResult(euler_to_matrix(pset.euler_deg), _star_origin_voxels(pset), np.full(len(pset.rows), np.nan),
                            "star")
    half = None
    if "rlnRandomSubset" in pset.table.data.columns:
        h = pset.table.data["rlnRandomSubset"].to_numpy()[pset.rows].astype(int)
        if set(np.unique(h)) == {1, 2}:
            half = h
    if args.iterations > 0:
        job = iterative_average_job(pset.volumes, particle_masks=masks, initial=poses, iterations=args.iterations,
                                    angular_step_deg=args.angular_step, voxel_size_angstrom=pset.voxel_size,
                                    half=half, ctf=ctf, symmetry=symmetry, inside_masks=pset.inside_masks(),
                                    device=device)
        res = run_job(job, progress=show_progress(args), description="average")
    else:
        res = average_particles(pset.volumes, poses, particle_masks=masks, half_maps=args.half_maps,
                                voxel_size_angstrom=pset.voxel_size, half=half, ctf=ctf, symmetry=symmetry,
                                inside_masks=pset.inside_masks(), device=device)
    write_mrc(out, res.average, voxel_size=pset.voxel_size, overwrite=args.overwrite)
    print(f"averaged {len(pset.rows)} particles ({box}^3 at {pset.voxel_size:g} Å) -> {out}")
    if args.half_maps and res.fsc is not None:
        write_half_maps(out, res, voxel_size=pset.voxel_size, overwrite=args.overwrite)
        print(f"  half maps: {outs[1]}, {outs[2]}")
        print(f"  FSC 0.143: {res.fsc.resolution_0143:.1f} Å   FSC 0.5: {res.fsc.resolution_05:.1f} Å  "
              f"({outs[3].name}, {outs[4].name})")
    if args.out_star:
        if args.iterations > 0:
            write_aligned_star(args.out_star, pset, res.alignment, overwrite=args.overwrite)
            print(f"  refined poses: {args.out_star}")
        else:
            print("  --out-star needs --iterations > 0; not written")
    return 0


# ----------------------------------------------------------------------------- half maps, fsc
def half_map_paths(out: Path) -> list[Path]:
    """The files next to a map ``out`` that ``--half-maps`` writes: half 1, half 2, the FSC table and plot."""
    out = Path(out)
    return [out.with_name(f"{out.stem}_half1.mrc"), out.with_name(f"{out.stem}_half2.mrc"),
            out.with_name(f"{out.stem}_fsc.csv"), out.with_name(f"{out.stem}_fsc.png")]


def write_half_maps(out: Path, result, *, voxel_size: float, overwrite: bool) -> list[Path]:
    """Write ``result.half1``, ``result.half2`` and ``result.fsc`` (table and plot) to :func:`half_map_paths`."""
    from ..io import write_mrc

    half1, half2, csv, png = half_map_paths(out)
    write_mrc(half1, result.half1, voxel_size=voxel_size, overwrite=overwrite)
    write_mrc(half2, result.half2, voxel_size=voxel_size, overwrite=overwrite)
    _write_fsc_outputs(result.fsc, csv=csv, png=png, title=Path(out).name, overwrite=overwrite)
    return [half1, half2, csv, png]


def _fsc_table(report) -> str:
    import numpy as np

    f = np.asarray(report.curve.frequency)
    lines = ["shell  freq_1/vox  freq_1/A  resolution_A     fsc"]
    for i, (fi, ci) in enumerate(zip(f, report.curve.fsc)):
        res = report.voxel_size_angstrom / fi if fi > 0 else float("inf")
        lines.append(f"{i:5d}  {fi:10.4f}  {fi / report.voxel_size_angstrom:8.5f}  {res:12.2f}  {ci:6.3f}")
    return "\n".join(lines)


def _write_fsc_outputs(report, *, csv, png, title: str, overwrite: bool) -> None:
    import numpy as np

    from ..io import atomic_path, atomic_write

    if csv is not None:
        f = np.asarray(report.curve.frequency)
        with atomic_write(csv, mode="w", overwrite=overwrite) as fh:
            fh.write("shell,frequency_per_voxel,frequency_per_angstrom,fsc\n")
            for i, (fi, ci) in enumerate(zip(f, report.curve.fsc)):
                fh.write(f"{i},{fi:.6f},{fi / report.voxel_size_angstrom:.6f},{ci:.6f}\n")
    if png is not None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 3.5), dpi=100)
        ax = fig.add_subplot(111)
        freq = np.asarray(report.curve.frequency) / report.voxel_size_angstrom
        ax.plot(freq, report.curve.fsc, "-o", ms=3, label="FSC")
        ax.axhline(0.143, color="grey", ls="--", lw=0.8)
        ax.axhline(0.5, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("spatial frequency (1/Å)")
        ax.set_ylabel("FSC")
        ax.set_ylim(-0.1, 1.05)
        ax.set_title(f"{title}: {report.resolution_0143:.1f} Å (0.143), {report.resolution_05:.1f} Å (0.5)", fontsize=9)
        fig.tight_layout()
        with atomic_path(png, overwrite=overwrite) as tmp:
            fig.savefig(tmp, format="png")


def run_fsc(args) -> int:
    import numpy as np

    from ..backend.align.average import fsc_report
    from ..errors import InputError
    from ..io import check_output_path, ensure_not_input, read_mrc
    from ..io.mrc import check_same_voxel_size

    a = read_mrc(args.map_a)
    b = read_mrc(args.map_b)
    if a.data.shape != b.data.shape:
        raise InputError(f"a map of the same shape as {args.map_a} {a.data.shape}", path=args.map_b, field="shape",
                         got=f"{b.data.shape}")
    voxel = check_same_voxel_size(b, a)
    mask = None
    if args.mask:
        m = read_mrc(args.mask)
        if m.data.shape != a.data.shape:
            raise InputError(f"a mask of the maps' shape {a.data.shape}", path=args.mask, field="shape",
                             got=f"{m.data.shape}")
        mask = np.asarray(m.data, dtype=np.float32)
    png = Path(args.plot) if args.plot else Path(f"fsc_{Path(args.map_a).stem}_{Path(args.map_b).stem}.png")
    for o in (png, args.csv):
        if o is not None:
            ensure_not_input(o, args.map_a, args.map_b, args.mask)
            check_output_path(o, overwrite=args.overwrite)
    report = fsc_report(a.data, b.data, voxel_size_angstrom=voxel, mask=mask)
    print(_fsc_table(report))
    print(f"resolution at FSC 0.143: {report.resolution_0143:.2f} Å")
    print(f"resolution at FSC 0.5:   {report.resolution_05:.2f} Å")
    _write_fsc_outputs(report, csv=args.csv, png=png, title=f"{Path(args.map_a).name} vs {Path(args.map_b).name}",
                       overwrite=args.overwrite)
    print(f"  plot: {png}" + (f"   table: {args.csv}" if args.csv else ""))
    return 0
