"""``cryoalign simulate {tomogram,subtomograms,tiltseries,particles}``: data with known truth."""

from __future__ import annotations

from importlib import import_module

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
