"""Batch jobs on Dask distributed (issue 21): scaling of `batch pick predict`, sharded averaging, a killed
worker and a resumed batch.

Parts (``--parts``, default all):

* ``scaling``: 16 simulated tomograms of 100 x 256 x 256 voxels (20 Å; ribosome, CCT, mTOR, RuvAB, 120
  particles each, seeds 1000-1015), one picker (trained 150 steps on seed 1000: a speed benchmark). Timed
  on the same data, one after the other:
  - ``loop``: a plain loop of what `cryoalign pick predict` does, in one process, torch on 2 threads (the
    default on 2 cores): read, predict, pick, write the STAR file;
  - ``cli loop``: `cryoalign pick predict` run 16 times as commands (each pays its start-up);
  - ``batch`` at 1 worker x 2 threads and at 2 workers x 1 thread: `cryoalign batch pick predict
    --tomogram-list`, start-up of the local cluster included.
  Per-task seconds come from the completion markers; the projection to W workers is
  ``T(W) = start + ceil(N / W) * t_task + N * overhead`` with ``overhead`` the measured wall time per
  tomogram beyond the tasks' own (scheduler, transfers, merging) at 2 workers.
* ``average``: 20,000 subtomograms of 32³ (a ribosome at 12 Å at random poses plus noise, written as one
  MRC each: 2.6 GB), averaged sharded (1000 per shard, 2 workers) and in one process (`cryoalign average`'s
  code path); the maximum difference between the maps and each worker's peak memory (max RSS) against the
  single process's.
* ``faults``: a batch whose worker process is killed after the first tomogram finishes (Dask reruns its
  task elsewhere: every tomogram must finish, with the same picks as the loop), and a batch stopped after
  4 tomograms and rerun (the 4 are skipped).

    .venv/bin/python benchmarks/bench_batch.py --work /tmp/bench_batch --out docs/benchmarks/batch.json

Run it on an otherwise idle machine (2 cores). ``--work`` keeps the simulated data for reruns.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPE, VOXEL, N_TOMO = (100, 256, 256), 20.0, 16
DIAMETER = 280.0  # Å, the ribosome's


def _simulate(work: Path) -> list[Path]:
    from napari_cryoalign.backend.simulate.tomogram import simulate_tomogram
    from napari_cryoalign.io import write_mrc, write_particles

    files = []
    for i in range(N_TOMO):
        f = work / f"tomo_{i:02d}.mrc"
        if not f.exists():
            sim = simulate_tomogram(shape=SHAPE, voxel_size_angstrom=VOXEL, structures=("ribosome", "cct", "mtor",
                                    "ruvab"), n_particles=120, seed=1000 + i)
            write_mrc(f, sim.tomogram, voxel_size=VOXEL)
            if i == 0:
                t = sim.truth
                xyz = np.asarray(t.coordinates_xyz)
                keep = np.asarray([t.class_names[k - 1] == "ribosome" for k in t.classes])
                write_particles(work / "labels.star", coordinates_xyz=xyz[keep][:15], tomo_name=f.stem)
        files.append(f)
        print(f"  tomogram {i + 1}/{N_TOMO}", flush=True)
    (work / "list.txt").write_text("".join(f"{f.name}\n" for f in files))
    return files


def _model(work: Path, files) -> Path:
    m = work / "model.pt"
    if not m.exists():
        exe = os.path.join(os.path.dirname(sys.executable), "cryoalign")
        subprocess.run([exe, "-q", "pick", "train", "--tomogram", str(files[0]), "--labels", str(work / "labels.star"),
                        "--diameter", str(DIAMETER), "--out", str(m),
                        "--iterations", "150", "--no-lookalike-rejection", "--device", "cpu"], check=True)
    return m


def _loop(files, model, out: Path) -> float:
    """What `cryoalign pick predict` does, for every tomogram, in this process."""
    import torch

    from napari_cryoalign.backend.jobs import run_job
    from napari_cryoalign.backend.picking import load_picker, pick_job
    from napari_cryoalign.io import read_mrc, voxel_size_isotropic, write_particles

    from napari_cryoalign.backend._malloc import keep_freed_memory

    keep_freed_memory()  # as the cryoalign command does for itself
    torch.set_num_threads(2)
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for f in files:
        picker = load_picker(model)
        vol = read_mrc(f, mmap=True)
        vs = voxel_size_isotropic(vol)
        picks, _ = run_job(pick_job(picker, vol.data, threshold=picker.default_threshold, voxel_size=vs),
                           progress=False)
        write_particles(out / f"{f.stem}.star", coordinates_xyz=picks.coordinates_xyz, scores=picks.scores,
                        tomo_name=f.stem, tomogram_shape=vol.shape, voxel_size=vs, sort_by_score=True, overwrite=True)
    return time.perf_counter() - t0


def _cli(argv) -> float:
    t0 = time.perf_counter()
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "cryoalign"), "-q", *argv], check=False)
    return time.perf_counter() - t0


def _markers(out: Path) -> list[float]:
    return [json.loads(m.read_text())["summary"]["seconds"] for m in out.glob("*/.cryoalign-pick-predict.json")]


def part_scaling(work: Path, res: dict) -> None:
    import shutil

    files = _simulate(work)
    model = _model(work, files)
    rows = {}
    t = _loop(files, model, work / "loop")
    rows["loop (one process, 2 threads)"] = {"seconds": t}
    print(f"loop: {t:.1f} s", flush=True)
    t = sum(_cli(["pick", "predict", "--tomogram", str(f), "--model", str(model), "--out",
                  str(work / "cli" / f"{f.stem}.star"), "--overwrite"]) for f in files if (work / "cli").mkdir(
                      exist_ok=True) is None)
    rows["cli loop (16 commands)"] = {"seconds": t}
    print(f"cli loop: {t:.1f} s", flush=True)
    for workers, threads in ((1, 2), (2, 1)):
        out = work / f"batch_{workers}x{threads}"
        shutil.rmtree(out, ignore_errors=True)
        t = _cli(["batch", "pick", "predict", "--tomogram-list", str(work / "list.txt"), "--model", str(model),
                  "--out", str(out), "--workers", str(workers), "--threads-per-worker", str(threads)])
        tasks = _markers(out)
        rows[f"batch {workers} x {threads}"] = {"seconds": t, "tasks": len(tasks), "task_seconds_median":
                                               float(np.median(tasks)), "task_seconds_sum": float(np.sum(tasks))}
        print(f"batch {workers}x{threads}: {t:.1f} s, {len(tasks)} tasks, median {np.median(tasks):.2f} s", flush=True)
    # the same picks as the loop
    from napari_cryoalign.io import read_star

    diffs = []
    for f in files:
        a = read_star(work / "loop" / f"{f.stem}.star")["particles"]
        b = read_star(work / "batch_2x1" / f.stem / "picks.star")["particles"]
        diffs.append(len(a) == len(b) and np.allclose(a["rlnCoordinateX"], b["rlnCoordinateX"], atol=1e-3))
    loop = rows["loop (one process, 2 threads)"]["seconds"]
    b2 = rows["batch 2 x 1"]
    start = _cluster_start()
    per_task = b2["task_seconds_median"]
    overhead = max(0.0, (b2["seconds"] - start - math.ceil(N_TOMO / 2) * per_task) / N_TOMO)
    proj = {str(w): {str(n): start + math.ceil(n / w) * per_task + n * overhead for n in (16, 1000)}
            for w in (1, 2, 8, 64)}
    res["scaling"] = {"rows": rows, "speedup_vs_loop": loop / b2["seconds"],
                      "speedup_vs_cli_loop": rows["cli loop (16 commands)"]["seconds"] / b2["seconds"],
                      "same_picks_as_loop": bool(all(diffs)), "cluster_start_seconds": start,
                      "overhead_per_tomogram_seconds": overhead, "projection_seconds": proj,
                      "projection_note": "T(W) = start + ceil(N/W) * t_task + N * overhead; t_task measured with 1 "
                      "thread per task on this machine; more machines add no shared cost but the scheduler's"}
    print(json.dumps(res["scaling"], indent=1), flush=True)


def _cluster_start() -> float:
    from napari_cryoalign.backend.batch import dask_client

    t0 = time.perf_counter()
    c, _ = dask_client(workers=2, threads_per_worker=1)
    c.wait_for_workers(2)
    c.submit(lambda: 1, pure=False).result()
    t = time.perf_counter() - t0
    cl = c.cluster
    c.close()
    cl.close()
    return t


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM, MB; per process, unlike ru_maxrss, which a child inherits)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


_ONE_PROCESS = r"""
import json, sys, time
import numpy as np, torch
from napari_cryoalign.backend._malloc import keep_freed_memory
keep_freed_memory()
torch.set_num_threads(2)
from napari_cryoalign.backend.align.average import average_particles
from napari_cryoalign.backend.align.extract import load_particle_set, particle_ctf
from napari_cryoalign.backend.align.types import AlignmentResult
from napari_cryoalign.backend.batch.average import row_halves
from napari_cryoalign.backend.geometry import euler_to_matrix
from napari_cryoalign.backend.wedge import particle_fourier_mask
star, out, box = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
pset = load_particle_set(star)
poses = AlignmentResult(euler_to_matrix(pset.euler_deg), pset.origins_angstrom / pset.voxel_size,
                        np.full(len(pset.rows), np.nan), "star")
one = average_particles(pset.volumes, poses, particle_masks=particle_fourier_mask(box),
                        voxel_size_angstrom=pset.voxel_size, half=row_halves(pset.table.data, pset.rows),
                        ctf=particle_ctf(pset))
t = time.perf_counter() - t0
np.savez(out, average=one.average, half1=one.half1, half2=one.half2)
hwm = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"seconds": t, "peak_rss_mb": hwm, "fsc_0143": one.fsc.resolution_0143}))
"""


def part_average(work: Path, res: dict, n: int = 20000, box: int = 32) -> None:

    from napari_cryoalign.backend.batch.average import sharded_average_job
    from napari_cryoalign.backend.geometry import (matrix_to_euler, random_rotations,
                                                   transform_reference_to_particle)
    from napari_cryoalign.backend.jobs import run_job
    from napari_cryoalign.backend.simulate.structures import load_structure_map
    from napari_cryoalign.io import write_subtomograms

    star = work / "avg" / "particles.star"
    if not star.exists():
        (work / "avg").mkdir(exist_ok=True)
        ref, _ = load_structure_map("ribosome", voxel_size_angstrom=12.0, box=box)
        rng = np.random.default_rng(0)
        rots = random_rotations(n, seed=1)
        vols = np.empty((n, box, box, box), np.float32)
        for i, r in enumerate(rots):
            vols[i] = transform_reference_to_particle(ref, r)
        vols += rng.normal(0, 3 * vols.std(), vols.shape).astype(np.float32)
        write_subtomograms(star, vols, voxel_size=12.0, euler_deg=matrix_to_euler(rots))
        del vols
    from napari_cryoalign.backend.batch import dask_client

    t0 = time.perf_counter()
    client, _ = dask_client(workers=2, threads_per_worker=1)
    rss_start = client.run(_peak_rss_mb)
    sh = run_job(sharded_average_job(str(star), shard_size=1000, client=client, threads_per_worker=1), progress=False)
    t_sharded = time.perf_counter() - t0
    rss_workers = client.run(_peak_rss_mb)
    cl = client.cluster
    client.close()
    cl.close()
    # one process, as `cryoalign average` runs it, in a fresh interpreter (its own peak memory)
    one_npz = work / "avg" / "one_process.npz"
    child = subprocess.run([sys.executable, "-c", _ONE_PROCESS, str(star), str(one_npz), str(box)], check=True,
                           capture_output=True, text=True)
    one_info = json.loads(child.stdout.strip().splitlines()[-1])
    one = np.load(one_npz)
    scale = float(np.abs(one["average"]).max())
    res["average"] = {
        "particles": int(sh.n_particles), "box": box, "shards": len(sh.shards), "shard_size": 1000,
        "workers": sh.workers, "sharded_seconds": t_sharded, "one_process_seconds": one_info["seconds"],
        "max_abs_difference_relative": {k: float(np.abs(getattr(sh.average, k) - one[k]).max() / scale)
                                        for k in ("average", "half1", "half2")},
        "fsc_0143": [sh.average.fsc.resolution_0143, one_info["fsc_0143"]],
        "one_process_peak_rss_mb": one_info["peak_rss_mb"], "worker_peak_rss_mb": sorted(rss_workers.values()),
        "worker_rss_after_start_mb": sorted(rss_start.values()), "all_particles_mb": n * box ** 3 * 4 / 2 ** 20,
        "note": "peak RSS = VmHWM of each process (workers: spawned fresh, after all 20 shards)"}
    print(json.dumps(res["average"], indent=1), flush=True)


def part_faults(work: Path, res: dict) -> None:
    import shutil

    from distributed import as_completed  # noqa: F401

    from napari_cryoalign.backend.batch import (batch_job, dask_client, merge_picks, pick_predict_task,
                                                tomograms_from_list)
    from napari_cryoalign.backend.jobs import Partial, run_job

    files = _simulate(work)
    model = _model(work, files)
    inputs = tomograms_from_list(work / "list.txt")
    params = {"model": str(model), "threshold": None, "min_distance_angstrom": None, "heatmap": False,
              "device": "cpu", "copick_object": None, "copick_session": "0"}
    out = work / "faults_kill"
    shutil.rmtree(out, ignore_errors=True)
    client, _ = dask_client(workers=2, threads_per_worker=1)
    killed = []
    job = batch_job("pick predict", pick_predict_task, inputs, out, params=params, client=client, merge=merge_picks)
    report = None
    try:
        while True:
            ev = next(job)
            if isinstance(ev, Partial) and ev.name == "tomogram" and ev.value.status == "done" and not killed:
                pids = client.run(os.getpid)
                victim = sorted(pids.items())[0]
                os.kill(victim[1], 9)
                killed.append(victim[0])
    except StopIteration as stop:
        report = stop.value
    finally:
        cl = client.cluster
        client.close()
        cl.close()
    same = []
    from napari_cryoalign.io import read_star

    for f in files:
        a = read_star(work / "loop" / f"{f.stem}.star")["particles"] if (work / "loop").exists() else None
        b = read_star(out / f.stem / "picks.star")["particles"]
        same.append(a is None or (len(a) == len(b)
                                  and np.allclose(a["rlnCoordinateX"], b["rlnCoordinateX"], atol=1e-3)))
    res["faults"] = {"killed_worker": killed, "done": report.count("done"), "failed": report.count("failed"),
                     "same_picks_as_loop": bool(all(same))}
    # stopped after 4, then rerun
    out2 = work / "faults_resume"
    shutil.rmtree(out2, ignore_errors=True)
    client, _ = dask_client(workers=2, threads_per_worker=1)
    job = batch_job("pick predict", pick_predict_task, inputs, out2, params=params, client=client)
    done = 0
    for ev in job:
        if isinstance(ev, Partial) and ev.name == "tomogram" and ev.value.status == "done":
            done += 1
            if done >= 4:
                job.close()
                break
    cl = client.cluster
    client.close()
    cl.close()
    markers = len(list(out2.glob("*/.cryoalign-pick-predict.json")))
    t0 = time.perf_counter()
    again = run_job(batch_job("pick predict", pick_predict_task, inputs, out2, params=params, workers=2),
                    progress=False)
    res["faults"].update(stopped_after=done, markers_after_stop=markers, rerun_skipped=again.count("skipped"),
                         rerun_done=again.count("done"), rerun_seconds=time.perf_counter() - t0)
    print(json.dumps(res["faults"], indent=1), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/bench_batch")
    ap.add_argument("--out", default="docs/benchmarks/batch.json")
    ap.add_argument("--parts", default="scaling,faults,average")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res = {"command": "python benchmarks/bench_batch.py " + " ".join(sys.argv[1:]), "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    if out.exists():
        res = {**json.loads(out.read_text()), **res}
    for part in args.parts.split(","):
        {"scaling": part_scaling, "average": part_average, "faults": part_faults}[part](work, res)
        out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
