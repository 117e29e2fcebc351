"""Subtomogram alignment accuracy and speed (Gum-Net protocol) and averaging resolution.

Alignment (Zeng & Xu, CVPR 2020, protocol on this project's simulator): five structures
(ribosome, cct, mtor, ruvab, dengue_e_fab), 32³ boxes at 12 Å, ±60° tilt range (a 30°
missing wedge), CTF at 5 µm, random rotations (uniform on SO(3)) and shifts (uniform in
±3 voxels per axis), SNR 100, 0.1, 0.05, 0.03, 0.01. Every particle is aligned to the
noise-free map of its structure. Errors: rotation as the Frobenius norm of the matrix
difference (the paper's metric) and as the geodesic angle; translation as the Euclidean
distance in voxels. Throughput in particle-reference pairs per second, every method timed
in the same run on the same particles.

Methods are entries of :data:`METHODS` (name -> function(particles, reference, masks,
device) -> AlignmentResult). The exhaustive search is here; the learned aligner adds
"learned" and "learned+refine" when ``napari_cryoalign.backend.align.learned`` imports;
the peer a CPU user would pick today, acryo 0.9.1 (``ZNCCAlignment``, FFT-based,
numpy/scipy), runs on a subset when installed (``pip install acryo==0.9.1``; it is not a
dependency of the package) and is skipped with a message otherwise.

Averaging: 200 copies of the ribosome at SNR 0.1 (same protocol), iterative gold-standard
averaging (3 rounds, exhaustive search) seeded with the true map low-passed to 60 Å; the
average is aligned onto the true map and its FSC against it compared with the noise-free
limit (the average of the same 200 particles without noise, with the true poses).

Writes docs/benchmarks/align.json.
Run:  .venv/bin/python benchmarks/bench_align.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_cryoalign.backend.align import AlignmentResult
from napari_cryoalign.backend.align.average import (
    average_particles,
    fsc_report,
    iterative_average,
)
from napari_cryoalign.backend.align.exhaustive import align_exhaustive, refine_alignment
from napari_cryoalign.backend.fourier import lowpass
from napari_cryoalign.backend.geometry import (
    align_particle_to_reference,
    geodesic_angle_deg,
    matrix_distance,
)
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms
from napari_cryoalign.errors import InputError

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "align.json"
FIVE = ["ribosome", "cct", "mtor", "ruvab", "dengue_e_fab"]
SNRS = [100.0, 0.1, 0.05, 0.03, 0.01]
GOALS = {0.1: (0.45, 1.8), 0.05: (0.65, 2.5), 0.03: (0.9, 3.5), 0.01: (1.3, 6.0)}
GUMNET = {0.1: (0.62, 2.41), 0.05: (0.87, 3.20), 0.03: (1.13, 4.29), 0.01: (1.50, 6.78)}


# ----------------------------------------------------------------------------- methods
def _exhaustive(particles, reference, masks, device):
    return align_exhaustive(particles, reference, particle_masks=masks, angular_step_deg=30.0, refine_levels=2,
                            device=device)


#: name -> function(particles (n,32,32,32), reference (32,32,32), Fourier mask, device) -> AlignmentResult.
#: The learned methods plug in here (see _add_learned).
METHODS = {"exhaustive": _exhaustive}


def _add_learned() -> str | None:
    try:
        from napari_cryoalign.backend.align import learned
    except ImportError as exc:
        return f"learned aligner not available: {exc}"
    try:
        learned.load_default_model(device="cpu")
    except (InputError, OSError, RuntimeError) as exc:  # no shipped weights yet
        return f"learned aligner has no default weights: {exc}"
    cache = {}

    def model(device):
        if device not in cache:
            cache[device] = learned.load_default_model(device=device)
        return cache[device]

    def run_learned(particles, reference, masks, device):
        return learned.align_learned(particles, reference, particle_masks=masks, model=model(device), device=device)

    def run_refined(particles, reference, masks, device):
        init = run_learned(particles, reference, masks, device)
        return refine_alignment(particles, reference, init, particle_masks=masks, max_angle_deg=20.0, levels=2,
                                device=device)

    METHODS["learned"] = run_learned
    METHODS["learned+refine"] = run_refined
    return None


def _acryo_aligner():
    """acryo's ZNCCAlignment as a METHODS-style function, or None when acryo is absent."""
    try:
        import acryo
        from acryo.alignment import ZNCCAlignment
    except ImportError:
        return None, None

    def run(particles, reference, masks, device):
        # a global Euler grid at 30 degrees (z, y, x axes in acryo's zyx arrays), missing wedge as (-60, 60)
        model = ZNCCAlignment(np.asarray(reference, np.float32), rotations=((180, 30), (90, 30), (180, 30)),
                              tilt=(-60, 60))
        n, box = len(particles), particles.shape[-1]
        rot = np.empty((n, 3, 3))
        ori = np.empty((n, 3))
        score = np.empty(n)
        t0 = time.perf_counter()
        for i, vol in enumerate(particles):
            res = model.align(np.asarray(vol, np.float32), max_shifts=(6.0, 6.0, 6.0))
            rot[i], ori[i] = acryo_pose(res, box)
            score[i] = res.score
        return AlignmentResult(rot, ori, score, "acryo ZNCCAlignment", seconds=time.perf_counter() - t0)

    return run, acryo.__version__


def acryo_pose(res, box: int) -> tuple[np.ndarray, np.ndarray]:
    """Our rotation ``A`` (x, y, z) and origin (voxels, x, y, z) from an acryo ``AlignmentResult`` for a ``box``³ cube.

    acryo's fit() samples the particle at ``mtx @ (template voxel)`` (zyx): that is our
    ``aligned(r) = particle(A (r - c) + c - origin)``, so ``A = r`` (in zyx) and ``origin = c - r c - t``.
    """
    mtx = np.asarray(res.affine_matrix((box,) * 3), dtype=np.float64)
    r_zyx, t_zyx = mtx[:3, :3], mtx[:3, 3]
    c = np.full(3, box // 2, dtype=float)
    flip = np.eye(3)[::-1]  # (z, y, x) <-> (x, y, z)
    return flip @ r_zyx @ flip, (c - r_zyx @ c - t_zyx)[::-1]


# ----------------------------------------------------------------------------- measurement
def _errors(res: AlignmentResult, rotations, origins) -> dict:
    fro = matrix_distance(res.rotations, rotations)
    geo = geodesic_angle_deg(res.rotations, rotations)
    tr = np.linalg.norm(np.asarray(res.origins_voxels) - origins, axis=1)
    return {
        "rotation_error_frobenius_mean": float(fro.mean()),
        "rotation_error_frobenius_std": float(fro.std()),
        "rotation_error_deg_median": float(np.median(geo)),
        "rotation_error_deg_mean": float(geo.mean()),
        "translation_error_voxels_mean": float(tr.mean()),
        "translation_error_voxels_std": float(tr.std()),
        "fraction_within_15deg": float(np.mean(geo < 15.0)),
    }


def _symmetry_mates(res_rot, true_rot, classes, references, *, threshold: float = 0.8) -> np.ndarray:
    """True where a wrong pose is a (pseudo-)symmetry mate: the reference rotated by the residual
    ``S = A_est^T A_true`` correlates with itself above ``threshold`` (then the maps are the same)."""
    from napari_cryoalign.backend.align.scoring import constrained_correlation
    from napari_cryoalign.backend.geometry import rotate_volume

    s = np.einsum("nji,njk->nik", res_rot, true_rot)
    refs = references[classes - 1]
    cc = constrained_correlation(rotate_volume(refs, s), refs, max_frequency=0.25)
    return (cc > threshold) & (geodesic_angle_deg(res_rot, true_rot) > 15.0)


def _summary(res, sset, idx) -> dict:
    """Errors over all particles, per structure, and with (pseudo-)symmetry mates set apart."""
    rot_t, ori_t, cls = sset.rotations[idx], sset.origins_voxels[idx], sset.classes[idx]
    out = _errors(res, rot_t, ori_t)
    mates = _symmetry_mates(res.rotations, rot_t, cls, sset.references)
    out["fraction_symmetry_mates"] = float(mates.mean())
    keep = ~mates
    if keep.any():
        sub = AlignmentResult(res.rotations[keep], res.origins_voxels[keep], res.scores[keep], res.method)
        out["excluding_symmetry_mates"] = _errors(sub, rot_t[keep], ori_t[keep])
    out["per_structure"] = {}
    for k, cn in enumerate(sset.class_names):
        sel = cls == k + 1
        if sel.any():
            sub = AlignmentResult(res.rotations[sel], res.origins_voxels[sel], res.scores[sel], res.method)
            out["per_structure"][cn] = {**_errors(sub, rot_t[sel], ori_t[sel]),
                                        "fraction_symmetry_mates": float(mates[sel].mean())}
    return out


def _run_method(fn, sset, idx, device) -> tuple[AlignmentResult, float]:
    """Align particles ``idx`` of ``sset`` to their class references; returns the merged result and seconds."""
    n = len(idx)
    rot, ori, sc = np.empty((n, 3, 3)), np.empty((n, 3)), np.empty(n)
    seconds = 0.0
    for k in range(len(sset.class_names)):
        sel = np.flatnonzero(sset.classes[idx] == k + 1)
        if len(sel) == 0:
            continue
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = fn(sset.volumes[idx[sel]], sset.references[k], sset.mask, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        rot[sel], ori[sel], sc[sel] = r.rotations, r.origins_voxels, r.scores
    return AlignmentResult(rot, ori, sc, "merged", seconds=seconds), seconds


def bench_alignment(*, n_per_class: int, snrs, acryo_per_class: int, device: str, seed: int,
                    acryo_snrs=(0.1,)) -> dict:
    out = {}
    acryo_fn, acryo_version = _acryo_aligner()
    if acryo_fn is None:
        print("acryo not installed: skipping the acryo comparison (pip install acryo==0.9.1)")
    for snr in snrs:
        sset = simulate_subtomograms(FIVE, n_per_class=n_per_class, box=32, voxel_size_angstrom=12.0, snr=snr,
                                     tilt_range_deg=(-60.0, 60.0), max_shift_voxels=3.0, seed=seed)
        idx = np.arange(sset.n)
        rows = {}
        for name, fn in METHODS.items():
            res, secs = _run_method(fn, sset, idx, device)
            rows[name] = {**_summary(res, sset, idx), "n": int(sset.n), "seconds": secs,
                          "pairs_per_second": sset.n / secs}
            ex = rows[name].get("excluding_symmetry_mates", {})
            print(f"SNR {snr:g} {name:16s} rot {rows[name]['rotation_error_frobenius_mean']:.3f} "
                  f"({rows[name]['rotation_error_deg_median']:.1f} deg median)  trans "
                  f"{rows[name]['translation_error_voxels_mean']:.2f} vox  {rows[name]['pairs_per_second']:.2f} pairs/s; "
                  f"symmetry mates {rows[name]['fraction_symmetry_mates']:.2f}, without them rot "
                  f"{ex.get('rotation_error_frobenius_mean', float('nan')):.3f} trans "
                  f"{ex.get('translation_error_voxels_mean', float('nan')):.2f}; "
                  "median deg per structure: " + ", ".join(f"{cn} {v['rotation_error_deg_median']:.1f}"
                                                           for cn, v in rows[name]["per_structure"].items()),
                  flush=True)
        if acryo_fn is not None and acryo_per_class > 0 and any(abs(snr - a) < 1e-9 for a in acryo_snrs):
            sub = np.concatenate([np.flatnonzero(sset.classes == k + 1)[:acryo_per_class] for k in range(5)])
            res, secs = _run_method(acryo_fn, sset, sub, "cpu")
            rows[f"acryo {acryo_version} ZNCCAlignment"] = {
                **_summary(res, sset, sub), "n": len(sub), "seconds": secs,
                "pairs_per_second": len(sub) / secs, "subset": "first particles of each class"}
            # the exhaustive search on the same subset, for a side-by-side comparison
            res_e, secs_e = _run_method(METHODS["exhaustive"], sset, sub, device)
            rows["exhaustive (acryo subset)"] = {**_summary(res_e, sset, sub),
                                                 "n": len(sub), "seconds": secs_e,
                                                 "pairs_per_second": len(sub) / secs_e}
            print(f"SNR {snr:g} acryo            rot {rows[f'acryo {acryo_version} ZNCCAlignment']['rotation_error_frobenius_mean']:.3f}"
                  f"  trans {rows[f'acryo {acryo_version} ZNCCAlignment']['translation_error_voxels_mean']:.2f}"
                  f"  {len(sub) / secs:.3f} pairs/s  (exhaustive same subset: rot "
                  f"{rows['exhaustive (acryo subset)']['rotation_error_frobenius_mean']:.3f}, {len(sub) / secs_e:.2f} pairs/s)",
                  flush=True)
        if "learned" in rows:
            rows["throughput_ratio_learned_over_exhaustive"] = rows["learned"]["pairs_per_second"] / rows["exhaustive"][
                "pairs_per_second"]
        out[f"{snr:g}"] = rows
    return out


def bench_averaging(*, n: int, device: str, seed: int, iterations: int, defocus_um: float | None = 5.0) -> dict:
    noisy = simulate_subtomograms(["ribosome"], n_per_class=n, box=32, snr=0.1, max_shift_voxels=3.0, seed=seed,
                                  defocus_um=defocus_um)
    clean = simulate_subtomograms(["ribosome"], n_per_class=n, box=32, snr=None, max_shift_voxels=3.0, seed=seed,
                                  defocus_um=defocus_um)
    ref = noisy.references[0]
    vox = noisy.voxel_size_angstrom
    truth = AlignmentResult(clean.rotations, clean.origins_voxels, np.ones(n), "truth")
    limit_avg = average_particles(clean.volumes, truth, particle_masks=clean.mask, half_maps=False).average
    limit = fsc_report(limit_avg, ref, voxel_size_angstrom=vox)
    t0 = time.perf_counter()
    res = iterative_average(noisy.volumes, reference=lowpass(ref, 60.0, voxel_size_angstrom=vox),
                            particle_masks=noisy.mask, iterations=iterations, voxel_size_angstrom=vox,
                            start_resolution_angstrom=60.0, device=device)
    secs = time.perf_counter() - t0
    # put the average onto the true map (it is seeded by it, so this only removes residual drift)
    a = align_exhaustive(res.average[None], ref, angular_step_deg=30.0)
    placed = align_particle_to_reference(res.average, a.rotations[0], a.origins_voxels[0])
    got = fsc_report(placed, ref, voxel_size_angstrom=vox)
    ang = geodesic_angle_deg(res.alignment.rotations, noisy.rotations)
    out = {
        "particles": n, "snr": 0.1, "iterations": iterations, "seconds": secs, "defocus_um": defocus_um,
        "noise_free_limit_fsc05_angstrom": limit.resolution_05, "noise_free_limit_fsc0143_angstrom": limit.resolution_0143,
        "average_vs_truth_fsc05_angstrom": got.resolution_05, "average_vs_truth_fsc0143_angstrom": got.resolution_0143,
        "half_map_fsc0143_angstrom": res.fsc.resolution_0143, "half_map_fsc05_angstrom": res.fsc.resolution_05,
        "ratio_fsc05_to_limit": got.resolution_05 / limit.resolution_05,
        "ratio_fsc0143_to_limit": got.resolution_0143 / limit.resolution_0143,
        "pose_error_deg_median": float(np.median(ang)),
        "history": list(res.history),
    }
    print(f"averaging {n} at SNR 0.1: FSC(avg, truth) 0.5 -> {got.resolution_05:.1f} Å (noise-free limit "
          f"{limit.resolution_05:.1f} Å), 0.143 -> {got.resolution_0143:.1f} Å (limit {limit.resolution_0143:.1f} Å); "
          f"half maps {res.fsc.resolution_0143:.1f} Å; {secs:.0f} s", flush=True)
    return out


THREE = ["ribosome", "mtor", "dengue_e_fab"]  # the structures without (pseudo-)symmetry


def table(alignment: dict) -> str:
    """The markdown table of docs/align.md from the ``alignment`` part of the JSON, one line per SNR and method."""
    lines = ["| SNR | method | n | rot. Frobenius, all 5 | median ° | trans. vox, all 5 | rot. / trans., 3 structures "
             "| pairs/s |", "|" + "---|" * 8]
    for snr in sorted(alignment, key=lambda k: -float(k)):
        for name, r in alignment[snr].items():
            if not isinstance(r, dict):
                continue
            per = r.get("per_structure", {})
            three = [per[k] for k in THREE if k in per]
            rt = (f"{np.mean([p['rotation_error_frobenius_mean'] for p in three]):.2f} / "
                  f"{np.mean([p['translation_error_voxels_mean'] for p in three]):.2f}") if three else "-"
            label = name.replace("exhaustive (acryo subset)", "exhaustive, same particles as acryo")
            lines.append(f"| {float(snr):g} | {label} | {r['n']} | {r['rotation_error_frobenius_mean']:.2f} ± "
                         f"{r['rotation_error_frobenius_std']:.2f} | {r['rotation_error_deg_median']:.1f} | "
                         f"{r['translation_error_voxels_mean']:.2f} ± {r['translation_error_voxels_std']:.2f} | {rt} | "
                         f"{r['pairs_per_second']:.3g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer particles (a smoke run)")
    ap.add_argument("--n-per-class", type=int, default=20, help="particles per structure per SNR (default 20)")
    ap.add_argument("--acryo-per-class", type=int, default=1, help="particles per structure given to acryo (default 1)")
    ap.add_argument("--snrs", default=",".join(f"{s:g}" for s in SNRS))
    ap.add_argument("--acryo-snrs", default="0.1", help="SNRs at which acryo runs (default 0.1; it is slow)")
    ap.add_argument("--average-n", type=int, default=200)
    ap.add_argument("--average-iterations", type=int, default=3)
    ap.add_argument("--skip-averaging", action="store_true",
                    help="skip the averaging benchmark; an averaging result already in --out is kept (marked)")
    ap.add_argument("--average-no-ctf", action="store_true",
                    help="averaging set without CTF (else the CTF's first zero at ~31 Å bounds both maps)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--table", action="store_true", help="print the alignment rows of --out as the table of docs/align.md")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())["alignment"]))
        return 0
    if args.quick:
        args.n_per_class, args.acryo_per_class, args.average_n = 4, 1, 40
    note = _add_learned()
    if note:
        print(note)
    snrs = [float(s) for s in args.snrs.split(",") if s]
    t0 = time.perf_counter()
    result = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": args.device, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None},
        "protocol": {"structures": FIVE, "box": 32, "voxel_size_angstrom": 12.0, "tilt_range_deg": [-60, 60],
                     "defocus_um": 5.0, "max_shift_voxels": 3.0, "n_per_class": args.n_per_class, "seed": args.seed,
                     "reference": "noise-free map of the particle's structure",
                     "exhaustive": "30 deg global grid (636 rotations, 2x binned) + 2 hill-climbing levels (10, 3.3 deg)"},
        "goals": {f"{k:g}": {"rotation_frobenius": v[0], "translation_voxels": v[1]} for k, v in GOALS.items()},
        "gumnet_paper": {f"{k:g}": {"rotation_frobenius": v[0], "translation_voxels": v[1]} for k, v in GUMNET.items()},
        "learned_note": note,
        "alignment": bench_alignment(n_per_class=args.n_per_class, snrs=snrs, acryo_per_class=args.acryo_per_class,
                                     device=args.device, seed=args.seed,
                                     acryo_snrs=[float(x) for x in args.acryo_snrs.split(",") if x]),
    }
    if not args.skip_averaging:
        result["averaging"] = bench_averaging(n=args.average_n, device=args.device, seed=args.seed + 1,
                                              iterations=args.average_iterations,
                                              defocus_um=None if args.average_no_ctf else 5.0)
    elif Path(args.out).is_file():  # the averaging does not depend on the aligners' weights: keep the last one
        old = json.loads(Path(args.out).read_text()).get("averaging")
        if old is not None:
            result["averaging"] = dict(old, kept_from_an_earlier_run=True)
    result["total_seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
