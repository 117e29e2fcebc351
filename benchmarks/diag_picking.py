"""Diagnosis of a trained picker on a picking scenario: what its picks and misses are, and what the look-alike
search saw, species by species.

``benchmarks/bench_picking.py`` gives F1; this says *why*: which species the wrong picks are (a look-alike,
another species, a gold bead, nothing), which target copies were missed (the full map, the second
conformation, the partial copies), and what the look-alike search of the default recipe
(:func:`~napari_cryoalign.backend.picking.lookalikes.lookalike_negatives_job`) saw on the training tomogram:
how every candidate fitted the labels' average by species, which were taken as negatives, and how long each
stage of the search took. Without ``--model`` the script trains with the recipe and reports the recipe's own
search; with ``--model --search`` it searches again with the given (final) model, which has already learnt
the look-alikes the recipe found, so its candidates differ from the recipe's.

Usage::

    # a model kept by bench_picking.py --save-models DIR (the 10 % model of a scenario)
    .venv/bin/python benchmarks/diag_picking.py --scenario lookalike-cct --model DIR/lookalike-cct_0.1.pt \
        --test-seeds 12,13 --out /tmp/diag_cct.json
    # no model: train one with the default recipe as bench_picking.py does (seed 11, 10 % labels); the
    # search reported is then the recipe's own (on the model before its look-alike steps), with stage times
    .venv/bin/python benchmarks/diag_picking.py --scenario cellular

The labels are those of ``bench_picking.py`` (training tomogram seed 11, the first 10 % of the targets in
the permutation of ``default_rng(0)``), so a saved model and the re-run search see the same labels.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "src"))

import bench_picking as B  # noqa: E402

from napari_cryoalign.backend.jobs import run_job  # noqa: E402
from napari_cryoalign.backend.picking import load_picker, pick  # noqa: E402


def species_of(sim, xyz, radius: float) -> np.ndarray:
    """``(n,)`` what lies at each point: a species name of the simulator's truth (within ``radius`` voxels of
    its centre), ``"gold"`` (within ``radius`` of a gold bead) or ``"nothing"``."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    names = B.species_names(sim)
    out = np.full(len(xyz), "nothing", dtype=object)
    if not len(xyz):
        return out
    d, i = cKDTree(sim.truth.coordinates_xyz).query(xyz)
    out[d <= radius] = names[i[d <= radius]]
    gold = np.asarray(sim.params.get("gold_xyz_voxels") or [], dtype=np.float64).reshape(-1, 3)
    if len(gold):
        out[cKDTree(gold).query(xyz)[0] <= radius] = "gold"
    return out


def picks_by_species(picker, sim, scenario: str, radius: float, threshold: float) -> dict:
    """The picks at ``threshold`` on one tomogram: right ones, wrong ones by what they sit on, misses by species
    (a pick is right when a target lies within ``radius``; each target counts once)."""
    picks, _ = pick(picker, sim.tomogram, threshold=threshold)
    xyz, scores = picks.coordinates_xyz, picks.scores
    target = B.is_target(sim, scenario)
    names = B.species_names(sim)
    what = species_of(sim, xyz, radius)
    right = np.isin(what, B.species(scenario)["targets"])
    found = set()
    if right.any():
        found = set(cKDTree(sim.truth.coordinates_xyz).query(xyz[right])[1].tolist())
    missed = [k for k in np.flatnonzero(target) if k not in found]
    wrong = collections.Counter(what[~right].tolist())
    return {"threshold": threshold, "picks": int(len(xyz)), "right": int(right.sum()),
            "targets": int(target.sum()), "targets_found": len(found),
            "wrong_by_species": dict(wrong.most_common()),
            "wrong_scores": [round(float(s), 3) for s in scores[~right]],
            "missed_by_species": dict(collections.Counter(names[missed].tolist()).most_common()),
            "targets_by_species": dict(collections.Counter(names[target].tolist()).most_common())}


def search_by_species(found, sim, scenario: str, radius: float, *, seconds: float, stages: list) -> dict:
    """A look-alike search's candidates, fits and negatives by species, and the time of each stage
    (``stages``: (name, start in seconds) of each top-level progress message)."""
    stage_seconds = {name: round((stages[k + 1][1] if k + 1 < len(stages) else seconds) - start, 2)
                     for k, (name, start) in enumerate(stages)}
    what = species_of(sim, found.candidates_xyz, radius)
    neg = np.zeros(len(what), dtype=bool)
    if len(found.negatives_xyz):
        neg = cKDTree(found.negatives_xyz).query(found.candidates_xyz)[0] < 1e-6
    fits = {}
    for name in sorted(set(what.tolist())):
        sel = what == name
        f = found.candidate_fit[sel]
        f = f[np.isfinite(f)]
        fits[name] = {"candidates": int(sel.sum()), "negatives": int(neg[sel].sum()),
                      "target": bool(name in B.species(scenario)["targets"]),
                      "fit_mean": float(np.mean(f)) if len(f) else None,
                      "fit_min": float(np.min(f)) if len(f) else None, "fit_max": float(np.max(f)) if len(f) else None,
                      "picker_score_mean": float(np.mean(found.candidate_scores[sel]))}
    lf = found.label_fit
    target = np.array([fits[n]["target"] for n in what], dtype=bool) if len(what) else np.zeros(0, bool)
    return {"fit_auc_target_vs_rest": fit_auc(found.candidate_fit, target), "seconds": round(seconds, 2),
            "stage_seconds": stage_seconds, "candidates": int(len(what)),
            "negatives": int(neg.sum()), "cut": found.cut, "cut_above": found.cut_above,
            "separation": found.separation, "reason": found.reason,
            "label_fit_percentiles_10_50_90": [float(np.percentile(lf, q)) for q in (10, 50, 90)] if len(lf) else None,
            "by_species": fits}


def fit_auc(fit, target) -> float | None:
    """Area under the ROC curve of the fits, targets against the rest (ties count half; boxes without a
    fit left out): the chance that a target candidate fits better than a non-target one."""
    fit, target = np.asarray(fit, dtype=np.float64), np.asarray(target, dtype=bool)
    ok = np.isfinite(fit)
    pos, neg = fit[ok & target], fit[ok & ~target]
    if not len(pos) or not len(neg):
        return None
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


def compare_fits(found, sim, scenario: str, radius: float, candidates=(1, 3)) -> dict:
    """The search's candidates fitted again to the same half map, refining 1 or 3 grid optima per box
    (``fit_candidates`` of the search): seconds and the AUC of the fits, targets against the rest."""
    from napari_cryoalign.backend.picking.lookalikes import _box_fit

    target = np.isin(species_of(sim, found.candidates_xyz, radius), B.species(scenario)["targets"])
    out = {}
    for k in candidates:
        t0 = time.perf_counter()
        fit = run_job(_box_fit(sim.tomogram, found.candidates_xyz, found.template.half_maps[0],
                               tilt_range_deg=(-60.0, 60.0), angular_step_deg=30.0, fit_candidates=k, device="cpu",
                               prefix="candidates"), progress=False)
        out[str(k)] = {"seconds": round(time.perf_counter() - t0, 2), "boxes": int(np.isfinite(fit).sum()),
                       "fit_auc_target_vs_rest": fit_auc(fit, target)}
    return out


class _Stages:
    """Times of the top-level progress messages of a job (the part of each message before its first ':'),
    from ``prefix`` on (messages of a sub-job forwarded with ``prefix: ...`` lose it first)."""

    def __init__(self, prefix: str = ""):
        self.prefix, self.t0, self.stages, self.first, self.last = prefix, time.perf_counter(), [], None, None

    def __call__(self, p) -> None:
        msg = p.message
        if self.prefix:
            if not msg.startswith(self.prefix + ": "):
                if self.first is not None and self.last is None:
                    self.last = time.perf_counter() - self.t0
                return
            msg = msg[len(self.prefix) + 2:]
        now = time.perf_counter() - self.t0
        if self.first is None:
            self.first = now
        top = msg.split(":")[0]
        if not self.stages or self.stages[-1][0] != top:
            self.stages.append((top, now - self.first))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=sorted(B.SCENARIOS), default="lookalike")
    ap.add_argument("--model", type=Path, default=None,
                    help="a picker kept by bench_picking.py --save-models (default: train one with the default recipe)")
    ap.add_argument("--test-seeds", default="12", help="comma-separated seeds of the test tomograms (default 12)")
    ap.add_argument("--threshold", type=float, default=None, help="cut-off of the picks (default: the model's own)")
    ap.add_argument("--search", action="store_true",
                    help="with --model: also search for look-alikes again with that model on the training tomogram "
                    "(seed 11) and the same labels (without --model the recipe's own search is always reported)")
    ap.add_argument("--compare-fits", action="store_true",
                    help="fit the search's candidates again refining 1 and 3 grid optima per box (fit_candidates): "
                    "time and AUC of each")
    ap.add_argument("--fit-candidates", type=int, default=None, metavar="K",
                    help="without --model: grid optima refined per box in the recipe's fits (default: the search's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train_sim = B.simulate(11, args.scenario)
    target = B.is_target(train_sim, args.scenario)
    labels = B.training_labels(train_sim, args.scenario)
    radius = float(np.max(train_sim.truth.radii_voxels[target]))
    out = {"command": "python benchmarks/diag_picking.py " + " ".join(sys.argv[1:]), "scenario": args.scenario,
           "labels": int(len(labels)), "match_radius_voxels": radius, "threads": torch.get_num_threads(),
           "load_average": os.getloadavg()}
    found, stages = None, None
    if args.model is not None:
        picker = load_picker(args.model)
        out["model"] = str(args.model)
    else:  # the default recipe, as pick train runs it; its own look-alike search is the one reported
        from napari_cryoalign.backend.picking.fit import fit_picker_job

        stages = _Stages("look-alikes")
        kept = []

        def on_partial(p) -> None:
            if p.name == "lookalikes":
                kept.append(p.value)
                stages.last = time.perf_counter() - stages.t0 if stages.last is None else stages.last

        options = {"fit_candidates": args.fit_candidates} if args.fit_candidates else None
        res = run_job(fit_picker_job(train_sim.tomogram, labels, diameter_angstrom=2 * radius * B.VOXEL,
                                     voxel_size=B.VOXEL, seed=0, lookalike_options=options), progress=False,
                      on_progress=stages,
                      on_partial=on_partial)
        picker, found = res.picker, (kept[0] if kept else None)
        out["train_seconds"] = time.perf_counter() - stages.t0
        out["iterations"] = res.iterations
    threshold = picker.default_threshold if args.threshold is None else args.threshold
    out["test"] = {}
    for seed in (int(s) for s in args.test_seeds.split(",")):
        r = picks_by_species(picker, B.simulate(seed, args.scenario), args.scenario, radius, threshold)
        out["test"][seed] = r
        print(f"seed {seed}: {r['picks']} picks at {threshold:.3f}, {r['right']} right "
              f"({r['targets_found']} of {r['targets']} targets); wrong: {r['wrong_by_species']}; "
              f"missed: {r['missed_by_species']}", flush=True)
    if args.search or args.model is None:
        from napari_cryoalign.backend.picking.lookalikes import lookalike_negatives_job

        if found is not None:  # the recipe's own search, on the model before its look-alike steps
            seconds = stages.last - stages.first
            s = search_by_species(found, train_sim, args.scenario, radius, seconds=seconds, stages=stages.stages)
            s["searched"] = "by the recipe, on the model after its first training (before the look-alike steps)"
        else:  # a new search on the final model (which has seen its look-alikes already, if the recipe found any)
            stages = _Stages()
            found = run_job(lookalike_negatives_job(picker, train_sim.tomogram, labels, voxel_size=B.VOXEL),
                            progress=False, on_progress=stages)
            s = search_by_species(found, train_sim, args.scenario, radius,
                                  seconds=time.perf_counter() - stages.t0, stages=stages.stages)
            s["searched"] = "again, on the given model"
        out["search"] = s
        print(f"look-alike search {s['searched']} ({s['seconds']:.1f} s: {s['stage_seconds']}): {s['negatives']} "
              f"negatives of {s['candidates']} candidates; {s['reason'] or ''}", flush=True)
        for name, f in s["by_species"].items():
            rng = "no fit" if f["fit_mean"] is None else \
                f"fit {f['fit_mean']:.3f} ({f['fit_min']:.3f} to {f['fit_max']:.3f})"
            print(f"  {name:28s} {'target' if f['target'] else '      '} {f['candidates']:3d} candidates, "
                  f"{f['negatives']:3d} negatives, {rng}", flush=True)
        print(f"  AUC of the fits, targets against the rest: {s['fit_auc_target_vs_rest']}", flush=True)
        if args.compare_fits and found.template is not None:
            s["compare_fit_candidates"] = compare_fits(found, train_sim, args.scenario, radius)
            for k, c in s["compare_fit_candidates"].items():
                print(f"  fits refining {k} grid optima per box: {c['seconds']:.1f} s for {c['boxes']} boxes, "
                      f"AUC {c['fit_auc_target_vs_rest']}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(out, indent=1, default=float))
        os.replace(tmp, args.out)
    print(json.dumps({k: v for k, v in out.items() if k not in ("test", "search")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
