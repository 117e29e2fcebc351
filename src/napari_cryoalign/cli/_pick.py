"""``cryoalign pick {train,predict,template}``: particle picking from sparse labels, or by template matching."""

from __future__ import annotations

import logging
import math
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
    p.add_argument("--continue-from", default=None, metavar="MODEL.pt",
                   help="continue training this model (Train again; on the tomogram its look-alike search ran on, the "
                   "new default threshold keeps the count of its picks, less those in --negatives, plus the labels "
                   "they missed)")
    p.add_argument("--negatives", default=None, metavar="N.star",
                   help="places that are NOT the particle (e.g. removed picks: gold, membranes, look-alikes), "
                   "STAR like --labels; trained as known negatives")
    p.add_argument("--no-lookalike-rejection", action="store_true",
                   help="skip the look-alike rejection after training (the labels' average finds candidates "
                   "of another shape on the training tomogram; training continues with them as negatives)")
    p.add_argument("--lookalike-steps", type=int, default=None, metavar="N",
                   help="training steps with the look-alikes found as negatives (default 300)")
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
    p.add_argument("--no-shape-check", action="store_true",
                   help="keep the network's scores: do not weigh each pick by its fit to the labels' average kept "
                   "in the model (models trained with look-alike rejection have one)")
    p.add_argument("--device", type=device_arg, default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_predict)

    p = steps.add_parser("template", help="template matching with a reference volume or a template averaged "
                         "from labelled particles",
                         description="FFT cross-correlation over a rotation grid with a missing-wedge-"
                         "filtered template and local normalisation; picks carry Euler angles. The template is "
                         "a reference map (--template) or averaged from labelled particles of the tomogram "
                         "(--template-from-labels with --diameter: boxes cut around the labels, aligned to each "
                         "other and averaged, low-passed; a rotational average with fewer than 5 labels).")
    p.add_argument("--tomogram", required=True, metavar="T.mrc")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--template", metavar="REF.mrc",
                        help="reference (protein with the tomogram's contrast sign), centred in its box")
    source.add_argument("--template-from-labels", metavar="L.star",
                        help="average the template from these labelled particles of the tomogram (STAR, as for "
                        "pick train; needs --diameter)")
    p.add_argument("--out", required=True, metavar="PICKS.star")
    p.add_argument("--diameter", type=float, default=None, metavar="D_ANGSTROM",
                   help="particle diameter in Å (with --template-from-labels: box 1.5 diameters, mask)")
    p.add_argument("--template-out", default=None, metavar="TEMPLATE.mrc",
                   help="with --template-from-labels: also write the averaged template (MRC, tomogram voxel size)")
    p.add_argument("--template-iterations", type=int, default=3, metavar="N",
                   help="with --template-from-labels: alignment rounds of the average (default 3; 0: rotational "
                   "average)")
    p.add_argument("--template-box", type=int, default=None, metavar="N",
                   help="with --template-from-labels: box edge in voxels, even (default: >= 1.5 diameters, >= 16)")
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
    p.add_argument("--lowpass", type=float, default=None, metavar="A",
                   help="low-pass the template to A Å (with --template-from-labels: the averaged template's "
                   "resolution, default 40)")
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
    from ..backend.picking import load_picker, save_picker
    from ..backend.picking.fit import DEFAULT_LOOKALIKE_STEPS, fit_picker_job
    from ..backend.picking.train import DEFAULT_ITERATIONS

    _check_outputs([args.out], args.tomogram, args.labels, args.continue_from, args.negatives,
                   overwrite=args.overwrite)
    vol, vs = _read_tomogram(args.tomogram)
    labels = _read_labels(args.labels, vol, vs)
    negatives = _read_labels(args.negatives, vol, vs) if args.negatives else None
    picker = load_picker(args.continue_from, device="cpu") if args.continue_from else None
    t0 = time.perf_counter()
    steps = DEFAULT_LOOKALIKE_STEPS if args.lookalike_steps is None else args.lookalike_steps
    job = fit_picker_job(vol.data, labels, diameter_angstrom=args.diameter, voxel_size=vs, picker=picker,
                         iterations=args.iterations if args.iterations is not None else DEFAULT_ITERATIONS,
                         class_prior=args.class_prior, seed=args.seed, device=args.device,
                         negatives_xyz=negatives, path=args.tomogram, labels_path=args.labels,
                         negatives_path=args.negatives, reject_lookalikes=not args.no_lookalike_rejection,
                         lookalike_steps=steps)
    res = run_job(job, progress=show_progress(args), description="train picker")
    save_picker(args.out, res.picker, overwrite=args.overwrite)
    last = float(res.losses[-10:].mean()) if res.losses.size else float("nan")
    print(f"trained on {len(labels)} labels" + (f" and {len(negatives)} negatives" if negatives is not None else "")
          + f" for {res.iterations} steps in {time.perf_counter() - t0:.1f} s "
          f"(final loss {last:.4f}); wrote {args.out}")
    tr = res.picker.training
    if tr.get("lookalike_reused"):
        print(f"  look-alike rejection: the {len(tr['lookalike_negatives_xyz'])} look-alikes found by an earlier "
              "training of this model were learnt as negatives again (no new search)")
    elif "lookalike_negatives" in tr:
        above = tr.get("lookalike_cut_above", float("nan"))
        print(f"  look-alike rejection: {tr['lookalike_negatives']} of {tr['lookalike_candidates']} candidates fit "
              f"the labels' average worse than {tr['lookalike_cut']:.3f}"
              + (f" or better than {above:.3f}" if math.isfinite(above) else "")
              + (f" ({tr['lookalike_reason']})" if tr.get("lookalike_reason") else ""))
    if tr.get("removed_picks_not_learnt"):
        print(f"  {tr['removed_picks_not_learnt']}")
    rule = tr.get("threshold_rule", "calibrated on the labels")
    print(f"  default threshold {res.picker.default_threshold:.3f} ({rule})")
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
    checked = picker.shape_reference is not None and not args.no_shape_check
    job = pick_job(picker, vol.data, threshold=threshold, min_distance_angstrom=args.min_distance,
                   voxel_size=vs, path=args.tomogram, shape_check=checked)
    picks, heat = run_job(job, progress=show_progress(args), description="predict")
    _write_picks(args.out, picks, vol=vol, vs=vs, overwrite=args.overwrite)
    if args.heatmap:
        write_mrc(args.heatmap, heatmap_to_input_grid(heat, vol.shape), voxel_size=vs, overwrite=args.overwrite)
    how = " calibrated on the model's labels" if args.threshold is None else ""
    how += ", shape-checked against the labels' average" if checked else ""
    print(f"{len(picks)} picks (score >= {threshold:g}{how}) in {time.perf_counter() - t0:.1f} s; wrote {args.out}"
          + (f" and {args.heatmap}" if args.heatmap else ""))
    return 0


def _template_from_labels(args, vol, vs, tilt):
    """The label-averaged template (:func:`~..backend.picking.label_template.label_template_job`), printed and
    written to ``--template-out``."""
    from ..backend.jobs import run_job
    from ..backend.picking.label_template import label_template_job
    from ..io import write_mrc

    labels = _read_labels(args.template_from_labels, vol, vs)
    job = label_template_job(vol.data, labels, voxel_size=vs, diameter_angstrom=args.diameter, box=args.template_box,
                             lowpass_angstrom=40.0 if args.lowpass is None else args.lowpass,
                             iterations=args.template_iterations, tilt_range_deg=tilt, device=args.device,
                             path=args.tomogram, labels_path=args.template_from_labels)
    lt = run_job(job, progress=show_progress(args), description="template from labels")
    skipped = ""
    if lt.skipped:
        skipped = " (skipped label rows " + ", ".join(str(s.row) for s in lt.skipped[:10]) + \
            (" ..." if len(lt.skipped) > 10 else "") + ": box outside the tomogram)"
    print(f"template from {args.template_from_labels}: {lt.describe()}{skipped}")
    if args.template_out:
        write_mrc(args.template_out, lt.map, voxel_size=vs, overwrite=args.overwrite)
        print(f"wrote the template to {args.template_out}")
    return lt


def _check_template_flags(args) -> None:
    from ..errors import InputError

    if args.template_from_labels is not None:
        if args.diameter is None:
            raise InputError("a particle diameter (--diameter D_ANGSTROM) with --template-from-labels",
                             field="--diameter", got="none")
        return
    for flag, value, default in (("--diameter", args.diameter, None), ("--template-out", args.template_out, None),
                                 ("--template-iterations", args.template_iterations, 3),
                                 ("--template-box", args.template_box, None)):
        if value != default:
            raise InputError(f"{flag} only with --template-from-labels (a template averaged from labels)",
                             field=flag, got=f"{value} with --template")


def run_template(args) -> int:
    from ..backend.jobs import run_job
    from ..backend.picking.template import template_match_job
    from ..io import read_mrc, voxel_size_isotropic, write_mrc

    _check_template_flags(args)
    _check_outputs([args.out, args.heatmap, args.template_out], args.tomogram,
                   args.template if args.template is not None else args.template_from_labels,
                   overwrite=args.overwrite)
    vol, vs = _read_tomogram(args.tomogram)
    tilt = None if args.no_wedge else args.tilt_range
    t0 = time.perf_counter()
    if args.template_from_labels is not None:
        lt = _template_from_labels(args, vol, vs, tilt)
        template, template_vs, template_path, mask_radius = lt.map, vs, args.template_out, lt.mask_radius_voxels
    else:
        ref = read_mrc(args.template)
        template, template_vs, template_path, mask_radius = ref.data, voxel_size_isotropic(ref), args.template, None
    job = template_match_job(vol.data, template, voxel_size=vs, template_voxel_size=template_vs,
                             angular_step_deg=args.angular_step, tilt_range_deg=tilt, mask_radius=mask_radius,
                             defocus_um=args.defocus, lowpass_angstrom=args.lowpass,
                             min_distance_angstrom=args.min_distance, threshold=args.threshold,
                             false_positives=args.false_positives, max_picks=args.max_picks, device=args.device,
                             path=args.tomogram,
                             template_path=template_path)
    res = run_job(job, progress=show_progress(args), description="template matching")
    _write_picks(args.out, res.picks, vol=vol, vs=vs, overwrite=args.overwrite)
    if args.heatmap:
        write_mrc(args.heatmap, res.scores, voxel_size=vs, overwrite=args.overwrite)
    print(f"{len(res.picks)} picks over {len(res.euler_deg)} rotations in {time.perf_counter() - t0:.1f} s "
          f"(NCC noise sigma {res.ncc_std:.4f}; one expected false alarm above {res.suggested_threshold:.3f}); "
          f"wrote {args.out}" + (f" and {args.heatmap}" if args.heatmap else ""))
    return 0
