"""Why the learned aligner memorised its training structures (issue 18): the fixed reference.

The shipped Gum-Net weights were trained on pairs (particle, the reference map of its structure)
with the reference always in its canonical pose. A structure's reference is then the same
in every pair, so the network can read the pose off the particle alone, by recognising the
structure, and never has to compare the two inputs. This toy measures that directly, with
the package's own network and training job (``GumNet``, ``train_job``, supervised grid head):

* 16³ boxes at 12 Å, noise-free, no wedge; particles are turned by rotations of the model's
  24-rotation grid (``rotation_grid(90)``), so a guess among them is right 1/24 = 4.2 % of the
  time (a uniformly random rotation is within 45° 2.5 % of the time);
* ``--structures`` procedural shapes with **training** seeds ``0..S-1`` are trained on for
  ``--steps`` steps (batch 32, Adam ``--lr``), once with **fixed** references (canonical pose,
  the shipped weights' scheme) and once with **turned** references (each pair's reference
  turned by its own random grid rotation ``G``, target ``A G^T``, in general between grid
  rotations: what
  ``scripts/train_gumnet_default.py --rotate-references`` does);
* judged on 96 pairs of the training shapes and 96 pairs of six **held-out** shapes (seeds
  ``10600..10605``, never trained on), each with the reference in its canonical pose (what a
  user gives) and turned; the score is the fraction within 45° (= the right grid rotation).

Run (about 5 minutes per mode on one idle thread)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diag_reference_identity.py [--steps 1200] [--structures 20]

``--refine-at N --refine-to 30`` is the curriculum: the ``--grid-step`` head (e.g. 60°) for ``N`` steps,
then the finer head (:func:`~napari_cryoalign.backend.align.gumnet.refine_grid_head`) for the rest.

Writes ``docs/benchmarks/learned_reference_identity.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from napari_cryoalign.backend.align.gumnet import (
    GumNet,
    GumNetConfig,
    centre_on_rotational_average,
    refine_grid_head,
)
from napari_cryoalign.backend.align.learned import align_learned
from napari_cryoalign.backend.align.learned_train import train_job, turned_references
from napari_cryoalign.backend.geometry import (
    geodesic_angle_deg,
    random_rotations,
    shift_volume,
    transform_reference_to_particle,
)
from napari_cryoalign.backend.jobs import run_job
from napari_cryoalign.backend.simulate.procedural import procedural_structure
from napari_cryoalign.backend.wedge import particle_fourier_mask
from napari_cryoalign.io import write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "learned_reference_identity.json"
HELD_OUT = tuple(range(10600, 10606))


def toy_model(seed: int = 0, channels: int = 8, grid_step_deg: float = 90.0) -> GumNet:
    """The small grid-head Gum-Net of this toy: 16³ input, the rotations of ``rotation_grid(grid_step_deg)``
    (24 at 90°, 78 at 60°, 192 at 45°, 636 at 30°: the full-size head)."""
    torch.manual_seed(seed)
    c = channels
    return GumNet(GumNetConfig(box=16, head="grid", grid_step_deg=grid_step_deg,
                               channels=(c, 2 * c, 4 * c, 4 * c, 8 * c), hidden=32 * c, input_box=16))


def toy_maps(seeds, voxel_size: float = 12.0) -> np.ndarray:
    """Noise-free procedural maps ``(len(seeds), 16, 16, 16)`` at ``voxel_size`` Å (12 by default; at 24 Å the
    shapes span as many voxels as they do in the full-size network's input, 32³ at 12 Å cropped to 16³)."""
    return np.stack([np.asarray(procedural_structure(int(s), voxel_size_angstrom=float(voxel_size), box=16)[0],
                                np.float32) for s in seeds])


#: the conditions of the full-size training data that ``--world`` adds to the toy, one at a time
#: (``voxel=24``: the maps at 24 Å per voxel, half as many voxels across as at the default 12 Å)
WORLD_KEYS = ("snr", "wedge", "shift", "continuous", "centre", "voxel")


def parse_world(text: str) -> dict:
    """``"snr=1,wedge,shift=2,continuous"`` -> ``{"snr": 1.0, "wedge": 60.0, "shift": 2.0, "continuous": 1.0}``
    (``wedge`` alone: ±60°; ``""``: the clean toy). ``centre`` is no condition of the data but a remedy:
    each particle is re-centred before the network sees it
    (:func:`~napari_cryoalign.backend.align.gumnet.centre_on_rotational_average`)."""
    world = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key not in WORLD_KEYS:
            raise SystemExit(f"--world: unknown condition {key!r} (known: {', '.join(WORLD_KEYS)})")
        world[key] = float(value) if value else {"wedge": 60.0, "voxel": 24.0}.get(key, 1.0)
    return world


def _degrade(vols: np.ndarray, world: dict, rng: np.random.Generator) -> np.ndarray:
    """The particles as the full-size data has them: shifted by up to ``shift`` voxels (each axis),
    observed within ±``wedge``° (tilt about y: the Fourier wedge zeroed), with white noise at ``snr``
    (signal variance over noise variance, per particle, measured before the wedge)."""
    out = np.asarray(vols, np.float32).copy()
    n = len(out)
    if world.get("shift"):
        s = float(world["shift"])
        out = np.asarray(shift_volume(out, rng.uniform(-s, s, (n, 3)).astype(np.float32)), np.float32)
    if world.get("wedge"):
        w = float(world["wedge"])
        mask = np.fft.ifftshift(particle_fourier_mask(out.shape[-1], tilt_range_deg=(-w, w)))
        out = np.real(np.fft.ifftn(np.fft.fftn(out, axes=(1, 2, 3)) * mask, axes=(1, 2, 3))).astype(np.float32)
    if world.get("snr"):
        var = np.asarray(vols, np.float64).reshape(n, -1).var(1)
        noise = rng.standard_normal(out.shape).astype(np.float32)
        out = out + noise * np.sqrt(var / float(world["snr"])).astype(np.float32)[:, None, None, None]
    return out


def toy_pairs(maps: np.ndarray, grid: np.ndarray, n: int, rng: np.random.Generator, *, turned: bool,
              world: dict | None = None):
    """``n`` pairs: particle = map turned by ``A``; reference = map turned by ``G`` (identity unless
    ``turned``); returns particles, references (n, 16, 16, 16) and the targets ``A G^T`` (n, 3, 3).
    ``world`` (:func:`parse_world`): ``continuous`` draws ``A`` and ``G`` uniformly instead of from the
    grid; the other conditions degrade the particles (:func:`_degrade`), never the reference (a map)."""
    world = world or {}
    which = rng.integers(0, len(maps), n)
    if world.get("continuous"):
        a = random_rotations(n, seed=rng)
        g = random_rotations(n, seed=rng) if turned else np.broadcast_to(np.eye(3), (n, 3, 3))
    else:
        a = grid[rng.integers(0, len(grid), n)]
        g = grid[rng.integers(0, len(grid), n)] if turned else np.broadcast_to(np.eye(3), (n, 3, 3))
    vols = transform_reference_to_particle(maps[which], a.astype(np.float32))
    refs, targets = turned_references(maps[which], a, g)
    vols = _degrade(np.asarray(vols, np.float32), world, rng)
    if world.get("centre"):  # the network's own centring (GumNetConfig.centre_moving), on the toy's pairs
        vols = centre_on_rotational_average(torch.from_numpy(vols), torch.from_numpy(np.asarray(refs, np.float32)),
                                            int(np.ceil(world.get("shift", 0.0))) + 1).numpy()
    return vols, refs, targets


def toy_train(model: GumNet, maps: np.ndarray, *, steps: int, turned: bool, lr: float = 1e-3, seed: int = 0,
              batch_size: int = 32, optimizer=None, rng=None, world: dict | None = None) -> dict:
    """Supervised grid-head training on ``maps`` (a fresh draw of pairs every 10 batches); pass the same
    ``optimizer`` and ``rng`` to continue a run in chunks."""
    grid = np.asarray(model.grid, dtype=np.float64)
    rng = np.random.default_rng(seed) if rng is None else rng
    opt = torch.optim.Adam(model.parameters(), lr=lr) if optimizer is None else optimizer
    done, losses, t0 = 0, [], time.perf_counter()
    while done < steps:
        v, r, t = toy_pairs(maps, grid, batch_size * min(10, steps - done), rng, turned=turned,
                             world=world)
        res = run_job(train_job(v, references=r, model=model, epochs=1, batch_size=batch_size, lr=lr, loss_box=None,
                                true_rotations=t, correlation_weight=0.0, optimizer=opt, seed=seed + done),
                      progress=False)
        done += res.steps
        losses.extend(np.asarray(res.losses, dtype=float).tolist())
    return {"steps": done, "seconds": time.perf_counter() - t0, "loss_first50": float(np.mean(losses[:50])),
            "loss_last50": float(np.mean(losses[-50:]))}


def toy_judge(model: GumNet, maps: np.ndarray, *, n: int = 96, turned: bool, seed: int = 1,
              world: dict | None = None) -> dict:
    """Fraction of ``n`` pairs within 45° (the right grid rotation) and the median error."""
    grid = np.asarray(model.grid, dtype=np.float64)
    v, r, t = toy_pairs(maps, grid, n, np.random.default_rng(seed), turned=turned, world=world)
    est = np.concatenate([align_learned(v[i:i + 1], r[i], model=model).rotations for i in range(n)])
    g = geodesic_angle_deg(est, t)
    return {"n": n, "within_45deg": float((g < 45).mean()), "median_deg": float(np.median(g))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--structures", type=int, default=20, help="training shapes (procedural seeds 0..S-1)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--grid-step", type=float, default=90.0, help="the head's rotation grid (degrees)")
    ap.add_argument("--modes", default="fixed,turned")
    ap.add_argument("--curve-every", type=int, default=0,
                    help="also judge the held-out shapes every N steps (the plateau's length)")
    ap.add_argument("--world", default="",
                    help="conditions of the full-size data added to training and judging pairs, e.g. "
                         "'snr=1', 'wedge' (±60°), 'shift=2' (voxels), 'continuous' (uniform rotations), "
                         "'voxel=24' (the maps at 24 Å per voxel)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--refine-at", type=int, default=0,
                    help="the curriculum: after this many steps with --grid-step, refine the head to --refine-to "
                         "(gumnet.refine_grid_head) and go on with a fresh optimizer (0: no curriculum)")
    ap.add_argument("--refine-to", type=float, default=30.0, help="the finer grid step of --refine-at (degrees)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    world = parse_world(args.world)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    voxel = world.get("voxel", 12.0)
    train_maps, test_maps = toy_maps(range(args.structures), voxel), toy_maps(HELD_OUT, voxel)
    n_grid = len(toy_model(grid_step_deg=args.grid_step).grid)
    doc = {"command": f"OMP_NUM_THREADS=1 python benchmarks/diag_reference_identity.py --steps {args.steps} "
                      f"--structures {args.structures} --lr {args.lr:g} --grid-step {args.grid_step:g} "
                      f"--modes {args.modes} --curve-every {args.curve_every} --world '{args.world}' "
                      f"--batch-size {args.batch_size}"
                      + (f" --refine-at {args.refine_at} --refine-to {args.refine_to:g}" if args.refine_at else ""),
           "world": world,
           "grid_rotations": n_grid, "chance_within_45deg": max(1 / n_grid, 0.025),
           "training_seeds": f"procedural 0..{args.structures - 1}",
           "held_out_seeds": list(HELD_OUT), "torch_threads": torch.get_num_threads(), "modes": {}}
    for mode in args.modes.split(","):
        model = toy_model(grid_step_deg=args.grid_step)
        turned = mode == "turned"
        chunk = args.curve_every if args.curve_every > 0 else args.steps
        if args.refine_at:
            chunk = math.gcd(chunk, args.refine_at)
        opt, rng = torch.optim.Adam(model.parameters(), lr=args.lr), np.random.default_rng(0)
        done, curve, t0, first = 0, [], 0.0, float("nan")
        while done < args.steps:
            if 0 < args.refine_at <= done and model.config.grid_step_deg != args.refine_to:
                model = refine_grid_head(model, args.refine_to)
                opt = torch.optim.Adam(model.parameters(), lr=args.lr)
                print(mode, f"refined the head to {len(model.grid)} rotations at {done} steps", flush=True)
            log = toy_train(model, train_maps, steps=min(chunk, args.steps - done), turned=turned, lr=args.lr,
                            seed=done, optimizer=opt, rng=rng, world=world, batch_size=args.batch_size)
            if done == 0:
                first = log["loss_first50"]
            done, t0 = done + log["steps"], t0 + log["seconds"]
            if args.curve_every > 0 and (done % args.curve_every == 0 or done >= args.steps):
                point = {"steps": done, "seconds": t0, "loss_last50": log["loss_last50"],
                         "grid_rotations": len(model.grid),
                         **toy_judge(model, test_maps, turned=False, world=world)}
                curve.append(point)
                print(mode, json.dumps(point), flush=True)
        log.update(steps=done, seconds=t0, loss_first50=first)
        row = {"training": log, "held_out_curve": curve}
        for label, maps in (("training_shapes", train_maps), ("held_out_shapes", test_maps)):
            for ref in ("canonical", "turned"):
                row[f"{label}_{ref}_reference"] = toy_judge(model, maps, turned=ref == "turned", world=world)
        doc["modes"][mode] = row
        print(mode, json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, doc, overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
