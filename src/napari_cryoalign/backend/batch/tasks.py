"""The per-tomogram tasks of ``cryoalign batch`` and the merging of their outputs.

A task is ``task(source, folder, **options) -> summary``: it runs on a Dask worker, opens its
tomogram there (:func:`~.sources.load_tomogram`), writes the same files the single command writes
into ``folder`` (atomically, replacing a half-finished earlier attempt) and returns a JSON-able
summary that includes the tomogram's ``shape`` (z, y, x) and ``voxel_size`` (Å), which the merged
``tomograms.star`` needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .engine import BatchReport
from .sources import BatchInputs, TomogramSource, load_tomogram

__all__ = ["pick_predict_task", "merge_picks", "write_merged_tomograms", "PICKS_FILE", "copick_session_default"]

#: each tomogram's picks, ``OUT/<rlnTomoName>/picks.star``
PICKS_FILE = "picks.star"
#: the copick session id of picks written back, unless told otherwise
copick_session_default = "0"


def pick_predict_task(source: TomogramSource, folder: str, *, model: str, threshold: float | None = None,
                      min_distance_angstrom: float | None = None, heatmap: bool = False, device: str = "cpu",
                      copick_object: str | None = None, copick_session: str = copick_session_default,
                      model_digest: str | None = None) -> dict:
    """``cryoalign pick predict`` on one tomogram: ``folder/picks.star`` (+ ``heatmap.mrc``), and for a
    copick run the picks written back as (``copick_object``, user ``cryoalign``, ``copick_session``).
    ``model_digest`` only marks the model file's content in the batch's fingerprint."""
    from ...io import write_mrc, write_particles
    from ..jobs import run_job
    from ..picking import heatmap_to_input_grid, load_picker, pick_job

    picker = load_picker(model, device=device)
    data, vs, shape = load_tomogram(source)
    thr = picker.default_threshold if threshold is None else float(threshold)
    picks, heat = run_job(pick_job(picker, data, threshold=thr, min_distance_angstrom=min_distance_angstrom,
                                   voxel_size=vs, path=source.describe(), device=device), progress=False)
    out = Path(folder)
    write_particles(out / PICKS_FILE, coordinates_xyz=picks.coordinates_xyz, scores=picks.scores,
                    tomo_name=source.name, tomogram_shape=shape, voxel_size=vs, sort_by_score=True, overwrite=True)
    if heatmap:
        write_mrc(out / "heatmap.mrc", heatmap_to_input_grid(heat, shape), voxel_size=vs, overwrite=True)
    summary = {"picks": int(len(picks)), "threshold": thr, "shape": list(shape), "voxel_size": vs,
               "tomogram": source.path if source.kind == "mrc" else None}
    if source.kind == "copick" and copick_object:
        from ...io.copick_project import COPICK_USER, write_copick_picks

        write_copick_picks(source.copick_ref(), picks.coordinates_xyz, object_name=copick_object,
                           session_id=copick_session, scores=picks.scores)
        summary["copick"] = {"object": copick_object, "user_id": COPICK_USER, "session_id": copick_session}
    return summary


def write_merged_tomograms(report: BatchReport, inputs: BatchInputs) -> Path | None:
    """``OUT/tomograms.star`` (RELION 5, one row per finished tomogram: name, size, voxel size and,
    for files, ``rlnTomoReconstructedTomogram`` relative to OUT). None when nothing finished."""
    from ...io.relion5 import write_tomograms_star

    rows = {}
    for o in report.finished():
        s = o.summary
        if "shape" not in s or "voxel_size" not in s:
            continue
        spec = {"tomogram_shape": tuple(int(v) for v in s["shape"]), "voxel_size": float(s["voxel_size"])}
        if s.get("tomogram"):
            spec["tomogram_path"] = s["tomogram"]
        rows[o.name] = spec
    if not rows:
        return None
    if len({"tomogram_path" in r for r in rows.values()}) > 1:  # a mixed batch: no file column
        for r in rows.values():
            r.pop("tomogram_path", None)
    return write_tomograms_star(report.out / "tomograms.star", rows, overwrite=True)


def merge_star_tables(paths: list[Path], out: Path, *, block: str = "particles") -> Path | None:
    """Concatenate the ``block`` tables of per-tomogram STAR files into ``out``: one optics group per
    distinct voxel size, a general block without per-tomogram sizes (they are in tomograms.star)."""
    from ...io import read_star, write_star

    tables, pixel = [], []
    for p in paths:
        blocks = read_star(p)
        t = blocks.get(block)
        if t is None or not len(t):
            continue
        optics = blocks.get("optics")
        px = float(optics["rlnImagePixelSize"].iloc[0]) if optics is not None and "rlnImagePixelSize" in optics \
            else float("nan")
        tables.append(t.drop(columns=[c for c in ("rlnOpticsGroup",) if c in t.columns]))
        pixel.append(np.full(len(t), px))
    if not tables:
        return None
    merged = pd.concat(tables, ignore_index=True)
    px = np.concatenate(pixel)
    groups = {v: i + 1 for i, v in enumerate(sorted(set(px[np.isfinite(px)].tolist())))}
    blocks: dict = {"general": {"rlnTomoSubTomosAre2DStacks": 0}}
    if groups:
        blocks["optics"] = pd.DataFrame({"rlnOpticsGroup": list(groups.values()),
                                         "rlnOpticsGroupName": [f"opticsGroup{g}" for g in groups.values()],
                                         "rlnImagePixelSize": list(groups), "rlnTomoTiltSeriesPixelSize": list(groups)})
        merged["rlnOpticsGroup"] = [groups.get(v, 1) for v in px]
    blocks[block] = merged
    return write_star(out, blocks, overwrite=True)


def merge_picks(report: BatchReport, inputs: BatchInputs) -> dict[str, Path]:
    """``OUT/particles.star`` (every finished tomogram's picks, ``rlnTomoName`` per row) and
    ``OUT/tomograms.star``."""
    out = {}
    files = [report.out / o.folder / PICKS_FILE for o in report.finished()]
    p = merge_star_tables([f for f in files if f.is_file()], report.out / "particles.star")
    if p is not None:
        out["particles"] = p
    t = write_merged_tomograms(report, inputs)
    if t is not None:
        out["tomograms"] = t
    return out
