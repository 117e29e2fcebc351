"""Subtomograms out of a tomogram, and loading particle sets for alignment, with validation.

Bad particles do not stop a run: a particle whose centre lies outside the tomogram or whose
subtomogram is all zero is *skipped* and listed (:class:`Skipped`: row and reason); the others
proceed. A box that crosses the tomogram's faces is **padded**, not dropped (thin lamellae put a
third of the particles within half a box of a face): the voxels outside the volume are filled
with the mean of the voxels inside the box, so that after the mean is removed they are zero and
add nothing to an alignment score (whose DC term is left out), and the fraction of the box inside
the volume is recorded per particle (``cryoalignFractionInside`` in the STAR files written); the
averages compensate the lower coverage near such a box's edge in real space, as the missing wedge
is compensated in Fourier space (:mod:`.average`). Bad settings (an odd box size, a box larger
than the tomogram, no particles left) raise :class:`~napari_cryoalign.errors.InputError`.

Coordinates are 0-based voxels ``(x, y, z)`` (``rlnCoordinateX/Y/Z``). A box of even size
``N`` is cut so that the particle's coordinate, rounded to the nearest voxel, lands on index
``N // 2``; the sub-voxel remainder is returned as the origin ``(x, y, z)`` in voxels with
RELION's sign (the particle centre is at ``N // 2 - origin``), so that
``geometry.align_particle_to_reference`` with that origin centres the particle exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import InputError

SCORE_COLUMN = "cryoalignCorrelation"  #: STAR column of the per-particle correlation after alignment

FRACTION_INSIDE_COLUMN = "cryoalignFractionInside"  #: STAR column: fraction of the box inside the tomogram

__all__ = ["FRACTION_INSIDE_COLUMN", "SCORE_COLUMN", "Extraction", "ParticleSet", "Skipped", "check_box_size",
           "extract_subtomograms", "inside_masks_from_bounds", "load_particle_set", "particle_ctf",
           "relion_origins_angstrom", "write_aligned_star"]


@dataclass(frozen=True)
class Skipped:
    """A particle left out: its row (0-based, in the input) and why."""

    row: int
    reason: str


@dataclass(frozen=True, eq=False)
class Extraction:
    """Boxes cut from a tomogram.

    Attributes
    ----------
    volumes : ndarray ``(m, N, N, N)`` float32, the kept particles in input order
    rows : ndarray ``(m,)`` int, the input row of each kept particle
    residual_origins_voxels : ndarray ``(m, 3)`` (x, y, z), ``round(c) - c``: RELION origin of the
        sub-voxel remainder (the particle centre is at ``N // 2 - origin``)
    skipped : list of :class:`Skipped`
    fraction_inside : ndarray ``(m,)``, the fraction of each box inside the tomogram (1 = not padded)
    inside_bounds : ndarray ``(m, 3, 2)`` int, per box axis ``(z, y, x)`` the half-open index range
        ``[start, stop)`` of the voxels that lie inside the tomogram (``[0, N)`` when not padded)
    """

    volumes: np.ndarray
    rows: np.ndarray
    residual_origins_voxels: np.ndarray
    skipped: list = field(default_factory=list)
    fraction_inside: np.ndarray | None = None
    inside_bounds: np.ndarray | None = None

    def __post_init__(self):
        m, n = len(self.volumes), (self.volumes.shape[-1] if np.ndim(self.volumes) == 4 else 0)
        if self.inside_bounds is None:
            b = np.zeros((m, 3, 2), dtype=np.int64)
            b[:, :, 1] = n
            object.__setattr__(self, "inside_bounds", b)
        if self.fraction_inside is None:
            object.__setattr__(self, "fraction_inside", np.ones(m))

    def inside_masks(self):
        """``(m, N, N, N)`` float32 real-space masks (1 inside the tomogram, 0 padded), or None when no
        box was padded."""
        return inside_masks_from_bounds(self.inside_bounds, self.volumes.shape[-1])


def inside_masks_from_bounds(bounds, box: int):
    """Real-space masks ``(m, N, N, N)`` float32 from ``(m, 3, 2)`` inside ranges ``(z, y, x)``; None when
    every range is the whole box."""
    b = np.asarray(bounds, dtype=np.int64).reshape(-1, 3, 2)
    n = int(box)
    if not len(b) or (np.all(b[:, :, 0] == 0) and np.all(b[:, :, 1] == n)):
        return None
    out = np.zeros((len(b), n, n, n), dtype=np.float32)
    for i, ((z0, z1), (y0, y1), (x0, x1)) in enumerate(b):
        out[i, z0:z1, y0:y1, x0:x1] = 1.0
    return out


def check_box_size(box, *, tomogram_shape=None, path=None) -> int:
    """An even box size >= 8 voxels, not larger than the tomogram; InputError (``field="box"``) otherwise."""
    try:
        b = int(box)
    except (TypeError, ValueError):
        raise InputError("an even box size in voxels", path=path, field="box", got=box) from None
    if b != box or b < 8 or b % 2:
        raise InputError("an even box size of at least 8 voxels", path=path, field="box", got=box)
    if tomogram_shape is not None and b > min(tomogram_shape):
        raise InputError(f"a box no larger than the tomogram's smallest edge ({min(tomogram_shape)} voxels)",
                         path=path, field="box", got=b)
    return b


def extract_subtomograms(tomogram, coordinates_xyz, box: int, *, path=None, pad: bool = True) -> Extraction:
    """Cut cubic boxes around particle coordinates.

    Parameters
    ----------
    tomogram : array ``(z, y, x)`` (numpy or memory-mapped)
    coordinates_xyz : ``(n, 3)`` 0-based voxel coordinates (x, y, z)
    box : even box edge N in voxels
    path : the tomogram's file, named in messages
    pad : a box that crosses the tomogram's faces is padded with the mean of its voxels inside
        the tomogram (default); False skips it, as before 2026-12-05

    Returns
    -------
    Extraction; a particle whose centre (rounded to a voxel) lies outside the tomogram, a box
    reaching outside the tomogram when ``pad`` is False, and an all-zero box are skipped and
    listed. ``fraction_inside`` and ``inside_bounds`` say how much of each kept box is real data.
    """
    tomo = tomogram
    if np.ndim(tomo) != 3:
        raise InputError("a 3D tomogram (z, y, x)", path=path, field="tomogram", got=f"shape {np.shape(tomo)}")
    b = check_box_size(box, tomogram_shape=tomo.shape, path=path)
    c = np.asarray(coordinates_xyz, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 3:
        raise InputError("coordinates of shape (n, 3) (x, y, z)", path=path, field="coordinates", got=f"{c.shape}")
    finite = np.all(np.isfinite(c), axis=1)
    ic = np.zeros(c.shape, dtype=np.int64)
    ic[finite] = np.rint(c[finite]).astype(np.int64)
    lo = ic - b // 2  # first index per axis (x, y, z)
    hi = lo + b
    size_xyz = np.array(tomo.shape[::-1])
    vols, rows, resid, skipped, fractions, bounds = [], [], [], [], [], []
    for i in range(len(c)):
        where = f"({c[i, 0]:.1f}, {c[i, 1]:.1f}, {c[i, 2]:.1f})"
        if not finite[i]:
            skipped.append(Skipped(i, "coordinate is not a finite number"))
            continue
        if np.any(ic[i] < 0) or np.any(ic[i] >= size_xyz):
            skipped.append(Skipped(i, f"centre {where} lies outside the tomogram "
                                      f"(x, y, z size {tuple(int(s) for s in size_xyz)})"))
            continue
        crosses = np.any(lo[i] < 0) or np.any(hi[i] > size_xyz)
        if crosses and not pad:
            skipped.append(Skipped(i, f"box of {b} voxels around {where} falls outside the tomogram "
                                      f"(x, y, z size {tuple(int(s) for s in size_xyz)})"))
            continue
        a = np.maximum(lo[i], 0)  # first index inside, per axis (x, y, z), tomogram frame
        e = np.minimum(hi[i], size_xyz)
        inner = np.asarray(tomo[a[2]:e[2], a[1]:e[1], a[0]:e[0]], dtype=np.float32)
        if not np.any(inner):
            skipped.append(Skipped(i, "subtomogram is all zero"))
            continue
        s0 = (a - lo[i])[::-1]  # inside range in box indices, (z, y, x)
        s1 = (e - lo[i])[::-1]
        if crosses:
            v = np.full((b, b, b), float(inner.mean()), dtype=np.float32)
            v[s0[0]:s1[0], s0[1]:s1[1], s0[2]:s1[2]] = inner
        else:
            v = inner
        vols.append(v)
        rows.append(i)
        resid.append(ic[i] - c[i])
        fractions.append(inner.size / float(b ** 3))
        bounds.append(np.stack([s0, s1], axis=1))
    volumes = np.stack(vols) if vols else np.zeros((0, b, b, b), np.float32)
    return Extraction(volumes, np.asarray(rows, dtype=np.int64), np.asarray(resid, dtype=np.float64).reshape(-1, 3),
                      skipped, fraction_inside=np.asarray(fractions, dtype=np.float64),
                      inside_bounds=np.asarray(bounds, dtype=np.int64).reshape(-1, 3, 2))


@dataclass(frozen=True, eq=False)
class ParticleSet:
    """Particles ready to align: the kept volumes, their table rows, the pose columns and the skips.

    Attributes
    ----------
    volumes : ``(m, N, N, N)`` float32
    rows : ``(m,)`` rows of ``table.data`` kept
    table : io.star.ParticleTable (all rows)
    voxel_size : Å
    euler_deg, origins_angstrom : ``(m, 3)`` poses from the STAR file (zeros where absent)
    extraction_origins_voxels : ``(m, 3)`` sub-voxel remainder of the extraction (0 for files)
    skipped : list of :class:`Skipped`
    source : "subtomograms" (rlnImageName) or "tomogram"
    fraction_inside : ``(m,)`` fraction of each box inside the tomogram (1 for files and unpadded boxes)
    inside_bounds : ``(m, 3, 2)`` the inside range of each box per axis (z, y, x), or None (all inside)
    """

    volumes: np.ndarray
    rows: np.ndarray
    table: object
    voxel_size: float
    euler_deg: np.ndarray
    origins_angstrom: np.ndarray
    extraction_origins_voxels: np.ndarray
    skipped: list
    source: str
    fraction_inside: np.ndarray | None = None
    inside_bounds: np.ndarray | None = None

    def inside_masks(self):
        """``(m, N, N, N)`` float32 real-space masks of the voxels inside the tomogram, or None when no box
        was padded (pass them to the averages as ``inside_masks``)."""
        if self.inside_bounds is None:
            return None
        return inside_masks_from_bounds(self.inside_bounds, self.volumes.shape[-1])


def load_particle_set(star_path: str | os.PathLike, *, tomogram: str | os.PathLike | None = None,
                      box: int | None = None, rows=None, allow_empty: bool = False) -> ParticleSet:
    """Load particles for alignment/averaging: from ``rlnImageName`` (one MRC per particle), or cut
    from ``tomogram`` around ``rlnCoordinateX/Y/Z`` with box ``box``.

    Boxes that cross the tomogram's faces are padded (:func:`extract_subtomograms`); all-zero
    subtomograms and particles centred outside the tomogram are skipped and listed; an odd or
    missing box, a tomogram whose voxel size differs from the STAR file's, or no particle
    left raise :class:`InputError`.

    ``rows``: load only these rows of the STAR file (a shard of a large set, or one tomogram's
    particles); ``ParticleSet.rows`` are then among them. ``allow_empty``: return an empty set
    (every row skipped) instead of raising.
    """
    from ...io import read_mrc, read_subtomograms
    from ...io.mrc import voxel_size_isotropic

    if tomogram is not None:
        if box is None:
            raise InputError("a box size (--box N) to extract subtomograms from the tomogram", path=star_path,
                             field="box", got="none")
        vol = read_mrc(tomogram, mmap=True, validate=False)
        return particles_from_volume(star_path, vol.data, voxel_size_isotropic(vol), box=box, rows=rows,
                                     path=tomogram, allow_empty=allow_empty)
    if box is not None:
        check_box_size(box, path=star_path)
    volumes, table = read_subtomograms(star_path, rows=rows)
    n_box = volumes.shape[-1]
    if not (volumes.shape[1] == volumes.shape[2] == n_box):
        raise InputError("cubic subtomograms", path=star_path, field="rlnImageName",
                         got=f"shape {volumes.shape[1:]}")
    if n_box % 2:
        raise InputError("subtomograms of an even box size", path=star_path, field="box", got=n_box)
    if box is not None and int(box) != n_box:
        raise InputError(f"--box equal to the subtomograms' box ({n_box})", path=star_path, field="box",
                         got=box)
    empty = ~volumes.reshape(len(volumes), -1).any(1)
    which = np.arange(len(volumes)) if rows is None else np.asarray(rows, dtype=np.int64)
    skipped = [Skipped(int(which[i]), "subtomogram is all zero") for i in np.flatnonzero(empty)]
    kept = which[~empty]
    return _particle_set(star_path, table, volumes[~empty], kept, float(table.voxel_size), np.zeros((len(kept), 3)),
                         skipped, "subtomograms", np.ones(len(kept)), None, allow_empty)


def particles_from_volume(star_path: str | os.PathLike, tomogram, voxel_size: float, *, box: int, rows=None,
                          path=None, allow_empty: bool = False) -> ParticleSet:
    """Particles of ``star_path`` (all rows, or ``rows``) cut from an opened tomogram ``(z, y, x)`` of
    voxel size ``voxel_size`` Å with box ``box`` (:func:`load_particle_set`'s tomogram path, for a
    tomogram that is already in memory or memory-mapped, e.g. a copick run's). ``path`` names the
    tomogram in messages. Centred RELION 5 coordinates are converted with this tomogram's shape, so
    ``rows`` must be particles of this tomogram."""
    from ...io import coordinates_xyz, read_particles

    check_box_size(box, path=star_path)
    tvox = float(voxel_size)
    table = read_particles(star_path, tomogram_shape=np.shape(tomogram), require=("coordinates3d",))
    if table.voxel_size is not None and abs(table.voxel_size - tvox) > 1e-3 * tvox:
        raise InputError(f"a tomogram with the STAR file's voxel size ({table.voxel_size:g} Å)",
                         path=path, field="voxel_size", got=f"{tvox:g} Å")
    which = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
    ext = extract_subtomograms(tomogram, coordinates_xyz(table)[which], int(box), path=path)
    skipped = [Skipped(int(which[sk.row]), sk.reason) for sk in ext.skipped]
    return _particle_set(star_path, table, ext.volumes, which[np.asarray(ext.rows, dtype=np.int64)], tvox,
                         ext.residual_origins_voxels, skipped, "tomogram", ext.fraction_inside, ext.inside_bounds,
                         allow_empty)


def _particle_set(star_path, table, volumes, rows, voxel, resid, skipped, source, fraction, bounds,
                  allow_empty=False) -> ParticleSet:
    from ...io import euler_deg, origins_angstrom

    if len(rows) == 0 and not allow_empty:
        raise InputError("at least one usable particle", path=star_path, field="particles",
                         got=f"all {len(skipped)} skipped: " + "; ".join(f"row {s.row}: {s.reason}"
                                                                        for s in skipped[:3]))
    return ParticleSet(volumes=volumes, rows=np.asarray(rows, dtype=np.int64), table=table, voxel_size=float(voxel),
                       euler_deg=euler_deg(table)[rows], origins_angstrom=origins_angstrom(table)[rows],
                       extraction_origins_voxels=np.asarray(resid, dtype=np.float64), skipped=skipped, source=source,
                       fraction_inside=fraction, inside_bounds=bounds)


def relion_origins_angstrom(origins_voxels, extraction_origins_voxels, voxel_size: float) -> np.ndarray:
    """RELION origins (Å) of aligned particles: the shifts an alignment found, ``(m, 3)`` (x, y, z) voxels
    relative to the box centre, less the extraction's sub-voxel remainder ``round(c) - c`` (x, y, z voxels,
    0 for boxes read from files), times the voxel size. The particle's centre is then
    ``coordinate - origin / voxel_size`` (CONVENTIONS.md)."""
    return (np.asarray(origins_voxels, dtype=np.float64) - np.asarray(extraction_origins_voxels, dtype=np.float64)) \
        * float(voxel_size)


def write_aligned_star(out, pset, result, *, overwrite: bool = False, extra_columns: dict | None = None) -> Path:
    """Write the kept particles with the alignment: every input column kept, angles, origins (Å) and
    ``cryoalignCorrelation`` set; ``rlnImageName`` re-pointed relative to the new file; atomic.

    ``extra_columns``: ``{label: (m,) values}`` set as well (e.g. ``rlnClassNumber``), one per kept particle.
    """
    import pandas as pd

    from ...io import check_output_path, relocate_image_names, write_star
    from ...io.star import (
        ANGLE_COLUMNS,
        IMAGE_COLUMN,
        ORIGIN_COLUMNS,
        ORIGIN_PIXEL_COLUMNS,
    )

    out = check_output_path(out, overwrite=overwrite)
    df = pset.table.data.iloc[pset.rows].reset_index(drop=True).copy()
    df = df.drop(columns=[c for c in ORIGIN_PIXEL_COLUMNS if c in df.columns])
    eul = result.euler_deg
    # origins found are relative to the box centre; subtract the extraction remainder (tomogram boxes)
    ori = relion_origins_angstrom(result.origins_voxels, pset.extraction_origins_voxels, pset.voxel_size)
    for j, c in enumerate(ANGLE_COLUMNS):
        df[c] = eul[:, j]
    for j, c in enumerate(ORIGIN_COLUMNS):
        df[c] = ori[:, j]
    df[SCORE_COLUMN] = np.asarray(result.scores, dtype=np.float64)
    if pset.source == "tomogram" and pset.fraction_inside is not None:
        df[FRACTION_INSIDE_COLUMN] = np.round(np.asarray(pset.fraction_inside, dtype=np.float64), 4)
    for label, values in (extra_columns or {}).items():
        df[label] = np.asarray(values).reshape(-1)
    src = pset.table.path
    if IMAGE_COLUMN in df.columns and src is not None:
        df[IMAGE_COLUMN] = relocate_image_names(df[IMAGE_COLUMN].astype(str), star_path=src, out_path=out)
    blocks = {}
    if pset.table.general:
        blocks["general"] = dict(pset.table.general)
    optics = pset.table.optics
    if optics is None:
        optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                               "rlnImagePixelSize": [pset.voxel_size]})
        df["rlnOpticsGroup"] = 1
    blocks["optics"] = optics
    blocks["particles"] = df
    return write_star(out, blocks, overwrite=overwrite)


def particle_ctf(pset: ParticleSet, *, mode: str = "auto"):
    """The per-particle CTF recorded in the STAR file of ``pset``, for CTF-aware alignment and averaging.

    ``mode``: ``"auto"`` uses it when the particles' table has ``rlnDefocusU`` (Å; the mean with
    ``rlnDefocusV`` when present) and returns None otherwise; ``"none"`` returns None. The optics
    (``rlnVoltage`` kV, ``rlnSphericalAberration`` mm, ``rlnAmplitudeContrast``) come from the
    particle rows or the optics block (one value each; RELION's defaults 300, 2.7, 0.1 where
    absent), and ``rlnCtfDataArePhaseFlipped`` / ``rlnCtfDataAreCtfPremultiplied`` (1 = yes) from
    the optics block. Returns :class:`~..ctf.ParticleCTF` or None.

    Raises
    ------
    InputError
        An unknown ``mode``; a defocus that is not a finite number >= 0 (names the file, the
        column and the row); optics values that differ between rows.
    """
    from ..ctf import ParticleCTF

    if mode not in ("auto", "none"):
        raise InputError("'auto' or 'none'", field="--ctf", got=mode)
    data = pset.table.data
    if mode == "none" or "rlnDefocusU" not in data.columns:
        return None
    path = getattr(pset.table, "path", None)
    where = f"{path}: " if path else ""
    rows = np.asarray(pset.rows)
    cols = ["rlnDefocusU"] + (["rlnDefocusV"] if "rlnDefocusV" in data.columns else [])
    vals = []
    for c in cols:
        v = np.asarray(data[c].to_numpy()[rows], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(v) | (v < 0))
        if len(bad):
            raise InputError("a defocus in Å, finite and >= 0", field=f"{where}{c}",
                             got=f"{v[bad[0]]!r} in row {int(rows[bad[0]])}")
        vals.append(v)
    defocus_um = np.mean(vals, axis=0) * 1e-4

    optics = getattr(pset.table, "optics", None)

    def one(label, default):
        for src in (data, optics):
            if src is not None and label in src.columns:
                u = np.unique(np.asarray(src[label].to_numpy() if src is optics else src[label].to_numpy()[rows],
                                         dtype=np.float64))
                if len(u) > 1:
                    raise InputError(f"one value of {label} for all particles", field=f"{where}{label}",
                                     got=", ".join(f"{x:g}" for x in u[:4]))
                return float(u[0])
        return default

    return ParticleCTF(defocus_um, voxel_size_angstrom=float(pset.voxel_size), voltage_kv=one("rlnVoltage", 300.0),
                       cs_mm=one("rlnSphericalAberration", 2.7), amplitude_contrast=one("rlnAmplitudeContrast", 0.1),
                       phase_flipped=one("rlnCtfDataArePhaseFlipped", 0.0) == 1.0,
                       premultiplied=one("rlnCtfDataAreCtfPremultiplied", 0.0) == 1.0)
