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
from .average import DEFAULT_SHARD_SIZE, row_halves
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


def align_shard_task(star: str, start: int, stop: int, reference, *, method: str = "exhaustive",
                     angular_step_deg: float = 30.0, refine_levels: int = 2, max_shift_voxels: float | None = None,
                     lowpass_angstrom: float | None = None, tilt_range: tuple | None = (-60.0, 60.0),
                     ctf: str = "auto", symmetry: str = "C1", model: str | None = None, candidates: int = 1,
                     threads: int = 1, device: str = "cpu") -> dict:
    """One shard, on a worker: rows ``[start, stop)`` read, aligned to ``reference`` ``(N, N, N)``, and the
    half-set sums of the aligned particles. Returns ``{rows, rotations, origins_voxels, scores, method,
    sums, skipped, voxel_size}``."""
    import torch

    from ..align.average import _prepare, half_sums
    from ..align.extract import load_particle_set, particle_ctf
    from ..align.methods import align_job, learned_aligner
    from ..jobs import run_job
    from ..wedge import particle_fourier_mask

    set_task_threads(threads)
    pset = load_particle_set(star, rows=range(int(start), int(stop)))
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
                            model=net, candidates=candidates, ctf=c, symmetry=symmetry, device=device), progress=False)
    with torch.no_grad():
        p, m = _prepare(pset.volumes, masks, device)
        sums = half_sums(p, np.asarray(res.rotations), np.asarray(res.origins_voxels),
                         row_halves(pset.table.data, pset.rows), particle_masks=m, ctf=c, inside=pset.inside_masks(),
                         device=device)
    return {"rows": np.asarray(pset.rows), "rotations": np.asarray(res.rotations), "origins_voxels":
            np.asarray(res.origins_voxels), "scores": np.asarray(res.scores), "method": res.method,
            "sums": sums.numpy(), "skipped": [(int(s.row), s.reason) for s in pset.skipped],
            "voxel_size": float(pset.voxel_size)}


def sharded_align_job(star: str, reference, *, shard_size: int = DEFAULT_SHARD_SIZE, method: str = "exhaustive",
                      angular_step_deg: float = 30.0, refine_levels: int = 2, max_shift_voxels: float | None = None,
                      lowpass_angstrom: float | None = None, tilt_range: tuple | None = (-60.0, 60.0),
                      ctf: str = "auto", symmetry: str = "C1", model: str | None = None, candidates: int = 1,
                      client=None, scheduler: str | None = None, workers: int = 2, threads_per_worker: int = 1,
                      device: str = "cpu") -> Job[ShardedAlignment]:
    """Align the particles of ``star`` to ``reference`` ``(N, N, N)`` sharded over Dask workers (module
    docstring). The alignment options are :func:`~..align.methods.align_job`'s (``lowpass_angstrom``: compare
    frequencies up to 1/Å); ``client`` ... ``threads_per_worker`` as :func:`~.engine.batch_job`.

    Yields ``Progress(shards done, shards)``; returns :class:`ShardedAlignment`. A failed shard fails
    the job, naming its rows."""
    from ...io import read_subtomograms
    from ..align.average import average_from_sums
    from ..align.types import AlignmentResult
    from ..symmetry import normalize_symmetry

    symmetry = normalize_symmetry(symmetry)
    if shard_size < 1:
        raise InputError("at least one particle per shard", field="--shard-size", got=shard_size)
    t0 = time.perf_counter()
    _, table = read_subtomograms(star, rows=[0])  # the table (every row) and the voxel size, one file read
    n = len(table.data)
    shards = [(a, min(n, a + int(shard_size))) for a in range(0, n, int(shard_size))]
    yield Progress(0, len(shards), f"{n} particles in {len(shards)} shards")
    parts = []
    with cluster_session(client, scheduler=scheduler, workers=workers,
                         threads_per_worker=threads_per_worker) as (client, futures):
        from distributed import as_completed

        workers_now = n_workers(client)
        ref = client.scatter(np.asarray(reference, dtype=np.float32), broadcast=True)
        opts = {"method": method, "angular_step_deg": angular_step_deg, "refine_levels": refine_levels,
                "max_shift_voxels": max_shift_voxels, "lowpass_angstrom": lowpass_angstrom, "tilt_range": tilt_range,
                "ctf": ctf, "symmetry": symmetry, "model": model, "candidates": candidates,
                "threads": threads_per_worker, "device": device}
        for a, b in shards:
            futures[client.submit(align_shard_task, str(star), a, b, ref, pure=False, **opts)] = (a, b)
        total = None
        for i, f in enumerate(as_completed(list(futures)), 1):
            a, b = futures[f]
            try:
                part = f.result()
            except Exception as err:
                raise InputError(f"every shard aligned (rows {a}..{b - 1} failed: {type(err).__name__}: {err})",
                                 path=star, field="particles", got="a failed shard") from err
            total = part["sums"] if total is None else total + part["sums"]
            part["sums"] = None
            parts.append(part)
            yield Progress(i, len(shards), f"{sum(len(p['rows']) for p in parts)} particles aligned")
    parts.sort(key=lambda p: p["rows"][0] if len(p["rows"]) else n)
    rows = np.concatenate([p["rows"] for p in parts])
    alignment = AlignmentResult(np.concatenate([p["rotations"] for p in parts]),
                                np.concatenate([p["origins_voxels"] for p in parts]),
                                np.concatenate([p["scores"] for p in parts]), parts[0]["method"])
    voxel = parts[0]["voxel_size"]
    average = average_from_sums(total, voxel_size_angstrom=voxel, symmetry=symmetry, alignment=alignment,
                                half=row_halves(table.data, rows))
    skipped = sorted(s for p in parts for s in p["skipped"])
    return ShardedAlignment(alignment, rows, average, table, skipped, voxel, shards,
                            max(b - a for a, b in shards), time.perf_counter() - t0, workers_now)
