"""``cryoalign pose train`` / ``pose predict`` / ``reconstruct``: supervised pose inference for particle images.

* ``pose train --particles P.star --out MODEL.pt``: train Image2Sphere-style networks on
  particles with known poses (RELION ``rlnAngleRot/Tilt/Psi``), one per half set
  (``rlnRandomSubset``; the 2-fold gold standard) unless ``--half`` says otherwise. With the
  default ``--half both``, a file with one half set only (every ``rlnRandomSubset`` 1, or every
  one 2: CESPED's one-direction protocol) trains one network on that half, and a file without
  ``rlnRandomSubset`` one network on every particle; the output and the model file say which.
* ``pose predict --particles P.star --model MODEL.pt --out POSES.star``: predict every
  particle's pose with the network that did not see its half set (a model with one network,
  trained on one half or on all particles, predicts every particle with it), plus an FFT shift search;
  writes ``rlnAngleRot/Tilt/Psi``, ``rlnOriginX/YAngst`` and the confidence
  (``rlnParticleFigureOfMerit``), keeping every other input column.
* ``reconstruct --particles POSES.star --out MAP.mrc``: direct Fourier reconstruction with
  CTF and symmetry; ``--half-maps`` adds the half maps and their FSC, ``--reference`` the FSC
  and correlation against a known map.
"""

from __future__ import annotations

from pathlib import Path

from ._args import device_arg, resolve_device, show_progress


def register(sub) -> None:
    p = sub.add_parser("pose", help="pose inference for particle images: `pose train`, `pose predict`",
                       description=__doc__)
    actions = p.add_subparsers(dest="pose_action", metavar="ACTION", required=True)

    t = actions.add_parser("train", help="train pose networks on particles with known poses (gold standard)")
    t.add_argument("--particles", required=True, metavar="P.star", help="particle STAR file with poses and image stack")
    t.add_argument("--out", required=True, metavar="MODEL.pt", help="the model file to write")
    t.add_argument("--symmetry", default="C1", metavar="GROUP", help="point group: C1 (default), Cn, Dn, T, O, I")
    t.add_argument("--epochs", type=int, default=20, metavar="N", help="epochs per network (default 20)")
    t.add_argument("--half", choices=["both", "1", "2", "all"], default="both",
                   help="both (default): one network per half set (gold standard) where the file has half sets 1 "
                        "and 2 (rlnRandomSubset); with one half set only, one network on it; without the column, "
                        "one network on every particle. 1/2: that half only; all: one network on every particle")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    t.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="model image size, Fourier-cropped (default: min(box, 64))")
    t.add_argument("--grid-level", type=int, default=3, metavar="K",
                   help="HEALPix level of the output SO(3) grid, 72*8^K rotations (default 3: 36,864, ~7.5°)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    t.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or auto (default cpu)")
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=run_train)

    q = actions.add_parser("predict", help="predict poses (and shifts) with a trained model; write a STAR file")
    q.add_argument("--particles", required=True, metavar="P.star")
    q.add_argument("--model", required=True, metavar="MODEL.pt")
    q.add_argument("--out", required=True, metavar="POSES.star")
    q.add_argument("--refine", action="store_true",
                   help="local projection matching against the training half's map after the network (slower)")
    q.add_argument("--no-map-search", action="store_true",
                   help="the network alone (CESPED's setting); by default its probabilities are combined with the "
                        "likelihood of each image under the training half's map, searched over the whole SO(3) grid")
    q.add_argument("--map-candidates", type=int, default=16, metavar="K",
                   help="map search: coarse rotations kept per particle for the fine grid (default 16)")
    q.add_argument("--no-shifts", action="store_true", help="skip the FFT shift search (origins written as 0)")
    q.add_argument("--max-shift", type=float, default=None, metavar="A", help="largest shift searched (default 15%% of the box)")
    q.add_argument("--half", type=int, choices=[0, 1, 2], default=None,
                   help="use the network trained on this half (0: on all particles) for every particle (default: "
                        "the other half's network for a gold-standard pair; the model's only network when it has one)")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--device", type=device_arg, default="cpu")
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=run_predict)

    r = sub.add_parser("reconstruct", help="direct Fourier reconstruction of particle images with poses (CTF, symmetry)",
                       description="Reconstruct a map from 2D particle images and their poses (RELION STAR), with "
                       "CTF correction (Wiener-like), symmetry and padding 2; optionally half maps and FSC.")
    r.add_argument("--particles", required=True, metavar="POSES.star")
    r.add_argument("--out", required=True, metavar="MAP.mrc")
    r.add_argument("--symmetry", default="C1", metavar="GROUP")
    r.add_argument("--half-maps", action="store_true",
                   help="also write MAP_half1.mrc, MAP_half2.mrc and their FSC (MAP_fsc.csv, MAP_fsc.png)")
    r.add_argument("--reference", default=None, metavar="REF.mrc",
                   help="a known map (same box and pixel size): print FSC and masked correlation against it")
    r.add_argument("--pixel-size", type=float, default=None, metavar="A",
                   help="override the STAR file's pixel size (e.g. binned images)")
    r.add_argument("--no-ctf", action="store_true", help="ignore the CTF columns")
    r.add_argument("--regularization", type=float, default=0.01, metavar="L",
                   help="Wiener constant relative to the mean CTF² weight (default 0.01)")
    r.add_argument("--device", type=device_arg, default="cpu")
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=run_reconstruct)


def run_train(args) -> int:
    from ..backend.jobs import run_job
    from ..backend.pose.data import load_particle_data
    from ..backend.pose.modelio import save_pose_model
    from ..backend.pose.train import train_pose_model_job
    from ..io import check_output_path, ensure_not_input

    out = Path(args.out)
    ensure_not_input(out, args.particles)
    check_output_path(out, overwrite=args.overwrite)
    data = load_particle_data(args.particles, require_poses=True)
    halves = {"both": "auto", "1": (1,), "2": (2,), "all": (0,)}[args.half]
    job = train_pose_model_job(data, symmetry=args.symmetry, halves=halves, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
                               grid_level=args.grid_level, seed=args.seed, threads=args.threads,
                               device=resolve_device(args.device))
    model = run_job(job, progress=show_progress(args), description="pose train")
    save_pose_model(out, model, overwrite=args.overwrite)
    losses = "; ".join(f"{'all' if h == '0' else 'half ' + h}: {v[0]:.3f} -> {v[-1]:.3f}"
                       for h, v in model.training["loss"].items())
    if args.half == "both" and model.training["trained_on"] != "both":
        print(f"{Path(args.particles).name}: {model.training['half_choice']}")
    on = {"both": "half sets 1 and 2", "all": "all particles"}.get(model.training["trained_on"],
                                                                    f"half set {model.training['trained_on']}")
    print(f"trained {len(model.nets)} network(s) on {on}, {sum(model.training['particles'].values())} particles ({data.box}^2 px -> "
          f"{model.config.image_size}^2 at {model.pixel_size_angstrom:.2f} Å, symmetry {model.symmetry}, "
          f"{model.training['seconds']:.0f} s); loss {losses}")
    print(f"  model: {out}")
    return 0


def run_predict(args) -> int:
    from ..backend.jobs import run_job
    from ..backend.pose.data import load_particle_data
    from ..backend.pose.export import write_predicted_star
    from ..backend.pose.metrics import angular_errors
    from ..backend.pose.modelio import load_pose_model
    from ..backend.pose.predict import predict_poses_job
    from ..io import check_output_path, ensure_not_input

    out = Path(args.out)
    ensure_not_input(out, args.particles, args.model)
    check_output_path(out, overwrite=args.overwrite)
    device = resolve_device(args.device)
    model = load_pose_model(args.model, device=device)
    data = load_particle_data(args.particles)
    job = predict_poses_job(model, data, batch_size=args.batch_size, shift_search_enabled=not args.no_shifts,
                            max_shift_angstrom=args.max_shift, projection_refine=args.refine, use_half=args.half,
                            map_search=False if args.no_map_search else None, map_candidates=args.map_candidates,
                            threads=args.threads, device=device)
    pred = run_job(job, progress=show_progress(args), description="pose predict")
    write_predicted_star(out, data, pred, overwrite=args.overwrite)
    print(f"predicted {data.n} poses in {pred.seconds:.1f} s ({pred.particles_per_second:.0f} particles/s); "
          f"mean confidence {pred.confidence.mean():.3f}"
          + ("; network + map search" if pred.map_search else "; network only")
          + ("; refined by projection matching" if pred.refined else ""))
    print(_networks_used(model, data, pred))
    if data.rotations is not None:
        err = angular_errors(pred.rotations, data.rotations, model.symmetry, confidence=data.confidence)
        print(f"  against the poses in the input file: MAnE {err.mane:.1f}°, wMAnE {err.wmane:.1f}°, "
              f"median {err.median:.1f}° (symmetry {model.symmetry})")
    print(f"  poses: {out}")
    return 0


def _networks_used(model, data, pred) -> str:
    """Which network predicted how many particles, and how many of those it was trained on."""
    from ..backend.pose.train import has_subset_column

    def name(h) -> str:
        return {"0": "all particles", "all": "all particles", "both": "half sets 1 and 2"}.get(str(h), f"half set {h}")

    parts, seen = [], 0
    for h in sorted(set(pred.network_half.tolist())):
        sel = pred.network_half == h
        parts.append(f"{int(sel.sum())} by the network of {name(h)}")
        if h != 0 and has_subset_column(data):
            seen += int((sel & (data.half == h)).sum())
    text = "  networks: " + ", ".join(parts)
    if model.training.get("trained_on"):
        text += f" (model trained on {name(model.training['trained_on'])})"
    if seen:
        text += (f"; {seen} of these particles are in the half set their network was trained on "
                 "(not a gold-standard prediction)")
    return text


def run_reconstruct(args) -> int:
    from ..backend.align.average import default_fsc_mask, fsc_report
    from ..backend.jobs import run_job
    from ..backend.pose.data import load_particle_data
    from ..backend.pose.reconstruct import (
        pearson_correlation,
        reconstruct_half_maps_job,
    )
    from ..errors import InputError
    from ..io import check_output_path, ensure_not_input, read_mrc, write_mrc
    from ._align import half_map_paths, write_half_maps

    out = Path(args.out)
    ensure_not_input(out, args.particles, args.reference)
    outs = [out] + (half_map_paths(out) if args.half_maps else [])
    for o in outs:
        check_output_path(o, overwrite=args.overwrite)
    data = load_particle_data(args.particles, require_poses=True, pixel_size_angstrom=args.pixel_size,
                              ctf=not args.no_ctf)
    ref = None
    if args.reference:
        ref = read_mrc(args.reference).data
        if ref.shape != (data.box,) * 3:
            raise InputError(f"a reference of the particles' box {(data.box,) * 3}", path=args.reference,
                             field="shape", got=ref.shape)
    job = reconstruct_half_maps_job(data, symmetry=args.symmetry, half_maps=args.half_maps,
                                    regularization=args.regularization, device=resolve_device(args.device))
    res = run_job(job, progress=show_progress(args), description="reconstruct")
    px = data.pixel_size_angstrom
    write_mrc(out, res.volume, voxel_size=px, overwrite=args.overwrite)
    print(f"reconstructed {data.n} particles ({data.box}^3 at {px:g} Å, symmetry {res.symmetry}) -> {out}")
    if args.half_maps:
        write_half_maps(out, res, voxel_size=px, overwrite=args.overwrite)
        print(f"  half maps: {outs[1]}, {outs[2]}")
        print(f"  half-map FSC 0.143: {res.fsc.resolution_0143:.1f} Å   0.5: {res.fsc.resolution_05:.1f} Å")
    if ref is not None:
        mask = default_fsc_mask(data.box)
        rep = fsc_report(res.volume, ref, voxel_size_angstrom=px, mask=mask)
        print(f"  against {Path(args.reference).name}: FSC 0.143 {rep.resolution_0143:.1f} Å, 0.5 "
              f"{rep.resolution_05:.1f} Å, masked correlation {pearson_correlation(res.volume, ref, mask=mask):.3f}")
    return 0
