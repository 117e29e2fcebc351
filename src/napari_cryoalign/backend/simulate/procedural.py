"""Procedurally generated protein-like density maps: structures nobody has seen.

Used (1) as **held-out structures** for benchmarks of methods tuned on the packaged maps
(:mod:`.structures`), and (2) as a broad training corpus for learned methods, so that a
network learns alignment rather than the identities of a few structures (issue 18). The
seed names the structure: ``procedural_structure(seed)`` is deterministic, and the
simulator accepts the name ``"procedural:<seed>"`` wherever it takes a packaged name.

Seed ranges are a convention of this project, so that training and evaluation never meet:

* ``0 <= seed < 10000``: **training / tuning** (``TRAINING_SEEDS``);
* ``seed >= 10000``: **held-out** (``HELD_OUT_SEEDS``), only for evaluation.

Model (all lengths in Å):

1. a mass ``M`` drawn in ``mass_kda`` (default 100-450 kDa), i.e. ``M / 110`` pseudo-atoms
   (one per residue);
2. 2-6 subunits sharing the residues (Dirichlet), each either a **globule** (residues uniform
   in an ellipsoid of volume ``n * 136 Å³``, protein's 0.81 Da/Å³, axis ratios up to 2.5) or a
   **helix bundle** (tubes of 24-48 residues, 1.5 Å rise per residue, 2.3 Å about each axis,
   packed side by side 10 Å apart and bent together);
3. subunits placed one by one in contact with a random earlier one (centre distance 0.75 x
   the sum of their radii) in a random direction: compact, asymmetric assemblies;
4. the pseudo-atoms spread onto the grid with trilinear weights and blurred by the Gaussian
   envelope ``exp(-B k²/4)``, ``B = 4 ln 2 · resolution²`` (0.5 at ``1/resolution``; the
   packaged maps' recipe), the spreading undone by ``1/sinc²``, band-limited to Nyquist;
5. centred on the centre of mass (index ``N // 2``), scaled like the packaged maps: the
   integral is ``0.0028 Å`` per dalton (their measured ratio), protein positive.

Limitations: no secondary structure beyond the tubes, no solvent, no symmetry (a random
assembly has none, which is what the alignment goals ask for).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ...errors import InputError

__all__ = ["HELD_OUT_SEEDS", "TRAINING_SEEDS", "is_procedural_name", "procedural_structure", "procedural_seed"]

TRAINING_SEEDS = range(0, 10000)
HELD_OUT_SEEDS = range(10000, 2 ** 31)
_PREFIX = "procedural:"
_DA_PER_RESIDUE = 110.0
_A3_PER_RESIDUE = _DA_PER_RESIDUE / 0.81  # protein density 0.81 Da/Å^3
_INTEGRAL_PER_DA = 0.0028  # packaged maps: sum(density) * voxel^3 / mass (structures.json), Å


def is_procedural_name(name: str) -> bool:
    """True for ``"procedural:<seed>"``."""
    return isinstance(name, str) and name.startswith(_PREFIX)


def procedural_seed(name: str) -> int:
    """The seed of ``"procedural:<seed>"`` (``InputError`` otherwise)."""
    try:
        seed = int(name[len(_PREFIX):]) if is_procedural_name(name) else -1
    except ValueError:
        seed = -1
    if seed < 0:
        raise InputError("'procedural:<seed>' with an integer seed >= 0", field="structure", got=repr(name))
    return seed


def _unit(rng, n=None):
    v = rng.normal(size=(3,) if n is None else (n, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _globule(rng, n: int) -> np.ndarray:
    vol = n * _A3_PER_RESIDUE
    ratios = np.exp(rng.uniform(0.0, math.log(2.5), size=3))
    ratios /= np.prod(ratios) ** (1 / 3)
    axes = ratios * (3 * vol / (4 * math.pi)) ** (1 / 3)
    pts = []
    while sum(len(p) for p in pts) < n:
        u = rng.uniform(-1, 1, size=(2 * n, 3))
        pts.append(u[(u ** 2).sum(1) <= 1.0])
    u = np.concatenate(pts)[:n]
    return (u * axes) @ _random_rotation(rng).T


def _bundle(rng, n: int) -> np.ndarray:
    """Tubes of at most 24-48 residues (36-72 Å) packed side by side, 10 Å between axes, bent together."""
    seg = int(rng.integers(24, 49))
    k = max(2, math.ceil(n / seg))
    per = np.full(k, n // k)
    per[: n - per.sum()] += 1
    offsets = [np.zeros(2)]
    while len(offsets) < k:  # grow a compact 2D packing of the tube axes
        base = offsets[int(rng.integers(len(offsets)))]
        a = rng.uniform(0, 2 * math.pi)
        cand = base + 10.0 * np.array([math.cos(a), math.sin(a)])
        if all(np.linalg.norm(cand - o) > 8.0 for o in offsets):
            offsets.append(cand)
    bend = rng.normal(scale=0.004, size=2)  # curvature (1/Å) of the common axis
    pts = []
    for off, m in zip(offsets, per):
        t = (np.arange(m) - m / 2) * 1.5  # 1.5 Å rise per residue
        ang = rng.uniform(0, 2 * math.pi) + t * (2 * math.pi / 5.4)  # alpha-helix pitch 5.4 Å
        x = off[0] + 2.3 * np.cos(ang) + bend[0] * t ** 2
        y = off[1] + 2.3 * np.sin(ang) + bend[1] * t ** 2
        pts.append(np.stack([x, y, t], 1))
    return np.concatenate(pts) @ _random_rotation(rng).T


def _radius(p: np.ndarray) -> float:
    return float(np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean()) * math.sqrt(5 / 3))


def _pseudo_atoms(seed: int, mass_kda: tuple[float, float]) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    mass = rng.uniform(*mass_kda) * 1000.0
    n_res = max(20, int(round(mass / _DA_PER_RESIDUE)))
    k = int(rng.integers(2, 7))
    sizes = np.maximum(10, np.round(rng.dirichlet(np.full(k, 2.0)) * n_res)).astype(int)
    subunits = []
    for m in sizes:
        sub = _bundle(rng, int(m)) if rng.uniform() < 0.3 else _globule(rng, int(m))
        subunits.append(sub - sub.mean(0))
    placed = [subunits[0]]
    for sub in subunits[1:]:
        anchor = placed[int(rng.integers(len(placed)))]
        d = 0.75 * (_radius(anchor) + _radius(sub))
        placed.append(sub + anchor.mean(0) + d * _unit(rng))
    pts = np.concatenate(placed)
    return pts - pts.mean(0)


@functools.lru_cache(maxsize=64)
def _cached(seed: int, voxel: float, box: int, resolution: float, lo: float, hi: float) -> np.ndarray:
    pts = _pseudo_atoms(seed, (lo, hi))
    c = box // 2
    g = pts / voxel + c  # (x, y, z) in voxels, centre of mass at N // 2
    i0 = np.floor(g).astype(np.int64)
    f = g - i0
    grid = np.zeros((box, box, box), dtype=np.float64)  # (z, y, x)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = (np.where(dx, f[:, 0], 1 - f[:, 0]) * np.where(dy, f[:, 1], 1 - f[:, 1])
                     * np.where(dz, f[:, 2], 1 - f[:, 2]))
                ix, iy, iz = i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz
                ok = (ix >= 0) & (ix < box) & (iy >= 0) & (iy < box) & (iz >= 0) & (iz < box)
                np.add.at(grid, (iz[ok], iy[ok], ix[ok]), w[ok])
    t = torch.from_numpy(grid)
    fz = torch.fft.fftfreq(box, d=1.0, dtype=torch.float64)
    fx = torch.fft.rfftfreq(box, d=1.0, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(fz, fz, fx, indexing="ij")
    k2 = (kz ** 2 + ky ** 2 + kx ** 2) / voxel ** 2  # (1/Å)^2
    b = 4.0 * math.log(2.0) * resolution ** 2
    sinc2 = (torch.sinc(kz) * torch.sinc(ky) * torch.sinc(kx)) ** 2
    filt = torch.exp(-b * k2 / 4.0) / sinc2.clamp(min=0.2)
    filt = filt * ((kz ** 2 + ky ** 2 + kx ** 2) <= 0.25)
    out = torch.fft.irfftn(torch.fft.rfftn(t) * filt, s=(box, box, box)).numpy()
    out *= len(pts) * _DA_PER_RESIDUE * _INTEGRAL_PER_DA / max(out.sum(), 1e-12) / voxel ** 3
    out = out.astype(np.float32)
    out.setflags(write=False)
    return out


def procedural_structure(seed: int, *, voxel_size_angstrom: float = 10.0, box: int | None = None,
                         resolution_angstrom: float | None = None,
                         mass_kda: tuple[float, float] = (100.0, 450.0)) -> tuple[np.ndarray, float]:
    """A protein-like density map generated from ``seed`` (module docstring).

    Parameters
    ----------
    seed : integer >= 0; ``< 10000`` for training/tuning, ``>= 10000`` held out (module docstring)
    voxel_size_angstrom : voxel size (Å, default 10)
    box : cube edge (voxels); default: the smallest even box holding the assembly with 20 % margin
    resolution_angstrom : resolution of the Gaussian envelope (Å); default ``max(8, 2 * voxel)``
    mass_kda : the range the mass is drawn from (kDa)

    Returns
    -------
    ``(density (z, y, x) float32 read-only, voxel_size_angstrom)``: centre of mass at ``N // 2``,
    protein positive, on the packaged maps' scale.
    """
    if int(seed) != seed or seed < 0:
        raise InputError("an integer seed >= 0", field="seed", got=seed)
    if not voxel_size_angstrom > 0:
        raise InputError("a voxel size > 0 Å", field="voxel_size_angstrom", got=voxel_size_angstrom)
    lo, hi = (float(m) for m in mass_kda)
    if not 0 < lo <= hi:
        raise InputError("a mass range 0 < min <= max (kDa)", field="mass_kda", got=mass_kda)
    voxel = float(voxel_size_angstrom)
    res = max(8.0, 2.0 * voxel) if resolution_angstrom is None else float(resolution_angstrom)
    if box is None:
        pts = _pseudo_atoms(int(seed), (lo, hi))
        extent = 2.0 * float(np.abs(pts).max()) * 1.2 / voxel + 2
        box = int(math.ceil(extent / 2.0)) * 2
    if int(box) != box or box < 8:
        raise InputError("an integer box >= 8 voxels", field="box", got=box)
    return _cached(int(seed), voxel, int(box), res, lo, hi), voxel
