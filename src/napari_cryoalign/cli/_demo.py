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

import json
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the headless demo on embedded data and print a summary", description=__doc__)
    p.add_argument("--out", metavar="DIR", help="output folder (default: ./demo_output/run-<timestamp>); must not exist")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto (default cpu)")
    p.set_defaults(func=run)


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _step_tomogram(out: Path, seed: int, device: str, quiet: bool) -> dict:
    from ..backend.jobs import run_job
    from ..backend.simulate.tomogram import simulate_tomogram_job, write_tomogram_simulation

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
    n = len(sim.truth.coordinates_xyz)
    return {
        "what": f"crowded tomogram {tuple(sim.tomogram.shape)} (z, y, x) at {sim.voxel_size:g} Å, "
        f"{n} particles of {len(sim.truth.class_names)} structures, {len(sim.tilt_angles_deg)} tilts, WBP",
        "numbers": {"particles": n, "tilts": int(len(sim.tilt_angles_deg))},
        "files": {k: str(v) for k, v in files.items()},
        "main": str(files.get("tomogram", out / "tomogram")),
    }


def _step_subtomograms(out: Path, seed: int, device: str, quiet: bool) -> dict:
    import numpy as np

    from ..backend import geometry
    from ..backend.fourier import fsc, resolution_at, sphere_mask
    from ..backend.jobs import run_job
    from ..backend.simulate.subtomograms import simulate_subtomograms_job, write_subtomogram_set
    from ..io import star

    structures = ["ribosome", "cct", "mtor"]
    sset = run_job(
        simulate_subtomograms_job(structures, n_per_class=40, box=32, snr=0.1, seed=seed, device=device),
        progress=not quiet,
        description="simulate subtomograms",
    )
    files = write_subtomogram_set(sset, out / "subtomograms")
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


def _step_tiltseries(out: Path, seed: int, device: str, quiet: bool) -> dict:
    from ..backend.simulate.markers import simulate_marker_tiltseries, write_marker_tiltseries

    ts = simulate_marker_tiltseries(preset="paper3d", seed=seed, device=device)
    files = write_marker_tiltseries(ts, out / "tiltseries")
    n_tilts, ny, nx = ts.tilt_series.shape
    return {
        "what": f"SparseAlign 3D preset: {len(ts.bead_positions_nm)} gold beads of {ts.bead_diameter_nm:g} nm, "
        f"{n_tilts} tilts of {ny}×{nx} px, polynomial doming deformation (truth in JSON)",
        "numbers": {"beads": int(len(ts.bead_positions_nm)), "tilts": int(n_tilts)},
        "files": {k: str(v) for k, v in files.items()},
        "main": str(files.get("tiltseries", out / "tiltseries")),
    }


def _step_particles(out: Path, seed: int, device: str, quiet: bool) -> dict:
    from ..backend.jobs import run_job
    from ..backend.simulate.particles import simulate_particles_job, write_particle_set
    from ..io import star

    pset = run_job(
        simulate_particles_job("ribosome", n=400, box=64, pixel_size_angstrom=6.0, snr=0.1, seed=seed, device=device),
        progress=not quiet,
        description="simulate particle images",
    )
    files = write_particle_set(pset, out / "particles")
    images, table = star.read_particle_images(files["star"])
    halves = sorted(set(int(h) for h in table.data["rlnRandomSubset"]))
    return {
        "what": f"{len(images)} ribosome particle images {images.shape[1]}² at {pset.pixel_size_angstrom:g} Å, "
        f"CTF, SNR 0.1, two half-sets {halves}",
        "numbers": {"images": int(len(images))},
        "files": {k: str(v) for k, v in files.items()},
        "main": str(files["star"]),
    }


#: (title, function) in the order they run; each capability appends its step here
STEPS = [
    ("Simulate a crowded tomogram (picking data)", _step_tomogram),
    ("Simulate subtomograms + truth-aligned average and FSC", _step_subtomograms),
    ("Simulate a gold-marker tilt series with deformation", _step_tiltseries),
    ("Simulate particle images (pose data)", _step_particles),
]


def run(args) -> int:
    from ..errors import InputError

    out = Path(args.out) if args.out else Path("demo_output") / time.strftime("run-%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        raise InputError("a new or empty output folder (the demo never overwrites)", path=out, field="--out")
    out.mkdir(parents=True, exist_ok=True)
    device = _device(args.device)
    results = []
    t_all = time.perf_counter()
    for i, (title, step) in enumerate(STEPS, start=1):
        if not args.quiet:
            print(f"[{i}/{len(STEPS)}] {title}", flush=True)
        t0 = time.perf_counter()
        res = step(out, args.seed, device, args.quiet)
        res["title"] = title
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(res)
    total = round(time.perf_counter() - t_all, 1)
    summary = {"output": str(out.resolve()), "device": device, "seed": args.seed, "seconds": total, "steps": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
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
