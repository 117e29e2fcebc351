"""Supervised pose inference (CESPED protocol on this project's simulator) and real-data reconstruction.

Sets (``simulate_particles``): a large structure (ribosome, C1) and a small one (enolase,
symmetrised under D2 with RELION's axes), uniform random poses, CTF 1-3 µm, shifts ±3 px,
SNR 0.1 and 0.05, two half-sets (``rlnRandomSubset``). Protocol: one network per half set,
each predicts the other half (gold standard). Reported per set: MAnE, wMAnE (all
confidences 1 here, so equal to MAnE), median error, for the network alone (CESPED's setting),
with projection-matching refinement, and for the default prediction (``map_search``: the
network's posterior times the likelihood under the other half's map over the SO(3) grid,
``backend/pose/matching.py``); ΔPCC and ΔFSCR (0.5 / 0.143) as CESPED defines them (maps from the true poses'
half maps vs the map from the predicted rotations with the true shifts, soft spherical mask),
the same for random rotations (the floor), and apart the map with the predicted shifts (biased
towards the reference the shift search uses); training time and inference throughput.

Throughput: particles per second of ``predict_poses`` on 128² images on 2 CPU threads (the
model works on 64² Fourier crops): the network + band-limited refinement + FFT shift search,
and the same with the map search (its projection tables are built once per model, timed apart).

Real data: cryoDRGN's ``sta_testing_bin8.star`` (219 ribosome tilt images, 64², bin 8 of
1.82 Å = 14.56 Å/px; the STAR file's 1.96 Å is the unbinned detector pixel) reconstructed from
its given poses with CTF: half-map FSC (needs ``scripts/fetch_test_data.sh``).

Small asymmetric complex (issue 22, ``--small-complex``): RuvAB (7PBL, 212 kDa, C1) at 3 Å/px beside
the ribosome at 6 Å/px, 64² px, 4,000 particles per half, CTF per particle (defocus 1.0-2.5 µm,
astigmatism 0.1 µm, B 30 Å²), shifts ±2 px, SNR 0.1: MAnE of the network alone, with the map search
and with the true map (no network); writes docs/benchmarks/pose_small_complex.json.

Writes docs/benchmarks/pose.json.
Run:  .venv/bin/python benchmarks/bench_pose.py            (full: the lead's run)
      .venv/bin/python benchmarks/bench_pose.py --reduced  (a few minutes of CPU)
      OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pose.py --small-complex  (~35-40 min, 1 thread)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_cryoalign.backend.geometry import random_rotations
from napari_cryoalign.backend.pose.data import (
    load_particle_data,
    particle_data_from_simulation,
)
from napari_cryoalign.backend.pose.metrics import (
    angular_errors,
    evaluate_reconstructions,
)
from napari_cryoalign.backend.pose.model import PoseNetConfig
from napari_cryoalign.backend.pose.predict import predict_poses
from napari_cryoalign.backend.pose.reconstruct import reconstruct_half_maps
from napari_cryoalign.backend.pose.train import train_pose_model
from napari_cryoalign.backend.simulate.particles import simulate_particles

ROOT = Path(__file__).resolve().parents[1]


def _simulate(structure, symmetry, *, n, box, pixel, snr, seed, defocus=(1.0, 3.0), max_shift=None, bfactor=0.0,
              astigmatism=0.1):
    ps = simulate_particles(structure, n=n, box=box, pixel_size_angstrom=pixel, snr=snr, defocus_um=tuple(defocus),
                            astigmatism_um=astigmatism,
                            max_shift_pixels=3.0 * box / 64 if max_shift is None else float(max_shift),
                            bfactor=float(bfactor), symmetry=symmetry, seed=seed)
    return ps, particle_data_from_simulation(ps)


def oracle(ps, data, *, grid_level, symmetry, batch=64):
    """Global projection matching against the TRUE map, no network (the map search without a prior):
    how well these images determine their poses at all. Same grids, search and refinement as prediction."""
    from napari_cryoalign.backend.pose.data import preprocess_images, transfer_function
    from napari_cryoalign.backend.pose.matching import prepare_map_search, refinement_offsets, search_poses
    from napari_cryoalign.backend.pose.reconstruct import prepare_projector

    s = min(64, data.box)
    if ps.reference.shape[-1] != s:
        raise ValueError("the oracle needs the true map at the model's image size")
    t = time.perf_counter()
    proj = prepare_projector(ps.reference)
    search = prepare_map_search(proj, level=grid_level - 1)
    offsets = refinement_offsets(grid_level)
    px = data.pixel_size_angstrom * data.box / s
    max_shift = 0.15 * data.box * data.pixel_size_angstrom / px
    rot = np.zeros((data.n, 3, 3))
    for i in range(0, data.n, batch):
        idx = np.arange(i, min(i + batch, data.n))
        x = preprocess_images(data, idx, image_size=s)
        amp = transfer_function(data.ctf, idx, (s, s), pixel_size_angstrom=px, rfft=False).abs()
        rot[idx] = search_poses(search, proj, x, amp, max_shift=max_shift,
                                refine_offsets=offsets).rotations.double().numpy()
    return {"what": "global projection matching against the true map (no network, no half map)",
            **angular_errors(rot, data.rotations, symmetry).as_dict(), "seconds": time.perf_counter() - t}


def run_set(name, structure, symmetry, *, n, box, pixel, snr, epochs, grid_level, refine_n, seed=0,
            defocus=(1.0, 3.0), max_shift=None, bfactor=0.0, astigmatism=0.1, maps=True):
    """One set: simulate, train one network per half, predict each half with the other half's network
    (alone and with the map search), the true-map bound; ``maps=False`` skips CESPED's map metrics."""
    t = time.perf_counter()
    ps, data = _simulate(structure, symmetry, n=n, box=box, pixel=pixel, snr=snr, seed=seed, defocus=defocus,
                         max_shift=max_shift, bfactor=bfactor, astigmatism=astigmatism)
    sim_s = time.perf_counter() - t
    cfg = PoseNetConfig(image_size=min(64, box), grid_level=grid_level)
    t = time.perf_counter()
    model = train_pose_model(data, symmetry=symmetry, halves=(1, 2), epochs=epochs, batch_size=32, lr=2e-3,
                             config=cfg, seed=seed)
    train_s = time.perf_counter() - t
    pred = predict_poses(model, data, map_search=False)  # the network alone: CESPED's setting
    err = angular_errors(pred.rotations, data.rotations, symmetry, confidence=data.confidence)
    grid_err = angular_errors(pred.grid_rotations, data.rotations, symmetry)
    out = {"structure": structure, "symmetry": symmetry, "n": n, "per_half": [int((data.half == h).sum()) for h in (1, 2)],
           "box": box, "pixel_A": pixel, "snr": snr, "defocus_um": list(defocus), "astigmatism_um": astigmatism,
           "ctf_bfactor_A2": bfactor, "max_shift_px": 3.0 * box / 64 if max_shift is None else float(max_shift),
           "epochs": epochs, "grid_level": grid_level, "simulate_s": sim_s, "train_s": train_s,
           "loss_per_epoch": model.training.get("loss"),
           "no_refinement": err.as_dict(), "grid_argmax_only": grid_err.as_dict(),
           "predict_particles_per_s": pred.particles_per_second,
           "shift_rmse_A": _shift_rmse(pred, data)}
    # CESPED's protocol: the map from the predicted rotations with the true shifts (CESPED leaves shifts out).
    # The map with the predicted shifts is reported apart: the shift search aligns each image to the other
    # half's map projected at the predicted pose, so with wrong poses it fits noise to that projection and
    # the map inherits the reference's features (reference bias) - it can beat the CESPED map while the
    # rotations are near random.
    if maps:
        ev = evaluate_reconstructions(data, pred.rotations, predicted_origins_angstrom=data.origins_angstrom,
                                      symmetry=symmetry)
        out["maps_no_refinement"] = ev.as_dict()
        ev = evaluate_reconstructions(data, pred.rotations, predicted_origins_angstrom=pred.origins_angstrom,
                                      symmetry=symmetry)
        out["maps_no_refinement_predicted_shifts_reference_biased"] = ev.as_dict()
    # the default prediction: the network's posterior times the likelihood under the training half's map
    # (searched over the whole SO(3) grid; gold standard: each particle against the other half's map)
    t = time.perf_counter()
    pm = predict_poses(model, data, map_search=True)
    out["map_search"] = {**angular_errors(pm.rotations, data.rotations, symmetry, confidence=data.confidence).as_dict(),
                         "seconds_including_tables": time.perf_counter() - t,
                         "particles_per_s": pm.particles_per_second, "shift_rmse_A": _shift_rmse(pm, data),
                         "mean_confidence": float(pm.confidence.mean())}
    if maps:
        out["maps_map_search"] = evaluate_reconstructions(
            data, pm.rotations, predicted_origins_angstrom=data.origins_angstrom, symmetry=symmetry).as_dict()
        out["maps_map_search_predicted_shifts"] = evaluate_reconstructions(
            data, pm.rotations, predicted_origins_angstrom=pm.origins_angstrom, symmetry=symmetry).as_dict()
    out["oracle_true_map"] = oracle(ps, data, grid_level=grid_level, symmetry=symmetry)
    rnd = random_rotations(n, seed=seed + 1)
    if maps:
        out["maps_random_rotations_true_shifts"] = evaluate_reconstructions(
            data, rnd, predicted_origins_angstrom=data.origins_angstrom, symmetry=symmetry).as_dict()
    out["random_rotations"] = angular_errors(rnd, data.rotations, symmetry).as_dict()
    if refine_n:
        sub = np.arange(min(refine_n, n))
        pr = predict_poses(model, data.subset(sub), projection_refine=True, map_search=False)
        out["with_projection_refinement"] = {
            "particles": int(sub.size),
            **angular_errors(pr.rotations, data.rotations[sub], symmetry).as_dict(),
            "before_refinement_same_particles": angular_errors(pred.rotations[sub], data.rotations[sub],
                                                               symmetry).as_dict(),
            "particles_per_s": pr.particles_per_second}
    print(name, json.dumps(out, indent=1, default=float), flush=True)
    return out


def _shift_rmse(pred, data) -> float:
    return float(np.sqrt(((pred.origins_angstrom - data.origins_angstrom) ** 2).sum(1).mean()))


def throughput(model_box=64, n=512, threads=2, grid_level=None):
    ps = simulate_particles("ribosome", n=64, box=128, pixel_size_angstrom=3.0, snr=0.1, seed=3)
    data = particle_data_from_simulation(ps)
    idx = np.resize(np.arange(64), n)
    data = data.subset(idx)
    small = simulate_particles("ribosome", n=64, box=128, pixel_size_angstrom=3.0, snr=0.1, seed=4)
    cfg = PoseNetConfig(image_size=model_box) if grid_level is None else \
        PoseNetConfig(image_size=model_box, grid_level=grid_level)
    # the weights do not change the cost: one epoch on 64 particles gives a model of the default architecture
    model = train_pose_model(particle_data_from_simulation(small), halves=(0,), epochs=1, batch_size=32, config=cfg)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predict_poses(model, data.subset(np.arange(64)), map_search=False)  # warm-up (grids, caches)
        t0 = time.perf_counter()
        predict_poses(model, data.subset(np.arange(64)), map_search=True)  # builds the map search's tables once
        prepare_s = time.perf_counter() - t0
        runs = []
        for refine, ms in ((True, False), (False, False), (True, True)):
            t0 = time.perf_counter()
            pred = predict_poses(model, data, local_refine=refine, map_search=ms)
            runs.append({"local_refine": refine, "map_search": ms, "particles_per_s": pred.particles_per_second,
                         "wall_particles_per_s": n / (time.perf_counter() - t0)})
    finally:
        torch.set_num_threads(old)
    return {"images": "128x128", "model_image_size": model_box, "grid_level": model.config.grid_level,
            "grid_size": 72 * 8 ** model.config.grid_level, "threads": threads, "n": n,
            "load_average": list(os.getloadavg()), "particles_per_s": runs[0]["particles_per_s"],
            "map_search_particles_per_s": runs[2]["particles_per_s"],
            "map_search_first_call_64_particles_s": prepare_s, "runs": runs}


def real_data():
    star = ROOT / ".test-data" / "cryodrgn" / "sta_testing_bin8.star"
    if not star.is_file():
        return {"skipped": "run scripts/fetch_test_data.sh"}
    data = load_particle_data(star, pixel_size_angstrom=14.56)
    res = reconstruct_half_maps(data)
    return {"file": "cryodrgn tests/data/sta_testing_bin8.star (219 ribosome tilt images, 64 px)",
            "pixel_A": 14.56, "half_set_sizes": [int((data.half == 1).sum()), int((data.half == 2).sum())],
            "fsc_0143_A": res.fsc.resolution_0143, "fsc_05_A": res.fsc.resolution_05,
            "fsc_curve": [round(float(v), 4) for v in res.fsc.curve.fsc]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reduced", action="store_true", help="small sets, few epochs (minutes on 2 CPU cores)")
    ap.add_argument("--small-complex", action="store_true",
                    help="issue 22's sets: RuvAB (212 kDa, asymmetric) at 3 Å and the ribosome at 6 Å, 64² px, "
                         "4,000 particles per half, CTF 1.0-2.5 µm with B 30, shifts ±2 px, SNR 0.1 (writes --out, "
                         "default docs/benchmarks/pose_small_complex.json; no throughput, no real data)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "pose.json"))
    ap.add_argument("--throughput-only", action="store_true",
                    help="only the inference throughput on 128² images (writes --out, default pose_throughput.json)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the throughput (default 2)")
    ap.add_argument("--grid-level", type=int, default=None, help="throughput: SO(3) grid level (default: the model's)")
    ap.add_argument("--n", type=int, default=512, help="throughput: particles predicted (default 512)")
    ap.add_argument("--particles", type=int, default=None, help="sets: particles per set (overrides the preset)")
    ap.add_argument("--epochs", type=int, default=None, help="sets: training epochs (overrides the preset)")
    ap.add_argument("--sets", default=None, help="comma-separated set names to run (default: all of the preset)")
    ap.add_argument("--no-throughput", action="store_true", help="skip the throughput measurement")
    ap.add_argument("--oracle-only", action="store_true",
                    help="sets: only the global projection matching against the true map (no training); "
                         "writes --out, default docs/benchmarks/pose_oracle.json")
    args = ap.parse_args()
    if args.throughput_only:
        from napari_cryoalign.io import write_json

        out = args.out if args.out != str(ROOT / "docs" / "benchmarks" / "pose.json") else \
            str(ROOT / "docs" / "benchmarks" / "pose_throughput.json")
        res = {"command": "benchmarks/bench_pose.py --throughput-only"
               + (f" --threads {args.threads}" if args.threads != 2 else "")
               + (f" --grid-level {args.grid_level}" if args.grid_level is not None else "")
               + (f" --n {args.n}" if args.n != 512 else ""),
               "machine": {"platform": platform.platform(), "torch": torch.__version__, "cpu_count": os.cpu_count()},
               "throughput": throughput(n=args.n, threads=args.threads, grid_level=args.grid_level)}
        print("throughput", res["throughput"], flush=True)
        write_json(out, res, overwrite=True)
        print("wrote", out)
        return
    if args.small_complex:
        # issue 22: a small asymmetric complex beside the ribosome, 4,000 particles per half, 64² px, CTF per
        # particle (defocus 1.0-2.5 µm, astigmatism 0.1 µm at a random angle, B 30 Å²), shifts ±2 px, SNR 0.1.
        # RuvAB (7PBL, 212 kDa, no symmetry) is the packaged asymmetric structure nearest 150 kDa; at 3 Å a
        # 64-px box is 192 Å. The ribosome (~300 Å across) does not fit 192 Å: 6 Å/px as in the full preset.
        common = {"n": 8000, "box": 64, "snr": 0.1, "epochs": 30, "grid_level": 3, "refine_n": 0,
                  "defocus": (1.0, 2.5), "max_shift": 2.0, "bfactor": 30.0, "astigmatism": 0.1, "maps": False}
        # procedural:10522 (held-out seed, 152.7 kDa, 132 Å across, no symmetry, 8 Å envelope at 3 Å/px): the
        # asked-for ~150 kDa, which no packaged structure is; not among the maps anything here was tuned on
        sets = [("ruvab_C1_snr0.1_3A", "ruvab", "C1", {**common, "pixel": 3.0}),
                ("ribosome_C1_snr0.1_6A", "ribosome", "C1", {**common, "pixel": 6.0}),
                ("procedural_153kDa_C1_snr0.1_3A", "procedural:10522", "C1", {**common, "pixel": 3.0})]
    elif args.reduced:
        sets = [("ribosome_C1_snr0.1", "ribosome", "C1", dict(n=2000, box=32, pixel=12.0, snr=0.1, epochs=10,
                                                                grid_level=2, refine_n=200)),
                ("enolase_D2_snr0.1", "enolase", "D2", dict(n=2000, box=32, pixel=4.0, snr=0.1, epochs=10,
                                                              grid_level=2, refine_n=200))]
    else:
        sets = [("ribosome_C1_snr0.1", "ribosome", "C1", dict(n=20000, box=64, pixel=6.0, snr=0.1, epochs=30,
                                                                grid_level=3, refine_n=2000)),
                ("ribosome_C1_snr0.05", "ribosome", "C1", dict(n=20000, box=64, pixel=6.0, snr=0.05, epochs=30,
                                                                 grid_level=3, refine_n=2000)),
                ("enolase_D2_snr0.1", "enolase", "D2", dict(n=20000, box=64, pixel=3.0, snr=0.1, epochs=30,
                                                              grid_level=3, refine_n=2000))]
    if args.sets:
        want = args.sets.split(",")
        unknown = sorted(set(want) - {name for name, *_ in sets})
        if unknown:
            ap.error(f"unknown set(s) {unknown}; this preset has {[name for name, *_ in sets]}")
        sets = [t for t in sets if t[0] in want]
    for _, _, _, kw in sets:
        kw.update({k: v for k, v in (("n", args.particles), ("epochs", args.epochs)) if v is not None})
    if args.oracle_only:
        from napari_cryoalign.io import write_json

        out = args.out if args.out != str(ROOT / "docs" / "benchmarks" / "pose.json") else \
            str(ROOT / "docs" / "benchmarks" / "pose_oracle.json")
        res = {"command": "benchmarks/bench_pose.py " + " ".join(sys.argv[1:]),
               "machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "threads": torch.get_num_threads()}, "sets": {}}
        for name, structure, sym, kw in sets:
            extra = {k: kw[k] for k in ("defocus", "max_shift", "bfactor", "astigmatism") if k in kw}
            ps, data = _simulate(structure, sym, n=kw["n"], box=kw["box"], pixel=kw["pixel"], snr=kw["snr"], seed=0,
                                 **extra)
            res["sets"][name] = {"structure": structure, "symmetry": sym, "n": kw["n"], "box": kw["box"],
                                 "pixel_A": kw["pixel"], "snr": kw["snr"], "grid_level": kw["grid_level"],
                                 "oracle_true_map": oracle(ps, data, grid_level=kw["grid_level"], symmetry=sym),
                                 "random_rotations": angular_errors(random_rotations(kw["n"], seed=1), data.rotations,
                                                                    sym).as_dict()}
            print(name, json.dumps(res["sets"][name], default=float), flush=True)
        write_json(out, res, overwrite=True)
        print("wrote", out)
        return
    results = {"command": "benchmarks/bench_pose.py " + " ".join(sys.argv[1:]),
               "machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "threads": torch.get_num_threads()},
               "sets": {}}
    if args.small_complex:
        if args.out == str(ROOT / "docs" / "benchmarks" / "pose.json"):
            args.out = str(ROOT / "docs" / "benchmarks" / "pose_small_complex.json")
        args.no_throughput = True
    for name, structure, sym, kw in sets:
        results["sets"][name] = run_set(name, structure, sym, **kw)
        if args.small_complex:  # keep what is done (long runs)
            from napari_cryoalign.io import write_json

            write_json(args.out, results, overwrite=True)
    if args.small_complex:
        print("wrote", args.out)
        return
    if not args.no_throughput:
        results["throughput"] = throughput()
        print("throughput", results["throughput"], flush=True)
    results["real_data"] = real_data()
    print("real", results["real_data"], flush=True)
    from napari_cryoalign.io import write_json

    write_json(args.out, results, overwrite=True)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
