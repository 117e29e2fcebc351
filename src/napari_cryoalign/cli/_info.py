"""``cryoalign info FILE``: header, shape, voxel size, STAR blocks/columns/rows, tilt angles."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("info", help="describe an MRC, STAR or .tlt file", description=__doc__)
    p.add_argument("files", nargs="+", metavar="FILE", help=".mrc/.rec/.map/.st/.mrcs/.ali (optionally .gz/.bz2), .star, .tlt")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.set_defaults(func=run)


def describe(path: str | Path) -> dict:
    """A dict describing the file (what `cryoalign info` prints)."""
    from ..io._kinds import kind_of_file

    path = Path(path)
    kind = kind_of_file(path)
    if kind == "mrc":
        from ..io import mrc_info

        return {"file": str(path), "kind": "mrc", **mrc_info(path)}
    if kind == "star":
        from ..io import read_star

        blocks = read_star(path)
        out = {"file": str(path), "kind": "star", "blocks": {}}
        for name, block in blocks.items():
            if hasattr(block, "columns"):
                out["blocks"][name] = {"rows": int(len(block)), "columns": [str(c) for c in block.columns]}
            else:
                out["blocks"][name] = {"values": {str(k): _plain(v) for k, v in dict(block).items()}}
        return out
    if kind == "tlt":
        from ..io import read_tlt

        ang = read_tlt(path)
        return {
            "file": str(path),
            "kind": "tlt",
            "n_tilts": int(len(ang)),
            "min_deg": float(ang.min()),
            "max_deg": float(ang.max()),
            "angles_deg": [float(a) for a in ang],
        }
    raise AssertionError(kind)  # kind_of_file raises for unknown kinds


def _plain(v):
    try:
        return v.item()
    except AttributeError:
        return v


def _print_text(info: dict) -> None:
    print(f"{info['file']}  ({info['kind']})")
    if info["kind"] == "star":
        for name, block in info["blocks"].items():
            label = name or "(unnamed)"
            if "rows" in block:
                print(f"  data_{label}: {block['rows']} rows")
                for col in block["columns"]:
                    print(f"    {col}")
            else:
                print(f"  data_{label}:")
                for k, v in block["values"].items():
                    print(f"    {k} = {v}")
        return
    for key, value in info.items():
        if key in ("file", "kind", "angles_deg"):
            continue
        print(f"  {key}: {value}")


def run(args) -> int:
    infos = [describe(f) for f in args.files]
    if args.json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=2, default=str))
    else:
        for info in infos:
            _print_text(info)
    return 0
