"""How well the pose-free centring finds the particles' shifts on the full-size training data (issue 18).

``GumNetConfig(centre_moving=True)`` re-centres each particle on the peak of its cross-correlation with
the reference's spherical average (:func:`~napari_cryoalign.backend.align.gumnet.rotational_average_shift`)
before the network sees it. On the toy of ``diag_reference_identity.py --world shift=2,centre`` (clean
shapes, no CTF) that restored learning. The full-size data add the CTF, the missing wedge, noise and
other voxel sizes; this script measures, condition by condition, how far the centring's whole-voxel shift
lies from the simulator's true one (the origin, ``simulate_subtomograms``), for procedural shapes held
out from training (the learning curve's seeds) at 32³ with shifts up to ±3 voxels, as the training
script makes them.

Usage::

    .venv/bin/python benchmarks/diag_centring.py --out docs/benchmarks/align_centring.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_cryoalign.backend.align.gumnet import GumNetConfig, rotational_average_shift  # noqa: E402
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms  # noqa: E402

SEEDS = tuple(range(10100, 10110))  # the learning curve's held-out procedural shapes
MAX_SHIFT = int(np.ceil(GumNetConfig().max_shift))  # what the network's centring searches
#: (label, SNR, voxel size Å, defocus µm or None, tilt range or None)
CONDITIONS = (
    ("clean: no CTF, no wedge, SNR 100", 100.0, 12.0, None, None),
    ("wedge ±60°, no CTF, SNR 100", 100.0, 12.0, None, (-60.0, 60.0)),
    ("CTF 5 µm + wedge, SNR 100", 100.0, 12.0, 5.0, (-60.0, 60.0)),
    ("CTF 5 µm + wedge, SNR 100, 8 Å", 100.0, 8.0, 5.0, (-60.0, 60.0)),
    ("CTF 5 µm + wedge, SNR 1", 1.0, 12.0, 5.0, (-60.0, 60.0)),
    ("CTF 5 µm + wedge, SNR 0.1", 0.1, 12.0, 5.0, (-60.0, 60.0)),
    ("no CTF, wedge, SNR 0.1", 0.1, 12.0, None, (-60.0, 60.0)),
)


def centring_errors(snr: float, voxel: float, defocus, tilt, *, per_shape: int, max_shift: int = MAX_SHIFT) -> dict:
    """Whole-voxel shift found against the true displacement: the error's distribution (voxels)."""
    s = simulate_subtomograms([f"procedural:{x}" for x in SEEDS], n_per_class=per_shape, box=32,
                              voxel_size_angstrom=voxel, snr=snr, seed=4242, defocus_um=defocus,
                              max_shift_voxels=3.0, tilt_range_deg=tilt)
    refs = torch.from_numpy(np.asarray(s.references, np.float32)[s.classes - 1])
    found = rotational_average_shift(torch.from_numpy(np.asarray(s.volumes, np.float32)), refs, max_shift).numpy()
    true_xyz = -np.asarray(s.origins_angstrom, np.float64) / voxel  # the particle's centre lies at N//2 + this
    err = np.linalg.norm(found[:, ::-1] - true_xyz, axis=1)
    return {"n": int(len(err)), "error_mean_voxels": float(err.mean()), "error_median_voxels": float(np.median(err)),
            "within_1_voxel": float(np.mean(err <= 1.0)), "beyond_2_voxels": float(np.mean(err > 2.0)),
            "true_shift_mean_voxels": float(np.linalg.norm(true_xyz, axis=1).mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-shape", type=int, default=8, help="particles per shape and condition (default 8)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"command": "python benchmarks/diag_centring.py " + " ".join(sys.argv[1:]), "shapes": list(SEEDS),
           "box": 32, "max_shift_searched": MAX_SHIFT, "true_shifts": "uniform in ±3 voxels per axis", "conditions": {}}
    t0 = time.perf_counter()
    for label, snr, voxel, defocus, tilt in CONDITIONS:
        r = centring_errors(snr, voxel, defocus, tilt, per_shape=args.per_shape)
        out["conditions"][label] = r
        print(f"{label:36s} error mean {r['error_mean_voxels']:.2f} median {r['error_median_voxels']:.2f} voxels; "
              f"within 1 voxel {100 * r['within_1_voxel']:.0f} %, beyond 2 {100 * r['beyond_2_voxels']:.0f} % "
              f"(true shift {r['true_shift_mean_voxels']:.2f})", flush=True)
    out["seconds"] = time.perf_counter() - t0
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
