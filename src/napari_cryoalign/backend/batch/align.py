"""Aligning a particle set too large for one process: shards on Dask workers, the reference broadcast.

:func:`sharded_align_job` splits the rows of a subtomogram STAR file (``rlnImageName``) into shards;
the reference is sent once to every worker (``client.scatter(..., broadcast=True)``); a worker reads
only its shard's subtomograms, aligns them with the method and options of ``cryoalign align``
(:func:`~..align.methods.align_job`) and returns the poses and the half-set sums of the aligned
particles (:class:`~..align.average.HalfSums`). The client collects the poses (a few numbers per
particle), writes the aligned STAR file as ``cryoalign align`` does and finishes the average, the half
maps and the FSC from the summed parts. Each particle's alignment is independent of the others, so the
poses, and therefore the maps, equal the single-process run's (to float precision).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ..jobs import Job, Progress
from .average import DEFAULT_SHARD_SIZE, load_shard, plan_shards, row_halves
from .engine import cluster_session, n_workers, set_task_threads

__all__ = ["ShardedAlignment", "sharded_align_job", "align_shard_task"]


@dataclass
class ShardedAlignment:
    """The result: ``alignment`` (:class:`~..align.types.AlignmentResult` of the kept particles, STAR row
    order), ``rows`` (their STAR rows), ``average`` (:class:`~..align.average.AverageResult` of the aligned
    particles), the table (``io`` ``ParticleTable``, every row), skipped rows, voxel size, shards, the most
    particles one task held, wall time and workers."""

    alignment: object
    rows: np.ndarray
    average: object
    table: object
    skipped: list
    voxel_size: float
    shards: list
    max_shard_particles: int
    seconds: float
    workers: int = 0
    extraction_origins_voxels: np.ndarray | None = None


def align_shard_task(star: str, shard, reference, *, box: int | None = None, method: str = "exhaustive",
                     angular_step_deg: float = 30.0, refine_levels: int = 2, max_shift_voxels: float | None = None,
                     lowpass_angstrom: float | None = None, tilt_range: tuple | None = (-60.0, 60.0),
                     ctf: str = "auto", symmetry: str = "C1", model: str | None = None, candidates: int = 1,
                     threads: int = 1, device: str = "cpu") -> dict:
    """One shard (:class:`~.average.Shard`), on a worker: its rows read (or cut from its tomogram with
    ``box``), aligned to ``reference`` ``(N, N, N)``, and the half-set sums of the aligned particles. Returns
    ``{rows, rotations, origins_voxels, extraction_origins_voxels, scores, method, sums (None when every row
    was skipped), skipped, voxel_size}``."""
    import torch

    from ..align.average import _prepare, half_sums
    from ..align.extract import particle_ctf
    from ..align.methods import align_job, learned_aligner
    from ..jobs import run_job
    from ..wedge import particle_fourier_mask

    set_task_threads(threads)
    pset = load_shard(star, shard, box=box)
    skipped = [(int(s.row), s.reason) for s in pset.skipped]
    if len(pset.rows) == 0:
        empty = np.zeros((0, 3))
        return {"rows": np.zeros(0, np.int64), "rotations": np.zeros((0, 3, 3)), "origins_voxels": empty,
                "extraction_origins_voxels": empty, "scores": np.zeros(0), "method": method, "sums": None,
                "skipped": skipped, "voxel_size": float(pset.voxel_size)}
    box = pset.volumes.shape[-1]
    ref = np.asarray(reference, dtype=np.float32)
    if ref.shape != (box,) * 3:
        raise InputError(f"a reference of the particles' box {(box,) * 3}", path=star, field="reference",
                         got=f"{ref.shape}")
    masks = particle_fourier_mask(box, tilt_range_deg=None if tilt_range is None else tuple(tilt_range))
    c = particle_ctf(pset, mode=ctf)
    fmax = 0.5 if lowpass_angstrom is None else min(0.5, pset.voxel_size / float(lowpass_angstrom))
    net = learned_aligner().load_model(model, device=device) if method != "exhaustive" and model else None
    res = run_job(align_job(pset.volumes, ref, method=method, particle_masks=masks, angular_step_deg=angular_step_deg,
                            refine_levels=refine_levels, max_shift_voxels=max_shift_voxels, max_frequency=fmax,
                            model=net, candidates=candidates, ctf=c, symmetry=symmetry, voxel_size=pset.voxel_size,
                            device=device), progress=False)
    with torch.no_grad():
        p, m = _prepare(pset.volumes, masks, device)
        sums = half_sums(p, np.asarray(res.rotations), np.asarray(res.origins_voxels),
                         row_halves(pset.table.data, pset.rows), particle_masks=m, ctf=c, inside=pset.inside_masks(),
                         device=device)
    return {"rows": np.asarray(pset.rows), "rotations": np.asarray(res.rotations), "origins_voxels":
            np.asarray(res.origins_voxels), "extraction_origins_voxels": np.asarray(pset.extraction_origins_voxels),
            "scores": np.asarray(res.scores), "method": res.method, "sums": sums.numpy(), "skipped": skipped,
            "voxel_size": float(pset.voxel_size)}


def sharded_align_job(star: str, reference, *, shard_size: int = DEFAULT_SHARD_SIZE, method: str = "exhaustive",
                      angular_step_deg: float = 30.0, refine_levels: int = 2, max_shift_voxels: float | None = None,
                      lowpass_angstrom: float | None = None, tilt_range: tuple | None = (-60.0, 60.0),
                      ctf: str = "auto", symmetry: str = "C1", model: str | None = None, candidates: int = 1,
                      tomograms=None, box: int | None = None, client=None, scheduler: str | None = None,
                      workers: int = 2, threads_per_worker: int = 1,
                      device: str = "cpu") -> Job[ShardedAlignment]:
    """Align the particles of ``star`` to ``reference`` ``(N, N, N)`` sharded over Dask workers (module
    docstring). The alignment options are :func:`~..align.methods.align_job`'s (``lowpass_angstrom``: compare
    frequencies up to 1/Å); ``tomograms`` (:class:`~.sources.BatchInputs`) and ``box``: cut the particles
    of a coordinate STAR file from their tomograms; ``client`` ... ``threads_per_worker`` as
    :func:`~.engine.batch_job`.

    Yields ``Progress(shards done, shards)``; returns :class:`ShardedAlignment`. A failed shard fails
    the job, naming its rows."""
    from ...io import read_particles, read_subtomograms
    from ..align.average import average_from_sums
    from ..align.types import AlignmentResult
    from ..symmetry import normalize_symmetry

    symmetry = normalize_symmetry(symmetry)
    t0 = time.perf_counter()
    if tomograms is not None and box is None:
        raise InputError("a box size (--box N) to cut the particles from the tomograms", path=star, field="box",
                         got="none")
    if tomograms is None:
        shards, skipped = plan_shards(star, shard_size=shard_size)
        _, table = read_subtomograms(star, rows=[0])  # the table (every row) and the voxel size, one file read
    else:
        table = read_particles(star, require=())
        shards, skipped = plan_shards(star, shard_size=shard_size, tomograms=tomograms, table=table.data)
    if not shards:
        raise InputError("at least one particle of the given tomograms", path=star, field="rlnTomoName",
                         got=f"none ({skipped[0][1]})" if skipped else "no rows")
    yield Progress(0, len(shards), f"{sum(len(sh) for sh in shards)} particles in {len(shards)} shards")
    parts = []
    with cluster_session(client, scheduler=scheduler, workers=workers,
                         threads_per_worker=threads_per_worker) as (client, futures):
        from distributed import as_completed

        workers_now = n_workers(client)
        ref = client.scatter(np.asarray(reference, dtype=np.float32), broadcast=True)
        opts = {"method": method, "angular_step_deg": angular_step_deg, "refine_levels": refine_levels,
                "max_shift_voxels": max_shift_voxels, "lowpass_angstrom": lowpass_angstrom, "tilt_range": tilt_range,
                "ctf": ctf, "symmetry": symmetry, "model": model, "candidates": candidates,
                "threads": threads_per_worker, "device": device, "box": box}
        for sh in shards:
            futures[client.submit(align_shard_task, str(star), sh, ref, pure=False, **opts)] = sh
        total = None
        for i, f in enumerate(as_completed(list(futures)), 1):
            sh = futures[f]
            try:
                part = f.result()
            except Exception as err:
                raise InputError(f"every shard aligned ({sh.describe()} failed: {type(err).__name__}: {err})",
                                 path=star, field="particles", got="a failed shard") from err
            if part["sums"] is not None:
                total = part["sums"] if total is None else total + part["sums"]
            part["sums"] = None
            parts.append(part)
            yield Progress(i, len(shards), f"{sum(len(p['rows']) for p in parts)} particles aligned")
    skipped = sorted(skipped + [s for p in parts for s in p["skipped"]])
    parts = [p for p in parts if len(p["rows"])]
    if total is None or not parts:
        raise InputError("at least one usable particle", path=star, field="particles",
                         got=f"all {len(skipped)} skipped: " + "; ".join(f"row {r}: {w}" for r, w in skipped[:3]))
    rows = np.concatenate([p["rows"] for p in parts])
    order = np.argsort(rows, kind="stable")  # STAR row order (shards of tomograms interleave rows)
    alignment = AlignmentResult(np.concatenate([p["rotations"] for p in parts])[order],
                                np.concatenate([p["origins_voxels"] for p in parts])[order],
                                np.concatenate([p["scores"] for p in parts])[order], parts[0]["method"])
    rows = rows[order]
    resid = np.concatenate([p["extraction_origins_voxels"] for p in parts])[order]
    voxel = parts[0]["voxel_size"]
    if any(abs(p["voxel_size"] - voxel) > 1e-3 * voxel for p in parts):
        raise InputError(f"one voxel size ({voxel:g} Å)", path=star, field="voxel_size",
                         got=", ".join(sorted({f"{p['voxel_size']:g} Å" for p in parts})))
    average = average_from_sums(total, voxel_size_angstrom=voxel, symmetry=symmetry, alignment=alignment,
                                half=row_halves(table.data, rows))
    return ShardedAlignment(alignment, rows, average, table, skipped, voxel, shards,
                            max(len(sh) for sh in shards), time.perf_counter() - t0, workers_now, resid)
