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

__all__ = ["pick_predict_task", "pick_template_task", "extract_task", "merge_picks", "merge_extracted",
           "write_merged_tomograms", "PICKS_FILE", "SUBTOMOGRAMS_FILE", "copick_session_default"]

#: each tomogram's picks, ``OUT/<rlnTomoName>/picks.star``
PICKS_FILE = "picks.star"
#: each tomogram's subtomograms, ``OUT/<rlnTomoName>/particles.star`` (+ its ``particles_subtomograms/``)
SUBTOMOGRAMS_FILE = "particles.star"
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
    _write_back(source, picks, summary, copick_object, copick_session)
    return summary


def _write_back(source: TomogramSource, picks, summary: dict, copick_object, copick_session) -> None:
    """For a copick run: the picks written back as (object, user cryoalign, session); noted in ``summary``."""
    if source.kind != "copick" or not copick_object:
        return
    from ...io.copick_project import COPICK_USER, write_copick_picks

    rotations = None
    if getattr(picks, "euler_deg", None) is not None:
        from ..geometry import euler_to_matrix

        rotations = euler_to_matrix(picks.euler_deg)
    write_copick_picks(source.copick_ref(), picks.coordinates_xyz, object_name=copick_object,
                       session_id=copick_session, scores=picks.scores, rotations=rotations)
    summary["copick"] = {"object": copick_object, "user_id": COPICK_USER, "session_id": copick_session}


def pick_template_task(source: TomogramSource, folder: str, *, template: str, angular_step_deg: float = 30.0,
                       threshold: float | None = None, false_positives: float | None = None,
                       max_picks: int | None = None, min_distance_angstrom: float | None = None,
                       tilt_range: tuple | None = (-60.0, 60.0), lowpass_angstrom: float | None = None,
                       defocus_um: float | None = None, heatmap: bool = False, device: str = "cpu",
                       copick_object: str | None = None, copick_session: str = copick_session_default,
                       template_digest: str | None = None) -> dict:
    """``cryoalign pick template --template`` on one tomogram: ``folder/picks.star`` with Euler angles
    (+ ``heatmap.mrc``: the best NCC), written back to a copick run as :func:`pick_predict_task` does."""
    from ...io import read_mrc, voxel_size_isotropic, write_mrc, write_particles
    from ..jobs import run_job
    from ..picking.template import template_match_job

    ref = read_mrc(template)
    data, vs, shape = load_tomogram(source)
    res = run_job(template_match_job(
        data, ref.data, voxel_size=vs, template_voxel_size=voxel_size_isotropic(ref), angular_step_deg=angular_step_deg,
        tilt_range_deg=None if tilt_range is None else tuple(tilt_range), defocus_um=defocus_um,
        lowpass_angstrom=lowpass_angstrom, min_distance_angstrom=min_distance_angstrom, threshold=threshold,
        false_positives=false_positives, max_picks=max_picks, device=device, path=source.describe(),
        template_path=template), progress=False)
    out = Path(folder)
    picks = res.picks
    write_particles(out / PICKS_FILE, coordinates_xyz=picks.coordinates_xyz, scores=picks.scores,
                    euler_deg=picks.euler_deg, tomo_name=source.name, tomogram_shape=shape, voxel_size=vs,
                    sort_by_score=True, overwrite=True)
    if heatmap:
        write_mrc(out / "heatmap.mrc", res.scores, voxel_size=vs, overwrite=True)
    summary = {"picks": int(len(picks)), "suggested_threshold": float(res.suggested_threshold),
               "ncc_std": float(res.ncc_std), "rotations": int(len(res.euler_deg)), "shape": list(shape),
               "voxel_size": vs, "tomogram": source.path if source.kind == "mrc" else None}
    _write_back(source, picks, summary, copick_object, copick_session)
    return summary


def extract_task(source: TomogramSource, folder: str, *, particles: str, box: int,
                 particles_digest: str | None = None) -> dict:
    """Subtomograms of this tomogram's particles (the rows of ``particles`` whose ``rlnTomoName`` is the
    tomogram's name; a file without the column: every row): one MRC per particle in
    ``folder/particles_subtomograms/`` and ``folder/particles.star`` naming them, with the input's columns
    (poses, classes, ...). Each row's coordinate is its box's centre (the rounded particle centre) and its
    origin the input's plus the sub-voxel remainder, so ``coordinate - origin`` is unchanged. Boxes that
    cross the tomogram's faces are padded; particles centred outside it are skipped (counted)."""
    from ...io import read_star, write_subtomograms
    from ..align.extract import extract_subtomograms

    data, vs, shape = load_tomogram(source)
    table = read_star(particles)["particles"] if "particles" in read_star(particles) else None
    if table is None:
        from ...errors import InputError

        raise InputError("a particle STAR file (data_particles)", path=particles, field="data_particles", got="none")
    if "rlnTomoName" in table.columns:
        table = table[table["rlnTomoName"].astype(str) == source.name].reset_index(drop=True)
    summary = {"shape": list(shape), "voxel_size": vs, "tomogram": source.path if source.kind == "mrc" else None,
               "particles": 0, "skipped": 0}
    if not len(table):
        return summary
    xyz = _voxel_coordinates(table, shape, vs, particles)
    ext = extract_subtomograms(data, xyz, int(box), path=source.describe())
    rows = np.asarray(ext.rows)
    kept = table.iloc[rows].reset_index(drop=True)
    own = [c for c in ("rlnImageName", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst", "rlnOpticsGroup")
           if c in kept.columns]
    start = np.zeros((len(rows), 3))
    for j, c in enumerate(("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")):
        if c in kept.columns:
            start[:, j] = kept[c].to_numpy(dtype=float) / vs
    # each box is centred on the rounded centre r = c + (round(c) - c); the particle sits at -(s + resid) from it,
    # so the box's own STAR row has coordinate r and origin s + resid (voxels): r - origin = c - s, as before
    resid = np.asarray(ext.residual_origins_voxels, dtype=np.float64)
    origins = (start + resid) * vs
    extra = kept.drop(columns=own + [c for c in kept.columns if c.startswith("rlnCoordinate")
                                      or c.startswith("rlnCenteredCoordinate") or c == "rlnTomoName"])
    if len(rows):
        write_subtomograms(Path(folder) / SUBTOMOGRAMS_FILE, ext.volumes, voxel_size=vs, overwrite=True,
                           coordinates_xyz=xyz[rows] + resid, origins_angstrom=origins, tomo_name=source.name,
                           tomogram_shape=shape, extra_columns=extra if extra.shape[1] else None)
    summary.update(particles=int(len(rows)), skipped=int(len(ext.skipped)), box=int(box))
    return summary


def _voxel_coordinates(table, shape, vs, path) -> np.ndarray:
    """Particle centres in voxels (x, y, z): ``rlnCoordinateX/Y/Z``, else RELION 5's centred Å."""
    from ...errors import InputError
    from ...io.star import centered_angstrom_to_voxels

    cols = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
    if all(c in table.columns for c in cols):
        return table[list(cols)].to_numpy(dtype=float)
    cen = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
    if all(c in table.columns for c in cen):
        return centered_angstrom_to_voxels(table[list(cen)].to_numpy(dtype=float), tomogram_shape=shape,
                                           voxel_size=vs)
    raise InputError("particle coordinates (rlnCoordinateX/Y/Z or rlnCenteredCoordinateX/Y/ZAngst)", path=path,
                     field="rlnCoordinateX", got="absent")


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


def merge_star_tables(paths: list[Path], out: Path, *, block: str = "particles", relocate=None) -> Path | None:
    """Concatenate the ``block`` tables of per-tomogram STAR files into ``out``: one optics group per
    distinct voxel size, a general block without per-tomogram sizes (they are in tomograms.star).
    ``relocate(names, file)`` re-points a file's ``rlnImageName`` values relative to ``out``."""
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
        t = t.drop(columns=[c for c in ("rlnOpticsGroup",) if c in t.columns])
        if relocate is not None and "rlnImageName" in t.columns:
            t = t.assign(rlnImageName=relocate(t["rlnImageName"].tolist(), p))
        tables.append(t)
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


def _merge(report: BatchReport, inputs: BatchInputs, name: str, *, relocate_images: bool) -> dict[str, Path]:
    """``OUT/particles.star`` from every finished tomogram's ``OUT/<folder>/<name>`` and ``OUT/tomograms.star``."""
    from ...io.star_images import relocate_image_names

    out = {}
    files = [report.out / o.folder / name for o in report.finished()]
    merged = report.out / "particles.star"
    relocate = (lambda names, f: relocate_image_names(names, star_path=f, out_path=merged)) if relocate_images \
        else None
    p = merge_star_tables([f for f in files if f.is_file()], merged, relocate=relocate)
    if p is not None:
        out["particles"] = p
    t = write_merged_tomograms(report, inputs)
    if t is not None:
        out["tomograms"] = t
    return out


def merge_picks(report: BatchReport, inputs: BatchInputs) -> dict[str, Path]:
    """``OUT/particles.star`` (every finished tomogram's picks, ``rlnTomoName`` per row) and
    ``OUT/tomograms.star``."""
    return _merge(report, inputs, PICKS_FILE, relocate_images=False)


def merge_extracted(report: BatchReport, inputs: BatchInputs) -> dict[str, Path]:
    """``OUT/particles.star``: every tomogram's subtomograms, ``rlnImageName`` relative to OUT (what
    ``cryoalign batch average`` and ``cryoalign average`` read), and ``OUT/tomograms.star``."""
    return _merge(report, inputs, SUBTOMOGRAMS_FILE, relocate_images=True)
