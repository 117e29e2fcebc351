"""``cryoalign export relion5``: particles.star + tomograms.star for RELION 5's tomography pipeline.

Reads a particle STAR file (the output of ``pick``, ``align``, ``cluster``...: 0-based voxel
coordinates ``rlnCoordinateX/Y/Z``) and the tomogram(s) it refers to, and writes
``DIR/particles.star`` (``rlnTomoName``, ``rlnCenteredCoordinateX/Y/ZAngst`` = (coordinate -
N/2) x voxel size, angles, origins, classes, the other columns) and ``DIR/tomograms.star``
(one row per tomogram: sizes, pixel size, optics, the tomogram file relative to DIR).
See docs/io.md.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    parser = sub.add_parser("export", help="write particles for other programs (RELION 5)",
                            description="Write particle files for other programs.")
    kinds = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    p = kinds.add_parser("relion5", help="particles.star + tomograms.star for RELION 5",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--particles", required=True, metavar="P.star",
                   help="particle STAR file (voxel coordinates; RELION 3.1 - 5 files are read too)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tomogram", action="append", metavar="[NAME=]T.mrc",
                     help="the tomogram the coordinates refer to (shape and voxel size from its header); "
                     "repeat as NAME=T.mrc for particles from several tomograms (NAME = rlnTomoName)")
    src.add_argument("--tomograms", metavar="tomograms.star",
                     help="a RELION 5 tomograms.star naming several tomograms (rlnTomoName, sizes, pixel size; "
                     "rlnTomoReconstructedTomogram relative to that file's folder)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--tomo-name", default=None, metavar="NAME",
                   help="rlnTomoName for particles without one (default: the tomogram file's name)")
    p.add_argument("--voltage", type=float, default=None, metavar="KV", help="default 300")
    p.add_argument("--cs", type=float, default=None, metavar="MM", help="spherical aberration (default 2.7)")
    p.add_argument("--amplitude-contrast", type=float, default=None, metavar="Q0", help="default 0.1")
    p.add_argument("--hand", type=float, default=None, choices=(-1.0, 1.0), help="rlnTomoHand (default -1)")
    p.add_argument("--binning", type=float, default=None, metavar="B",
                   help="tomogram voxel size / tilt-series pixel size (default 1, or the tomograms.star value)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run_relion5)


def _tomograms(values: list[str]):
    """``--tomogram`` values: one path, or NAME=PATH pairs."""
    from pathlib import Path

    from ..errors import InputError

    if len(values) == 1 and ("=" not in values[0] or Path(values[0]).exists()):
        return values[0]
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise InputError("NAME=T.mrc when --tomogram is given more than once", field="--tomogram", got=v)
        if name in out:
            raise InputError("each tomogram name once", field="--tomogram", got=name)
        out[name] = path
    return out


def run_relion5(args) -> int:
    from ..io import export_relion5

    tomograms = args.tomograms if args.tomograms is not None else _tomograms(args.tomogram)
    res = export_relion5(args.particles, args.out, tomograms=tomograms, tomo_name=args.tomo_name,
                         voltage=args.voltage, spherical_aberration=args.cs,
                         amplitude_contrast=args.amplitude_contrast, hand=args.hand, binning=args.binning,
                         overwrite=args.overwrite)
    if not getattr(args, "quiet", False):
        print(f"cryoalign export relion5: {res.n_particles} particles from {res.n_tomograms} tomogram"
              f"{'s' if res.n_tomograms != 1 else ''}")
        print(f"  particles:  {res.particles_star}")
        print(f"  tomograms:  {res.tomograms_star}")
    return 0
