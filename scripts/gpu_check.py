"""Every backend job on a torch device, against the same job on the CPU: the CUDA path check.

Run where a GPU is (``python scripts/gpu_check.py --device cuda --out result.json``); on a
machine without one it runs the CPU against itself (``--device cpu``), which checks the script.
Each check runs a small job with ``device=`` the chosen device and compares with the CPU
(rotations, shifts, scores, picks, maps), and prints one line per check with the time on each;
the exit status is the number of failed checks. Sizes are small on purpose: this checks that
the device is an argument everywhere (no tensor left on the wrong device, no ``.cuda()``), not
speed. Needs the package's dependencies minus napari (torch, numpy, scipy, pandas, mrcfile,
starfile, tqdm).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def check_peaks(device):
    import torch

    from napari_cryoalign.backend.peaks import find_peak

    g = torch.Generator().manual_seed(0)
    maps = torch.rand((4, 16, 16, 16), generator=g)
    ref = find_peak(maps, max_shift=5.0)
    got = find_peak(maps.to(device), max_shift=5.0)
    assert got[0].device.type == torch.device(device).type
    np.testing.assert_allclose(got[0].cpu().numpy(), ref[0].numpy(), atol=1e-5)
    return {"max_abs_diff": float((got[0].cpu() - ref[0]).abs().max())}


def _subtomograms():
    from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms

    return simulate_subtomograms(["ribosome"], n_per_class=6, box=32, snr=1.0, seed=1)


def check_align(device, method):
    from napari_cryoalign.backend.align.methods import align_job
    from napari_cryoalign.backend.geometry import euler_to_matrix, geodesic_angle_deg
    from napari_cryoalign.backend.jobs import run_job

    s = _subtomograms()
    truth = euler_to_matrix(s.euler_deg)

    def run(dev):
        return run_job(align_job(s.volumes, s.references[0], method=method, particle_masks=s.mask, device=dev),
                       progress=False)

    cpu, t_cpu = _timed(lambda: run("cpu"))
    dev, t_dev = _timed(lambda: run(device))
    err_dev = geodesic_angle_deg(dev.rotations, truth)
    between = geodesic_angle_deg(dev.rotations, cpu.rotations)
    assert np.median(err_dev) < 10.0 or method == "learned", f"median error {np.median(err_dev):.1f} deg"
    assert np.median(between) < 2.0, f"device vs cpu: median {np.median(between):.2f} deg"
    return {"median_error_deg": float(np.median(err_dev)), "median_device_vs_cpu_deg": float(np.median(between)),
            "seconds_cpu": t_cpu, "seconds_device": t_dev}


def check_average(device):
    from napari_cryoalign.backend.align.average import average_particles
    from napari_cryoalign.backend.align.types import AlignmentResult
    from napari_cryoalign.backend.geometry import euler_to_matrix

    s = _subtomograms()
    poses = AlignmentResult(euler_to_matrix(s.euler_deg), s.origins_voxels, np.zeros(s.n), "truth")

    def run(dev):
        return average_particles(s.volumes, poses, particle_masks=s.mask, half_maps=True,
                                 voxel_size_angstrom=s.voxel_size_angstrom, device=dev)

    cpu, t_cpu = _timed(lambda: run("cpu"))
    dev, t_dev = _timed(lambda: run(device))
    diff = float(np.abs(dev.average - cpu.average).max() / np.abs(cpu.average).max())
    assert diff < 1e-3, diff
    return {"relative_max_diff": diff, "fsc_0143_A": float(dev.fsc.resolution_0143), "seconds_cpu": t_cpu,
            "seconds_device": t_dev}


def check_cluster(device):
    from napari_cryoalign.backend.cluster.classify import cluster_subtomograms_job
    from napari_cryoalign.backend.cluster.gmm import clustering_accuracy
    from napari_cryoalign.backend.jobs import run_job
    from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms

    s = simulate_subtomograms(["ribosome", "mtor"], n_per_class=6, box=24, snr=2.0, seed=2)
    res, t = _timed(lambda: run_job(cluster_subtomograms_job(s.volumes, n_classes=2, particle_masks=s.mask,
                                                             iterations=1, refine_levels=1,
                                                             voxel_size_angstrom=s.voxel_size_angstrom,
                                                             device=device), progress=False))
    acc = clustering_accuracy(s.classes, np.asarray(res.classes) + 1).accuracy
    assert acc >= 0.75, acc
    return {"accuracy": float(acc), "seconds_device": t}


def check_picking(device):
    from napari_cryoalign.backend.jobs import run_job
    from napari_cryoalign.backend.picking.session import pick_with_model_job, train_and_pick_job
    from napari_cryoalign.backend.simulate.tomogram import sample_tomogram

    sim = sample_tomogram(seed=0)
    labels = np.asarray(sim.truth.coordinates_xyz)[:5]
    out, t = _timed(lambda: run_job(train_and_pick_job(sim.tomogram, labels, voxel_size=float(sim.voxel_size),
                                                       diameter_angstrom=250.0, iterations=20, device=device),
                                    progress=False))
    again = run_job(pick_with_model_job(out.picker, sim.tomogram, voxel_size=float(sim.voxel_size), device=device),
                    progress=False)
    assert len(out.picks) > 0 and np.allclose(again.picks.scores, out.picks.scores, atol=1e-4)
    return {"candidates": len(out.picks), "seconds_device": t}


def check_template(device):
    from napari_cryoalign.backend.jobs import run_job
    from napari_cryoalign.backend.picking.session import template_candidates_job

    b, (x, y, z) = 16, (40, 30, 20)
    g = np.arange(b) - b // 2
    blob = np.exp(-(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) / (2 * 2.5**2))
    tomo = np.random.default_rng(0).normal(size=(40, 64, 64)).astype(np.float32)
    tomo[z - b // 2:z + b // 2, y - b // 2:y + b // 2, x - b // 2:x + b // 2] += 8 * blob

    def run(dev):
        return run_job(template_candidates_job(tomo, blob.astype(np.float32), voxel_size=10.0, template_voxel_size=10.0,
                                               angular_step_deg=90.0, device=dev), progress=False)

    cpu, t_cpu = _timed(lambda: run("cpu"))
    dev, t_dev = _timed(lambda: run(device))
    best = dev.picks.coordinates_xyz[0]
    assert np.linalg.norm(best - [x, y, z]) <= 1.0, best
    np.testing.assert_allclose(dev.score_map, cpu.score_map, atol=1e-3)
    return {"best_pick_xyz": best.tolist(), "seconds_cpu": t_cpu, "seconds_device": t_dev}


def check_pose(device):
    from napari_cryoalign.backend.jobs import run_job
    from napari_cryoalign.backend.pose.predict import pose_pipeline_job
    from napari_cryoalign.backend.simulate.particles import simulate_particles

    import tempfile

    from napari_cryoalign.backend.pose.data import load_particle_data
    from napari_cryoalign.backend.simulate.particles import write_particle_set

    ps = simulate_particles("ribosome", n=96, box=32, pixel_size_angstrom=12.0, snr=2.0, seed=0)
    data = load_particle_data(write_particle_set(ps, Path(tempfile.mkdtemp()) / "set")["star"])
    run, t = _timed(lambda: run_job(pose_pipeline_job(data, train={"epochs": 1, "grid_level": 1}, device=device),
                                    progress=False))
    assert np.isfinite(run.reconstruction.volume).all()
    return {"particles": int(data.n), "seconds_device": t,
            "fsc_0143_A": None if run.reconstruction.fsc is None else float(run.reconstruction.fsc.resolution_0143)}


def check_simulate(device):
    from napari_cryoalign.backend.jobs import run_job
    from napari_cryoalign.backend.simulate.markers import sample_marker_tiltseries_job
    from napari_cryoalign.backend.simulate.tomogram import simulate_tomogram_job

    tomo, t1 = _timed(lambda: run_job(simulate_tomogram_job(shape=(32, 64, 64), structures=["mtor"], n_particles=3,
                                                            n_gold=0, seed=0, device=device), progress=False))
    ts, t2 = _timed(lambda: run_job(sample_marker_tiltseries_job(seed=0), progress=False))
    assert np.isfinite(tomo.tomogram).all() and np.isfinite(ts.tilt_series).all()
    return {"tomogram_shape": list(tomo.tomogram.shape), "seconds_tomogram": t1, "seconds_tiltseries": t2}


CHECKS = {
    "peaks": check_peaks,
    "align exhaustive": lambda d: check_align(d, "exhaustive"),
    "align learned": lambda d: check_align(d, "learned"),
    "align learned+refine": lambda d: check_align(d, "learned+refine"),
    "average": check_average,
    "cluster": check_cluster,
    "picking": check_picking,
    "template matching": check_template,
    "pose": check_pose,
    "simulate": check_simulate,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None, help="JSON with every check's numbers")
    parser.add_argument("--only", default=None, help="comma-separated check names")
    args = parser.parse_args(argv)
    import torch

    info = {"device": args.device, "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(info))
    results, failed = {}, 0
    names = args.only.split(",") if args.only else list(CHECKS)
    for name in names:
        t0 = time.perf_counter()
        try:
            res = CHECKS[name](args.device)
            results[name] = {"ok": True, **res}
            print(f"PASS {name} ({time.perf_counter() - t0:.1f} s): {json.dumps(res)}", flush=True)
        except Exception as exc:  # noqa: BLE001 - every check runs; failures are reported
            failed += 1
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
            print(f"FAIL {name} ({time.perf_counter() - t0:.1f} s): {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "results": results}, indent=1))
    return failed


if __name__ == "__main__":
    sys.exit(main())
