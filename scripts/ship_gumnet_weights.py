"""Make a trained Gum-Net model file the shipped default weights (``napari_cryoalign/weights``).

The weights are copied unchanged. The architecture gains the working voxel size (``GumNetConfig.voxel_size``:
the learned aligner resamples particles to it, ``learned.align_learned(voxel_size=...)``), and the metadata
records where the file came from. Writes ``gumnet_default.pt`` and its provenance ``gumnet_default.json``
atomically; the hand-written ``gumnet_default.md`` is not touched.

    .venv/bin/python scripts/ship_gumnet_weights.py OUT.pt --voxel-size 12 \\
        --provenance '{"init": {"command": "..."}}'
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_cryoalign.backend.align.gumnet import GumNet  # noqa: E402
from napari_cryoalign.backend.align.learned import DEFAULT_WEIGHTS, load_model, save_model  # noqa: E402
from napari_cryoalign.io import write_json  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a model file written by scripts/train_gumnet_default.py (--out)")
    ap.add_argument("--voxel-size", type=float, required=True,
                    help="the working voxel size (Å) to record: particles are resampled to it before the network")
    ap.add_argument("--provenance", default=None, help="JSON object merged into the metadata (what the file's own "
                    "metadata lacks, e.g. the run its training started from)")
    ap.add_argument("--dest", type=Path, default=ROOT / "src" / "napari_cryoalign" / "weights")
    args = ap.parse_args(argv)
    model = load_model(args.source)
    shipped = GumNet(replace(model.config, voxel_size=args.voxel_size))
    shipped.load_state_dict(model.state_dict())
    meta = dict(model.metadata)
    if args.provenance:
        meta.update(json.loads(args.provenance))
    meta["shipped"] = {"source": args.source.name, "date": datetime.date.today().isoformat(),
                       "working_voxel_size_angstrom": args.voxel_size,
                       "command": "python scripts/ship_gumnet_weights.py " + " ".join(argv or sys.argv[1:])}
    out = save_model(shipped.eval(), args.dest / DEFAULT_WEIGHTS, metadata=meta, overwrite=True)
    prov = dict(meta, weights_file=out.name, size_bytes=os.path.getsize(out))
    side = write_json(out.with_suffix(".json"), prov, overwrite=True)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB) and {side.name}; architecture {shipped.config}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
