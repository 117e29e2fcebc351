"""``cryoalign simulate subtomograms``: a subtomogram set of real structures with known poses (Gum-Net protocol)."""

from __future__ import annotations

from ._args import float_range
from ._simulate import add_output_argument, add_run_arguments, defocus_option, run_simulation, snr_option


def register(sub) -> None:
    p = sub.add_parser(
        "subtomograms",
        help="simulate subtomograms (random pose and shift, missing wedge, CTF, noise at an SNR)",
        description=__doc__ + " Writes one MRC per particle, particles.star (rlnImageName, Euler angles, "
        "origins, rlnClassNumber), the reference maps, the observed Fourier mask and params.json.",
    )
    add_output_argument(p)
    p.add_argument("--structures", default="ribosome,cct,mtor,ruvab,dengue_e_fab",  # or procedural:<seed>
                   help="comma-separated packaged structures (see `--list`); default: %(default)s")
    p.add_argument("--list", action="store_true", help="list the packaged structures and exit")
    p.add_argument("--n-per-class", type=int, default=20, metavar="N", help="particles per structure (default 20)")
    p.add_argument("--box", type=int, default=32, help="box size in voxels (default 32)")
    p.add_argument("--voxel-size", type=float, default=12.0, metavar="A", help="voxel size in Å (default 12)")
    p.add_argument("--snr", type=float, default=0.1, help="signal variance / noise variance (default 0.1); 0 = no noise")
    p.add_argument("--tilt-range", type=float_range, default=(-60.0, 60.0), metavar="MIN,MAX",
                   help="tilt range in degrees (default -60,60); see also --no-wedge")
    p.add_argument("--no-wedge", action="store_true", help="no missing wedge (full Fourier sphere)")
    p.add_argument("--max-shift", type=float, default=3.0, metavar="VOX", help="max shift per axis in voxels (default 3)")
    p.add_argument("--defocus", type=float_range, default=(5.0, 5.0), metavar="UM[,UM]",
                   help="defocus in µm (underfocus positive) or a range MIN,MAX (default 5)")
    p.add_argument("--no-ctf", action="store_true", help="no CTF")
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..backend.simulate.structures import list_structures, structure_info
    from ..backend.simulate.subtomograms import (
        simulate_subtomograms_job,
        write_subtomogram_set,
    )

    if args.list:
        for name in list_structures():
            info = structure_info(name)
            print(f"{name:14s} {info['pdb_id']}  {info['mass_da'] / 1e3:8.1f} kDa  {info['description']}")
        return 0
    job = simulate_subtomograms_job(
        [s.strip() for s in args.structures.split(",") if s.strip()],
        n_per_class=args.n_per_class,
        box=args.box,
        voxel_size_angstrom=args.voxel_size,
        snr=snr_option(args),
        tilt_range_deg=None if args.no_wedge else args.tilt_range,
        max_shift_voxels=args.max_shift,
        defocus_um=defocus_option(args),
        seed=args.seed,
        device=args.device,
    )
    sset = run_simulation(job, args, "subtomograms")
    paths = write_subtomogram_set(sset, args.out, overwrite=args.overwrite)
    print(f"wrote {sset.n} subtomograms ({args.box}^3 at {sset.voxel_size_angstrom:g} Å, SNR {args.snr:g}, "
          f"classes {', '.join(f'{i + 1}={n}' for i, n in enumerate(sset.class_names))})")
    print(f"  STAR:   {paths['star']}")
    print(f"  params: {paths['params']}")
    print(f"  references: {paths['references'][0].parent}/  mask: {paths['mask']}")
    return 0
