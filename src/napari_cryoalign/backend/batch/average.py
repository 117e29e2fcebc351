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

With ``tomograms`` (a :class:`~.sources.BatchInputs`: a copick project, a ``tomograms.star`` or a
list of files) the STAR file holds coordinates instead (``rlnTomoName`` names each particle's
tomogram): the rows are grouped by tomogram and each shard holds particles of one tomogram, which
its worker opens (memory-mapped for MRC files) and cuts the boxes from, as ``cryoalign average
--tomogram T --box N`` does. Particles of tomograms that are not among the inputs, or whose file is
missing, are skipped with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ..jobs import Job, Progress
from .engine import cluster_session, n_workers, set_task_threads

__all__ = ["ShardedAverage", "Shard", "plan_shards", "load_shard", "sharded_average_job", "shard_sums_task",
           "row_halves", "DEFAULT_SHARD_SIZE"]

#: particles per shard: 1000 boxes of 32³ are 131 MB of float32 on a worker
DEFAULT_SHARD_SIZE = 1000


@dataclass(frozen=True)
class Shard:
    """One task's particles: STAR ``rows`` (a tuple of ints), from subtomogram files (``source`` None) or cut
    from ``source``'s tomogram (a :class:`~.sources.TomogramSource`)."""

    rows: tuple
    source: object = None

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self) -> str:
        where = "" if self.source is None else f" of tomogram {self.source.name!r}"
        return f"rows {self.rows[0]}..{self.rows[-1]}{where}" if self.rows else "no rows"


def _particle_block(star):
    from ...io import read_star

    blocks = read_star(star)
    table = blocks.get("particles") if "particles" in blocks else next(
        (b for b in blocks.values() if hasattr(b, "columns")), None)
    if table is None:
        raise InputError("a particle STAR file (data_particles)", path=star, field="data_particles", got="none")
    return table


def plan_shards(star, *, shard_size: int = DEFAULT_SHARD_SIZE, tomograms=None, table=None):
    """Split the rows of ``star`` into :class:`Shard` s of at most ``shard_size`` rows.

    Without ``tomograms``: consecutive rows (a subtomogram STAR file, ``rlnImageName``). With
    ``tomograms`` (:class:`~.sources.BatchInputs`): rows grouped by ``rlnTomoName`` (every row goes to
    the one tomogram when there is one and the column is absent), a shard never mixing tomograms.
    Returns ``(shards, skipped)``, ``skipped`` = ``[(row, why)]`` for particles of tomograms that are
    not among the inputs or whose file is missing."""
    if int(shard_size) < 1:
        raise InputError("at least one particle per shard", field="--shard-size", got=shard_size)
    size = int(shard_size)
    table = _particle_block(star) if table is None else table
    n = len(table)
    if tomograms is None:
        if "rlnImageName" not in table.columns:
            raise InputError("a subtomogram STAR file (rlnImageName: one MRC per particle), or the tomograms to "
                             "cut the particles from (--tomograms, --tomogram-list or --copick, with --box)",
                             path=star, field="rlnImageName", got="absent")
        return [Shard(tuple(range(a, min(n, a + size)))) for a in range(0, n, size)], []
    cols = set(table.columns)
    if not ({"rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"} <= cols or
            {"rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"} <= cols):
        raise InputError("particle coordinates (rlnCoordinateX/Y/Z or rlnCenteredCoordinateX/Y/ZAngst) to cut "
                         "from the tomograms", path=star, field="rlnCoordinateX", got="absent")
    sources = list(tomograms.sources)
    if "rlnTomoName" in cols:
        names = table["rlnTomoName"].astype(str).to_numpy()
    elif len(sources) == 1:
        names = np.full(n, sources[0].name, dtype=object)
    else:
        raise InputError(f"rlnTomoName, to match each particle to one of the {len(sources)} tomograms", path=star,
                         field="rlnTomoName", got="absent")
    shards, skipped = [], []
    by_name = {s.name: s for s in sources}
    for name in dict.fromkeys(names):  # first-seen order
        rows = np.flatnonzero(names == name).tolist()
        src = by_name.get(name)
        if src is None:
            why = tomograms.missing.get(name)
            why = f"tomogram {name!r}: {why}" if why else f"tomogram {name!r} is not among the inputs"
            skipped += [(r, why) for r in rows]
            continue
        shards += [Shard(tuple(rows[a:a + size]), src) for a in range(0, len(rows), size)]
    return shards, skipped


def load_shard(star, shard: Shard, *, box: int | None = None):
    """A shard's particles as an :class:`~..align.extract.ParticleSet` (possibly empty: every row skipped)."""
    from ..align.extract import load_particle_set, particles_from_volume

    if shard.source is None:
        return load_particle_set(star, rows=list(shard.rows), allow_empty=True)
    from .sources import load_tomogram

    if box is None:
        raise InputError("a box size (--box N) to cut the particles from the tomograms", path=star, field="box",
                         got="none")
    data, vs, _ = load_tomogram(shard.source)
    return particles_from_volume(star, data, vs, box=box, rows=list(shard.rows), path=shard.source.describe(),
                                 allow_empty=True)


@dataclass
class ShardedAverage:
    """The result: ``average`` (:class:`~..align.average.AverageResult`), the particles averaged and
    skipped, the voxel size (Å), the shards (:class:`Shard`), the most particles one task held, and the
    wall time."""

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


def shard_sums_task(star: str, shard: Shard, *, box: int | None = None, tilt_range: tuple | None = (-60.0, 60.0),
                    ctf: str = "auto", threads: int = 1, device: str = "cpu"):
    """One shard, on a worker: its rows of ``star`` read (or cut from its tomogram with ``box``), their
    half-set sums computed with the STAR file's poses. Returns ``(HalfSums as numpy or None when every row
    was skipped, skipped [(row, why)], voxel_size, n_kept)``."""
    import torch

    from ..align.average import _prepare, half_sums
    from ..align.extract import particle_ctf
    from ..geometry import euler_to_matrix
    from ..wedge import particle_fourier_mask

    set_task_threads(threads)
    pset = load_shard(star, shard, box=box)
    skipped = [(int(s.row), s.reason) for s in pset.skipped]
    if len(pset.rows) == 0:
        return None, skipped, float(pset.voxel_size), 0
    box = pset.volumes.shape[-1]
    masks = particle_fourier_mask(box, tilt_range_deg=None if tilt_range is None else tuple(tilt_range))
    with torch.no_grad():
        p, m = _prepare(pset.volumes, masks, device)
        rot = euler_to_matrix(pset.euler_deg)
        ori = pset.origins_angstrom / pset.voxel_size + pset.extraction_origins_voxels
        sums = half_sums(p, rot, ori, row_halves(pset.table.data, pset.rows), particle_masks=m,
                         ctf=particle_ctf(pset, mode=ctf), inside=pset.inside_masks(), device=device)
    return sums.numpy(), skipped, float(pset.voxel_size), int(len(pset.rows))


def sharded_average_job(star: str, *, shard_size: int = DEFAULT_SHARD_SIZE, tilt_range: tuple | None = (-60.0, 60.0),
                        ctf: str = "auto", symmetry: str = "C1", tomograms=None, box: int | None = None, client=None,
                        scheduler: str | None = None, workers: int = 2, threads_per_worker: int = 1,
                        device: str = "cpu") -> Job[ShardedAverage]:
    """Average the particles of ``star`` with their STAR poses, sharded over Dask workers (module docstring).

    Parameters
    ----------
    star : a subtomogram STAR file (``rlnImageName``), or with ``tomograms`` a particle STAR file with
        coordinates (and ``rlnTomoName``); poses ``rlnAngleRot/Tilt/Psi`` and ``rlnOriginX/Y/ZAngst`` where
        present
    shard_size : rows per task
    tilt_range : the missing wedge (degrees), None: no wedge
    ctf : ``"auto"`` (CTF-corrected when the STAR file has ``rlnDefocusU``) or ``"none"``
    symmetry : point group imposed on the maps
    tomograms : :class:`~.sources.BatchInputs` to cut the particles from, with ``box`` (even, voxels)
    client, scheduler, workers, threads_per_worker : as :func:`~.engine.batch_job`

    Yields ``Progress(shards done, shards)``; returns :class:`ShardedAverage`. A shard that fails
    fails the average (its rows are named): no particle is left out silently.
    """
    from ..align.average import average_from_sums
    from ..symmetry import normalize_symmetry

    symmetry = normalize_symmetry(symmetry)
    t0 = time.perf_counter()
    if tomograms is not None and box is None:
        raise InputError("a box size (--box N) to cut the particles from the tomograms", path=star, field="box",
                         got="none")
    shards, skipped = plan_shards(star, shard_size=shard_size, tomograms=tomograms)
    if not shards:
        raise InputError("at least one particle of the given tomograms", path=star, field="rlnTomoName",
                         got=f"none ({skipped[0][1]})" if skipped else "no rows")
    n = sum(len(sh) for sh in shards)
    yield Progress(0, len(shards), f"{n} particles in {len(shards)} shards")
    total, voxel, kept = None, None, 0
    with cluster_session(client, scheduler=scheduler, workers=workers,
                         threads_per_worker=threads_per_worker) as (client, futures):
        from distributed import as_completed

        workers_now = n_workers(client)
        for sh in shards:
            f = client.submit(shard_sums_task, str(star), sh, box=box, tilt_range=tilt_range, ctf=ctf,
                              threads=threads_per_worker, device=device, pure=False)
            futures[f] = sh
        for i, f in enumerate(as_completed(list(futures)), 1):
            sh = futures[f]
            try:
                sums, skip, vs, m = f.result()
            except Exception as err:
                raise InputError(f"every shard averaged ({sh.describe()} failed: {type(err).__name__}: {err})",
                                 path=star, field="particles", got="a failed shard") from err
            skipped += skip
            kept += m
            if voxel is not None and abs(vs - voxel) > 1e-3 * voxel:
                raise InputError(f"one voxel size ({voxel:g} Å)", path=star, field="voxel_size",
                                 got=f"{vs:g} Å ({sh.describe()})")
            voxel = vs
            if sums is not None:
                total = sums if total is None else total + sums
            del sums
            yield Progress(i, len(shards), f"{kept} particles")
    if total is None:
        raise InputError("at least one usable particle", path=star, field="particles",
                         got=f"all {len(skipped)} skipped: "
                         + "; ".join(f"row {r}: {w}" for r, w in sorted(skipped)[:3]))
    result = average_from_sums(total, voxel_size_angstrom=voxel, symmetry=symmetry)
    return ShardedAverage(result, kept, sorted(skipped), voxel, shards, max(len(sh) for sh in shards),
                          time.perf_counter() - t0, workers_now)
