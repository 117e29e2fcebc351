"""``cryoalign markers``: gold-marker localisation and beam-induced deformation (SparseAlign)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _positive_float(text: str) -> float:
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number") from None
    return v


def width_line(result) -> str:
    """One line on the marker width of a :class:`~napari_cryoalign.backend.markers.SparseAlignResult`."""
    mw = result.marker_width or {}
    sigma = float(result.geometry.sigma_nm)
    nominal = mw.get("nominal_sigma_nm")
    est = mw.get("estimate") or {}
    src = mw.get("source", "given")
    if src == "estimated":
        text = (f"marker width sigma {sigma:.3g} nm (estimated from {est.get('n_blobs')} beads in "
                f"{len(est.get('images', []))} low-tilt images, spread {est.get('spread_nm', float('nan')):.2g} nm")
    elif src == "given":
        text = f"marker width sigma {sigma:.3g} nm (given"
        if est.get("source") == "estimated":
            text += f"; measured {est['sigma_nm']:.3g} nm"
    else:
        text = f"marker width sigma {sigma:.3g} nm (nominal: nothing measurable in the data"
    if nominal is not None:
        text += f"; nominal from the bead diameter {nominal:.3g} nm"
    return text + ")"


def register(sub) -> None:
    p = sub.add_parser(
        "markers",
        help="find gold markers and estimate the beam-induced deformation (SparseAlign)",
        description=__doc__ + " Writes DIR/markers.star (marker positions in voxels of the reconstruction, "
        "weight as rlnAutopickFigureOfMerit), DIR/deformation.json (polynomial deformation: basis, units, "
        "origin, time mapping), DIR/reprojection.mrc (the fitted forward model), DIR/markers_imod.txt and "
        "DIR/markers_fid.txt (IMOD point files for point2model).",
    )
    p.add_argument("--tiltseries", required=True, metavar="TS.mrc", help="tilt series (MRC stack, counts)")
    p.add_argument("--angles", required=True, metavar="TS.tlt", help="tilt angles (IMOD .tlt, stack order)")
    p.add_argument("--bead-diameter", required=True, type=_positive_float, metavar="NM",
                   help="gold bead diameter in nm")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--degree", type=int, default=2, metavar="D", help="polynomial degree of the deformation (default 2)")
    p.add_argument("--order", default=None, metavar="ORDER.txt",
                   help="acquisition order: one 0-based stack index per line, first acquired first "
                        "(default: stack order)")
    p.add_argument("--levels", default="auto", metavar="1/16,1/8,1/4,1/2",
                   help="coarse-to-fine downsampling levels (default auto: from >= 32 pixels to full resolution)")
    p.add_argument("--time-degree", type=int, default=1, metavar="D", help="polynomial degree in time (default 1)")
    p.add_argument("--components", default="z", metavar="z|xyz", help="deformation components to estimate (default z)")
    p.add_argument("--thickness", type=float, default=None, metavar="NM",
                   help="sample thickness in nm (markers within +-thickness/2; default a quarter of the field each side)")
    p.add_argument("--sigma", type=float, default=None, metavar="NM",
                   help="Gaussian marker width in nm (default: measured on the strongest isolated beads of the "
                        "lowest-tilt images; the value used is printed and written to deformation.json)")
    p.add_argument("--pixel-size", type=float, default=None, metavar="NM",
                   help="pixel size in nm (default: from the MRC header)")
    p.add_argument("--preprocess", default="anscombe", choices=("anscombe", "log", "none", "off"),
                   help="transform before normalisation (default anscombe; off: data are already the marker image)")
    p.add_argument("--no-linear-polish", action="store_true",
                   help="keep the positions found on the Anscombe-transformed stack (default: re-fit them and the "
                   "deformation on the Beer-Lambert image -log(I/I0), where overlapping beads add up exactly)")
    p.add_argument("--max-markers", type=int, default=100, metavar="N", help="at most N markers (default 100)")
    p.add_argument("--min-weight", type=float, default=0.3, metavar="W",
                   help="stop adding markers whose weight would be below W (default 0.3)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from ..backend.jobs import run_job
    from ..backend.markers.export import OUTPUT_NAMES, write_results
    from ..backend.markers.find import find_markers_job
    from ..errors import InputError
    from ..io import check_output_path, ensure_not_input, read_mrc, read_tlt
    from ..io.tilt import read_acquisition_order

    ts_path = Path(args.tiltseries)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("a folder for the outputs", path=out, field="--out", got="a file")
    for name in OUTPUT_NAMES.values():  # fail before computing anything
        ensure_not_input(out / name, ts_path, args.angles, args.order)
        if out.is_dir():
            check_output_path(out / name, overwrite=args.overwrite)
    vol = read_mrc(ts_path, is_stack=True)
    data = vol.data
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise InputError("a tilt-series stack (n_tilts, y, x)", path=ts_path, field="data", got=f"shape {data.shape}")
    angles = read_tlt(args.angles)
    if angles.size != data.shape[0]:
        raise InputError(f"{data.shape[0]} tilt angles (one per image of {ts_path.name})", path=args.angles,
                         field="n_tilts", got=f"{angles.size} angles")
    order = None if args.order is None else read_acquisition_order(args.order, n_tilts=data.shape[0])
    if args.pixel_size is not None:
        pixel_nm = float(args.pixel_size)
    else:
        vx = float(vol.voxel_size[0])
        pixel_nm = vx / 10.0
    if not pixel_nm > 0:
        raise InputError("a pixel size > 0 (MRC header or --pixel-size)", path=ts_path, field="pixel size",
                         got=pixel_nm)
    preprocess = None if args.preprocess == "off" else args.preprocess
    t0 = time.perf_counter()
    job = find_markers_job(data, angles, bead_diameter_nm=args.bead_diameter, pixel_size_nm=pixel_nm,
                           acquisition_order=order, sigma_nm=args.sigma, preprocess=preprocess,
                           thickness_nm=args.thickness, degree=args.degree, levels=args.levels,
                           time_degree=args.time_degree, components=args.components, max_markers=args.max_markers,
                           min_weight=args.min_weight, polish_linear=not args.no_linear_polish, device=args.device)
    result = run_job(job, progress=not getattr(args, "quiet", False), description="markers")
    paths = write_results(out, result, acquisition_order=order, overwrite=args.overwrite,
                          tomo_name=ts_path.stem,
                          volume_shape=None)
    log.info("markers: %d markers in %.1f s", result.n_markers, time.perf_counter() - t0)
    if not getattr(args, "quiet", False):
        print(width_line(result))
        print(f"{result.n_markers} markers, deformation degree {args.degree}; wrote "
              + ", ".join(str(p) for p in paths.values()))
    for w in result.warnings:  # printed even with -q: the user must see them
        print(f"warning: {w}")
    return 0
