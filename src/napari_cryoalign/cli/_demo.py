"""``cryoalign demo``: run every available job on embedded data, headless, and summarise.

The demo grows with each capability. Today it simulates one data set per capability from
the packaged real-structure maps, writes them with the project's writers, reads them back
with its readers, and runs the one end-to-end check the foundation can make: aligning the
simulated subtomograms with the Euler angles and origins *read back from the STAR file*
and measuring the gold-standard FSC of the half-set averages. A wrong convention anywhere
(Euler order, inverse, origin sign, box centre) would show here as a poor resolution.

Outputs go to a new folder (default ``./demo_output/run-<timestamp>``); nothing is
overwritten. A ``summary.json`` next to them holds every number printed.
"""

from __future__ import annotations

import time
from pathlib import Path

from ._args import resolve_device


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the headless demo on embedded data and print a summary", description=__doc__)
    p.add_argument("--out", metavar="DIR", help="output folder (default: ./demo_output/run-<timestamp>); must not exist")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto (default cpu)")
    p.set_defaults(func=run)


def _step_tomogram(out: Path, seed: int, device: str, quiet: bool, ctx: dict) -> dict:
    from ..backend.jobs import run_job
    from ..backend.simulate.tomogram import (
        simulate_tomogram_job,
        write_tomogram_simulation,
    )

    sim = run_job(
        simulate_tomogram_job(
            shape=(64, 256, 256),
            voxel_size_angstrom=10.0,
            structures=("ribosome", "cct", "ruvab", "mtor"),
            n_particles=60,
            n_vesicles=1,
            n_gold=4,
            dose=100.0,
            seed=seed,
            device=device,
        ),
        progress=not quiet,
        description="simulate tomogram",
    )
    files = write_tomogram_simulation(sim, out / "tomogram")
    ctx["tomogram"] = sim
    n = len(sim.truth.coordinates_xyz)
    return {
        "what": f"crowded tomogram {tuple(sim.tomogram.shape)} (z, y, x) at {sim.voxel_size:g} Å, "
        f"{n} particles of {len(sim.truth.class_names)} structures, {len(sim.tilt_angles_deg)} tilts, WBP",
        "numbers": {"particles": n, "tilts": int(len(sim.tilt_angles_deg))},
        "files": {k: str(v) for k, v in files.items()},
        "main": str(files.get("tomogram", out / "tomogram")),
    }


def _step_subtomograms(out: Path, seed: int, device: str, quiet: bool, ctx: dict) -> dict:
    import numpy as np

    from .. import io as star
    from ..backend import geometry
    from ..backend.fourier import fsc, resolution_at, sphere_mask
    from ..backend.jobs import run_job
    from ..backend.simulate.subtomograms import (
        simulate_subtomograms_job,
        write_subtomogram_set,
    )

    structures = ["ribosome", "cct", "mtor"]
    sset = run_job(
        simulate_subtomograms_job(structures, n_per_class=40, box=32, snr=0.1, seed=seed, device=device),
        progress=not quiet,
        description="simulate subtomograms",
    )
    files = write_subtomogram_set(sset, out / "subtomograms")
    ctx["subtomograms"] = sset
    # read everything back through the project's readers and align with the STAR's truth
    volumes, table = star.read_subtomograms(files["star"])
    eul, origins, cls = star.euler_deg(table), star.origins_angstrom(table), star.classes(table)
    voxel = float(table.voxel_size or sset.voxel_size_angstrom)
    aligned = geometry.align_particle_to_reference(volumes, geometry.euler_to_matrix(eul), origins / voxel)
    mask = np.asarray(sphere_mask(volumes.shape[1:], radius=volumes.shape[-1] * 0.45, soft_edge=2.0))
    per_class = {}
    for k, name in enumerate(structures, start=1):
        idx = np.flatnonzero(cls == k)
        half1, half2 = aligned[idx[0::2]].mean(0), aligned[idx[1::2]].mean(0)
        curve = fsc(half1 * mask, half2 * mask)
        avg = aligned[idx].mean(0)
        ref = sset.references[k - 1]
        cc = float(np.corrcoef((avg * mask).ravel(), (ref * mask).ravel())[0, 1])
        per_class[name] = {
            "particles": int(len(idx)),
            "fsc_0.143_angstrom": round(float(resolution_at(curve, 0.143, voxel_size_angstrom=voxel)), 1),
            "fsc_0.5_angstrom": round(float(resolution_at(curve, 0.5, voxel_size_angstrom=voxel)), 1),
            "cc_with_reference": round(cc, 3),
        }
    worst = max(v["fsc_0.143_angstrom"] for v in per_class.values())
    return {
        "what": f"{len(volumes)} subtomograms of {len(structures)} structures, {volumes.shape[-1]}³ at {voxel:g} Å, "
        f"SNR 0.1, ±60° wedge; averaged with the STAR's angles/origins: half-map FSC 0.143 ≤ {worst:g} Å",
        "numbers": per_class,
        "files": {k: str(v) for k, v in files.items() if k != "references"},
        "main": str(files["star"]),
    }


def _step_tiltseries(out: Path, seed: int, device: str, quiet: bool, ctx: dict) -> dict:
    from ..backend.jobs import run_job
    from ..backend.simulate.markers import (
        simulate_marker_tiltseries_job,
        write_marker_tiltseries,
    )

    ts = run_job(simulate_marker_tiltseries_job(preset="paper3d", seed=seed, device=device), progress=not quiet,
                 description="simulate tilt series")
    files = write_marker_tiltseries(ts, out / "tiltseries")
    ctx["tiltseries"] = ts
    n_tilts, ny, nx = ts.tilt_series.shape
    return {
        "what": f"SparseAlign 3D preset: {len(ts.bead_positions_nm)} gold beads of {ts.bead_diameter_nm:g} nm, "
        f"{n_tilts} tilts of {ny}×{nx} px, polynomial doming deformation (truth in JSON)",
        "numbers": {"beads": int(len(ts.bead_positions_nm)), "tilts": int(n_tilts)},
        "files": {k: str(v) for k, v in files.items()},
        "main": str(files.get("tiltseries", out / "tiltseries")),
    }


def _step_particles(out: Path, seed: int, device: str, quiet: bool, ctx: dict) -> dict:
    from .. import io as star
    from ..backend.jobs import run_job
    from ..backend.simulate.particles import simulate_particles_job, write_particle_set

    pset = run_job(
        simulate_particles_job("ribosome", n=400, box=64, pixel_size_angstrom=6.0, snr=0.1, seed=seed, device=device),
        progress=not quiet,
        description="simulate particle images",
    )
    files = write_particle_set(pset, out / "particles")
    ctx["particles_star"], ctx["particles_reference"] = files["star"], pset.reference
    images, table = star.read_particle_images(files["star"])
    halves = sorted(set(int(h) for h in table.data["rlnRandomSubset"]))
    return {
        "what": f"{len(images)} ribosome particle images {images.shape[1]}² at {pset.pixel_size_angstrom:g} Å, "
        f"CTF, SNR 0.1, two half-sets {halves}",
        "numbers": {"images": int(len(images))},
        "files": {k: str(v) for k, v in files.items()},
        "main": str(files["star"]),
    }


def _step_pick(out: Path, seed: int, device: str, quiet: bool, ctx: dict) -> dict:
    """Label 10 % of the ribosomes of the demo tomogram, train the PU picker, pick, score against the truth."""
    import numpy as np

    from .. import io as star
    from ..backend.jobs import run_job
    from ..backend.picking import precision_recall_f1, save_picker, train_picker_job
    from ..backend.picking.infer import pick_job

    sim = ctx["tomogram"]
    truth = sim.truth
    target = 1 + list(truth.class_names).index("ribosome")
    true_xyz = truth.coordinates_xyz[truth.classes == target]
    rng = np.random.default_rng(seed)
    n_labels = max(3, int(round(0.1 * len(true_xyz))))
    labels = true_xyz[rng.choice(len(true_xyz), n_labels, replace=False)]
    diameter = float(2 * np.median(truth.radii_voxels[truth.classes == target]) * sim.voxel_size)
    trained = run_job(
        train_picker_job(sim.tomogram, labels, diameter_angstrom=diameter, voxel_size=sim.voxel_size,
                         iterations=300, seed=seed, device=device),
        progress=not quiet,
        description="train picker",
    )
    threshold = trained.picker.default_threshold  # calibrated on the labels at the end of training
    picks, _heat = run_job(pick_job(trained.picker, sim.tomogram, threshold=threshold, voxel_size=sim.voxel_size,
                                    device=device), progress=False)
    folder = out / "picking"
    folder.mkdir(parents=True, exist_ok=True)
    model = save_picker(folder / "picker.pt", trained.picker)
    picks_star = star.write_particles(
        folder / "picks.star", coordinates_xyz=picks.coordinates_xyz, scores=picks.scores, tomo_name="sim_tomo",
        tomogram_shape=sim.tomogram.shape, voxel_size=sim.voxel_size, sort_by_score=True)
    prf = precision_recall_f1(picks.coordinates_xyz, picks.scores, true_xyz,
                              radius=0.5 * diameter / sim.voxel_size)
    return {
        "what": f"PU picker trained on {n_labels} of {len(true_xyz)} ribosomes for {trained.iterations} steps "
        f"({trained.seconds:.0f} s); {len(picks)} picks at score >= {threshold:.2f} (calibrated on the labels): precision {prf.precision:.2f}, "
        f"recall {prf.recall:.2f}, F1 {prf.f1:.2f} against all ribosomes (look-alike species present)",
        "numbers": {"labels": n_labels, "ribosomes": int(len(true_xyz)), "picks": len(picks), "threshold": threshold,
                    "precision": round(prf.precision, 3), "recall": round(prf.recall, 3), "f1": round(prf.f1, 3)},
        "files": {"model": str(model), "picks": str(picks_star)},
        "main": str(picks_star),
    }


def _step_align(out: Path, seed: int, device: str, quiet: bool, ctx: dict) -> dict:
    """Exhaustive wedge-aware alignment of the demo's ribosome subtomograms to the reference, then FSC."""
    import numpy as np

    from ..backend import geometry
    from ..backend.align.average import average_particles
    from ..backend.align.exhaustive import align_exhaustive_job
    from ..backend.jobs import run_job
    from ..io import write_mrc

    sset = ctx["subtomograms"]
    idx = np.flatnonzero(sset.classes == 1 + list(sset.class_names).index("ribosome"))
    parts = sset.volumes[idx]
    ref = sset.references[list(sset.class_names).index("ribosome")]
    res = run_job(
        align_exhaustive_job(parts, ref, particle_masks=sset.mask, angular_step_deg=30, device=device),
        progress=not quiet,
        description="align (exhaustive)",
    )
    ang = geometry.geodesic_angle_deg(res.rotations, sset.rotations[idx])
    shift_err = np.linalg.norm(res.origins_voxels - sset.origins_voxels[idx], axis=1)
    avg = average_particles(parts, res, particle_masks=sset.mask, half_maps=True,
                            voxel_size_angstrom=sset.voxel_size_angstrom)
    folder = out / "alignment"
    folder.mkdir(parents=True, exist_ok=True)
    path = write_mrc(folder / "ribosome_average.mrc", avg.average, voxel_size=sset.voxel_size_angstrom)
    numbers = {
        "particles": int(len(idx)),
        "median_rotation_error_deg": round(float(np.median(ang)), 1),
        "median_shift_error_voxels": round(float(np.median(shift_err)), 2),
        "pairs_per_second": round(len(idx) / res.seconds, 2) if res.seconds == res.seconds and res.seconds > 0 else None,
    }
    fsc_text = ""
    if getattr(avg, "fsc", None) is not None:
        numbers["fsc_0.143_angstrom"] = round(float(avg.fsc.resolution_0143), 1)
        fsc_text = f", half-map FSC 0.143 at {numbers['fsc_0.143_angstrom']:g} Å"
    return {
        "what": f"exhaustive search (30° grid + local refinement) of {len(idx)} ribosome subtomograms at SNR 0.1: "
        f"median rotation error {numbers['median_rotation_error_deg']:g}°, shift error "
        f"{numbers['median_shift_error_voxels']:g} voxels{fsc_text}",
        "numbers": numbers,
        "files": {"average": str(path)},
        "main": str(path),
    }


def _step_markers(out: Path, seed: int, device: str, quiet: bool, ctx: dict) -> dict:
    """SparseAlign on the simulated marker tilt series: markers and deformation against the truth."""
    from ..backend.jobs import run_job
    from ..backend.markers import find_markers_job
    from ..backend.markers.export import write_results
    from ..backend.markers.metrics import deformation_errors, match_markers

    ts = ctx["tiltseries"]
    res = run_job(
        find_markers_job(ts.tilt_series, ts.tilt_angles_deg, bead_diameter_nm=ts.bead_diameter_nm,
                         pixel_size_nm=ts.pixel_size_nm, sigma_nm=15.0, thickness_nm=100.0, degree=2,
                         acquisition_order=ts.acquisition_order, device=device),
        progress=not quiet,
        description="find markers",
    )
    m = match_markers(res.positions_nm, ts.bead_positions_nm, pixel_size_nm=ts.pixel_size_nm, max_distance_nm=15.0)
    e = deformation_errors(ts.deformation, res.deformation, ts.bead_positions_nm, extent_nm=(819.2, 819.2, 100.0))
    files = write_results(out / "markers", res, acquisition_order=ts.acquisition_order)
    numbers = {"found": int(len(res.positions_nm)), "true": int(len(ts.bead_positions_nm)), "missed": int(m.n_missed),
               "spurious": int(m.n_spurious), "max_error_px": round(float(m.max_error_px), 3),
               "E_markers_nm2": round(float(e["E_markers"]), 3)}
    return {
        "what": f"SparseAlign (ADCG, coarse-to-fine, degree-2 deformation) found {numbers['found']} of "
        f"{numbers['true']} beads ({numbers['missed']} missed, {numbers['spurious']} spurious, max error "
        f"{numbers['max_error_px']:g} px), E_markers {numbers['E_markers_nm2']:g} nm²",
        "numbers": numbers,
        "files": {k: str(v) for k, v in (files.items() if isinstance(files, dict) else [])},
        "main": str(out / "markers"),
    }


def _step_cluster(out: Path, seed: int, device: str, quiet: bool, ctx: dict) -> dict:
    """Joint alignment + clustering of a small mixed set; accuracy after Hungarian matching."""
    import numpy as np

    from ..backend.cluster import cluster_subtomograms_job, clustering_accuracy
    from ..backend.jobs import run_job
    from ..backend.simulate.subtomograms import simulate_subtomograms
    from ..io import write_mrc

    structures = ["ribosome", "mtor", "cct"]
    sset = simulate_subtomograms(structures, n_per_class=8, box=24, snr=0.5, seed=seed + 5)
    res = run_job(cluster_subtomograms_job(sset.volumes, n_classes=len(structures), method="joint",
                                           particle_masks=sset.mask, voxel_size_angstrom=sset.voxel_size_angstrom,
                                           refine_levels=1, init_iterations=1, iterations=2, seed=seed,
                                           device=device),
                  progress=not quiet, description="cluster")
    acc = clustering_accuracy(sset.classes - 1, res.classes)
    folder = out / "cluster"
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"class_{k + 1}": str(write_mrc(folder / f"class_{k + 1:03d}.mrc", np.asarray(avg),
                                             voxel_size=sset.voxel_size_angstrom))
             for k, avg in enumerate(res.averages)}
    return {
        "what": f"joint alignment + clustering of {len(sset.volumes)} subtomograms of {len(structures)} structures "
        f"(24³, SNR 0.5, ±60° wedge): accuracy {100 * acc.accuracy:.0f} % after Hungarian matching",
        "numbers": {"particles": int(len(sset.volumes)), "accuracy": round(float(acc.accuracy), 3),
                    "class_sizes": [int(v) for v in np.bincount(res.classes, minlength=len(structures))]},
        "files": files,
        "main": str(folder),
    }


def _step_reconstruct(out: Path, seed: int, device: str, quiet: bool, ctx: dict) -> dict:
    """Direct Fourier reconstruction (CTF) of the particle images from their STAR poses, half-map FSC."""
    import numpy as np

    from ..backend.jobs import run_job
    from ..backend.pose.data import load_particle_data
    from ..backend.pose.reconstruct import reconstruct_half_maps_job
    from ..io import write_mrc

    data = load_particle_data(ctx["particles_star"], require_poses=True)
    res = run_job(reconstruct_half_maps_job(data, device=device), progress=not quiet, description="reconstruct")
    folder = out / "reconstruct"
    folder.mkdir(parents=True, exist_ok=True)
    vol = write_mrc(folder / "map.mrc", res.volume, voxel_size=res.pixel_size_angstrom)
    ref = ctx["particles_reference"]
    cc = float(np.corrcoef(res.volume.ravel(), np.asarray(ref).ravel())[0, 1])
    return {
        "what": f"direct Fourier reconstruction of {data.n} particle images from the STAR's poses (CTF, two half "
        f"sets): half-map FSC {res.fsc.resolution_0143:.1f} Å (0.143), correlation with the true map {cc:.2f}",
        "numbers": {"fsc_0.143_angstrom": round(float(res.fsc.resolution_0143), 1),
                    "fsc_0.5_angstrom": round(float(res.fsc.resolution_05), 1), "cc_with_truth": round(cc, 3)},
        "files": {"map": str(vol)},
        "main": str(vol),
    }


#: (title, function) in the order they run; each capability appends its step here
STEPS = [
    ("Simulate a crowded tomogram (picking data)", _step_tomogram),
    ("Simulate subtomograms + truth-aligned average and FSC", _step_subtomograms),
    ("Simulate a gold-marker tilt series with deformation", _step_tiltseries),
    ("Simulate particle images (pose data)", _step_particles),
    ("Pick ribosomes from 10 % labels (sparse-label PU picker)", _step_pick),
    ("Align ribosome subtomograms (exhaustive search) and average", _step_align),
    ("Find gold markers and the deformation (SparseAlign)", _step_markers),
    ("Cluster a mixed subtomogram set (joint alignment + clustering)", _step_cluster),
    ("Reconstruct the particle images from their poses (direct Fourier, CTF)", _step_reconstruct),
]


def run(args) -> int:
    from ..errors import InputError

    out = Path(args.out) if args.out else Path("demo_output") / time.strftime("run-%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        raise InputError("a new or empty output folder (the demo never overwrites)", path=out, field="--out")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    results = []
    ctx: dict = {}
    t_all = time.perf_counter()
    for i, (title, step) in enumerate(STEPS, start=1):
        if not args.quiet:
            print(f"[{i}/{len(STEPS)}] {title}", flush=True)
        t0 = time.perf_counter()
        res = step(out, args.seed, device, args.quiet, ctx)
        res["title"] = title
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(res)
    total = round(time.perf_counter() - t_all, 1)
    summary = {"output": str(out.resolve()), "device": device, "seed": args.seed, "seconds": total, "steps": results}
    from ..io import write_json

    write_json(out / "summary.json", summary, indent=2)
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    print()
    print(f"napari-cryoalign demo: {len(summary['steps'])} steps in {summary['seconds']:g} s on {summary['device']}")
    for i, s in enumerate(summary["steps"], start=1):
        print(f"  {i}. {s['title']} ({s['seconds']:g} s)")
        print(f"     {s['what']}")
        print(f"     -> {s['main']}")
    print(f"All outputs: {summary['output']}  (numbers in summary.json)")
    print("Look at them: cryoalign gui " + summary["steps"][0]["main"])
