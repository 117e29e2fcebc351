"""``cryoalign simulate {tomogram,subtomograms,tiltseries,particles}``: data with known truth."""

from __future__ import annotations

from importlib import import_module

__all__ = ["register", "add_output_argument", "add_run_arguments", "run_simulation", "print_paths", "snr_option",
           "defocus_option"]

_KINDS = ("_sim_tomogram", "_sim_subtomograms", "_sim_tiltseries", "_sim_particles")


def register(sub) -> None:
    parser = sub.add_parser(
        "simulate",
        help="simulate tomograms, subtomograms, marker tilt series or particle images with known truth",
        description=(
            "Simulate data from real protein structures, with the ground truth written next to it "
            "(STAR / JSON). Every run records its parameters and seed."
        ),
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for name in _KINDS:
        import_module(f"{__package__}.{name}").register(kinds)


# -- what the four simulate commands share ------------------------------------------------
def add_output_argument(p) -> None:
    """``--out DIR`` (required)."""
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created; existing files are not replaced)")


def add_run_arguments(p, *, device: bool = True) -> None:
    """``--seed``, ``--device`` (unless ``device=False``) and ``--overwrite``, the last options of each command."""
    p.add_argument("--seed", type=int, default=0)
    if device:
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run_simulation(job, args, description: str):
    """Run a simulation job with a progress bar on stderr (none with ``-q``) and return its result."""
    from ..backend.jobs import run_job

    return run_job(job, progress=not getattr(args, "quiet", False), description=description)


def print_paths(paths: dict, keys=None) -> None:
    """One line ``  key: path`` per written file (``keys``: which, in order; default all)."""
    for key in paths if keys is None else keys:
        print(f"  {key + ':':12s} {paths[key]}")


def snr_option(args) -> float | None:
    """``--snr``, None for 0 (no noise)."""
    return None if args.snr == 0 else args.snr


def defocus_option(args):
    """``--defocus MIN,MAX`` as the backend's ``defocus_um``: one value, a range, or None with ``--no-ctf``."""
    d0, d1 = args.defocus
    return None if args.no_ctf else (d0 if d0 == d1 else (d0, d1))
