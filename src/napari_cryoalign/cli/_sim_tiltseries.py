"""``cryoalign simulate tiltseries``: gold-marker tilt series with beam-induced deformation (SparseAlign)."""

from __future__ import annotations

from ._args import floats
from ._simulate import add_output_argument, add_run_arguments, print_paths, run_simulation


def register(sub) -> None:
    p = sub.add_parser(
        "tiltseries",
        help="simulate a gold-marker tilt series with a polynomial deformation (SparseAlign presets)",
        description=__doc__ + " Writes tiltseries.mrc (counts), tiltseries_ideal.mrc (noiseless marker "
        "image), tiltseries.tlt, order.txt and truth.json (bead positions, projected positions, the "
        "deformation model and its coefficients). Options left out take the preset's values.",
    )
    add_output_argument(p)
    p.add_argument("--preset", default="paper3d", choices=("paper3d", "paper2d", "sample"),
                   help="paper3d: SparseAlign 3D experiment; paper2d: the 2D example; sample: realistic "
                   "256² sample data (default paper3d)")
    p.add_argument("--markers", type=int, default=None, metavar="N", help="number of gold beads")
    p.add_argument("--bead-diameter", type=float, default=None, metavar="NM")
    p.add_argument("--fov", type=floats, default=None, metavar="X,Y", help="field of view in nm")
    p.add_argument("--thickness", type=float, default=None, metavar="NM", help="slab thickness in nm")
    p.add_argument("--detector", type=lambda s: tuple(int(v) for v in s.split(",")), default=None, metavar="Y,X",
                   help="detector pixels (y,x)")
    p.add_argument("--tilt-range", type=floats, default=None, metavar="MIN,MAX")
    p.add_argument("--tilts", type=int, default=None, metavar="N", help="number of tilts")
    p.add_argument("--acquisition", default=None, choices=("sequential", "bidirectional", "dose-symmetric"))
    p.add_argument("--deformation", default=None, metavar="JSON",
                   help='deformation terms in nm, e.g. \'{"z": {"1": 200, "x^2": -100, "y^2": -100}}\' '
                   "(basis x,y quadratic, coordinates normalised by the field of view)")
    p.add_argument("--profile", default=None, choices=("gaussian", "ball"))
    p.add_argument("--sigma", type=float, default=None, metavar="NM", help="Gaussian profile std (nm)")
    p.add_argument("--noise", default=None, choices=("poisson", "gaussian", "none"))
    p.add_argument("--electrons-per-pixel", type=float, default=None, metavar="I0")
    p.add_argument("--dose", type=float, default=None, metavar="E_PER_A2", help="dose per tilt in e/Å² (instead of I0)")
    p.add_argument("--noise-variance", type=float, default=None, help="Gaussian noise variance (counts²)")
    p.add_argument("--ctf", action="store_true", help="image through the CTF (weak-phase, exp form)")
    p.add_argument("--defocus", type=float, default=4.0, metavar="UM")
    add_run_arguments(p, device=False)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..backend.simulate.markers import (
        check_outputs,
        sample_marker_tiltseries_job,
        simulate_marker_tiltseries_job,
        write_marker_tiltseries,
    )

    check_outputs(args.out, overwrite=args.overwrite)
    if args.preset == "sample":
        job = sample_marker_tiltseries_job(seed=args.seed)
    else:
        job = simulate_marker_tiltseries_job(
            preset=args.preset,
            n_markers=args.markers,
            bead_diameter_nm=args.bead_diameter,
            field_of_view_nm=args.fov,
            thickness_nm=args.thickness,
            detector_shape=args.detector,
            tilt_range_deg=args.tilt_range,
            n_tilts=args.tilts,
            acquisition=args.acquisition,
            deformation=_deformation(args),
            profile=args.profile,
            profile_sigma_nm=args.sigma,
            noise=args.noise,
            electrons_per_pixel=args.electrons_per_pixel,
            dose_per_tilt=args.dose,
            noise_variance=args.noise_variance,
            ctf=args.ctf,
            defocus_um=args.defocus,
            seed=args.seed,
        )
    sim = run_simulation(job, args, "tiltseries")
    paths = write_marker_tiltseries(sim, args.out, overwrite=args.overwrite)
    n_t, ny, nx = sim.tilt_series.shape
    terms = ", ".join(f"D{t['component']}[{t['term']}]={t['value_nm']:g} nm" for t in
                      sim.deformation.to_dict()["nonzero_terms"]) or "none"
    print(f"wrote {n_t} tilts of {ny}x{nx} px ({sim.pixel_size_nm:g} nm), {len(sim.bead_positions_nm)} beads of "
          f"{sim.bead_diameter_nm:g} nm, noise {sim.params['noise']}, deformation: {terms}")
    print_paths(paths)
    return 0


def _deformation(args):
    """The ``--deformation`` JSON terms as a model in the preset's basis, or None (the preset's deformation)."""
    import json

    from ..backend.deformation import PolynomialDeformation
    from ..errors import InputError

    if args.deformation is None:
        return None
    try:
        terms = json.loads(args.deformation)
    except json.JSONDecodeError as e:
        raise InputError("a JSON object of deformation terms", field="--deformation", got=str(e)) from None
    two_d = args.preset == "paper2d"
    fov = args.fov[0] if args.fov else 819.2
    return PolynomialDeformation.from_terms(terms, degree=2, variables="xz" if two_d else "xy", length_scale_nm=fov)
