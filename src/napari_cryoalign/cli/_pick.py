"""``cryoalign pick {train,predict,template}``: particle picking from sparse labels, or by template matching."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ._args import device_arg, float_pair, show_progress

log = logging.getLogger(__name__)


def register(sub) -> None:
    parser = sub.add_parser(
        "pick",
        help="pick particles: train a sparse-label picker, apply it, or match a template",
        description=__doc__ + " Picks are written as a RELION STAR file (0-based voxel coordinates, "
        "rlnAutopickFigureOfMerit, sorted by score).",
    )
    steps = parser.add_subparsers(dest="step", metavar="STEP", required=True)

    p = steps.add_parser("train", help="train a picker on a tomogram with a few labelled particles",
                         description="Train the positive-unlabeled picker on crops around the labels "
                         "(at least 3) of one tomogram; writes a model file.")
    p.add_argument("--tomogram", required=True, metavar="T.mrc", help="tomogram (MRC)")
    p.add_argument("--labels", required=True, metavar="L.star", help="labelled particles (STAR)")
    p.add_argument("--diameter", required=True, type=float, metavar="D_ANGSTROM", help="particle diameter in Å")
    p.add_argument("--out", required=True, metavar="MODEL.pt", help="model file to write")
    p.add_argument("--iterations", type=int, default=None, metavar="N", help="training steps (default 600)")
    p.add_argument("--device", type=device_arg, default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--class-prior", type=float, default=None, metavar="PI",
                   help="PU class prior (default 0.02; raise it for very crowded samples)")
    p.add_argument("--continue-from", default=None, metavar="MODEL.pt", help="continue training this model")
    p.add_argument("--negatives", default=None, metavar="N.star",
                   help="places that are NOT the particle (e.g. removed picks: gold, membranes, look-alikes), "
                   "STAR like --labels; trained as known negatives")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run_train)

    p = steps.add_parser("predict", help="pick particles with a trained model",
                         description="Tiled inference over the tomogram, non-maximum suppression, STAR output.")
    p.add_argument("--tomogram", required=True, metavar="T.mrc")
    p.add_argument("--model", required=True, metavar="MODEL.pt")
    p.add_argument("--out", required=True, metavar="PICKS.star")
    p.add_argument("--threshold", type=float, default=None, metavar="X",
                   help="minimum score 0..1 (default: the model's threshold calibrated on its labels, "
                   "0.5 for models without one)")
    p.add_argument("--min-distance", type=float, default=None, metavar="D_ANGSTROM",
                   help="minimum distance between picks in Å (default: the particle radius)")
    p.add_argument("--heatmap", default=None, metavar="PATH", help="also write the heatmap (MRC, tomogram grid)")
    p.add_argument("--device", type=device_arg, default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_predict)

    p = steps.add_parser("template", help="template matching with a reference volume",
                         description="FFT cross-correlation over a rotation grid with a missing-wedge-"
                         "filtered template and local normalisation; picks carry Euler angles.")
    p.add_argument("--tomogram", required=True, metavar="T.mrc")
    p.add_argument("--template", required=True, metavar="REF.mrc",
                   help="reference (protein with the tomogram's contrast sign), centred in its box")
    p.add_argument("--out", required=True, metavar="PICKS.star")
    p.add_argument("--angular-step", type=float, default=30.0, metavar="DEG", help="rotation grid step (default 30)")
    p.add_argument("--threshold", type=float, default=None, metavar="NCC", help="minimum score (default none)")
    p.add_argument("--false-positives", type=float, default=None, metavar="K",
                   help="without --threshold: cut at the score that noise exceeds K times in the whole search "
                   "(Gaussian false-alarm estimate, as pytom-match-pick's --number-of-false-positives; try 1)")
    p.add_argument("--max-picks", type=int, default=None, metavar="N", help="keep at most N picks")
    p.add_argument("--min-distance", type=float, default=None, metavar="D_ANGSTROM",
                   help="minimum distance between picks in Å (default: the template mask radius)")
    p.add_argument("--tilt-range", type=float_pair, default=(-60.0, 60.0), metavar="MIN,MAX",
                   help="tilt range for the missing wedge, degrees (default -60,60)")
    p.add_argument("--no-wedge", action="store_true", help="do not apply a missing wedge to the template")
    p.add_argument("--lowpass", type=float, default=None, metavar="A", help="low-pass the template to A Å")
    p.add_argument("--defocus", type=float, default=None, metavar="UM",
                   help="multiply the template by |CTF| at this defocus (µm; phase-flipped tomograms)")
    p.add_argument("--heatmap", default=None, metavar="PATH", help="also write the score map (MRC)")
    p.add_argument("--device", type=device_arg, default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_template)


def _read_tomogram(path):
    from ..io import read_mrc, voxel_size_isotropic

    vol = read_mrc(path, mmap=True)
    if vol.data.ndim != 3:
        from ..errors import InputError

        raise InputError("a 3D tomogram", path=path, field="data", got=f"shape {vol.data.shape}")
    return vol, voxel_size_isotropic(vol)


def _check_outputs(out, *inputs, overwrite):
    from ..io import check_output_path, ensure_not_input

    for o in out:
        if o is None:
            continue
        ensure_not_input(o, *inputs)
        check_output_path(o, overwrite=overwrite)


def _read_labels(path, vol, vs):
    import numpy as np

    from ..errors import InputError
    from ..io import coordinates_xyz, read_particles, tomo_names

    table = read_particles(path, tomogram_shape=vol.shape, voxel_size=vs, require=("coordinates3d",))
    xyz = coordinates_xyz(table)
    names = tomo_names(table)
    if names is not None and len(set(names)) > 1:
        stem = Path(vol.path).stem
        keep = np.asarray([str(n) == stem for n in names])
        if not keep.any():
            raise InputError(f"rows with rlnTomoName {stem!r} (the tomogram's file name) when the file "
                             "holds several tomograms", path=path, field="rlnTomoName",
                             got=", ".join(sorted(set(map(str, names)))[:5]))
        xyz = xyz[keep]
    return xyz


def run_train(args) -> int:
    from ..backend.jobs import run_job
    from ..backend.picking import load_picker, save_picker, train_picker_job
    from ..backend.picking.train import DEFAULT_ITERATIONS

    _check_outputs([args.out], args.tomogram, args.labels, args.continue_from, args.negatives,
                   overwrite=args.overwrite)
    vol, vs = _read_tomogram(args.tomogram)
    labels = _read_labels(args.labels, vol, vs)
    negatives = _read_labels(args.negatives, vol, vs) if args.negatives else None
    picker = load_picker(args.continue_from, device="cpu") if args.continue_from else None
    t0 = time.perf_counter()
    job = train_picker_job(vol.data, labels, diameter_angstrom=args.diameter, voxel_size=vs, picker=picker,
                           iterations=args.iterations if args.iterations is not None else DEFAULT_ITERATIONS,
                           class_prior=args.class_prior, seed=args.seed, device=args.device,
                           negatives_xyz=negatives, path=args.tomogram, labels_path=args.labels,
                           negatives_path=args.negatives)
    res = run_job(job, progress=show_progress(args), description="train picker")
    save_picker(args.out, res.picker, overwrite=args.overwrite)
    last = float(res.losses[-10:].mean()) if res.losses.size else float("nan")
    print(f"trained on {len(labels)} labels" + (f" and {len(negatives)} negatives" if negatives is not None else "")
          + f" for {res.iterations} steps in {time.perf_counter() - t0:.1f} s "
          f"(final loss {last:.4f}); wrote {args.out}")
    return 0


def _write_picks(out, picks, *, vol, vs, overwrite):
    from ..io import write_particles

    write_particles(out, coordinates_xyz=picks.coordinates_xyz, scores=picks.scores, euler_deg=picks.euler_deg,
                    tomo_name=Path(vol.path).stem, tomogram_shape=vol.shape, voxel_size=vs,
                    sort_by_score=True, overwrite=overwrite)


def run_predict(args) -> int:
    from ..backend.jobs import run_job
    from ..backend.picking import heatmap_to_input_grid, load_picker, pick_job
    from ..io import write_mrc

    _check_outputs([args.out, args.heatmap], args.tomogram, args.model, overwrite=args.overwrite)
    picker = load_picker(args.model, device=args.device)
    vol, vs = _read_tomogram(args.tomogram)
    t0 = time.perf_counter()
    threshold = picker.default_threshold if args.threshold is None else args.threshold
    job = pick_job(picker, vol.data, threshold=threshold, min_distance_angstrom=args.min_distance,
                   voxel_size=vs, path=args.tomogram)
    picks, heat = run_job(job, progress=show_progress(args), description="predict")
    _write_picks(args.out, picks, vol=vol, vs=vs, overwrite=args.overwrite)
    if args.heatmap:
        write_mrc(args.heatmap, heatmap_to_input_grid(heat, vol.shape), voxel_size=vs, overwrite=args.overwrite)
    how = " calibrated on the model's labels" if args.threshold is None else ""
    print(f"{len(picks)} picks (score >= {threshold:g}{how}) in {time.perf_counter() - t0:.1f} s; wrote {args.out}"
          + (f" and {args.heatmap}" if args.heatmap else ""))
    return 0


def run_template(args) -> int:
    from ..backend.jobs import run_job
    from ..backend.picking.template import template_match_job
    from ..io import read_mrc, voxel_size_isotropic, write_mrc

    _check_outputs([args.out, args.heatmap], args.tomogram, args.template, overwrite=args.overwrite)
    vol, vs = _read_tomogram(args.tomogram)
    ref = read_mrc(args.template)
    ref_vs = voxel_size_isotropic(ref)
    t0 = time.perf_counter()
    job = template_match_job(vol.data, ref.data, voxel_size=vs, template_voxel_size=ref_vs,
                             angular_step_deg=args.angular_step, tilt_range_deg=None if args.no_wedge else args.tilt_range,
                             defocus_um=args.defocus, lowpass_angstrom=args.lowpass,
                             min_distance_angstrom=args.min_distance, threshold=args.threshold,
                             false_positives=args.false_positives, max_picks=args.max_picks, device=args.device,
                             path=args.tomogram,
                             template_path=args.template)
    res = run_job(job, progress=show_progress(args), description="template matching")
    _write_picks(args.out, res.picks, vol=vol, vs=vs, overwrite=args.overwrite)
    if args.heatmap:
        write_mrc(args.heatmap, res.scores, voxel_size=vs, overwrite=args.overwrite)
    print(f"{len(res.picks)} picks over {len(res.euler_deg)} rotations in {time.perf_counter() - t0:.1f} s "
          f"(NCC noise sigma {res.ncc_std:.4f}; one expected false alarm above {res.suggested_threshold:.3f}); "
          f"wrote {args.out}" + (f" and {args.heatmap}" if args.heatmap else ""))
    return 0
