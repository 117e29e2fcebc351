"""Averaging a particle set too large for one process: shards of particles on Dask workers, partial
sums reduced.

:func:`sharded_average_job` splits the rows of a subtomogram STAR file (``rlnImageName``, one MRC
per particle, as ``cryoalign batch extract`` or RELION writes them) into shards of ``shard_size``
rows. A worker reads only its shard's files and returns the additive sums of both half sets
(:class:`~..align.average.HalfSums`: ``sum M c F``, ``sum M c²``, coverage and counts); the client
adds them as they come (it never holds particles, a worker at most one shard) and finishes the
average, the half maps and their FSC exactly as ``cryoalign average`` does
(:func:`~..align.average.average_from_sums`). The maps equal the single-process ones to float
precision (the summation order differs). Half sets: ``rlnRandomSubset`` when it holds 1 and 2,
else alternating by STAR row (``row % 2 + 1``; ``cryoalign average`` alternates over the
particles it kept, which differs only where particles are skipped).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ..jobs import Job, Progress
from .engine import cluster_session, n_workers, set_task_threads

__all__ = ["ShardedAverage", "sharded_average_job", "shard_sums_task", "row_halves", "DEFAULT_SHARD_SIZE"]

#: particles per shard: 1000 boxes of 32³ are 131 MB of float32 on a worker
DEFAULT_SHARD_SIZE = 1000


@dataclass
class ShardedAverage:
    """The result: ``average`` (:class:`~..align.average.AverageResult`), the particles averaged and
    skipped, the voxel size (Å), the shards ``[(first row, end row)]``, the most particles one task
    held, and the wall time."""

    average: object
    n_particles: int
    skipped: list
    voxel_size: float
    shards: list
    max_shard_particles: int
    seconds: float
    workers: int = 0


def row_halves(table_data, rows) -> np.ndarray:
    """Half set (1/2) of STAR rows ``rows``: ``rlnRandomSubset`` when the table's values are exactly
    {1, 2}, else ``row % 2 + 1``."""
    rows = np.asarray(rows, dtype=np.int64)
    if "rlnRandomSubset" in table_data.columns:
        h = table_data["rlnRandomSubset"].to_numpy()
        if set(np.unique(h).astype(int).tolist()) == {1, 2}:
            return h[rows].astype(np.int64)
    return (rows % 2 + 1).astype(np.int64)


def shard_sums_task(star: str, start: int, stop: int, *, tilt_range: tuple | None = (-60.0, 60.0),
                    ctf: str = "auto", threads: int = 1, device: str = "cpu"):
    """One shard, on a worker: rows ``[start, stop)`` of ``star`` read, their half-set sums computed with
    the STAR file's poses. Returns ``(HalfSums as numpy, skipped [(row, why)], voxel_size, n_kept)``."""
    import torch

    from ..align.average import _prepare, half_sums
    from ..align.extract import load_particle_set, particle_ctf
    from ..geometry import euler_to_matrix
    from ..wedge import particle_fourier_mask

    set_task_threads(threads)
    pset = load_particle_set(star, rows=range(int(start), int(stop)))
    box = pset.volumes.shape[-1]
    masks = particle_fourier_mask(box, tilt_range_deg=None if tilt_range is None else tuple(tilt_range))
    with torch.no_grad():
        p, m = _prepare(pset.volumes, masks, device)
        rot = euler_to_matrix(pset.euler_deg)
        ori = pset.origins_angstrom / pset.voxel_size + pset.extraction_origins_voxels
        sums = half_sums(p, rot, ori, row_halves(pset.table.data, pset.rows), particle_masks=m,
                         ctf=particle_ctf(pset, mode=ctf), inside=pset.inside_masks(), device=device)
    return sums.numpy(), [(int(s.row), s.reason) for s in pset.skipped], float(pset.voxel_size), int(len(pset.rows))


def sharded_average_job(star: str, *, shard_size: int = DEFAULT_SHARD_SIZE, tilt_range: tuple | None = (-60.0, 60.0),
                        ctf: str = "auto", symmetry: str = "C1", client=None, scheduler: str | None = None,
                        workers: int = 2, threads_per_worker: int = 1, device: str = "cpu") -> Job[ShardedAverage]:
    """Average the particles of ``star`` with their STAR poses, sharded over Dask workers (module docstring).

    Parameters
    ----------
    star : a subtomogram STAR file (``rlnImageName``; poses ``rlnAngleRot/Tilt/Psi`` and
        ``rlnOriginX/Y/ZAngst`` where present)
    shard_size : rows per task
    tilt_range : the missing wedge (degrees), None: no wedge
    ctf : ``"auto"`` (CTF-corrected when the STAR file has ``rlnDefocusU``) or ``"none"``
    symmetry : point group imposed on the maps
    client, scheduler, workers, threads_per_worker : as :func:`~.engine.batch_job`

    Yields ``Progress(shards done, shards)``; returns :class:`ShardedAverage`. A shard that fails
    fails the average (its rows are named): no particle is left out silently.
    """
    from ...io import read_star
    from ..align.average import average_from_sums
    from ..symmetry import normalize_symmetry

    symmetry = normalize_symmetry(symmetry)
    if shard_size < 1:
        raise InputError("at least one particle per shard", field="--shard-size", got=shard_size)
    t0 = time.perf_counter()
    blocks = read_star(star)
    table = blocks.get("particles") if "particles" in blocks else next(
        (b for b in blocks.values() if hasattr(b, "columns")), None)
    if table is None or "rlnImageName" not in table.columns:
        raise InputError("a subtomogram STAR file (rlnImageName: one MRC per particle)", path=star,
                         field="rlnImageName", got="absent")
    n = len(table)
    shards = [(a, min(n, a + int(shard_size))) for a in range(0, n, int(shard_size))]
    yield Progress(0, len(shards), f"{n} particles in {len(shards)} shards")
    total, skipped, voxel, kept = None, [], None, 0
    with cluster_session(client, scheduler=scheduler, workers=workers,
                         threads_per_worker=threads_per_worker) as (client, futures):
        from distributed import as_completed

        workers_now = n_workers(client)
        for a, b in shards:
            f = client.submit(shard_sums_task, str(star), a, b, tilt_range=tilt_range, ctf=ctf,
                              threads=threads_per_worker, device=device, pure=False)
            futures[f] = (a, b)
        for i, f in enumerate(as_completed(list(futures)), 1):
            a, b = futures[f]
            try:
                sums, skip, vs, m = f.result()
            except Exception as err:
                raise InputError(f"every shard averaged (rows {a}..{b - 1} failed: {type(err).__name__}: {err})",
                                 path=star, field="particles", got="a failed shard") from err
            total = sums if total is None else total + sums
            skipped += skip
            kept += m
            if voxel is not None and abs(vs - voxel) > 1e-3 * voxel:
                raise InputError(f"one voxel size ({voxel:g} Å)", path=star, field="voxel_size", got=f"{vs:g} Å")
            voxel = vs
            del sums
            yield Progress(i, len(shards), f"{kept} particles")
    result = average_from_sums(total, voxel_size_angstrom=voxel, symmetry=symmetry)
    return ShardedAverage(result, kept, sorted(skipped), voxel, shards, max(b - a for a, b in shards),
                          time.perf_counter() - t0, workers_now)
