"""Speed and memory of the tomogram simulator and of the projector / WBP.

Measures (on this machine, torch threads = all cores):
* the full simulation of a 512 x 512 x 128 tomogram (10 Å voxels) with 200 particles of four
  packaged structures, 2 vesicles and 5 gold beads, 41 tilts, CTF, Poisson noise, WBP
  (goal: <= 120 s on 2 CPU cores, bounded memory);
* the projector and the WBP alone on the same volume size, against a baseline measured in
  the same run: a dense-grid real-space projector (rotate the slab about y with trilinear
  ``grid_sample`` into a box tall enough to hold it, then sum along z), the straightforward
  alternative.

Writes docs/benchmarks/simulate_tomogram.json.
Run:  .venv/bin/python benchmarks/bench_simulate_tomogram.py
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_cryoalign.backend.simulate.tomogram import simulate_tomogram
from napari_cryoalign.backend.tomography import project_tilt_series, tilt_angles, weighted_back_projection

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "simulate_tomogram.json"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _grid_sample_projector(vol: torch.Tensor, angles_deg: np.ndarray) -> torch.Tensor:
    """Baseline: rotate about y into a tall enough box with trilinear sampling, sum along z."""
    nz, ny, nx = vol.shape
    out = torch.zeros((len(angles_deg), ny, nx))
    for i, a in enumerate(np.radians(angles_deg)):
        depth = int(math.ceil(nz / math.cos(a) + nx * abs(math.tan(a)))) + 2
        depth = min(depth, 4 * nx)
        s = torch.arange(depth, dtype=torch.float32) - depth // 2
        u = torch.arange(nx, dtype=torch.float32) - nx // 2
        y = torch.arange(ny, dtype=torch.float32)
        # sample points (x, z) = u (cos, sin) + s (-sin, cos)
        x = u[None, :] * math.cos(a) - s[:, None] * math.sin(a)
        z = u[None, :] * math.sin(a) + s[:, None] * math.cos(a)
        gx = (2 * (x + nx // 2) / (nx - 1) - 1)[:, None, :].expand(depth, ny, nx)
        gz = (2 * (z + nz // 2) / (nz - 1) - 1)[:, None, :].expand(depth, ny, nx)
        gy = (2 * y / (ny - 1) - 1)[None, :, None].expand(depth, ny, nx)
        grid = torch.stack([gx, gy, gz], -1)[None]
        smp = F.grid_sample(vol[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[i] = smp[0, 0].sum(0)
    return out


def main() -> None:
    torch.manual_seed(0)
    res: dict = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "platform": platform.platform()},
        "command": ".venv/bin/python benchmarks/bench_simulate_tomogram.py",
    }
    # ---- full simulation -------------------------------------------------------------------
    simulate_tomogram(shape=(48, 64, 64), structures=("ruvab",), n_particles=2, seed=0)  # warm-up (imports, caches)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    sim = simulate_tomogram(shape=(128, 512, 512), voxel_size_angstrom=10.0,
                            structures=("ribosome", "cct", "ruvab", "mtor"), n_particles=200, n_vesicles=2,
                            n_gold=5, dose=100.0, seed=0)
    t_sim = time.perf_counter() - t0
    res["simulate_512x512x128_200_particles"] = {
        "seconds": round(t_sim, 2),
        "goal_seconds": 120.0,
        "n_placed": sim.params["n_placed"],
        "n_tilts": len(sim.tilt_angles_deg),
        "peak_rss_mb": round(_rss_mb(), 1),
        "rss_before_mb": round(rss0, 1),
        "note": "peak RSS of the whole process (includes the 134 MB potential and tomogram kept in the result)",
    }
    print("simulation:", res["simulate_512x512x128_200_particles"])
    del sim

    # ---- projector / WBP vs baseline ---------------------------------------------------------
    vol = torch.randn(128, 512, 512)
    ang = tilt_angles(-60, 60, 3)
    t0 = time.perf_counter()
    proj = project_tilt_series(vol, ang)
    t_proj = time.perf_counter() - t0
    t0 = time.perf_counter()
    weighted_back_projection(proj, ang, thickness=128)
    t_wbp = time.perf_counter() - t0
    sub = ang[::8]  # the baseline is slow: time 6 tilts and scale
    t0 = time.perf_counter()
    base = _grid_sample_projector(vol, sub)
    t_base = (time.perf_counter() - t0) * len(ang) / len(sub)
    ours = project_tilt_series(vol, sub)
    # agreement of the two projectors on a smooth volume (random noise differs by interpolation)
    smooth = torch.nn.functional.avg_pool3d(vol[None, None], 5, stride=1, padding=2)[0, 0]
    a_ = project_tilt_series(smooth, sub)
    b_ = _grid_sample_projector(smooth, sub)
    m = slice(64, 448)
    corr = float(np.corrcoef(a_[..., m].numpy().ravel(), b_[..., m].numpy().ravel())[0, 1])
    res["projector_128x512x512_41_tilts"] = {
        "sparse_projector_seconds": round(t_proj, 2),
        "wbp_seconds": round(t_wbp, 2),
        "baseline_grid_sample_projector_seconds_estimated": round(t_base, 2),
        "speedup_vs_baseline": round(t_base / t_proj, 1),
        "correlation_with_baseline_smooth_volume_central_region": round(corr, 4),
        "baseline": "per-tilt trilinear grid_sample of the rotated slab (box tall enough for the tilted slab), "
                    "sum along the beam; timed on 6 of 41 tilts and scaled",
    }
    del base, ours
    print("projector:", res["projector_128x512x512_41_tilts"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, OUT)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
