"""``cryoalign simulate tomogram``: a crowded ice slab of real structures, tilt series, WBP tomogram and truth STAR."""

from __future__ import annotations

from ._args import float_pair, ints
from ._simulate import add_output_argument, add_run_arguments, print_paths, run_simulation


def register(sub) -> None:
    p = sub.add_parser(
        "tomogram",
        help="simulate a tomogram (particles in ice, membranes, gold; CTF, dose noise, WBP) with a truth STAR",
        description=__doc__ + " Writes tomogram.mrc, tiltseries.mrc, tiltseries.tlt, order.txt, truth.star "
        "(rlnCoordinateX/Y/Z, rlnAngleRot/Tilt/Psi, rlnClassNumber, rlnTomoName) and params.json.",
    )
    add_output_argument(p)
    p.add_argument("--size", type=ints, default=(512, 512, 128), metavar="X,Y,Z",
                   help="tomogram size in voxels as x,y,z (default 512,512,128)")
    p.add_argument("--voxel-size", type=float, default=10.0, metavar="A", help="voxel size in Å (default 10)")
    p.add_argument("--particles", type=int, default=200, metavar="N", help="number of particles (default 200)")
    p.add_argument("--structures", default="ribosome,cct,ruvab,mtor",
                   help="comma-separated packaged structures (default: %(default)s)")
    p.add_argument("--abundances", default=None, metavar="W,W,...", help="relative abundance per structure")
    p.add_argument("--ice-thickness", type=float, default=None, metavar="NM",
                   help="ice thickness in nm (default: z size)")
    p.add_argument("--vesicles", type=int, default=0, help="number of lipid vesicles (default 0)")
    p.add_argument("--membranes", type=int, default=0, help="number of flat membranes (default 0)")
    p.add_argument("--gold", type=int, default=0, help="number of gold beads (default 0)")
    p.add_argument("--gold-diameter", type=float, default=10.0, metavar="NM", help="gold bead diameter (default 10 nm)")
    p.add_argument("--tilt-range", type=float_pair, default=(-60.0, 60.0), metavar="MIN,MAX", help="degrees (default -60,60)")
    p.add_argument("--tilt-step", type=float, default=3.0, metavar="DEG", help="tilt step (default 3)")
    p.add_argument("--acquisition", default="dose-symmetric",
                   choices=("sequential", "bidirectional", "dose-symmetric"))
    p.add_argument("--defocus", type=float, default=3.0, metavar="UM", help="underfocus in µm (default 3)")
    p.add_argument("--voltage", type=float, default=300.0, metavar="KV")
    p.add_argument("--cs", type=float, default=2.7, metavar="MM")
    p.add_argument("--amplitude-contrast", type=float, default=0.07)
    p.add_argument("--no-ctf", action="store_true", help="ideal imaging without CTF")
    p.add_argument("--dose", type=float, default=100.0, metavar="E_PER_A2",
                   help="total dose in e/Å² split over the tilts (default 100); 0 = noiseless")
    p.add_argument("--no-phaseflip", action="store_true", help="do not phase-flip before reconstruction")
    p.add_argument("--filter", default="ramp", choices=("ramp", "shepp-logan", "cosine", "hann", "none"))
    p.add_argument("--radial", type=float_pair, default=(0.35, 0.035), metavar="CUTOFF,FALLOFF",
                   help="WBP low-pass in cycles/pixel, like IMOD's RADIAL (default 0.35,0.035)")
    p.add_argument("--tomo-name", default="sim_tomo", help="rlnTomoName in the STAR file")
    p.add_argument("--write-potential", action="store_true", help="also write the noiseless potential.mrc")
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..backend.simulate.tomogram import (
        check_outputs,
        simulate_tomogram_job,
        write_tomogram_simulation,
    )
    from ..errors import InputError

    check_outputs(args.out, overwrite=args.overwrite, write_potential=args.write_potential)
    if len(args.size) != 3:
        raise InputError("a size x,y,z of three integers", field="--size", got=args.size)
    nx, ny, nz = args.size
    abund = None if args.abundances is None else [float(v) for v in args.abundances.split(",")]
    job = simulate_tomogram_job(
        shape=(nz, ny, nx),
        voxel_size_angstrom=args.voxel_size,
        structures=[s.strip() for s in args.structures.split(",") if s.strip()],
        abundances=abund,
        n_particles=args.particles,
        ice_thickness_nm=args.ice_thickness,
        n_vesicles=args.vesicles,
        n_membranes=args.membranes,
        n_gold=args.gold,
        gold_diameter_nm=args.gold_diameter,
        tilt_range_deg=args.tilt_range,
        tilt_step_deg=args.tilt_step,
        acquisition=args.acquisition,
        ctf=not args.no_ctf,
        defocus_um=args.defocus,
        voltage_kv=args.voltage,
        cs_mm=args.cs,
        amplitude_contrast=args.amplitude_contrast,
        dose=None if args.dose == 0 else args.dose,
        ctf_correction="none" if args.no_phaseflip else "phaseflip",
        filter=args.filter,
        radial_cutoff=args.radial[0],
        radial_falloff=args.radial[1],
        keep_potential=args.write_potential,
        seed=args.seed,
        device=args.device,
    )
    sim = run_simulation(job, args, "tomogram")
    paths = write_tomogram_simulation(sim, args.out, tomo_name=args.tomo_name, overwrite=args.overwrite,
                                      write_potential=args.write_potential)
    counts = {n: int((sim.truth.classes == i + 1).sum()) for i, n in enumerate(sim.truth.class_names)}
    p = sim.params
    print(f"wrote tomogram {nx}x{ny}x{nz} at {args.voxel_size:g} Å: {p['n_placed']} particles "
          f"({', '.join(f'{n} {c}' for n, c in counts.items())}), {len(sim.tilt_angles_deg)} tilts "
          f"{sim.tilt_angles_deg[0]:g}..{sim.tilt_angles_deg[-1]:g}°, dose {args.dose:g} e/Å², "
          f"{p['runtime_s']:.1f} s")
    print_paths(paths, ("tomogram", "tilt_series", "tlt", "truth", "params"))
    return 0
