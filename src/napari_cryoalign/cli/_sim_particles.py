"""``cryoalign simulate particles``: 2D particle images of a real structure with known poses, shifts and CTFs."""

from __future__ import annotations

from ._args import float_range
from ._simulate import add_output_argument, add_run_arguments, defocus_option, run_simulation, snr_option


def register(sub) -> None:
    p = sub.add_parser(
        "particles",
        help="simulate single-particle images (projections, CTF, shifts, noise) with a RELION STAR",
        description=__doc__ + " Writes particles.mrcs, particles.star (optics block, poses, origins, "
        "defocus, rlnRandomSubset half-sets), reference.mrc and params.json.",
    )
    add_output_argument(p)
    p.add_argument("--structure", default="ribosome", help="packaged structure (default ribosome)")
    p.add_argument("--n", type=int, default=500, help="number of images (default 500)")
    p.add_argument("--box", type=int, default=64, help="image size in pixels (default 64)")
    p.add_argument("--pixel-size", type=float, default=6.0, metavar="A", help="pixel size in Å (default 6)")
    p.add_argument("--snr", type=float, default=0.1, help="signal variance / noise variance (default 0.1); 0 = no noise")
    p.add_argument("--defocus", type=float_range, default=(1.0, 3.0), metavar="MIN,MAX",
                   help="defocus range in µm, underfocus positive (default 1,3)")
    p.add_argument("--astigmatism", type=float, default=0.1, metavar="UM", help="defocusU - defocusV in µm (default 0.1)")
    p.add_argument("--no-ctf", action="store_true", help="no CTF")
    p.add_argument("--max-shift", type=float, default=3.0, metavar="PX", help="max shift per axis in pixels (default 3)")
    p.add_argument("--symmetry", default="C1", metavar="GROUP",
                   help="symmetrise the structure under a point group before projecting (C1, Cn, Dn, T, O, I; "
                   "RELION axes; default C1 = as it is)")
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..backend.simulate.particles import simulate_particles_job, write_particle_set

    job = simulate_particles_job(
        args.structure,
        n=args.n,
        box=args.box,
        pixel_size_angstrom=args.pixel_size,
        snr=snr_option(args),
        defocus_um=defocus_option(args),
        astigmatism_um=args.astigmatism,
        max_shift_pixels=args.max_shift,
        symmetry=args.symmetry,
        seed=args.seed,
        device=args.device,
    )
    pset = run_simulation(job, args, "particles")
    paths = write_particle_set(pset, args.out, overwrite=args.overwrite)
    print(f"wrote {pset.n} images of {pset.structure} ({args.box}^2 px at {pset.pixel_size_angstrom:g} Å, "
          f"SNR {args.snr:g}, symmetry {pset.params['symmetry']}, half-sets {int((pset.random_subset == 1).sum())}/{int((pset.random_subset == 2).sum())})")
    print(f"  STAR:  {paths['star']}")
    print(f"  stack: {paths['stack']}")
    print(f"  params: {paths['params']}")
    return 0
