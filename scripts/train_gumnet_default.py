"""Train (and evaluate) the default Gum-Net weights shipped in ``napari_cryoalign/weights``.

Reproducible: everything is seeded; the data come from the project's own simulator
(``backend/simulate/subtomograms.simulate_subtomograms``), regenerated with a new seed for
every round so that the network never sees the same particle twice. Training is
unsupervised: pairs (particle, reference of its structure) and the imputed-correlation loss;
the true poses are used only by ``--evaluate``.

Usage::

    .venv/bin/python scripts/train_gumnet_default.py                 # train (~25 min on 2 CPU cores) + evaluate
    .venv/bin/python scripts/train_gumnet_default.py --evaluate-only # evaluate the shipped weights

Outputs: ``src/napari_cryoalign/weights/gumnet_default.pt`` (+ ``gumnet_default.json``
provenance), ``docs/benchmarks/align_learned.json`` (held-out accuracy and speed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_cryoalign.backend.align.gumnet import GumNet, GumNetConfig, refine_grid_head
from napari_cryoalign.backend.align.learned import (
    align_learned,
    load_model,
    save_model,
)
from napari_cryoalign.backend.align.learned_train import train_job, turned_references
from napari_cryoalign.backend.geometry import (
    geodesic_angle_deg,
    matrix_distance,
    random_rotations,
)
from napari_cryoalign.backend.jobs import Partial
from napari_cryoalign.backend.simulate.procedural import HELD_OUT_SEEDS, TRAINING_SEEDS
from napari_cryoalign.backend.simulate.structures import list_structures
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms

WEIGHTS = ROOT / "src" / "napari_cryoalign" / "weights" / "gumnet_default.pt"
BENCH = ROOT / "docs" / "benchmarks" / "align_learned.json"
STRUCTURES = list_structures()

# curriculum: (name, share of the time budget, SNR choices, loss_box, learning rate)
STAGES = [
    ("snr100", 0.45, [100.0], 16, 1e-3),
    ("mixed", 0.40, [100.0, 10.0, 1.0, 0.3, 0.1], 16, 5e-4),
    ("mixed-fullbox", 0.15, [100.0, 10.0, 1.0, 0.3, 0.1], 32, 2e-4),
]
# the grid head (classification over SO(3), trained on the simulator's poses): high SNR first
GRID_STAGES = [
    ("high-snr", 0.4, [100.0, 10.0], 16, 1e-3),
    ("mixed", 0.6, [100.0, 10.0, 1.0, 0.3, 0.1, 0.05], 16, 5e-4),
]
GRID_CONFIG = {"head": "grid", "input_box": 16, "grid_step_deg": 30.0, "channels": (8, 16, 32, 32, 64),
               "hidden": 512}


# the broad corpus (issue 18): every packaged structure plus new procedural shapes every round, under varied
# imaging conditions, so that the network learns alignment, not identities or one voxel size
BROAD_PROCEDURAL_PER_ROUND = 14
BROAD_VOXELS = (6.0, 8.0, 10.0, 12.0)
BROAD_TILTS = ((-60.0, 60.0), (-50.0, 50.0), (-60.0, 45.0), (-45.0, 45.0))
BROAD_DEFOCUS = (None, (2.0, 6.0), 5.0)
# held-out learning curve: procedural seeds >= 10000 (never trained on), fixed conditions
CURVE_SEEDS = tuple(range(10100, 10110))
CURVE_SETS = (("snr100_12A_ctf5", 100.0, 12.0), ("snr0.1_12A_ctf5", 0.1, 12.0), ("snr0.1_8A_ctf5", 0.1, 8.0),
              ("snr0.1_6A_resampled_ctf5", 0.1, 6.0))
# curve sets given to the aligner with their voxel size, so resampled to the model's working one as a user's
# particles are (the others as the earlier curves ran them: the 8 A set without resampling)
RESAMPLED_CURVE_SETS = ("snr0.1_6A_resampled_ctf5",)


def _round_data(snr: float, n_per_class: int, seed: int, device="cpu", corpus: str = "packaged",
                rotate_references: bool = False):
    """One round's particles, per-particle references, masks, rotations and voxel size (Å)."""
    if corpus == "broad":
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(TRAINING_SEEDS), BROAD_PROCEDURAL_PER_ROUND, replace=False)
        structures = [f"procedural:{TRAINING_SEEDS[int(i)]}" for i in picks] + list(STRUCTURES)
        s = simulate_subtomograms(structures, n_per_class=n_per_class, box=32, snr=snr, seed=seed, device=device,
                                  voxel_size_angstrom=float(rng.choice(BROAD_VOXELS)),
                                  tilt_range_deg=BROAD_TILTS[int(rng.integers(len(BROAD_TILTS)))],
                                  defocus_um=BROAD_DEFOCUS[int(rng.integers(len(BROAD_DEFOCUS)))])
    else:
        s = simulate_subtomograms(STRUCTURES, n_per_class=n_per_class, box=32, snr=snr, seed=seed, device=device)
    refs = s.references[s.classes - 1]  # each particle's structure (not its pose)
    rots = s.rotations
    if rotate_references:
        refs, rots = rotated_references(refs, rots, seed=seed)
    return s.volumes, refs, s.mask, rots, float(s.voxel_size_angstrom)


def rotated_references(refs, rotations, *, seed: int):
    """Each pair's reference turned by its own uniform random rotation ``G``; the target becomes ``A G^T``
    (:func:`~napari_cryoalign.backend.align.learned_train.turned_references`: why, and the order)."""
    return turned_references(refs, rotations, random_rotations(len(refs), seed=seed + 7))


def _curve_sets(per_structure: int = 4):
    """The fixed held-out sets of the learning curve (built once)."""
    assert all(x in HELD_OUT_SEEDS for x in CURVE_SEEDS)
    names = [f"procedural:{x}" for x in CURVE_SEEDS]
    return {label: simulate_subtomograms(names, n_per_class=per_structure, box=32, voxel_size_angstrom=vox, snr=snr,
                                         seed=4242, defocus_um=5.0)
            for label, snr, vox in CURVE_SETS}


def held_out_point(model: GumNet, sets: dict) -> dict:
    """Network alone on the held-out procedural sets: mean / median geodesic error and mean Frobenius."""
    was_training = model.training
    out = {}
    for label, s in sets.items():
        vox = float(s.voxel_size_angstrom) if label in RESAMPLED_CURVE_SETS else None
        geo, fro = [], []
        for c in range(1, len(s.references) + 1):
            sel = np.flatnonzero(s.classes == c)
            res = align_learned(s.volumes[sel], s.references[c - 1], particle_masks=s.mask, model=model,
                                voxel_size=vox)
            geo.append(geodesic_angle_deg(res.rotations, s.rotations[sel]))
            fro.append(matrix_distance(res.rotations, s.rotations[sel]))
        g, f = np.concatenate(geo), np.concatenate(fro)
        out[label] = {"n": int(g.size), "geodesic_mean_deg": float(g.mean()),
                      "geodesic_median_deg": float(np.median(g)), "frobenius_mean": float(f.mean()),
                      "fraction_below_30deg": float((g < 30).mean())}
    model.train(was_training)
    return out


def train(minutes: float, *, seed: int = 0, n_per_class: int = 24, batch_size: int = 8,
          checkpoint: Path | None = None, supervised: bool = False, head: str = "hypotheses",
          init: Path | None = None, device="cpu", corpus: str = "packaged", curve_minutes: float = 0.0,
          curve_path: Path | None = None, rotate_references: bool = False,
          centre_moving: bool = False, input_crop: str = "fourier",
          clean_share: float | None = None, coarse_grid_step: float | None = None,
          coarse_minutes: float = 0.0, resample: bool = False) -> tuple[GumNet, dict]:
    """Train for ``minutes``; with ``init`` (a model file) continue from those weights with the last
    stage of the curriculum only (its SNR mix and learning rate) for the whole budget (the broad
    corpus runs the whole curriculum from ``init`` too). With ``curve_minutes`` > 0, evaluate the
    network alone on held-out procedural structures every ``curve_minutes`` (``log["curve"]``,
    also written to ``curve_path`` as it grows). ``clean_share`` (grid head only) replaces the
    high-SNR stage's share of the budget (0.4), the mixed stage taking the rest. ``coarse_grid_step``
    (a new grid model only) is the curriculum of the head: the model starts with that grid (e.g. 60°, 78
    rotations) and is refined to the 30° grid (:func:`~napari_cryoalign.backend.align.gumnet.refine_grid_head`)
    at the first round after ``coarse_minutes``, with a fresh optimizer. ``resample`` gives each round's
    voxel size to ``train_job``, so a model with a working voxel size (``config.voxel_size``) trains on the
    particles resampled to it, as alignment gives them to it."""
    if resample and init is None:
        raise SystemExit("--resample needs --init with a model that has a working voxel size")
    if clean_share is not None and not 0.0 < clean_share <= 1.0:
        raise SystemExit(f"--clean-share {clean_share}: expected a fraction in (0, 1]")
    torch.manual_seed(seed)
    if init is not None:
        model = load_model(init, device=device)
        model.train()
        if model.config.head != head:
            raise SystemExit(f"--init {init}: a {model.config.head!r}-head model, but --head {head}")
        if resample and model.config.voxel_size is None:
            raise SystemExit(f"--init {init}: a model without a working voxel size, which --resample needs")
    else:
        cfg = dict(GRID_CONFIG if head == "grid" else {})
        if coarse_grid_step is not None:
            if head != "grid":
                raise SystemExit("--coarse-grid-step applies to --head grid only")
            cfg["grid_step_deg"] = float(coarse_grid_step)
        model = GumNet(GumNetConfig(box=32, centre_moving=centre_moving, input_crop=input_crop, **cfg)).to(device)
    fine_step = float(GRID_CONFIG["grid_step_deg"])
    log = {"stages": [], "losses": [], "architecture": model.config.to_dict(),
           "init": None if init is None else str(init), "corpus": corpus, "curve": [],
           "rotate_references": rotate_references, "resample": resample}
    t_all = time.perf_counter()
    round_seed = 1000 * seed + 1
    stages = GRID_STAGES if head == "grid" else STAGES
    if clean_share is not None:
        if head != "grid":
            raise SystemExit("--clean-share applies to --head grid only")
        stages = [(stages[0][0], clean_share, *stages[0][2:]), (stages[1][0], 1.0 - clean_share, *stages[1][2:])]
    if init is not None and corpus != "broad":
        stages = [(stages[-1][0], 1.0, *stages[-1][2:])]
    sets = _curve_sets() if curve_minutes > 0 else None
    next_curve = 0.0

    def curve_point(stage):
        point = {"seconds": time.perf_counter() - t_all, "steps": len(log["losses"]), "stage": stage,
                 "grid_rotations": None if model.grid is None else int(len(model.grid)),
                 **held_out_point(model, sets)}
        log["curve"].append(point)
        print("curve " + json.dumps(point), flush=True)
        if curve_path is not None:
            tmp = curve_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"corpus": corpus, "held_out_seeds": list(CURVE_SEEDS), "sets": CURVE_SETS,
                                       "curve": log["curve"]}, indent=1) + "\n")
            os.replace(tmp, curve_path)

    for name, share, snrs, loss_box, lr in stages:
        budget = share * minutes * 60.0
        t0 = time.perf_counter()
        rounds = steps = 0
        rng = np.random.default_rng(round_seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        while time.perf_counter() - t0 < budget:
            if (model.config.head == "grid" and model.config.grid_step_deg != fine_step and coarse_grid_step is not None
                    and time.perf_counter() - t_all >= coarse_minutes * 60.0):
                model = refine_grid_head(model, fine_step)
                opt = torch.optim.Adam(model.parameters(), lr=lr)
                log["refined"] = {"seconds": time.perf_counter() - t_all, "steps": len(log["losses"]),
                                  "rotations": int(len(model.grid))}
                print(f"refined the head to {len(model.grid)} rotations at {len(log['losses'])} steps", flush=True)
            if sets is not None and time.perf_counter() - t_all >= next_curve:
                curve_point(name)
                next_curve += curve_minutes * 60.0
            snr = float(rng.choice(snrs))
            vols, refs, mask, rots, vox = _round_data(snr, n_per_class, round_seed, device, corpus, rotate_references)
            round_seed += 1
            job = train_job(vols, references=refs, particle_masks=mask, model=model, epochs=1,
                            batch_size=batch_size, lr=lr, loss_box=loss_box, optimizer=opt, seed=round_seed,
                            true_rotations=rots if supervised else None, device=device,
                            correlation_weight=0.0 if (head == "grid" and supervised) else 1.0,
                            correlation="imputed", validation=0.0,  # as the shipped weights were trained
                            voxel_size=vox if resample else None)
            try:
                while True:
                    ev = next(job)
                    if isinstance(ev, Partial) and ev.name == "loss":
                        log["losses"].append([name, ev.value["loss"]])
                        steps += 1
                    if time.perf_counter() - t0 >= budget:
                        job.close()
                        break
            except StopIteration:
                pass
            rounds += 1
            if checkpoint is not None:
                save_model(model, checkpoint, metadata={"stage": name, "round": rounds}, overwrite=True)
            recent = [v for _, v in log["losses"][-20:]]
            print(f"[{name}] round {rounds} snr {snr:g} steps {steps} loss(last20) {np.mean(recent):.4f} "
                  f"t {time.perf_counter() - t_all:.0f}s", flush=True)
        log["stages"].append({"name": name, "snrs": snrs, "loss_box": loss_box, "lr": lr, "rounds": rounds,
                              "steps": steps, "seconds": time.perf_counter() - t0})
    if sets is not None:
        curve_point("end")
    log["seconds"] = time.perf_counter() - t_all
    return model, log


def _errors(res, s, sel):
    return (geodesic_angle_deg(res.rotations, s.rotations[sel]), matrix_distance(res.rotations, s.rotations[sel]),
            np.linalg.norm(res.origins_voxels - s.origins_voxels[sel], axis=1))


def _summary(geo, fro, trans, seconds) -> dict:
    return {"n": int(geo.size),
            "geodesic_mean_deg": float(geo.mean()), "geodesic_median_deg": float(np.median(geo)),
            "fraction_below_30deg": float((geo < 30).mean()),
            "frobenius_mean": float(fro.mean()), "frobenius_std": float(fro.std()),
            "translation_mean_vox": float(trans.mean()), "translation_std_vox": float(trans.std()),
            "pairs_per_second": float(geo.size / seconds)}


def _run(aligner, s, per_class: int | None = None):
    geo, fro, trans = [], [], []
    t0 = time.perf_counter()
    for c in range(1, len(STRUCTURES) + 1):
        sel = np.flatnonzero(s.classes == c)[:per_class]
        res = aligner(s.volumes[sel], s.references[c - 1], particle_masks=s.mask)
        g, f, t = _errors(res, s, sel)
        geo.append(g), fro.append(f), trans.append(t)
    return _summary(np.concatenate(geo), np.concatenate(fro), np.concatenate(trans), time.perf_counter() - t0)


def evaluate(model: GumNet, *, n_per_class: int = 15, snrs=(100.0, 0.1, 0.05, 0.03), seed: int = 999,
             exhaustive_per_class: int = 2, exhaustive_snrs=(100.0, 0.1)) -> dict:
    """Held-out accuracy of ``model``, of the same architecture untrained (its K initial
    hypotheses + the correlation-peak shift: what the training added), and of the exhaustive
    search on a subset (accuracy and the throughput ratio, measured in the same run)."""
    out = {"held_out": {"structures": STRUCTURES, "n_per_class": n_per_class, "box": 32, "voxel_size_angstrom": 12.0,
                        "seed": seed, "tilt_range_deg": [-60, 60], "max_shift_voxels": 3.0, "defocus_um": 5.0},
           "snr": {}, "untrained": {}, "exhaustive": {}}
    rnd = random_rotations(2000, seed=1)
    out["chance"] = {"geodesic_mean_deg": float(geodesic_angle_deg(rnd[:1000], rnd[1000:]).mean()),
                     "frobenius_mean": float(matrix_distance(rnd[:1000], rnd[1000:]).mean())}
    torch.manual_seed(0)
    untrained = GumNet(model.config).eval()
    try:
        from napari_cryoalign.backend.align.exhaustive import align_exhaustive
    except ImportError:  # built by another part of the project
        align_exhaustive = None
    for snr in snrs:
        s = simulate_subtomograms(STRUCTURES, n_per_class=n_per_class, box=32, snr=snr, seed=seed)
        out["snr"][str(snr)] = _run(lambda p, r, **kw: align_learned(p, r, model=model, **kw), s)
        print(f"SNR {snr:g} learned: " + json.dumps(out["snr"][str(snr)]), flush=True)
        out["untrained"][str(snr)] = _run(lambda p, r, **kw: align_learned(p, r, model=untrained, **kw), s)
        print(f"SNR {snr:g} untrained: " + json.dumps(out["untrained"][str(snr)]), flush=True)
        if align_exhaustive is not None and snr in exhaustive_snrs:
            out["exhaustive"][str(snr)] = _run(align_exhaustive, s, per_class=exhaustive_per_class)
            out["exhaustive"][str(snr)]["settings"] = "align_exhaustive defaults (30 deg grid, 2 refinements)"
            print(f"SNR {snr:g} exhaustive: " + json.dumps(out["exhaustive"][str(snr)]), flush=True)
            out["snr"][str(snr)]["speedup_vs_exhaustive"] = (
                out["snr"][str(snr)]["pairs_per_second"] / out["exhaustive"][str(snr)]["pairs_per_second"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=25.0, help="training time budget (CPU minutes, wall clock)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--bench", type=Path, default=BENCH)
    ap.add_argument("--evaluate-only", action="store_true")
    ap.add_argument("--checkpoint", type=Path, default=None, help="save the model here after every round")
    ap.add_argument("--eval-per-class", type=int, default=15)
    ap.add_argument("--supervised", action="store_true",
                    help="pre-train with the simulator's true rotations (winner-takes-all distance to the truth "
                    "added to the correlation loss); the default is the paper's unsupervised training")
    ap.add_argument("--head", choices=("hypotheses", "grid"), default="hypotheses",
                    help="output head: K hypotheses (the shipped default so far) or a classification over a "
                    f"rotation grid ({GRID_CONFIG})")
    ap.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 8; 42 for --head grid)")
    ap.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda)")
    ap.add_argument("--init", type=Path, default=None,
                    help="continue from these weights (e.g. the shipped default) with the last curriculum stage; "
                    "use another --seed than the first run so that the rounds' data are new")
    ap.add_argument("--corpus", choices=("packaged", "broad"), default="packaged",
                    help="packaged: the packaged structures only; broad: plus new procedural training shapes "
                    "(seeds < 10000) every round, voxel sizes 6-12 A, varied wedges and CTF (issue 18)")
    ap.add_argument("--curve-minutes", type=float, default=0.0,
                    help="evaluate on held-out procedural structures (seeds 10100-10109) every N minutes")
    ap.add_argument("--curve-out", type=Path, default=None, help="write the learning curve (JSON) here")
    ap.add_argument("--n-per-class", type=int, default=None, help="particles per structure per round "
                    "(default 24; 4 with --corpus broad)")
    ap.add_argument("--rotate-references", action="store_true",
                    help="turn each pair's reference by a random rotation (the target becomes A G^T), so that the "
                    "network must compare particle and reference instead of recognising the structure")
    ap.add_argument("--centre-moving", action="store_true",
                    help="a new network re-centres each particle on the reference's spherical average before "
                    "it sees it (GumNetConfig.centre_moving): with shifted particles the grid head otherwise "
                    "stays at chance (benchmarks/diag_reference_identity.py --world shift=2)")
    ap.add_argument("--input-crop", choices=("fourier", "centre"), default="fourier",
                    help="a new grid network's input: the 32³ box Fourier-cropped to 16³ (fourier, the shipped "
                    "weights') or its central 16³ voxels (centre: the particle at its own voxel size, twice as many "
                    "voxels across; use with --centre-moving; benchmarks/diag_reference_identity.py --world voxel=24)")
    ap.add_argument("--clean-share", type=float, default=None,
                    help="--head grid: the share of the budget spent at high SNR (100/10) before the mixed stage "
                    "(default 0.4); the toy's 636-class head needed about 2000 clean steps before it rose")
    ap.add_argument("--coarse-grid-step", type=float, default=None,
                    help="--head grid: start with this grid (e.g. 60: 78 rotations) and refine it to the 30° grid "
                    "after --coarse-minutes (gumnet.refine_grid_head): the toy's curriculum")
    ap.add_argument("--coarse-minutes", type=float, default=0.0, help="minutes with the --coarse-grid-step head")
    ap.add_argument("--resample", action="store_true",
                    help="train on each round's particles resampled to the --init model's working voxel size, as "
                         "alignment gives them to the network (without it they are given as simulated)")
    args = ap.parse_args(argv)
    if args.evaluate_only:
        model = load_model(args.out)
        train_log = None
    else:
        bs = args.batch_size or (42 if args.head == "grid" else 8)
        model, train_log = train(args.minutes, seed=args.seed, checkpoint=args.checkpoint, supervised=args.supervised,
                                 head=args.head, batch_size=bs, init=args.init, device=args.device,
                                 corpus=args.corpus, curve_minutes=args.curve_minutes, curve_path=args.curve_out,
                                 n_per_class=args.n_per_class or (4 if args.corpus == "broad" else 24),
                                 rotate_references=args.rotate_references, centre_moving=args.centre_moving,
                                 input_crop=args.input_crop, clean_share=args.clean_share,
                                 coarse_grid_step=args.coarse_grid_step, coarse_minutes=args.coarse_minutes,
                                 resample=args.resample)
        model = model.cpu()
        meta = {"training": {k: v for k, v in train_log.items() if k != "losses"},
                "data": {"simulator": "simulate_subtomograms", "structures": STRUCTURES, "box": 32,
                         "voxel_size_angstrom": 12.0, "tilt_range_deg": [-60, 60], "defocus_um": 5.0,
                         "max_shift_voxels": 3.0},
                "unsupervised": not args.supervised, "torch": torch.__version__,
                "command": f"python scripts/train_gumnet_default.py --minutes {args.minutes:g} --seed {args.seed}"
                + (" --supervised" if args.supervised else "") + f" --head {args.head} --batch-size {bs}"
                + f" --device {args.device}" + (f" --init {args.init.name}" if args.init else "")
                + f" --corpus {args.corpus}" + (" --rotate-references" if args.rotate_references else "")
                + (" --centre-moving" if args.centre_moving else "")
                + (f" --input-crop {args.input_crop}" if args.input_crop != "fourier" else "")
                + (f" --clean-share {args.clean_share:g}" if args.clean_share is not None else "")
                + (f" --coarse-grid-step {args.coarse_grid_step:g} --coarse-minutes {args.coarse_minutes:g}"
                   if args.coarse_grid_step is not None else "")
                + (" --resample" if args.resample else "")}
        if args.corpus == "broad":
            meta["data"].update({"procedural_training_seeds": f"{BROAD_PROCEDURAL_PER_ROUND} new per round from "
                                 f"[{TRAINING_SEEDS.start}, {TRAINING_SEEDS.stop})",
                                 "voxel_size_angstrom": list(BROAD_VOXELS), "tilt_range_deg": BROAD_TILTS,
                                 "defocus_um": BROAD_DEFOCUS,
                                 "held_out_for_evaluation": f"procedural seeds >= {HELD_OUT_SEEDS.start}"})
        if args.init is not None:  # the provenance of the weights this run started from
            prev = args.init.with_suffix(".json")
            meta["init"] = json.loads(prev.read_text()) if prev.is_file() else {"file": str(args.init)}
        save_model(model, args.out, metadata=meta, overwrite=True)
        loss_curve = [v for _, v in train_log["losses"]]
        prov = dict(meta, final_loss_last50=float(np.mean(loss_curve[-50:])), steps=len(loss_curve),
                    weights_file=args.out.name, size_bytes=os.path.getsize(args.out))
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(prov, indent=1) + "\n")
        os.replace(tmp, args.out.with_suffix(".json"))
        print(f"loss per step: first 20 {np.mean(loss_curve[:20]):.4f}, last 20 {np.mean(loss_curve[-20:]):.4f}")
    res = evaluate(model, n_per_class=args.eval_per_class)
    res["weights"] = str(args.out.relative_to(ROOT)) if args.out.is_relative_to(ROOT) else str(args.out)
    res["command"] = "python scripts/train_gumnet_default.py --evaluate-only"
    res["torch_threads"] = torch.get_num_threads()
    if train_log is not None:
        res["training_seconds"] = train_log["seconds"]
    args.bench.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.bench.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, args.bench)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
