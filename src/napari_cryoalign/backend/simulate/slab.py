"""The sample of a simulated tomogram: an ice slab with particles, lipid membranes and gold beads.

The stages of :func:`~napari_cryoalign.backend.simulate.tomogram.simulate_tomogram_job` that
build the sample, in the order they draw random numbers from the simulation's generator:

1. :func:`species_maps` - the particle species as cubic maps of the Coulomb potential
   relative to ice (V), each with the radius of its bounding sphere;
2. :func:`place_slab` - the ice slab, vesicles, flat membranes and gold beads (:class:`Slab`);
3. :func:`place_particles` - non-overlapping particle positions, classes and orientations
   (the truth table, :class:`ParticleTruth`);
4. :func:`sample_potential` - the potential volume of all of it.

Coordinates are voxels of the tomogram, ``(x, y, z)`` order, voxel ``[z, y, x]`` at
``(x, y, z)``; the potential is in volts relative to ice. See the module docstring of
:mod:`.tomogram` for the physics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ...errors import InputError
from ..geometry import euler_to_matrix, matrix_to_euler, random_rotations, transform_reference_to_particle

__all__ = [
    "PROTEIN_DENSITY_DA_PER_A3",
    "Species",
    "Slab",
    "ParticleTruth",
    "species_maps",
    "species_probabilities",
    "place_slab",
    "place_particles",
    "sample_potential",
    "bilayer_profile",
]

PROTEIN_DENSITY_DA_PER_A3 = 0.813  # 1.35 g/cm^3

#: half thickness of a lipid bilayer including a margin (nm): particles keep this far from its mid-plane
BILAYER_HALF_NM = 4.0


# ----------------------------------------------------------------------------------------
# Results of the stages
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Species:
    """One particle species.

    Attributes
    ----------
    name : species name (the class name of the truth table)
    map : ``(b, b, b)`` float32 potential relative to ice (V), ``(z, y, x)``, centre at index
        ``b // 2``, zero outside the bounding sphere
    radius : bounding-sphere radius (voxels) holding 99.5 % of the positive mass
    source : where the map came from (PDB id and package, or "user map")
    mass_da : mass (Da) of a packaged structure, else None
    """

    name: str
    map: np.ndarray
    radius: float
    source: str = ""
    mass_da: float | None = None


@dataclass(frozen=True, eq=False)
class Slab:
    """The ice slab and what lies in it besides the particles (voxels of the tomogram, ``(x, y, z)``).

    Attributes
    ----------
    ice_thickness_nm : ice thickness (nm)
    z_range : ``(z_lo, z_hi)`` ice surfaces (voxels, may lie outside ``[0, nz)``)
    vesicles : ``((centre (3,), radius), ...)`` spherical bilayers (voxels)
    membranes : ``((point (3,), normal (3,)), ...)`` flat bilayers, unit normal in the x-y plane
    gold : ``(centre (3,), ...)`` gold-bead centres (voxels), at the ice surfaces
    gold_radius : gold-bead radius (voxels)
    shell : half thickness of a bilayer including a margin (voxels)
    """

    ice_thickness_nm: float
    z_range: tuple[float, float]
    vesicles: tuple[tuple[np.ndarray, float], ...] = ()
    membranes: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    gold: tuple[np.ndarray, ...] = ()
    gold_radius: float = 0.0
    shell: float = 0.0


@dataclass(frozen=True)
class ParticleTruth:
    """Ground truth of the particles.

    Attributes
    ----------
    coordinates_xyz : ``(n, 3)`` float, particle centres in voxels of the tomogram, 0-based
        (``rlnCoordinateX/Y/Z``: voxel ``[z, y, x]`` has coordinates ``(x, y, z)``)
    euler_deg : ``(n, 3)`` RELION ``(rot, tilt, psi)`` degrees
    classes : ``(n,)`` int, 1-based species index into ``class_names``
    class_names : species names (``class_names[k - 1]`` for class ``k``)
    radii_voxels : ``(n,)`` bounding-sphere radius of each particle (voxels)
    """

    coordinates_xyz: np.ndarray
    euler_deg: np.ndarray
    classes: np.ndarray
    class_names: tuple[str, ...]
    radii_voxels: np.ndarray

    @property
    def matrices(self) -> np.ndarray:
        """``(n, 3, 3)`` matrices ``A`` of the Euler angles."""
        return euler_to_matrix(self.euler_deg)

    def __len__(self) -> int:
        return int(self.coordinates_xyz.shape[0])


# ----------------------------------------------------------------------------------------
# Species
# ----------------------------------------------------------------------------------------
def _mass_radius(vol: np.ndarray, fraction: float = 0.995) -> float:
    """Radius (voxels, from index N//2) containing ``fraction`` of the positive mass."""
    v = np.clip(vol, 0, None)
    tot = v.sum()
    if tot <= 0:
        return 1.0
    c = np.array([n // 2 for n in vol.shape], dtype=np.float64)
    grids = np.meshgrid(*[np.arange(n) - ci for n, ci in zip(vol.shape, c)], indexing="ij")
    r = np.sqrt(sum(g * g for g in grids)).ravel()
    order = np.argsort(r)
    cum = np.cumsum(v.ravel()[order])
    k = int(np.searchsorted(cum, fraction * tot))
    return float(r[order][min(k, r.size - 1)]) + 0.5


def _user_map(name: str, item, voxel_size: float) -> np.ndarray:
    """A user map ``array`` or ``(array, voxel_size_Å)`` as a cubic float32 map at ``voxel_size`` (Å)."""
    arr, vox = item if isinstance(item, tuple) else (item, voxel_size)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise InputError("a cubic (z, y, x) map", field=f"maps[{name!r}]", got=f"shape {arr.shape}")
    if abs(float(vox) - voxel_size) > 1e-3 * voxel_size:
        from ..fourier import resample_voxel_size

        arr, _ = resample_voxel_size(arr, from_voxel_angstrom=float(vox), to_voxel_angstrom=voxel_size)
        arr = np.asarray(arr, dtype=np.float32)
    return arr


def _packaged_map(name: str, voxel_size: float, protein_v: float, ice_v: float) -> tuple[np.ndarray, dict]:
    """A packaged structure at ``voxel_size`` (Å), scaled so that it integrates to
    ``(protein_v - ice_v) * mass / density`` (V Å³): the particle displaces ice. Returns the map and its info."""
    from . import structures as S

    info = S.structure_info(name)
    arr, vox = S.load_structure_map(name, voxel_size_angstrom=voxel_size)
    mass = float(info.get("mass_da", 0.0))
    integral = float(arr.sum()) * vox**3
    if mass <= 0 or integral <= 0:
        raise InputError("a structure with a mass and a positive map", field="structures", got=name)
    scale = (protein_v - ice_v) * (mass / PROTEIN_DENSITY_DA_PER_A3) / integral
    return (arr * scale).astype(np.float32), info


def _bounding_sphere_box(m: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre-pad or crop a cubic map to a box holding its rotated bounding sphere, zero outside the
    sphere (so corners never matter after rotation). Returns the map and the sphere's radius (voxels)."""
    r = _mass_radius(m)
    box = 2 * int(math.ceil(r)) + 3
    n = m.shape[0]
    if box != n:
        out = np.zeros((box,) * 3, np.float32)
        src0 = max(0, n // 2 - box // 2)
        dst0 = max(0, box // 2 - n // 2)
        k = min(n - src0, box - dst0)
        out[dst0:dst0 + k, dst0:dst0 + k, dst0:dst0 + k] = m[src0:src0 + k, src0:src0 + k, src0:src0 + k]
        m = out
    g = np.arange(box) - box // 2
    rr = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    return m * np.clip(r + 1.0 - rr, 0.0, 1.0).astype(np.float32), r


def species_maps(structures: Sequence[str] | None, *, maps: Mapping[str, object] | None = None,
                 voxel_size_angstrom: float, protein_potential_v: float, ice_potential_v: float) -> list[Species]:
    """Load, scale and box the particle species (stage 1).

    Parameters
    ----------
    structures : packaged structure names (:func:`.structures.list_structures`), or None
    maps : user species ``{name: array or (array, voxel_size_Å)}``: cubic ``(z, y, x)`` maps of
        the potential relative to ice (V), centre at index ``N // 2``; listed first
    voxel_size_angstrom : voxel size of the tomogram (Å); maps are resampled to it
    protein_potential_v, ice_potential_v : mean inner potentials (V) that scale packaged maps

    Returns
    -------
    list of :class:`Species`, user maps first, then ``structures`` in order
    """
    species = []
    for name, item in (maps or {}).items():
        species.append((str(name), _user_map(name, item, voxel_size_angstrom), "user map (V relative to ice)", None))
    for name in structures or []:
        arr, info = _packaged_map(name, voxel_size_angstrom, protein_potential_v, ice_potential_v)
        species.append((name, arr, f"{info.get('pdb_id', '')} ({info.get('package', '')})",
                        float(info.get("mass_da", 0.0))))
    if not species:
        raise InputError("at least one structure name or map", field="structures", got="none")
    out = []
    for name, arr, source, mass in species:
        m, r = _bounding_sphere_box(arr)
        out.append(Species(name=name, map=m, radius=r, source=source, mass_da=mass))
    return out


def species_probabilities(n_species: int, abundances: Sequence[float] | None = None) -> np.ndarray:
    """``(n_species,)`` probabilities of each species from relative ``abundances`` (default equal)."""
    if abundances is None:
        return np.full(n_species, 1.0 / n_species)
    probs = np.asarray(abundances, dtype=np.float64)
    if probs.shape != (n_species,) or np.any(probs < 0) or probs.sum() <= 0:
        raise InputError(f"{n_species} non-negative abundances", field="abundances", got=list(probs))
    return probs / probs.sum()


# ----------------------------------------------------------------------------------------
# Geometry: the slab, then the particles
# ----------------------------------------------------------------------------------------
def _place_vesicles(rng: np.random.Generator, n: int, *, radius_range_nm: tuple[float, float], voxel_nm: float,
                    shape_zyx, z_range) -> list[tuple[np.ndarray, float]]:
    """``n`` non-overlapping spheres in the ice, radius drawn in ``radius_range_nm`` (centres and radii
    returned in voxels); a vesicle that finds no place in 100 tries is left out."""
    nz, ny, nx = shape_zyx
    z_lo, z_hi = z_range
    vesicles: list[tuple[np.ndarray, float]] = []
    for _ in range(n):
        rv = rng.uniform(*radius_range_nm) / voxel_nm
        rv = min(rv, max(2.0, (min(z_hi, nz - 1) - max(z_lo, 0)) / 2 - 3.0))
        for _try in range(100):
            c = np.array([rng.uniform(rv, nx - 1 - rv), rng.uniform(rv, ny - 1 - rv),
                          rng.uniform(max(z_lo, 0) + rv, min(z_hi, nz - 1) - rv) if z_hi - z_lo > 2 * rv + 1
                          else (z_lo + z_hi) / 2])
            if all(np.linalg.norm(c - v[0]) > rv + v[1] + 3.0 for v in vesicles):
                vesicles.append((c, rv))
                break
    return vesicles


def _place_membranes(rng: np.random.Generator, n: int, *, shape_zyx) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` flat membranes through the middle of the slab: a point and a unit normal in the x-y plane."""
    nz, ny, nx = shape_zyx
    membranes = []
    for _ in range(n):
        phi = rng.uniform(0, math.pi)
        nrm = np.array([math.cos(phi), math.sin(phi), 0.0])
        p0 = np.array([rng.uniform(0.2, 0.8) * nx, rng.uniform(0.2, 0.8) * ny, nz / 2])
        membranes.append((p0, nrm))
    return membranes


def _place_gold(rng: np.random.Generator, n: int, *, radius: float, shape_zyx, z_range, obstacles) -> list[np.ndarray]:
    """``n`` non-overlapping beads of ``radius`` (voxels) touching the top or bottom ice surface, clear
    of ``obstacles``; a bead that finds no place in 200 tries is left out."""
    nz, ny, nx = shape_zyx
    z_lo, z_hi = z_range
    gold: list[np.ndarray] = []
    for _ in range(n):
        for _try in range(200):
            top = rng.random() < 0.5
            zc = (z_hi - radius - 0.5) if top else (z_lo + radius + 0.5)
            c = np.array([rng.uniform(radius, nx - 1 - radius), rng.uniform(radius, ny - 1 - radius), zc])
            if all(np.linalg.norm(c - g) > 2 * radius + 1 for g in gold) and all(ob(c[None], radius)[0]
                                                                               for ob in obstacles):
                gold.append(c)
                break
    return gold


def _obstacles(slab: Slab, *, gold_gap: float | None = None) -> list[Callable[[np.ndarray, float], np.ndarray]]:
    """Tests ``ok(points (k, 3), r) -> (k,) bool``: a sphere of radius ``r`` (voxels) at each point stays
    clear of every bilayer of ``slab`` (and, with ``gold_gap``, of every gold bead by that extra gap)."""
    obstacles = []
    for c, rv in slab.vesicles:
        obstacles.append(lambda p, r, c=c, rv=rv: np.abs(np.linalg.norm(p - c, axis=1) - rv) >= r + slab.shell)
    for p0, nrm in slab.membranes:
        obstacles.append(lambda p, r, p0=p0, nrm=nrm: np.abs((p - p0) @ nrm) >= r + slab.shell)
    if gold_gap is not None:
        for g in slab.gold:
            obstacles.append(lambda p, r, g=g: np.linalg.norm(p - g, axis=1) >= r + slab.gold_radius + gold_gap)
    return obstacles


def place_slab(shape: Sequence[int], *, voxel_size_angstrom: float, rng: np.random.Generator,
               ice_thickness_nm: float | None = None, n_vesicles: int = 0,
               vesicle_radius_nm: tuple[float, float] = (15.0, 40.0), n_membranes: int = 0, n_gold: int = 0,
               gold_diameter_nm: float = 10.0) -> Slab:
    """The ice slab, centred in z, and its vesicles, flat membranes and gold beads (stage 2).

    Parameters
    ----------
    shape : ``(z, y, x)`` tomogram size (voxels)
    voxel_size_angstrom : voxel size (Å)
    rng : the simulation's generator (vesicles, then membranes, then gold draw from it)
    ice_thickness_nm : ice thickness (nm; default the full depth)
    n_vesicles, vesicle_radius_nm : vesicles and their radius range (nm)
    n_membranes : flat membranes crossing the slab
    n_gold, gold_diameter_nm : gold beads at the ice surfaces and their diameter (nm)

    Returns
    -------
    :class:`Slab` (fewer vesicles or beads than asked when they do not fit)
    """
    nz = int(shape[0])
    vox_nm = voxel_size_angstrom / 10.0
    ice_nm = nz * vox_nm if ice_thickness_nm is None else float(ice_thickness_nm)
    ice_vox = ice_nm / vox_nm
    z_range = (nz // 2 - ice_vox / 2.0, nz // 2 + ice_vox / 2.0)
    vesicles = _place_vesicles(rng, n_vesicles, radius_range_nm=vesicle_radius_nm, voxel_nm=vox_nm, shape_zyx=shape,
                               z_range=z_range)
    membranes = _place_membranes(rng, n_membranes, shape_zyx=shape)
    slab = Slab(ice_thickness_nm=ice_nm, z_range=z_range, vesicles=tuple(vesicles), membranes=tuple(membranes),
                gold_radius=gold_diameter_nm / 2.0 / vox_nm, shell=BILAYER_HALF_NM / vox_nm)
    gold = _place_gold(rng, n_gold, radius=slab.gold_radius, shape_zyx=shape, z_range=z_range,
                       obstacles=_obstacles(slab))
    return replace(slab, gold=tuple(gold))


def _placement(rng, *, n, radii_by_class, class_probs, shape_zyx, z_range, obstacles, min_gap, max_tries=4000):
    """Random sequential addition of non-overlapping spheres; returns centres (k, 3) xyz, classes (k,), radii (k,)."""
    nz, ny, nx = shape_zyx
    classes = rng.choice(len(radii_by_class), size=n, p=class_probs)
    # larger species first: easier packing
    classes = classes[np.argsort([-radii_by_class[c] for c in classes], kind="stable")]
    centres = np.zeros((0, 3))
    radii = np.zeros(0)
    placed_cls = []
    for c in classes:
        r = radii_by_class[c]
        lo = np.array([r, r, max(z_range[0] + r, r)])
        hi = np.array([nx - 1 - r, ny - 1 - r, min(z_range[1] - r, nz - 1 - r)])
        if np.any(hi < lo):
            continue
        ok_pt = None
        for _ in range(max(1, max_tries // 256)):
            cand = rng.uniform(lo, hi, size=(256, 3))
            good = np.ones(len(cand), bool)
            if len(centres):
                d = np.linalg.norm(cand[:, None, :] - centres[None], axis=-1)
                good &= np.all(d >= radii[None] + r + min_gap, axis=1)
            for ob in obstacles:
                good &= ob(cand, r + min_gap)
            if good.any():
                ok_pt = cand[np.argmax(good)]
                break
        if ok_pt is None:
            continue
        centres = np.vstack([centres, ok_pt])
        radii = np.append(radii, r)
        placed_cls.append(c)
    return centres, np.asarray(placed_cls, dtype=np.int64), radii


def place_particles(species: Sequence[Species], slab: Slab, *, n: int, shape: Sequence[int],
                    rng: np.random.Generator, probabilities: np.ndarray | None = None,
                    min_gap_nm: float = 1.0, voxel_size_angstrom: float) -> ParticleTruth:
    """Up to ``n`` particles at random, non-overlapping positions with uniformly random orientations (stage 3).

    Species are drawn with ``probabilities`` (default equal); the larger ones are placed first.
    Bounding spheres keep ``min_gap_nm`` from each other, from the bilayers of ``slab`` and (twice
    that) from its gold beads, and stay inside the ice and the volume. A particle that finds no
    place is left out (``len(result) < n``).

    Parameters
    ----------
    species : the species (:func:`species_maps`); slab : the slab (:func:`place_slab`)
    n : number of particles asked for
    shape : ``(z, y, x)`` tomogram size (voxels)
    rng : the simulation's generator (classes, positions, then orientations draw from it)
    probabilities : ``(n_species,)`` (:func:`species_probabilities`)
    min_gap_nm : gap between bounding spheres (nm)
    voxel_size_angstrom : voxel size (Å)

    Returns
    -------
    :class:`ParticleTruth`: centres ``(k, 3)`` (x, y, z) voxels, RELION Euler angles, 1-based classes
    """
    if probabilities is None:
        probabilities = species_probabilities(len(species))
    gap = min_gap_nm / (voxel_size_angstrom / 10.0)
    centres, cls, radii = _placement(rng, n=n, radii_by_class=[sp.radius for sp in species],
                                     class_probs=probabilities, shape_zyx=tuple(shape), z_range=slab.z_range,
                                     obstacles=_obstacles(slab, gold_gap=gap), min_gap=gap)
    euler = matrix_to_euler(random_rotations(len(cls), seed=rng)) if len(cls) else np.zeros((0, 3))
    return ParticleTruth(
        coordinates_xyz=centres.astype(np.float64).reshape(-1, 3),
        euler_deg=np.asarray(euler, dtype=np.float64).reshape(-1, 3),
        classes=(cls + 1).astype(np.int64),
        class_names=tuple(sp.name for sp in species),
        radii_voxels=radii.astype(np.float64),
    )


# ----------------------------------------------------------------------------------------
# The potential
# ----------------------------------------------------------------------------------------
def bilayer_profile(d_nm: torch.Tensor, *, head_v: float = 1.5, tail_v: float = -0.4,
                    head_distance_nm: float = 4.0) -> torch.Tensor:
    """Potential of a lipid bilayer relative to ice (V) vs signed distance from its mid-plane (nm).

    Two head-group Gaussians (std 0.6 nm, amplitude ``head_v``) ``head_distance_nm`` apart
    and a tail trough (std 1.2 nm, amplitude ``tail_v``).
    """
    h = 0.5 * head_distance_nm
    return (head_v * (torch.exp(-0.5 * ((d_nm - h) / 0.6) ** 2) + torch.exp(-0.5 * ((d_nm + h) / 0.6) ** 2))
            + tail_v * torch.exp(-0.5 * (d_nm / 1.2) ** 2))


def _add_particles(vol: torch.Tensor, species: Sequence[Species], truth: ParticleTruth, *, batch: int = 32) -> None:
    """Add every particle's rotated, sub-voxel shifted map into ``vol`` ``(z, y, x)`` (in place, V)."""
    shape = vol.shape
    centres, mats = truth.coordinates_xyz, truth.matrices
    for k, sp in enumerate(species):
        idx = np.nonzero(truth.classes == k + 1)[0]
        ref = torch.as_tensor(sp.map, device=vol.device)
        b = ref.shape[0]
        for s0 in range(0, len(idx), batch):
            sel = idx[s0:s0 + batch]
            cen = centres[sel]
            ii = np.floor(cen + 0.5).astype(np.int64)
            frac = cen - ii
            refs = ref.expand(len(sel), b, b, b)
            parts = transform_reference_to_particle(refs, torch.as_tensor(mats[sel], dtype=torch.float32),
                                                    torch.as_tensor(-frac, dtype=torch.float32))
            for j in range(len(sel)):
                lo = ii[j][::-1] - b // 2  # (z, y, x) corner
                src = [slice(max(0, -lo[a]), b - max(0, lo[a] + b - shape[a])) for a in range(3)]
                dst = [slice(max(0, lo[a]), min(shape[a], lo[a] + b)) for a in range(3)]
                vol[dst[0], dst[1], dst[2]] += parts[j][src[0], src[1], src[2]]


def _add_vesicles(vol: torch.Tensor, slab: Slab, *, voxel_nm: float) -> None:
    """Add the spherical bilayers of ``slab`` into ``vol`` ``(z, y, x)`` (in place, V), in bounding boxes."""
    nz, ny, nx = vol.shape
    device = vol.device
    for c, rv in slab.vesicles:
        r_out = rv + slab.shell + 2
        lo = np.maximum(np.floor(c - r_out).astype(int), 0)
        hi = np.minimum(np.ceil(c + r_out).astype(int) + 1, [nx, ny, nz])
        zz = torch.arange(lo[2], hi[2], device=device, dtype=torch.float32)[:, None, None] - c[2]
        yy = torch.arange(lo[1], hi[1], device=device, dtype=torch.float32)[None, :, None] - c[1]
        xx = torch.arange(lo[0], hi[0], device=device, dtype=torch.float32)[None, None, :] - c[0]
        d = (torch.sqrt(zz * zz + yy * yy + xx * xx) - rv) * voxel_nm
        vol[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] += bilayer_profile(d)


def _add_membranes(vol: torch.Tensor, slab: Slab, *, voxel_nm: float) -> None:
    """Add the flat bilayers of ``slab`` (inside the ice only) into ``vol`` ``(z, y, x)`` (in place, V)."""
    if not slab.membranes:
        return
    nz, ny, nx = vol.shape
    device = vol.device
    z_lo, z_hi = slab.z_range
    zz = torch.arange(nz, device=device, dtype=torch.float32)
    inside_ice = ((zz >= z_lo) & (zz <= z_hi)).float()[:, None, None]
    yy = torch.arange(ny, device=device, dtype=torch.float32)[:, None]
    xx = torch.arange(nx, device=device, dtype=torch.float32)[None, :]
    for p0, nrm in slab.membranes:
        d = ((xx - p0[0]) * nrm[0] + (yy - p0[1]) * nrm[1]) * voxel_nm  # (y, x)
        vol += inside_ice * bilayer_profile(d)[None]


def sample_potential(species: Sequence[Species], truth: ParticleTruth, slab: Slab, *, shape: Sequence[int],
                     voxel_size_angstrom: float, device="cpu") -> torch.Tensor:
    """The Coulomb potential of the sample relative to ice (stage 4): particles, vesicles, membranes.

    Gold beads are not in it: they are projected analytically (:mod:`.tomogram`).

    Parameters
    ----------
    species : the species maps; truth : the particles (:func:`place_particles`); slab : the slab
    shape : ``(z, y, x)`` tomogram size (voxels)
    voxel_size_angstrom : voxel size (Å)
    device : torch device

    Returns
    -------
    torch.Tensor ``(z, y, x)`` float32, volts relative to ice
    """
    vol = torch.zeros(tuple(int(s) for s in shape), dtype=torch.float32, device=device)
    _add_particles(vol, species, truth)
    _add_vesicles(vol, slab, voxel_nm=voxel_size_angstrom / 10.0)
    _add_membranes(vol, slab, voxel_nm=voxel_size_angstrom / 10.0)
    return vol
