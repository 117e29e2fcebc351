"""Simulated cryo-electron tomograms with ground truth (the sample data of the picking paper).

A slab of vitreous ice holds particles of one or several species at random, non-overlapping
positions (bounding spheres) and uniformly random orientations, optionally lipid vesicles,
flat membranes and gold beads. The sample is projected into a tilt series (default -60..60
every 3°), imaged through the CTF with dose-limited Poisson noise, and reconstructed by
weighted back-projection, so the tomogram has a real missing wedge and realistic noise.

Physics (documented in ``docs/simulate_tomograms_tiltseries.md``):

* **Potential**: the sample is the Coulomb potential *relative to ice* ``dV(r)`` in volts.
  Packaged maps (:mod:`.structures`) are scaled so that their integral equals
  ``(protein_potential_v - ice_potential_v) * M / 0.813`` (``M`` the mass in Da, 0.813
  Da/Å³ the protein density): the particle displaces ice. The ice slab itself is laterally
  infinite: its projection is uniform (``ice_potential_v * t / cos(theta)``) and only sets
  the mean phase and the inelastic attenuation ``exp(-t / (cos(theta) * mean_free_path))``.
* **Particles** are placed as ``transform_reference_to_particle(map, A)`` with the matrix
  ``A`` of the truth Euler angles (RELION ZYZ, ``particle(A r) = reference(r)``) and
  sub-voxel shifts, so that the truth STAR means exactly what ``CONVENTIONS.md`` says.
* **Image formation** (weak-phase approximation, exponential form): the phase of image
  ``i`` is ``phi_i = C * voxel_nm * P_i[dV]`` (``C`` the interaction constant, ``P_i`` the
  projection of :func:`~napari_cryoalign.backend.tomography.project_tilt_series`) plus the
  gold beads' analytic projected thickness. The expected count per pixel is
  ``N_i * exp(2 * CTF (x) phi_i - C V_abs t_gold)`` with ``N_i`` the incident electrons per
  pixel (dose per tilt x pixel area x ice attenuation). With ``ctf=False`` the CTF is
  replaced by -1 (ideal, in-focus amplitude-like contrast). Counts are Poisson.
* **Reconstruction**: ``-log(counts / N_i) / (2 C voxel_nm)`` (projected potential in
  V·voxel, protein positive), optionally phase-flipped (``-sign(CTF)``), then
  :func:`~napari_cryoalign.backend.tomography.weighted_back_projection`. The tomogram is in
  volts relative to ice (protein bright).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Mapping, Sequence

import numpy as np
import torch

from ...errors import InputError
from ..deformation import acquisition_order as _acq_order
from ..ctf import ctf_2d
from ..geometry import euler_to_matrix, matrix_to_euler, random_rotations, transform_reference_to_particle
from ..jobs import Event, Partial, Progress, run_job
from ..tomography import project_points, project_tilt_series, tilt_angles as _tilt_angles, weighted_back_projection
from .markers import interaction_constant, render_projected_spheres

__all__ = [
    "ParticleTruth",
    "TomogramSimulation",
    "simulate_tomogram_job",
    "simulate_tomogram",
    "sample_tomogram",
    "write_tomogram_simulation",
    "apply_dose_noise",
    "bilayer_profile",
    "OUTPUT_FILES",
    "check_outputs",
]

#: files written by :func:`write_tomogram_simulation` (plus ``potential.mrc`` on request)
OUTPUT_FILES = ("tomogram.mrc", "tiltseries.mrc", "tiltseries.tlt", "order.txt", "truth.star", "params.json")


def check_outputs(out_dir: str | os.PathLike, *, overwrite: bool = False, write_potential: bool = False) -> None:
    """Raise :class:`InputError` now if writing into ``out_dir`` would fail (before a long run)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("a folder for the outputs", path=out, field="out_dir", got="a file")
    if out.is_dir() and not overwrite:
        names = OUTPUT_FILES + (("potential.mrc",) if write_potential else ())
        for n in names:
            if (out / n).exists():
                raise InputError("a file that does not exist yet (pass overwrite=True to replace it)",
                                 path=out / n, field="output", got="an existing file")

PROTEIN_DENSITY_DA_PER_A3 = 0.813  # 1.35 g/cm^3


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class TomogramSimulation:
    """A simulated tomogram, its tilt series and the ground truth.

    Attributes
    ----------
    tomogram : ``(z, y, x)`` float32 WBP reconstruction, volts relative to ice (protein bright)
    tilt_series : ``(n_tilts, y, x)`` float32 recorded electron counts per pixel
    tilt_angles_deg : ``(n_tilts,)`` degrees, stack order
    acquisition_order : ``(n_tilts,)`` stack indices, first acquired first
    truth : :class:`ParticleTruth`
    voxel_size : voxel (and pixel) size in Å
    params : every parameter and derived quantity (JSON-ready), incl. gold and vesicles
    potential : ``(z, y, x)`` float32 noiseless sample potential relative to ice (V), or None
    """

    tomogram: np.ndarray
    tilt_series: np.ndarray
    tilt_angles_deg: np.ndarray
    acquisition_order: np.ndarray
    truth: ParticleTruth
    voxel_size: float
    params: dict = field(default_factory=dict)
    potential: np.ndarray | None = None


# ----------------------------------------------------------------------------------------
# Building blocks
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


def apply_dose_noise(expected_counts, *, noise: str = "poisson", generator: torch.Generator | None = None):
    """Shot noise: ``Poisson(expected)`` (or ``"gaussian"``: ``N(expected, expected)``; ``"none"``).

    ``expected_counts``: tensor of mean electron counts per pixel (any shape, >= 0).
    """
    e = expected_counts
    if noise == "none":
        return e.clone()
    if noise == "poisson":
        return torch.poisson(e.cpu(), generator=generator).to(e.device)
    if noise == "gaussian":
        n = torch.randn(e.shape, generator=generator, dtype=e.dtype).to(e.device)
        return e + torch.sqrt(e.clamp(min=0)) * n
    raise InputError("noise 'poisson', 'gaussian' or 'none'", field="noise", got=noise)


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


def _prepare_species(structures, maps, voxel_size, protein_v, ice_v) -> list[dict]:
    """Load and scale species maps; returns dicts with name, map (cubic, potential contrast V), radius."""
    species = []
    if maps is not None:
        for name, item in maps.items():
            if isinstance(item, tuple):
                arr, vox = item
            else:
                arr, vox = item, voxel_size
            arr = np.asarray(arr, dtype=np.float32)
            if arr.ndim != 3 or len(set(arr.shape)) != 1:
                raise InputError("a cubic (z, y, x) map", field=f"maps[{name!r}]", got=f"shape {arr.shape}")
            if abs(float(vox) - voxel_size) > 1e-3 * voxel_size:
                from ..fourier import resample_voxel_size

                arr, _ = resample_voxel_size(arr, from_voxel_angstrom=float(vox), to_voxel_angstrom=voxel_size)
                arr = np.asarray(arr, dtype=np.float32)
            species.append({"name": str(name), "map": arr, "source": "user map (V relative to ice)"})
    if structures:
        from . import structures as S

        for name in structures:
            info = S.structure_info(name)
            arr, vox = S.load_structure_map(name, voxel_size_angstrom=voxel_size)
            mass = float(info.get("mass_da", 0.0))
            integral = float(arr.sum()) * vox**3
            if mass <= 0 or integral <= 0:
                raise InputError("a structure with a mass and a positive map", field="structures", got=name)
            scale = (protein_v - ice_v) * (mass / PROTEIN_DENSITY_DA_PER_A3) / integral
            species.append({"name": name, "map": (arr * scale).astype(np.float32),
                            "source": f"{info.get('pdb_id', '')} ({info.get('package', '')})", "mass_da": mass})
    if not species:
        raise InputError("at least one structure name or map", field="structures", got="none")
    for sp in species:
        r = _mass_radius(sp["map"])
        box = 2 * int(math.ceil(r)) + 3
        m = sp["map"]
        n = m.shape[0]
        if box != n:  # centre-pad or crop to a box holding the rotated bounding sphere
            out = np.zeros((box,) * 3, np.float32)
            src0 = max(0, n // 2 - box // 2)
            dst0 = max(0, box // 2 - n // 2)
            k = min(n - src0, box - dst0)
            out[dst0:dst0 + k, dst0:dst0 + k, dst0:dst0 + k] = m[src0:src0 + k, src0:src0 + k, src0:src0 + k]
            m = out
        # spherical support, so corners never matter after rotation
        g = np.arange(box) - box // 2
        rr = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
        m = m * np.clip(r + 1.0 - rr, 0.0, 1.0).astype(np.float32)
        sp["map"] = m
        sp["radius"] = r
    return species


def _placement(rng, *, n, radii_by_class, class_probs, shape_zyx, z_range, obstacles, min_gap, max_tries=4000):
    """Random sequential addition of non-overlapping spheres; returns centres (k, 3) xyz and classes (k,)."""
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


# ----------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------
def simulate_tomogram_job(
    *,
    shape: Sequence[int] = (128, 256, 256),
    voxel_size_angstrom: float = 10.0,
    structures: Sequence[str] | None = ("ribosome",),
    maps: Mapping[str, object] | None = None,
    abundances: Sequence[float] | None = None,
    n_particles: int = 50,
    min_gap_nm: float = 1.0,
    ice_thickness_nm: float | None = None,
    n_vesicles: int = 0,
    vesicle_radius_nm: tuple[float, float] = (15.0, 40.0),
    n_membranes: int = 0,
    n_gold: int = 0,
    gold_diameter_nm: float = 10.0,
    tilt_range_deg: tuple[float, float] = (-60.0, 60.0),
    tilt_step_deg: float = 3.0,
    tilt_angles_deg: Sequence[float] | None = None,
    acquisition: str = "dose-symmetric",
    ctf: bool = True,
    defocus_um: float = 3.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    bfactor: float = 0.0,
    dose: float | None = 100.0,
    noise: str = "poisson",
    mean_free_path_nm: float | None = 350.0,
    ice_potential_v: float = 4.5,
    protein_potential_v: float = 6.5,
    gold_potential_v: float = 29.87,
    gold_absorption_v: float = 5.39,
    ctf_correction: str = "phaseflip",
    filter: str = "ramp",
    radial_cutoff: float = 0.35,
    radial_falloff: float = 0.035,
    keep_potential: bool = True,
    seed: int | None = 0,
    device="cpu",
) -> Generator[Event, None, TomogramSimulation]:
    """Simulate a tomogram (a job: yields :class:`Progress` and ``Partial("tilt_series")``).

    Parameters
    ----------
    shape : ``(z, y, x)`` tomogram size in voxels (z = slab depth)
    voxel_size_angstrom : voxel size (Å), also the tilt-image pixel size
    structures : names from :func:`napari_cryoalign.backend.simulate.structures.list_structures`
    maps : extra species ``{name: array or (array, voxel_size_Å)}``: cubic maps of the
        potential relative to ice in volts, centre at index ``N // 2``
    abundances : relative abundance per species (default equal)
    n_particles : number of particles requested (fewer are placed if the slab is full; the
        number placed is ``params["n_placed"]``)
    min_gap_nm : minimum gap between bounding spheres (nm)
    ice_thickness_nm : ice slab thickness, centred in z (default the full depth)
    n_vesicles, vesicle_radius_nm : lipid vesicles (spherical bilayers) and their radius range
    n_membranes : flat bilayers crossing the slab (normal in the x-y plane)
    n_gold, gold_diameter_nm : gold beads at the ice surfaces (projected analytically)
    tilt_range_deg, tilt_step_deg, tilt_angles_deg : tilt scheme (explicit angles win)
    acquisition : acquisition order scheme (only recorded; no deformation here)
    ctf, defocus_um, voltage_kv, cs_mm, amplitude_contrast, bfactor : CTF (µm, kV, mm, Å²)
    dose : total electron dose over the series (e/Å²), split equally over the tilts; None
        gives noiseless images (infinite dose, expected counts at 100 e/Å²)
    noise : ``"poisson"``, ``"gaussian"`` (same variance) or ``"none"``
    mean_free_path_nm : inelastic mean free path for the attenuation through the ice (None: off)
    ice_potential_v, protein_potential_v : mean inner potentials (V)
    gold_potential_v, gold_absorption_v : gold potential (V), real and imaginary part
    ctf_correction : ``"phaseflip"`` or ``"none"`` before reconstruction
    filter, radial_cutoff, radial_falloff : WBP filter (see
        :func:`~napari_cryoalign.backend.tomography.weighted_back_projection`)
    keep_potential : return the noiseless sample potential volume
    seed : random seed (same seed -> same data); device : torch device

    Returns
    -------
    :class:`TomogramSimulation`
    """
    t_start = time.perf_counter()
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise InputError("a (z, y, x) shape with every size >= 8", field="shape", got=shape)
    if voxel_size_angstrom <= 0:
        raise InputError("a voxel size > 0 Å", field="voxel_size_angstrom", got=voxel_size_angstrom)
    if n_particles < 0 or n_vesicles < 0 or n_gold < 0 or n_membranes < 0:
        raise InputError("counts >= 0", field="n_particles / n_vesicles / n_gold / n_membranes",
                         got=(n_particles, n_vesicles, n_gold, n_membranes))
    if dose is not None and dose <= 0:
        raise InputError("a total dose > 0 e/Å² (or None for noiseless)", field="dose", got=dose)
    if ctf_correction not in ("phaseflip", "none"):
        raise InputError("ctf_correction 'phaseflip' or 'none'", field="ctf_correction", got=ctf_correction)
    nz, ny, nx = shape
    vox_nm = voxel_size_angstrom / 10.0
    angles = (np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1) if tilt_angles_deg is not None
              else _tilt_angles(tilt_range_deg[0], tilt_range_deg[1], tilt_step_deg))
    n_t = angles.size
    order = _acq_order(angles, scheme=acquisition)
    rng = np.random.default_rng(seed)
    total_steps = 7
    step = 0

    def progress(msg):
        nonlocal step
        step += 1
        return Progress(step, total_steps, msg)

    # ---- species -------------------------------------------------------------------------
    species = _prepare_species(list(structures or []), maps, voxel_size_angstrom, protein_potential_v,
                               ice_potential_v)
    names = tuple(sp["name"] for sp in species)
    if abundances is None:
        probs = np.full(len(species), 1.0 / len(species))
    else:
        probs = np.asarray(abundances, dtype=np.float64)
        if probs.shape != (len(species),) or np.any(probs < 0) or probs.sum() <= 0:
            raise InputError(f"{len(species)} non-negative abundances", field="abundances", got=list(probs))
        probs = probs / probs.sum()
    yield progress("species maps ready")

    # ---- geometry of the slab: ice, vesicles, membranes, gold, particles -----------------
    ice_nm = nz * vox_nm if ice_thickness_nm is None else float(ice_thickness_nm)
    ice_vox = ice_nm / vox_nm
    z_lo, z_hi = nz // 2 - ice_vox / 2.0, nz // 2 + ice_vox / 2.0
    gap = min_gap_nm / vox_nm
    obstacles = []
    vesicles = []
    for _ in range(n_vesicles):
        rv = rng.uniform(*vesicle_radius_nm) / vox_nm
        rv = min(rv, max(2.0, (min(z_hi, nz - 1) - max(z_lo, 0)) / 2 - 3.0))
        for _try in range(100):
            c = np.array([rng.uniform(rv, nx - 1 - rv), rng.uniform(rv, ny - 1 - rv),
                          rng.uniform(max(z_lo, 0) + rv, min(z_hi, nz - 1) - rv) if z_hi - z_lo > 2 * rv + 1
                          else (z_lo + z_hi) / 2])
            if all(np.linalg.norm(c - v[0]) > rv + v[1] + 3.0 for v in vesicles):
                vesicles.append((c, rv))
                break
    membranes = []
    for _ in range(n_membranes):
        phi = rng.uniform(0, math.pi)
        nrm = np.array([math.cos(phi), math.sin(phi), 0.0])
        p0 = np.array([rng.uniform(0.2, 0.8) * nx, rng.uniform(0.2, 0.8) * ny, nz / 2])
        membranes.append((p0, nrm))
    shell = 4.0 / vox_nm  # half thickness of a bilayer incl. margin (voxels)
    for c, rv in vesicles:
        obstacles.append(lambda p, r, c=c, rv=rv: np.abs(np.linalg.norm(p - c, axis=1) - rv) >= r + shell)
    for p0, nrm in membranes:
        obstacles.append(lambda p, r, p0=p0, nrm=nrm: np.abs((p - p0) @ nrm) >= r + shell)
    gold = []
    rg = gold_diameter_nm / 2.0 / vox_nm
    for _ in range(n_gold):
        for _try in range(200):
            top = rng.random() < 0.5
            zc = (z_hi - rg - 0.5) if top else (z_lo + rg + 0.5)
            c = np.array([rng.uniform(rg, nx - 1 - rg), rng.uniform(rg, ny - 1 - rg), zc])
            if all(np.linalg.norm(c - g) > 2 * rg + 1 for g in gold) and all(ob(c[None], rg)[0] for ob in obstacles):
                gold.append(c)
                break
    for g in gold:
        obstacles.append(lambda p, r, g=g: np.linalg.norm(p - g, axis=1) >= r + rg + gap)
    radii_by_class = [sp["radius"] for sp in species]
    centres, cls, radii = _placement(rng, n=n_particles, radii_by_class=radii_by_class, class_probs=probs,
                                     shape_zyx=shape, z_range=(z_lo, z_hi), obstacles=obstacles, min_gap=gap)
    n_placed = len(cls)
    if n_placed < n_particles:
        warnings.warn(f"placed {n_placed} of {n_particles} particles: the slab is full", stacklevel=2)
    mats = random_rotations(n_placed, seed=rng) if n_placed else np.zeros((0, 3, 3))
    euler = matrix_to_euler(mats) if n_placed else np.zeros((0, 3))
    mats = euler_to_matrix(euler) if n_placed else mats
    yield progress(f"placed {n_placed} particles")

    # ---- the potential volume ------------------------------------------------------------
    vol = torch.zeros(shape, dtype=torch.float32, device=device)
    for k, sp in enumerate(species):
        idx = np.nonzero(cls == k)[0]
        ref = torch.as_tensor(sp["map"], device=device)
        b = ref.shape[0]
        for s0 in range(0, len(idx), 32):
            sel = idx[s0:s0 + 32]
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
    # membranes: evaluate the bilayer profile in bounding boxes
    for c, rv in vesicles:
        r_out = rv + shell + 2
        lo = np.maximum(np.floor(c - r_out).astype(int), 0)
        hi = np.minimum(np.ceil(c + r_out).astype(int) + 1, [nx, ny, nz])
        zz = torch.arange(lo[2], hi[2], device=device, dtype=torch.float32)[:, None, None] - c[2]
        yy = torch.arange(lo[1], hi[1], device=device, dtype=torch.float32)[None, :, None] - c[1]
        xx = torch.arange(lo[0], hi[0], device=device, dtype=torch.float32)[None, None, :] - c[0]
        d = (torch.sqrt(zz * zz + yy * yy + xx * xx) - rv) * vox_nm
        vol[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] += bilayer_profile(d)
    if membranes:
        zz = torch.arange(nz, device=device, dtype=torch.float32)
        inside_ice = ((zz >= z_lo) & (zz <= z_hi)).float()[:, None, None]
        yy = torch.arange(ny, device=device, dtype=torch.float32)[:, None]
        xx = torch.arange(nx, device=device, dtype=torch.float32)[None, :]
        for p0, nrm in membranes:
            d = ((xx - p0[0]) * nrm[0] + (yy - p0[1]) * nrm[1]) * vox_nm  # (y, x)
            vol += inside_ice * bilayer_profile(d)[None]
    yield progress("sample potential built")

    # ---- projection and image formation -------------------------------------------------
    proj = project_tilt_series(vol, angles, device=device)  # (T, y, x), V * voxels
    c_int = interaction_constant(voltage_kv)
    phase = proj.mul_(c_int * vox_nm)  # in place: float32 (T, y, x), radians
    del proj
    absorb = None
    if gold:
        gxyz = np.asarray(gold) - np.array([nx // 2, ny // 2, nz // 2])
        uv = project_points(gxyz, angles) + np.array([nx // 2, ny // 2])
        thick = render_projected_spheres(uv, rg, (ny, nx), supersample=3, device=device)
        phase += (c_int * vox_nm * (gold_potential_v - ice_potential_v)) * thick
        absorb = (c_int * vox_nm * gold_absorption_v) * thick
        del thick
    if ctf:
        h = ctf_2d((ny, nx), pixel_size_angstrom=voxel_size_angstrom, defocus_um=defocus_um, voltage_kv=voltage_kv,
                   cs_mm=cs_mm, amplitude_contrast=amplitude_contrast, bfactor=bfactor, device=device,
                   dtype=torch.float32)
        log_i = 2.0 * torch.fft.irfftn(torch.fft.rfftn(phase, dim=(-2, -1)) * h, s=(ny, nx), dim=(-2, -1))
    else:
        h = None
        log_i = -2.0 * phase
    del phase
    if absorb is not None:
        log_i -= absorb
        del absorb
    cos_t = torch.as_tensor(np.cos(np.radians(angles)), dtype=torch.float64, device=log_i.device)
    dose_per_tilt = (100.0 if dose is None else float(dose)) / n_t  # e/Å²
    flux = torch.full((n_t,), dose_per_tilt * voxel_size_angstrom**2, dtype=torch.float64, device=log_i.device)
    if mean_free_path_nm:
        flux = flux * torch.exp(-ice_nm / (cos_t * float(mean_free_path_nm)))
    flux = flux.to(torch.float32)
    expected = torch.exp_(log_i).mul_(flux[:, None, None])  # in place
    del log_i
    gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(0, 2**62)))
    counts = apply_dose_noise(expected, noise=("none" if dose is None else noise), generator=gen)
    del expected
    tilt_series = counts.to(torch.float32)
    yield progress("tilt series imaged")
    yield Partial("tilt_series", tilt_series.cpu().numpy())

    # ---- reconstruction -----------------------------------------------------------------
    p = torch.clamp(counts, min=0.5).div_(flux[:, None, None]).log_().mul_(-1.0 / (2.0 * c_int * vox_nm))
    del counts
    if ctf and ctf_correction == "phaseflip":
        p = torch.fft.irfftn(torch.fft.rfftn(p, dim=(-2, -1)) * (-torch.sign(h)), s=(ny, nx), dim=(-2, -1))
    tomo = weighted_back_projection(p, angles, thickness=nz, width=nx, filter=filter,
                                    radial_cutoff=radial_cutoff, radial_falloff=radial_falloff, device=device)
    yield progress("reconstructed")

    truth = ParticleTruth(
        coordinates_xyz=centres.astype(np.float64).reshape(-1, 3),
        euler_deg=np.asarray(euler, dtype=np.float64).reshape(-1, 3),
        classes=(cls + 1).astype(np.int64),
        class_names=names,
        radii_voxels=radii.astype(np.float64),
    )
    params = {
        "shape_zyx": list(shape),
        "voxel_size_angstrom": float(voxel_size_angstrom),
        "structures": list(names),
        "species_sources": {sp["name"]: sp.get("source", "") for sp in species},
        "species_radius_voxels": {sp["name"]: float(sp["radius"]) for sp in species},
        "abundances": probs.tolist(),
        "n_particles_requested": int(n_particles),
        "n_placed": int(n_placed),
        "min_gap_nm": float(min_gap_nm),
        "ice_thickness_nm": float(ice_nm),
        "ice_z_range_voxels": [float(z_lo), float(z_hi)],
        "vesicles": [{"center_xyz_voxels": c.tolist(), "radius_voxels": float(r)} for c, r in vesicles],
        "membranes": [{"point_xyz_voxels": p0.tolist(), "normal_xyz": n.tolist()} for p0, n in membranes],
        "gold_diameter_nm": float(gold_diameter_nm),
        "gold_xyz_voxels": [g.tolist() for g in gold],
        "tilt_angles_deg": angles.tolist(),
        "acquisition": acquisition,
        "ctf": bool(ctf),
        "defocus_um": float(defocus_um),
        "voltage_kv": float(voltage_kv),
        "cs_mm": float(cs_mm),
        "amplitude_contrast": float(amplitude_contrast),
        "bfactor": float(bfactor),
        "dose_total_e_per_A2": None if dose is None else float(dose),
        "dose_per_tilt_e_per_A2": None if dose is None else float(dose_per_tilt),
        "electrons_per_pixel_per_tilt": float(dose_per_tilt * voxel_size_angstrom**2),
        "noise": "none" if dose is None else noise,
        "mean_free_path_nm": mean_free_path_nm,
        "ice_potential_v": float(ice_potential_v),
        "protein_potential_v": float(protein_potential_v),
        "gold_potential_v": float(gold_potential_v),
        "gold_absorption_v": float(gold_absorption_v),
        "interaction_constant_per_V_nm": c_int,
        "image_model": "weak-phase, exponential form: N * exp(2 CTF (x) phi - absorption)" if ctf
                       else "ideal: N * exp(-2 phi - absorption)",
        "ctf_correction": ctf_correction if ctf else "none",
        "filter": filter,
        "radial_cutoff": float(radial_cutoff),
        "radial_falloff": float(radial_falloff),
        "tomogram_units": "volts relative to ice (protein bright)",
        "seed": seed,
        "runtime_s": time.perf_counter() - t_start,
    }
    yield progress("done")
    return TomogramSimulation(
        tomogram=tomo.detach().cpu().numpy().astype(np.float32),
        tilt_series=tilt_series.cpu().numpy(),
        tilt_angles_deg=angles,
        acquisition_order=np.asarray(order, dtype=np.int64),
        truth=truth,
        voxel_size=float(voxel_size_angstrom),
        params=params,
        potential=vol.cpu().numpy() if keep_potential else None,
    )


def simulate_tomogram(*, progress: bool = False, **kwargs) -> TomogramSimulation:
    """Plain-function form of :func:`simulate_tomogram_job` (same keyword arguments)."""
    return run_job(simulate_tomogram_job(**kwargs), progress=progress, description="simulate tomogram")


def sample_tomogram(seed: int = 0) -> TomogramSimulation:
    """A small tomogram for the napari sample menu (< 5 s on 2 cores).

    48 x 128 x 128 voxels of 10 Å, 14 particles of ribosome, CCT and RuvAB, one vesicle, two
    gold beads, ±60° every 3°, 3 µm underfocus, 80 e/Å².
    """
    return simulate_tomogram(shape=(48, 128, 128), voxel_size_angstrom=10.0,
                             structures=("ribosome", "cct", "ruvab"), n_particles=14, n_vesicles=1,
                             vesicle_radius_nm=(15.0, 20.0), n_gold=2, dose=80.0, seed=seed)


# ----------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------
def write_tomogram_simulation(result: TomogramSimulation, out_dir: str | os.PathLike, *, tomo_name: str = "sim_tomo",
                              overwrite: bool = False, write_potential: bool = False) -> dict[str, Path]:
    """Write ``tomogram.mrc``, ``tiltseries.mrc`` (a stack), ``tiltseries.tlt``, ``order.txt``,
    ``truth.star`` (``rlnCoordinateX/Y/Z``, ``rlnAngleRot/Tilt/Psi``, ``rlnClassNumber``,
    ``rlnTomoName`` and the centred Å form) and ``params.json`` into ``out_dir`` (created if
    needed); with ``write_potential`` also ``potential.mrc``. Files are written atomically;
    existing files are an error unless ``overwrite``. Returns the paths by name.
    """
    from ...io._atomic import atomic_write, check_output_path
    from ...io.mrc import write_mrc
    from ...io.star_columns import write_particles
    from ...io.tilt import write_acquisition_order, write_tlt

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("a folder for the outputs", path=out, field="out_dir", got="a file")
    out.mkdir(parents=True, exist_ok=True)
    names = {"tomogram": out / "tomogram.mrc", "tilt_series": out / "tiltseries.mrc", "tlt": out / "tiltseries.tlt",
             "order": out / "order.txt", "truth": out / "truth.star", "params": out / "params.json"}
    if write_potential:
        if result.potential is None:
            raise InputError("a simulation run with keep_potential=True", field="write_potential", got=True)
        names["potential"] = out / "potential.mrc"
    for p in names.values():
        check_output_path(p, overwrite=overwrite)
    vox = result.voxel_size
    write_mrc(names["tomogram"], result.tomogram, voxel_size=vox, overwrite=overwrite)
    write_mrc(names["tilt_series"], result.tilt_series, voxel_size=vox, overwrite=overwrite, is_stack=True)
    if write_potential:
        write_mrc(names["potential"], result.potential, voxel_size=vox, overwrite=overwrite)
    write_tlt(names["tlt"], result.tilt_angles_deg, overwrite=overwrite)
    write_acquisition_order(names["order"], result.acquisition_order, overwrite=overwrite)
    t = result.truth
    write_particles(names["truth"], coordinates_xyz=t.coordinates_xyz, euler_deg=t.euler_deg, classes=t.classes,
                    tomo_name=tomo_name, tomogram_shape=result.tomogram.shape, voxel_size=vox, overwrite=overwrite)
    params = dict(result.params)
    params["class_names"] = {str(i + 1): n for i, n in enumerate(t.class_names)}
    params["tomo_name"] = tomo_name
    with atomic_write(names["params"], mode="w", overwrite=overwrite) as f:
        json.dump(params, f, indent=1)
    return names
