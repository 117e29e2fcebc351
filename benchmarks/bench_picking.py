"""Benchmark of the sparse-label PU picker against template matching (the paper's protocol, on simulated data).

Protocol (Huang et al. 2022, section 4): one simulated crowded tomogram is partially labelled
(5, 10, 30, 50, 70 % of its particles of the target species); the picker is trained on it
with default settings and evaluated on *other* tomograms of the same kind. Metrics (CONVENTIONS.md):
precision, recall and F1 with a match radius of one particle radius (at the default threshold 0.3,
and at the best threshold as an oracle), and mAP at 2 and 5 voxels of the output grid
(stride 1, 2, 2). Baseline: template matching with the target's map (missing wedge and |CTF| applied
to the template, local normalisation) on the same test tomograms, picks ranked by NCC.
Speed: default training time, and inference on a 200 x 512 x 512 tomogram (wall time, peak memory
of a separate process).

Data: ``simulate_tomogram`` - 64 x 256 x 256 voxels of 20 Å, 320 particles of ribosome (target,
40 %), CCT, mTOR and RuvAB (20 % each), ±60° every 3°, 3 µm defocus, 100 e/Å², WBP.

Usage::

    .venv/bin/python benchmarks/bench_picking.py            # full (about 20-30 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_picking.py --quick    # reduced: 2 fractions, 1 test tomogram
    # fractions in parallel processes, then merged:
    .venv/bin/python benchmarks/bench_picking.py --threads 1 --fractions 0.1 --out-prefix /tmp/a
    .venv/bin/python benchmarks/bench_picking.py --threads 1 --fractions 0.05,0.3 --skip-template --out-prefix /tmp/b
    .venv/bin/python benchmarks/bench_picking.py --merge /tmp/a.json /tmp/b.json --out-prefix docs/benchmarks/picking

Writes ``docs/benchmarks/picking.json`` and ``docs/benchmarks/picking.png`` (``--out-prefix``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_cryoalign.backend.picking import (  # noqa: E402
    average_precision,
    best_f1,
    load_picker,
    pick,
    precision_recall_f1,
    save_picker,
)
from napari_cryoalign.backend.jobs import run_job  # noqa: E402
from napari_cryoalign.backend.picking.fit import fit_picker_job  # noqa: E402
from napari_cryoalign.backend.picking.shape_check import shape_check_job  # noqa: E402
from napari_cryoalign.backend.picking.template import template_match  # noqa: E402

VOXEL = 20.0
SHAPE = (64, 256, 256)
SPECIES = ("ribosome", "cct", "mtor", "ruvab")
ABUNDANCE = (0.4, 0.2, 0.2, 0.2)
THRESHOLD = 0.5  # the picker's default
TM_LOWPASS = 60.0  # Å: a low-pass filtered reference, as in the paper's baseline
NEGATIVE_STEPS = 300  # training steps of the removal round (--negatives)


#: simulation settings per scenario. "clean": particles in ice only, 100 e/Å². "cellular": what
#: real cellular tomograms add and what template matching is known to trip over - lipid
#: vesicles and flat membranes (strong, extended edges), gold fiducials (very high contrast,
#: WBP streaks) - at a lower dose (60 e/Å²). Same particles, species and CTF in both.
SCENARIOS = {
    "clean": {"dose": 100.0},
    "cellular": {"dose": 60.0, "n_vesicles": 6, "vesicle_radius_nm": (15.0, 40.0), "n_membranes": 2, "n_gold": 16,
                 "gold_diameter_nm": 10.0},
    "lookalike": {"dose": 100.0},
    "lookalike-cct": {"dose": 100.0},
    "lookalike-mtor": {"dose": 100.0},
    "lookalike-dengue": {"dose": 100.0},
}
#: "lookalike": what makes picking hard on real data (issue 17). The targets are heterogeneous ribosomes
#: (backend.simulate.lookalikes.lookalike_species): the full map, a second conformation (the smaller domain
#: turned by LOOKALIKE_ANGLE degrees) and three copies each missing 15 % of the density in a different
#: place; the look-alikes are the large domain alone (a sub-complex, NCC 0.77 with the target at 40 Å)
#: and two other species of similar size (CCT, mTOR).
#: "lookalike-cct": the same construction with another target, never used while developing the look-alike
#: rejection (held out): heterogeneous CCT (two stacked rings: its sub-complex is one ring), with mTOR and
#: the dengue E-Fab complex as the other species.
LOOKALIKE_ANGLE = 20.0
#: "lookalike-mtor": a second held-out target, added after the shape check was developed on the ribosome and CCT
#: (2026-12-07): heterogeneous mTOR (294 kDa, about 5 voxels across at 20 Å), with two species of similar mass
#: (the dengue E-Fab complex, 221 kDa; RuvAB, 212 kDa) as the other species.
#: "lookalike-dengue": the third held-out target, added to test the shape check's gate (MIN_HALF_MAP_CORRELATION,
#: set after mTOR) on a target it was not set on (2026-12-07): the elongated dengue E-Fab complex (221 kDa), with
#: RuvAB (212 kDa) and mTOR (294 kDa) as the other species.
LOOKALIKE_TARGET = {"lookalike": ("ribosome", ("cct", "mtor")), "lookalike-cct": ("cct", ("mtor", "dengue_e_fab")),
                    "lookalike-mtor": ("mtor", ("dengue_e_fab", "ruvab")),
                    "lookalike-dengue": ("dengue_e_fab", ("ruvab", "mtor"))}


def lookalikes(scenario: str = "lookalike"):
    """A look-alike scenario's maps (:class:`~napari_cryoalign.backend.simulate.lookalikes.LookalikeSet`)."""
    from napari_cryoalign.backend.simulate.lookalikes import lookalike_species

    return lookalike_species(VOXEL, target=LOOKALIKE_TARGET[scenario][0], angle_deg=LOOKALIKE_ANGLE, n_partial=3,
                             seed=0)


def species(scenario: str) -> dict:
    """What a scenario's tomograms hold: ``structures``, ``maps``, ``abundances`` and the target species' names.

    Look-alike scenarios: 40 % targets (the full map 10 %, the second conformation 10 %, three partial
    copies 20 %), 20 % the sub-complex, 20 % each of the two other species.
    """
    if scenario not in LOOKALIKE_TARGET:
        return {"structures": SPECIES, "maps": None, "abundances": ABUNDANCE, "targets": ("ribosome",)}
    lset = lookalikes(scenario)
    others = LOOKALIKE_TARGET[scenario][1]
    share = {lset.lookalike_names[0]: 0.2, **{o: 0.2 for o in others}}
    partial = [n for n in lset.target_names if "_partial" in n]
    for name in lset.target_names:
        share[name] = 0.2 / len(partial) if name in partial else 0.1
    names = list(lset.maps) + list(others)  # the simulator lists maps before structures
    return {"structures": others, "maps": lset.maps, "abundances": [share[n] for n in names],
            "targets": tuple(lset.target_names), "abundance_by_name": share}


def simulate(seed: int, scenario: str = "clean"):
    from napari_cryoalign.backend.simulate.tomogram import simulate_tomogram

    sp = species(scenario)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_tomogram(shape=SHAPE, voxel_size_angstrom=VOXEL, structures=sp["structures"],
                                 maps=sp["maps"], abundances=sp["abundances"], n_particles=320, defocus_um=3.0,
                                 seed=seed, keep_potential=False, **SCENARIOS[scenario])


def species_names(sim) -> np.ndarray:
    """``(n,)`` object: the species name of each particle of ``sim``'s truth."""
    return np.asarray(sim.truth.class_names, dtype=object)[np.asarray(sim.truth.classes) - 1]


def is_target(sim, scenario: str) -> np.ndarray:
    """``(n,)`` bool: which particles of ``sim``'s truth are the scenario's target."""
    return np.isin(species_names(sim), species(scenario)["targets"])


def training_labels(sim, scenario: str, fraction: float = 0.1) -> np.ndarray:
    """``(n, 3)`` the labels of the benchmark at ``fraction``: the first of the targets in the permutation of
    ``default_rng(0)`` (at least 3), voxels (x, y, z)."""
    all_targets = sim.truth.coordinates_xyz[is_target(sim, scenario)]
    perm = np.random.default_rng(0).permutation(len(all_targets))
    return all_targets[perm[: max(3, int(round(fraction * len(all_targets))))]]


def evaluate(picks_xyz, scores, truth_xyz, radius, threshold=None):
    prf = precision_recall_f1(picks_xyz, scores, truth_xyz, radius=radius, threshold=threshold) \
        if threshold is not None else None
    best, thr = best_f1(picks_xyz, scores, truth_xyz, radius=radius)
    out = {
        "best_f1": best.f1, "best_precision": best.precision, "best_recall": best.recall, "best_threshold": thr,
        "map_r2": average_precision(picks_xyz, scores, truth_xyz, radius=2, scale_zyx=(1, 2, 2)),
        "map_r5": average_precision(picks_xyz, scores, truth_xyz, radius=5, scale_zyx=(1, 2, 2)),
        "n_picks": int(len(scores)), "n_true": int(len(truth_xyz)),
    }
    if prf is not None:
        out.update(f1=prf.f1, precision=prf.precision, recall=prf.recall, threshold=threshold)
    return out


def mean_over(dicts):
    keys = [k for k in dicts[0] if isinstance(dicts[0][k], (int, float))]
    return {k: float(np.mean([d[k] for d in dicts])) for k in keys}


def measure_inference(model_path: str, *, malloc_tuning: bool = True) -> None:
    """Child process: time inference on a 200 x 512 x 512 tomogram, print JSON with peak memory.

    Runs like the ``cryoalign`` console script, with :func:`keep_freed_memory` (unless
    ``--no-malloc-tuning``).
    """
    from napari_cryoalign.backend._malloc import keep_freed_memory

    tuned = keep_freed_memory() if malloc_tuning else False
    picker = load_picker(model_path)
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(200, 512, 512)).astype(np.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    picks, heat = pick(picker, vol)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": dt, "peak_rss_mb": peak, "rss_before_mb": base, "tomogram_mb": vol.nbytes / 2**20,
                      "threads": torch.get_num_threads(), "malloc_tuning": tuned,
                      "user_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime,
                      "system_s": resource.getrusage(resource.RUSAGE_SELF).ru_stime}))


def measure_training(scenario: str, out: str | None) -> None:
    """Time the default training as a user runs it (``pick train`` defaults, look-alike rejection on) on a
    100 x 256 x 256 tomogram of ``scenario`` with 10 % of its targets labelled, and the first live heatmap
    after Train (the widget's preview every 5 s). Prints (and writes to ``out``) JSON."""
    from napari_cryoalign.backend.jobs import Partial, Progress

    global SHAPE
    SHAPE = (100, 256, 256)
    sim = simulate(21, scenario)
    xyz = sim.truth.coordinates_xyz[is_target(sim, scenario)]
    labels = xyz[np.random.default_rng(0).permutation(len(xyz))[: max(3, round(0.1 * len(xyz)))]]
    radius = float(np.max(sim.truth.radii_voxels[is_target(sim, scenario)]))
    t0 = time.perf_counter()
    marks = {}
    job = fit_picker_job(sim.tomogram, labels, diameter_angstrom=2 * radius * VOXEL, voxel_size=VOXEL,
                         preview_every_s=5.0, preview_threshold=0.5)

    def on_partial(p: Partial) -> None:
        if p.name == "heatmap" and "first_heatmap_s" not in marks:
            marks["first_heatmap_s"] = time.perf_counter() - t0
        if p.name == "lookalikes":
            marks["lookalike_search_done_s"] = time.perf_counter() - t0

    def on_progress(p: Progress) -> None:
        if p.message.startswith("look-alikes") and "lookalike_search_start_s" not in marks:
            marks["lookalike_search_start_s"] = time.perf_counter() - t0

    res = run_job(job, progress=False, on_partial=on_partial, on_progress=on_progress)
    out_json = {"scenario": scenario, "shape_zyx": SHAPE, "labels": int(len(labels)), "seconds": time.perf_counter() - t0,
                **marks, "iterations": res.iterations, "lookalike_negatives": res.picker.training.get("lookalike_negatives"),
                "lookalike_reason": res.picker.training.get("lookalike_reason"),
                "lookalike_candidates": res.picker.training.get("lookalike_candidates"),
                "threads": torch.get_num_threads(), "load_average": os.getloadavg(), "cpu_count": os.cpu_count()}
    print(json.dumps(out_json))
    if out:
        Path(out).write_text(json.dumps(out_json, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced run: fractions 10 and 50 %%, one test tomogram")
    ap.add_argument("--fractions", default=None,
                    help="comma-separated label fractions (default 0.05,0.1,0.3,0.5,0.7; 'none': template matching only)")
    ap.add_argument("--test-tomograms", type=int, default=None, help="number of test tomograms (default 2)")
    ap.add_argument("--iterations", type=int, default=None, help="training steps (default: the picker's default)")
    ap.add_argument("--angular-step", type=float, default=30.0, help="template matching grid step (default 30)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--skip-template", action="store_true", help="no template-matching baseline")
    ap.add_argument("--holdout-labels", type=int, default=0, metavar="K",
                    help="--negatives: also run the round without K of the labels (and its control) and record the "
                    "ranks of those K on the training tomogram before and after (a check that needs no truth)")
    ap.add_argument("--negatives", type=int, default=0, metavar="K",
                    help="after each fraction, one removal round: the K highest-scoring wrong picks on the training "
                    f"tomogram become known negatives and training continues {NEGATIVE_STEPS} steps (plus a control "
                    "without them)")
    ap.add_argument("--skip-inference", action="store_true", help="no 200x512x512 inference timing")
    ap.add_argument("--save-models", type=Path, default=None, metavar="DIR",
                    help="also write each trained picker to DIR (<scenario>_<fraction>[_removal|_control].pt)")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="clean",
                    help="simulated data: clean (particles in ice, default), cellular (+ vesicles, membranes, "
                    "gold, lower dose), lookalike (heterogeneous ribosomes among a sub-complex and two species of "
                    "similar size), lookalike-cct (the same with CCT as the target: held out)")
    ap.add_argument("--train-seed", type=int, default=11,
                    help="seed of the training tomogram (default 11, every earlier run's); another one gives a new "
                    "training tomogram, labels and removed picks")
    ap.add_argument("--test-seeds", default=None,
                    help="comma-separated seeds of the test tomograms (default 12, 13, ...: --test-tomograms of them)")
    ap.add_argument("--no-lookalike-rejection", action="store_true",
                    help="train the picker without the look-alike rejection (the default recipe has it)")
    ap.add_argument("--fit-candidates", type=int, default=None, metavar="K",
                    help="grid optima refined per box in the look-alike search's fits (default: the search's, 3)")
    ap.add_argument("--no-shape-check", action="store_true",
                    help="judge the network's own scores (pick predict --no-shape-check); by default the picks of a "
                    "model with a shape reference are checked, and the network's own scores are reported beside them")
    ap.add_argument("--shape-check-sure", action="store_true",
                    help="also run the check that fits the sure picks (shape_check_job(sure=True), the rule before "
                    "2026-12-07) on the same picks, reported as sure_*: the same picks at the threshold, its time and "
                    "best F1")
    ap.add_argument("--shape-check-gate", type=float, default=None, metavar="RHO",
                    help="the least half-map correlation for a shape reference in this run (default: the package's "
                    "shape_check.MIN_HALF_MAP_CORRELATION; 0 checks every model: to test the gate)")
    ap.add_argument("--shape-check-centre", choices=("count", "labels"), default="count",
                    help="the shape check's centre: per tomogram, keeping the count of picks at the model's threshold "
                    "(count, what pick predict does) or the labels' median fit (labels, the first rule tried)")
    ap.add_argument("--out-prefix", default=None,
                    help="output JSON/PNG prefix (default docs/benchmarks/picking, picking_cellular for --scenario cellular)")
    ap.add_argument("--measure-inference", default=None, metavar="MODEL.pt",
                    help="only time inference of MODEL.pt on a 200x512x512 tomogram (a child process does this)")
    ap.add_argument("--measure-training", default=None, metavar="OUT.json",
                    help="only time the default training (look-alike rejection on) on a 100x256x256 tomogram of "
                    "--scenario with 10 %% labels, and the first live heatmap; JSON to OUT.json")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="time inference without keep_freed_memory() (plain glibc malloc)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="merge result files of partial runs (e.g. fractions run in parallel) into --out-prefix; "
                    "for a fraction in several files the last one given wins")
    args = ap.parse_args()
    if args.shape_check_gate is not None:  # read by shape_reference_from_search at each training
        import napari_cryoalign.backend.picking.shape_check as shape_check_module

        shape_check_module.MIN_HALF_MAP_CORRELATION = float(args.shape_check_gate)
    if args.out_prefix is None:
        args.out_prefix = str(ROOT / "docs" / "benchmarks" / ("picking" if args.scenario == "clean"
                                                              else f"picking_{args.scenario}"))
    if args.merge:
        merged = {"picker": [], "template_matching": None, "inference_512x512x200": None, "parts": []}
        for f in args.merge:
            r = json.loads(Path(f).read_text())
            merged["parts"].append({"file": str(f), "setup": r["setup"], "complete": r.get("complete")})
            # a later file's row for the same label fraction replaces an earlier one (re-runs)
            merged["picker"] = [x for x in merged["picker"] if x["fraction"] not in {y["fraction"] for y in r["picker"]}]
            merged["picker"] += r["picker"]
            merged["template_matching"] = merged["template_matching"] or r.get("template_matching")
            if r.get("removal_round"):
                fr = {y["fraction"] for y in r["removal_round"]}
                merged["removal_round"] = [x for x in merged.get("removal_round", []) if x["fraction"] not in fr] \
                    + r["removal_round"]
            merged["inference_512x512x200"] = merged["inference_512x512x200"] or r.get("inference_512x512x200")
        merged["picker"].sort(key=lambda r: r["fraction"])
        prefix = Path(args.out_prefix)
        tmpf = prefix.with_suffix(".json.tmp")
        tmpf.write_text(json.dumps(merged, indent=1, default=float))
        os.replace(tmpf, prefix.with_suffix(".json"))
        _plot(merged, prefix.with_suffix(".png"))
        print(f"wrote {prefix.with_suffix('.json')} and {prefix.with_suffix('.png')}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure_inference:
        measure_inference(args.measure_inference, malloc_tuning=not args.no_malloc_tuning)
        return 0
    if args.measure_training:
        if args.threads:
            torch.set_num_threads(args.threads)
        measure_training(args.scenario, args.measure_training)
        return 0

    from napari_cryoalign.backend.picking.lookalikes import DEFAULT_FIT_CANDIDATES
    from napari_cryoalign.backend.picking.train import DEFAULT_CLASS_PRIOR, DEFAULT_ITERATIONS
    from napari_cryoalign.backend.simulate.structures import load_structure_map

    fractions = (0.10, 0.50) if args.quick else (0.05, 0.10, 0.30, 0.50, 0.70)
    if args.fractions:
        fractions = () if args.fractions == "none" else tuple(float(f) for f in args.fractions.split(","))
    n_test = args.test_tomograms or (1 if args.quick else 2)
    test_seeds = tuple(int(v) for v in args.test_seeds.split(",")) if args.test_seeds else \
        tuple(12 + i for i in range(n_test))
    iterations = args.iterations or DEFAULT_ITERATIONS
    prefix = Path(args.out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    sp = species(args.scenario)
    train_sim = simulate(args.train_seed, args.scenario)
    tests = [simulate(s, args.scenario) for s in test_seeds]
    target = lambda s: s.truth.coordinates_xyz[is_target(s, args.scenario)]  # noqa: E731
    radius = float(np.max(train_sim.truth.radii_voxels[is_target(train_sim, args.scenario)]))
    diameter = 2 * radius * VOXEL
    print(f"simulated {1 + len(tests)} tomograms {SHAPE}; target radius {radius:.2f} voxels; "
          f"train tomogram has {len(target(train_sim))} targets of {len(train_sim.truth)} particles", flush=True)
    setup = {
        "command": "python benchmarks/bench_picking.py" + (" --quick" if args.quick else "")
        + (f" --fractions {args.fractions}" if args.fractions else "")
        + (f" --test-tomograms {args.test_tomograms}" if args.test_tomograms else "")
        + (f" --iterations {args.iterations}" if args.iterations else "")
        + (f" --angular-step {args.angular_step:g}" if args.angular_step != 30.0 else "")
        + (f" --threads {args.threads}" if args.threads else "")
        + (" --skip-template" if args.skip_template else "") + (" --skip-inference" if args.skip_inference else "")
        + (f" --negatives {args.negatives}" if args.negatives else "")
        + (f" --scenario {args.scenario}" if args.scenario != "clean" else "")
        + (f" --test-seeds {args.test_seeds}" if args.test_seeds else "")
        + (" --no-lookalike-rejection" if args.no_lookalike_rejection else "")
        + (f" --fit-candidates {args.fit_candidates}" if args.fit_candidates else "")
        + (" --no-shape-check" if args.no_shape_check else "")
        + (f" --shape-check-centre {args.shape_check_centre}" if args.shape_check_centre != "count" else "")
        + (" --shape-check-sure" if args.shape_check_sure else "")
        + (f" --shape-check-gate {args.shape_check_gate:g}" if args.shape_check_gate is not None else ""),
        "scenario": args.scenario, "scenario_settings": SCENARIOS[args.scenario], "shape_zyx": SHAPE,
        "voxel_size": VOXEL, "species": sp.get("abundance_by_name") or dict(zip(SPECIES, ABUNDANCE)),
        "targets": sp["targets"], "n_particles": 320, "lookalike_rejection": not args.no_lookalike_rejection,
        "fit_candidates": args.fit_candidates or DEFAULT_FIT_CANDIDATES,
        "train_seed": args.train_seed, "test_seeds": test_seeds, "match_radius_voxels": radius, "diameter_angstrom": diameter,
        "threshold": THRESHOLD, "class_prior": DEFAULT_CLASS_PRIOR, "iterations": iterations,
        "template_lowpass_angstrom": TM_LOWPASS, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
    }
    results = {"setup": setup, "picker": [], "template_matching": None, "inference_512x512x200": None,
               "complete": False}

    def save():
        results["picker"].sort(key=lambda r: r["fraction"])
        setup["total_seconds"] = time.perf_counter() - t_all
        setup["load_average_end"] = os.getloadavg()
        tmpf = prefix.with_suffix(".json.tmp")
        tmpf.write_text(json.dumps(results, indent=1, default=float))
        os.replace(tmpf, prefix.with_suffix(".json"))
        if results["picker"]:
            _plot(results, prefix.with_suffix(".png"))

    def template_baseline(labels):
        """Template matching on the test tomograms with the templates a user can have (the labels' average;
        in the look-alike scenarios also the target's other conformation) and, as an upper bound, the very map
        the simulator placed (low-passed)."""
        from napari_cryoalign.backend.picking.label_template import label_template

        t1 = time.perf_counter()
        lt = label_template(train_sim.tomogram, labels, voxel_size=VOXEL, diameter_angstrom=diameter)
        templates = {"label average": (lt.map, VOXEL, None, {"n_labels": int(len(labels)), "n_used": lt.n_used,
                                                              "method": lt.method, "box": lt.box,
                                                              "seconds": time.perf_counter() - t1})}
        if args.scenario in LOOKALIKE_TARGET:
            lset = lookalikes(args.scenario)
            templates["other conformation"] = (lset.mismatched_template("conformation"), lset.voxel_size, TM_LOWPASS, {})
            templates["exact (upper bound)"] = (lset.mismatched_template("exact"), lset.voxel_size, TM_LOWPASS, {})
        else:
            ref, ref_vs = load_structure_map("ribosome", voxel_size_angstrom=VOXEL)
            templates["exact (upper bound)"] = (ref, ref_vs, TM_LOWPASS, {})
        variants = {}
        for name, (ref, ref_vs, lp, info) in templates.items():
            per_tomo, t_tm = [], []
            for s in tests:
                t1 = time.perf_counter()
                tm = template_match(s.tomogram, ref, voxel_size=VOXEL, template_voxel_size=ref_vs,
                                    angular_step_deg=args.angular_step, defocus_um=3.0, lowpass_angstrom=lp,
                                    min_distance_angstrom=radius * VOXEL, threshold=0.0, batch=16)
                t_tm.append(time.perf_counter() - t1)
                ev = evaluate(tm.picks.coordinates_xyz, tm.picks.scores, target(s), radius,
                              threshold=tm.suggested_threshold)
                # "threshold" is the tool's own cut-off: one expected false alarm from noise (pytom-match-pick's)
                ev.update(ncc_std=tm.ncc_std, n_search=tm.n_search)
                per_tomo.append(ev)
            variants[name] = {"angular_step_deg": args.angular_step, "n_rotations": int(len(tm.euler_deg)),
                              "lowpass_angstrom": lp, "seconds_per_tomogram": float(np.mean(t_tm)), **info,
                              **mean_over(per_tomo), "per_tomogram": per_tomo}
            tmr = variants[name]
            print(f"template matching, {name} ({tmr['n_rotations']} rotations, {tmr['seconds_per_tomogram']:.1f} "
                  f"s/tomogram): F1 at the one-false-alarm cut-off {tmr['threshold']:.3f}: {tmr['f1']:.3f} "
                  f"(P {tmr['precision']:.3f} R {tmr['recall']:.3f}) | best F1 {tmr['best_f1']:.3f} | "
                  f"mAP r2 {tmr['map_r2']:.3f} r5 {tmr['map_r5']:.3f}", flush=True)
            results["template_matching_variants"] = variants
            save()
        # the row older files and --merge know: the simulator's own map (an upper bound)
        results["template_matching"] = variants["exact (upper bound)"]

    def train(labels, *, picker=None, iterations=iterations, negatives=None, seed=0):
        """The picker as a user trains it: the default recipe (PU training, then look-alike rejection)."""
        job = fit_picker_job(train_sim.tomogram, labels, diameter_angstrom=None if picker else diameter,
                             picker=picker, voxel_size=VOXEL, iterations=iterations, seed=seed,
                             negatives_xyz=negatives, reject_lookalikes=not args.no_lookalike_rejection,
                             lookalike_options={"fit_candidates": args.fit_candidates} if args.fit_candidates else None)
        return run_job(job, progress=False)

    def evaluate_picker(picker):
        """The picker on the test tomograms as ``pick predict`` runs it (with the shape check when the model has a
        reference); the network's own scores (no shape check) are kept as ``raw_*``."""
        per_tomo, t_inf = [], []
        for s in tests:
            t1 = time.perf_counter()
            raw, _ = pick(picker, s.tomogram, threshold=0.02, shape_check=False)
            t_net = time.perf_counter() - t1
            picks = raw
            anchor = picker.default_threshold if args.shape_check_centre == "count" else None
            if picker.shape_reference is not None and not args.no_shape_check:
                picks, _ = run_job(shape_check_job(raw, s.tomogram, picker.shape_reference, threshold=anchor,
                                                   voxel_size=VOXEL), progress=False)
            t_inf.append(time.perf_counter() - t1)
            ev = evaluate(picks.coordinates_xyz, picks.scores, target(s), radius, threshold=THRESHOLD)
            cal = picker.default_threshold  # calibrated on the labels at the end of training
            prf = precision_recall_f1(picks.coordinates_xyz, picks.scores, target(s), radius=radius, threshold=cal)
            ev.update(threshold_calibrated=cal, f1_calibrated=prf.f1, precision_calibrated=prf.precision,
                      recall_calibrated=prf.recall, shape_checked=float(picks is not raw),
                      shape_check_seconds=time.perf_counter() - t1 - t_net)
            if picks is not raw:
                rb, rthr = best_f1(raw.coordinates_xyz, raw.scores, target(s), radius=radius)
                rp = precision_recall_f1(raw.coordinates_xyz, raw.scores, target(s), radius=radius, threshold=cal)
                ev.update(raw_f1_calibrated=rp.f1, raw_precision_calibrated=rp.precision,
                          raw_recall_calibrated=rp.recall, raw_best_f1=rb.f1, raw_best_threshold=rthr)
            if picks is not raw and args.shape_check_sure:  # the check that fits the sure picks too, beside it
                t2 = time.perf_counter()
                sp, _ = run_job(shape_check_job(raw, s.tomogram, picker.shape_reference, sure=True, threshold=anchor,
                                                voxel_size=VOXEL), progress=False)
                sb, sthr = best_f1(sp.coordinates_xyz, sp.scores, target(s), radius=radius)
                spr = precision_recall_f1(sp.coordinates_xyz, sp.scores, target(s), radius=radius, threshold=cal)
                ev.update(sure_f1_calibrated=spr.f1, sure_precision_calibrated=spr.precision,
                          sure_recall_calibrated=spr.recall, sure_best_f1=sb.f1, sure_best_threshold=sthr,
                          sure_shape_check_seconds=time.perf_counter() - t2)
            per_tomo.append(ev)
        return per_tomo, t_inf

    def keep_model(picker, name):
        if args.save_models is not None:
            args.save_models.mkdir(parents=True, exist_ok=True)
            save_picker(args.save_models / f"{args.scenario}_{name}.pt", picker, overwrite=True)

    def on_training_tomogram(picker, labels, negs):
        """What the model does on its own training tomogram (the network's scores, no shape check): the truth's
        best F1 and F1 at the default threshold there, and what the user could see without any truth: the
        labels' and the removed picks' score ranks among all picks (the fraction of picks scoring above each)."""
        from scipy.spatial import cKDTree

        raw, _ = pick(picker, train_sim.tomogram, threshold=0.02, shape_check=False)
        xyz, sc = raw.coordinates_xyz, np.asarray(raw.scores, dtype=np.float64)
        ev = evaluate(xyz, sc, target(train_sim), radius, threshold=picker.default_threshold)

        def ranks(points):
            if not len(points) or not len(xyz):
                return []
            d, i = cKDTree(xyz).query(points)
            return [round(float(np.mean(sc > sc[j])), 4) if dd <= radius else 1.0 for dd, j in zip(d, i)]

        return {"f1_at_default": ev["f1"], "precision_at_default": ev["precision"], "recall_at_default": ev["recall"],
                "best_f1": ev["best_f1"], "best_threshold": ev["best_threshold"], "n_picks_at_default":
                int(np.sum(sc >= picker.default_threshold)), "label_ranks": ranks(labels), "removed_ranks": ranks(negs)}

    def removal_round(picker, labels, frac):
        """What a user does next in the widget: remove the K highest-scoring wrong picks shown on the
        training tomogram and press Train again (continue, NEGATIVE_STEPS steps, removed picks as known
        negatives); the control continues as long without them."""
        from scipy.spatial import cKDTree

        picks, _ = pick(picker, train_sim.tomogram, threshold=picker.default_threshold)
        d, _ = cKDTree(target(train_sim)).query(picks.coordinates_xyz)
        wrong = np.flatnonzero(d > radius)[: args.negatives]  # picks are sorted by score
        negs = picks.coordinates_xyz[wrong]
        xyz_all, names = train_sim.truth.coordinates_xyz, species_names(train_sim)
        other = ~is_target(train_sim, args.scenario)
        d_other = (cKDTree(xyz_all[other]).query(negs)[0] if other.any() and len(negs) else np.full(len(negs), np.inf))
        near = cKDTree(xyz_all).query(negs)[1] if len(negs) else []
        out = {"fraction": frac, "n_labels": int(len(labels)), "n_negatives": int(len(negs)),
               "n_wrong_shown_before": int(np.sum(d > radius)), "extra_iterations": NEGATIVE_STEPS,
               "negative_z": [round(float(z), 1) for z in negs[:, 2]],
               # what each removed pick is: its distance to the nearest target and to the nearest other particle
               # (in target radii), and the species of the nearest particle
               "negative_target_distance_radii": [round(float(v) / radius, 2) for v in d[wrong]],
               "negative_other_distance_radii": [round(float(v) / radius, 2) for v in d_other],
               "negative_nearest_species": [str(names[i]) for i in near]}
        out["training_tomogram_before"] = on_training_tomogram(picker, labels, negs)
        variants = [("with_negatives", labels, {"negatives": negs}), ("control", labels, {})]
        import napari_cryoalign.backend.picking.fit as fit_module

        learn, why_not = fit_module.learns_removed_picks(picker)
        out["removed_picks_learnt"] = bool(learn)
        if not learn:  # the default keeps them out of training here: what learning them would have given, beside it
            out["removed_picks_not_learnt"] = why_not
            variants.append(("learnt_anyway", labels, {"negatives": negs, "force_learn": True}))
        held = np.zeros((0, 3))
        if args.holdout_labels:  # the round without some labels: do those still rank as before? (no truth needed)
            pick_held = np.random.default_rng(1).permutation(len(labels))[: args.holdout_labels]
            held = labels[pick_held]
            variants.append(("with_negatives_holdout", np.delete(labels, pick_held, axis=0), {"negatives": negs}))
            variants.append(("control_holdout", np.delete(labels, pick_held, axis=0), {}))
            out["held_out_labels"] = held.round(2).tolist()
            out["training_tomogram_before"]["held_out_label_ranks"] = on_training_tomogram(picker, held, negs)[
                "label_ranks"]
        for key, lab, kw in variants:
            t0 = time.perf_counter()
            force = kw.pop("force_learn", False)
            saved = fit_module.learns_removed_picks
            if force:
                fit_module.learns_removed_picks = lambda _picker: (True, "")
            try:
                r = train(lab, picker=copy.deepcopy(picker), iterations=NEGATIVE_STEPS, seed=1, **kw)
            finally:
                fit_module.learns_removed_picks = saved
            t = time.perf_counter() - t0
            per_tomo, _ = evaluate_picker(r.picker)
            keep_model(r.picker, f"{frac:g}_{'removal' if key == 'with_negatives' else key}")
            out[key] = {"train_seconds": t, **mean_over(per_tomo), "per_tomogram": per_tomo,
                        "training_tomogram": on_training_tomogram(r.picker, lab, negs)}
            if len(held):
                out[key]["training_tomogram"]["held_out_label_ranks"] = on_training_tomogram(r.picker, held, negs)[
                    "label_ranks"]
                print(f"  held-out labels' ranks ({key}): before {out['training_tomogram_before']['held_out_label_ranks']}"
                      f" after {out[key]['training_tomogram']['held_out_label_ranks']}", flush=True)
            m = out[key]
            tt, tb = m["training_tomogram"], out["training_tomogram_before"]
            print(f"  on the training tomogram ({key}): F1 at the default {tb['f1_at_default']:.3f} -> "
                  f"{tt['f1_at_default']:.3f}, best {tb['best_f1']:.3f} -> {tt['best_f1']:.3f}; labels' median rank "
                  f"{np.median(tb['label_ranks']):.3f} -> {np.median(tt['label_ranks']):.3f}, removed picks' "
                  f"{np.median(tb['removed_ranks'] or [np.nan]):.3f} -> {np.median(tt['removed_ranks'] or [np.nan]):.3f}",
                  flush=True)
            print(f"  + {len(negs)} removed picks ({key}): F1@calibrated {m['threshold_calibrated']:.3f}: "
                  f"{m['f1_calibrated']:.3f} (P {m['precision_calibrated']:.3f} R {m['recall_calibrated']:.3f}) | "
                  f"best F1 {m['best_f1']:.3f} | mAP r2 {m['map_r2']:.3f} r5 {m['map_r5']:.3f}", flush=True)
        return out

    rng = np.random.default_rng(0)
    all_targets = target(train_sim)
    perm = rng.permutation(len(all_targets))
    last_model = None
    # 10 % first, then the baseline, then the other fractions (partial results are saved as they come)
    order = sorted(fractions, key=lambda f: (abs(f - 0.10) > 1e-9, f))
    for i_frac, frac in enumerate(order):
        k = max(3, int(round(frac * len(all_targets))))
        labels = all_targets[perm[:k]]  # nested subsets: 5 % is part of 10 %, ...
        t0 = time.perf_counter()
        res = train(labels)
        t_train = time.perf_counter() - t0
        per_tomo, t_inf = evaluate_picker(res.picker)
        tr = res.picker.training
        row = {"fraction": frac, "n_labels": k, "train_seconds": t_train, "iterations": iterations,
               "lookalike_negatives": tr.get("lookalike_negatives"), "lookalike_candidates": tr.get("lookalike_candidates"),
               "lookalike_cut": tr.get("lookalike_cut"), "threshold_rule": tr.get("threshold_rule", "labels"),
               "label_scores": tr.get("label_scores"), "shape_check_reason": tr.get("shape_check_reason"),
               "half_map_correlation": None if res.picker.shape_reference is None
               else res.picker.shape_reference.half_map_correlation,
               "inference_seconds_256x256x64": float(np.mean(t_inf)), **mean_over(per_tomo), "per_tomogram": per_tomo}
        results["picker"].append(row)
        print(f"{frac * 100:4.0f} % ({k:3d} labels): train {t_train:5.1f} s | F1@{THRESHOLD} {row['f1']:.3f} "
              f"| F1@calibrated {row['threshold_calibrated']:.3f}: {row['f1_calibrated']:.3f} "
              f"(P {row['precision_calibrated']:.3f} R {row['recall_calibrated']:.3f}) "
              f"(P {row['precision']:.3f} R {row['recall']:.3f}) | best F1 {row['best_f1']:.3f} | "
              f"mAP r2 {row['map_r2']:.3f} r5 {row['map_r5']:.3f} | look-alikes learnt as negatives: "
              f"{row['lookalike_negatives']} of {row['lookalike_candidates']}", flush=True)
        if "raw_f1_calibrated" in row:
            print(f"      without the shape check: F1@calibrated {row['raw_f1_calibrated']:.3f} "
                  f"(P {row['raw_precision_calibrated']:.3f} R {row['raw_recall_calibrated']:.3f}) | best F1 "
                  f"{row['raw_best_f1']:.3f}; the check took {row['shape_check_seconds']:.1f} s per tomogram",
                  flush=True)
        if "sure_f1_calibrated" in row:
            print(f"      the check fitting the sure picks too: F1@calibrated {row['sure_f1_calibrated']:.3f} "
                  f"(P {row['sure_precision_calibrated']:.3f} R {row['sure_recall_calibrated']:.3f}) | best F1 "
                  f"{row['sure_best_f1']:.3f}; it took {row['sure_shape_check_seconds']:.1f} s per tomogram",
                  flush=True)
        last_model = res.picker
        keep_model(res.picker, f"{frac:g}")
        if args.negatives:
            results.setdefault("removal_round", []).append(removal_round(res.picker, labels, frac))
        save()
        if i_frac == 0 and not args.skip_template:
            template_baseline(labels)
            save()
    if not order and not args.skip_template:
        template_baseline(all_targets[perm[:max(3, int(round(0.1 * len(all_targets))))]])

    # inference speed and memory on 200 x 512 x 512, in a fresh process
    if last_model is not None and not args.skip_inference:
        with tempfile.TemporaryDirectory() as tmp:
            mp = Path(tmp) / "model.pt"
            save_picker(mp, last_model)
            cmd = [sys.executable, __file__, "--measure-inference", str(mp)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.no_malloc_tuning:
                cmd += ["--no-malloc-tuning"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results["inference_512x512x200"] = json.loads(out.stdout.strip().splitlines()[-1])
        inf = results["inference_512x512x200"]
        print(f"inference 200x512x512: {inf['seconds']:.1f} s, peak RSS {inf['peak_rss_mb']:.0f} MB", flush=True)
    results["complete"] = True
    save()
    print(f"wrote {prefix.with_suffix('.json')} and {prefix.with_suffix('.png')}")
    return 0


def _plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["picker"]
    tm = results["template_matching"]
    x = [100 * r["fraction"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key, lab in (("f1_calibrated", "F1 @ calibrated threshold (default)"), ("f1", f"F1 @ {THRESHOLD}"),
                     ("best_f1", "best F1")):
        if all(key in r for r in rows):
            axes[0].plot(x, [r[key] for r in rows], "o-", label=f"PU picker, {lab}")
    if tm:
        axes[0].axhline(tm["best_f1"], color="k", ls="--", label="template matching, best F1")
        if "f1" in tm:
            axes[0].axhline(tm["f1"], color="k", ls=":", label="template matching, F1 @ 1 false alarm (default)")
    axes[0].set(xlabel="labelled particles (%)", ylabel="F1 (match radius = particle radius)", ylim=(0, 1.02))
    for key, lab in (("map_r2", "mAP r2"), ("map_r5", "mAP r5")):
        axes[1].plot(x, [r[key] for r in rows], "o-", label=f"PU picker, {lab}")
        if tm:
            axes[1].axhline(tm[key], ls="--", color="k" if key == "map_r5" else "gray",
                            label=f"template matching, {lab}")
    axes[1].set(xlabel="labelled particles (%)", ylabel="mAP (output-grid voxels)", ylim=(0, 1.02))
    for a in axes:
        a.legend(fontsize=8, loc="lower right")
        a.grid(alpha=0.3)
    fig.suptitle("Picking on simulated crowded tomograms (train on one, test on others)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
