"""Simulated cryo-electron tomograms with ground truth (the sample data of the picking paper).

A slab of vitreous ice holds particles of one or several species at random, non-overlapping
positions (bounding spheres) and uniformly random orientations, optionally lipid vesicles,
flat membranes and gold beads. The sample is projected into a tilt series (default -60..60
every 3°), imaged through the CTF with dose-limited Poisson noise, and reconstructed by
weighted back-projection, so the tomogram has a real missing wedge and realistic noise.

:func:`simulate_tomogram_job` runs one stage after the other: the species maps, the slab, the
particles (the truth table) and the sample potential (:mod:`.slab`), then the imaging of the
tilt series, the reconstruction and the record of the parameters (here).

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
from ..jobs import Event, Partial, Progress, run_job
from ..tomography import project_points, project_tilt_series, tilt_angles as _tilt_angles, weighted_back_projection
from .common import _check_outputs, _output_folder
from .imaging import apply_dose_noise, interaction_constant, render_projected_spheres
from .slab import (
    ParticleTruth,
    Slab,
    place_particles,
    place_slab,
    sample_potential,
    species_maps,
    species_probabilities,
)

__all__ = [
    "TomogramSimulation",
    "simulate_tomogram_job",
    "simulate_tomogram",
    "sample_tomogram",
    "write_tomogram_simulation",
    "OUTPUT_FILES",
    "check_outputs",
]

#: files written by :func:`write_tomogram_simulation` (plus ``potential.mrc`` on request)
OUTPUT_FILES = ("tomogram.mrc", "tiltseries.mrc", "tiltseries.tlt", "order.txt", "truth.star", "params.json")


def check_outputs(out_dir: str | os.PathLike, *, overwrite: bool = False, write_potential: bool = False) -> None:
    """Raise :class:`InputError` now if writing into ``out_dir`` would fail (before a long run)."""
    _check_outputs(out_dir, OUTPUT_FILES + (("potential.mrc",) if write_potential else ()), overwrite=overwrite)


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------
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
# Image formation and reconstruction (the sample itself: :mod:`.slab`)
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Imaging:
    """Microscope, dose and potentials of the tilt series (the imaging keywords of :func:`simulate_tomogram_job`).

    Units: Å (voxel), µm (defocus), kV, mm (Cs), Å² (B-factor), e/Å² (total ``dose``; None:
    noiseless at 100 e/Å²), nm (mean free path; None: no attenuation), V (potentials).
    """

    voxel_size_angstrom: float
    ctf: bool
    defocus_um: float
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    bfactor: float
    dose: float | None
    noise: str
    mean_free_path_nm: float | None
    ice_potential_v: float
    protein_potential_v: float
    gold_potential_v: float
    gold_absorption_v: float

    @property
    def voxel_nm(self) -> float:
        return self.voxel_size_angstrom / 10.0

    @property
    def interaction_constant(self) -> float:
        """``C`` in rad / (V nm)."""
        return interaction_constant(self.voltage_kv)

    @property
    def noise_model(self) -> str:
        """The noise applied: ``"none"`` at infinite dose (``dose=None``), else ``noise``."""
        return "none" if self.dose is None else self.noise

    def dose_per_tilt(self, n_tilts: int) -> float:
        """e/Å² per tilt image: the total dose (100 e/Å² when noiseless) split equally."""
        return (100.0 if self.dose is None else float(self.dose)) / n_tilts


def _projected_phase(potential: torch.Tensor, angles: np.ndarray, slab: Slab, imaging: _Imaging, *,
                     device="cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Phase of each tilt image and the gold beads' absorption.

    Parameters
    ----------
    potential : ``(z, y, x)`` float32 sample potential relative to ice (V)
    angles : ``(n_tilts,)`` tilt angles (degrees)
    slab : its gold beads are projected analytically (path length through each sphere)

    Returns
    -------
    phase : ``(n_tilts, y, x)`` float32 radians, ``C * voxel_nm * P[dV]`` plus the gold's
    absorption : ``(n_tilts, y, x)`` float32 ``C * voxel_nm * V_abs * t_gold`` (``t_gold`` the path length
        through the beads in voxels), subtracted from ``log(I / N)``; None without gold
    """
    nz, ny, nx = potential.shape
    c_vox = imaging.interaction_constant * imaging.voxel_nm
    phase = project_tilt_series(potential, angles, device=device).mul_(c_vox)  # in place: (T, y, x), radians
    if not slab.gold:
        return phase, None
    gxyz = np.asarray(slab.gold) - np.array([nx // 2, ny // 2, nz // 2])
    uv = project_points(gxyz, angles) + np.array([nx // 2, ny // 2])
    thick = render_projected_spheres(uv, slab.gold_radius, (ny, nx), supersample=3, device=device)
    phase += (c_vox * (imaging.gold_potential_v - imaging.ice_potential_v)) * thick
    return phase, (c_vox * imaging.gold_absorption_v) * thick


def _log_intensity(phase: torch.Tensor, absorption: torch.Tensor | None, imaging: _Imaging, *,
                   device="cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log(I / N)`` of each tilt image: ``2 CTF (x) phi - absorption`` (``-2 phi - absorption`` without CTF).

    Parameters
    ----------
    phase, absorption : ``(n_tilts, y, x)`` (:func:`_projected_phase`)

    Returns
    -------
    log_i : ``(n_tilts, y, x)`` float32
    ctf : ``(y, x // 2 + 1)`` the CTF on the rfft grid, or None without CTF
    """
    ny, nx = phase.shape[-2:]
    if imaging.ctf:
        h = ctf_2d((ny, nx), pixel_size_angstrom=imaging.voxel_size_angstrom, defocus_um=imaging.defocus_um,
                   voltage_kv=imaging.voltage_kv, cs_mm=imaging.cs_mm, amplitude_contrast=imaging.amplitude_contrast,
                   bfactor=imaging.bfactor, device=device, dtype=torch.float32)
        log_i = 2.0 * torch.fft.irfftn(torch.fft.rfftn(phase, dim=(-2, -1)) * h, s=(ny, nx), dim=(-2, -1))
    else:
        h = None
        log_i = -2.0 * phase
    if absorption is not None:
        log_i -= absorption
    return log_i, h


def _incident_flux(angles: np.ndarray, slab: Slab, imaging: _Imaging, *, device) -> torch.Tensor:
    """``(n_tilts,)`` float32 electrons per pixel reaching the detector unscattered: the dose per tilt times
    the pixel area, attenuated by ``exp(-t / (cos(theta) * mean_free_path))`` through the ice."""
    n_t = len(angles)
    cos_t = torch.as_tensor(np.cos(np.radians(angles)), dtype=torch.float64, device=device)
    flux = torch.full((n_t,), imaging.dose_per_tilt(n_t) * imaging.voxel_size_angstrom**2, dtype=torch.float64,
                      device=device)
    if imaging.mean_free_path_nm:
        flux = flux * torch.exp(-slab.ice_thickness_nm / (cos_t * float(imaging.mean_free_path_nm)))
    return flux.to(torch.float32)


def _image_tilt_series(potential: torch.Tensor, angles: np.ndarray, slab: Slab, imaging: _Imaging, *,
                       generator: torch.Generator, device="cpu"
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The recorded tilt series: projection, CTF, ice attenuation and shot noise (stage 5).

    Parameters
    ----------
    potential : ``(z, y, x)`` float32 sample potential relative to ice (V)
    angles : ``(n_tilts,)`` degrees, stack order
    slab : the ice thickness and the gold beads
    generator : draws the noise

    Returns
    -------
    counts : ``(n_tilts, y, x)`` float32 electron counts per pixel, ``noise(N * exp(log_i))``
    flux : ``(n_tilts,)`` float32 ``N``, electrons per pixel of each image (:func:`_incident_flux`)
    ctf : ``(y, x // 2 + 1)`` the CTF on the rfft grid, or None without CTF
    """
    phase, absorption = _projected_phase(potential, angles, slab, imaging, device=device)
    log_i, h = _log_intensity(phase, absorption, imaging, device=device)
    del phase, absorption
    flux = _incident_flux(angles, slab, imaging, device=log_i.device)
    expected = torch.exp_(log_i).mul_(flux[:, None, None])  # in place
    del log_i
    counts = apply_dose_noise(expected, noise=imaging.noise_model, generator=generator)
    return counts.to(torch.float32), flux, h


def _reconstruct(counts: torch.Tensor, flux: torch.Tensor, angles: np.ndarray, imaging: _Imaging, *,
                 thickness: int, ctf: torch.Tensor | None = None, filter: str = "ramp", radial_cutoff: float = 0.35,
                 radial_falloff: float = 0.035, device="cpu") -> torch.Tensor:
    """The tomogram (stage 6): ``-log(counts / N) / (2 C voxel_nm)``, phase-flipped by ``-sign(ctf)``
    when ``ctf`` is given, then weighted back-projection.

    Parameters
    ----------
    counts : ``(n_tilts, y, x)`` electron counts; flux : ``(n_tilts,)`` ``N`` per pixel
    angles : ``(n_tilts,)`` degrees
    thickness : ``z`` size of the tomogram (voxels)
    ctf : ``(y, x // 2 + 1)`` CTF to phase-flip with, or None
    filter, radial_cutoff, radial_falloff : WBP filter

    Returns
    -------
    torch.Tensor ``(z, y, x)`` float32, volts relative to ice (protein bright)
    """
    ny, nx = counts.shape[-2:]
    p = torch.clamp(counts, min=0.5).div_(flux[:, None, None]).log_().mul_(
        -1.0 / (2.0 * imaging.interaction_constant * imaging.voxel_nm))
    if ctf is not None:
        p = torch.fft.irfftn(torch.fft.rfftn(p, dim=(-2, -1)) * (-torch.sign(ctf)), s=(ny, nx), dim=(-2, -1))
    return weighted_back_projection(p, angles, thickness=thickness, width=nx, filter=filter,
                                    radial_cutoff=radial_cutoff, radial_falloff=radial_falloff, device=device)


def _params(imaging: _Imaging, *, shape, species, probabilities, truth: ParticleTruth, n_requested: int,
            min_gap_nm: float, slab: Slab, gold_diameter_nm: float, angles: np.ndarray, acquisition: str,
            ctf_correction: str, filter: str, radial_cutoff: float, radial_falloff: float, seed, runtime_s: float
            ) -> dict:
    """Every parameter and derived quantity of a run (``params.json``, JSON-ready; stage 7)."""
    n_t = len(angles)
    dose, ctf = imaging.dose, imaging.ctf
    return {
        "shape_zyx": list(shape),
        "voxel_size_angstrom": float(imaging.voxel_size_angstrom),
        "structures": [sp.name for sp in species],
        "species_sources": {sp.name: sp.source for sp in species},
        "species_radius_voxels": {sp.name: float(sp.radius) for sp in species},
        "abundances": probabilities.tolist(),
        "n_particles_requested": int(n_requested),
        "n_placed": len(truth),
        "min_gap_nm": float(min_gap_nm),
        "ice_thickness_nm": float(slab.ice_thickness_nm),
        "ice_z_range_voxels": [float(z) for z in slab.z_range],
        "vesicles": [{"center_xyz_voxels": c.tolist(), "radius_voxels": float(r)} for c, r in slab.vesicles],
        "membranes": [{"point_xyz_voxels": p0.tolist(), "normal_xyz": n.tolist()} for p0, n in slab.membranes],
        "gold_diameter_nm": float(gold_diameter_nm),
        "gold_xyz_voxels": [g.tolist() for g in slab.gold],
        "tilt_angles_deg": angles.tolist(),
        "acquisition": acquisition,
        "ctf": bool(ctf),
        "defocus_um": float(imaging.defocus_um),
        "voltage_kv": float(imaging.voltage_kv),
        "cs_mm": float(imaging.cs_mm),
        "amplitude_contrast": float(imaging.amplitude_contrast),
        "bfactor": float(imaging.bfactor),
        "dose_total_e_per_A2": None if dose is None else float(dose),
        "dose_per_tilt_e_per_A2": None if dose is None else float(imaging.dose_per_tilt(n_t)),
        "electrons_per_pixel_per_tilt": float(imaging.dose_per_tilt(n_t) * imaging.voxel_size_angstrom**2),
        "noise": imaging.noise_model,
        "mean_free_path_nm": imaging.mean_free_path_nm,
        "ice_potential_v": float(imaging.ice_potential_v),
        "protein_potential_v": float(imaging.protein_potential_v),
        "gold_potential_v": float(imaging.gold_potential_v),
        "gold_absorption_v": float(imaging.gold_absorption_v),
        "interaction_constant_per_V_nm": imaging.interaction_constant,
        "image_model": "weak-phase, exponential form: N * exp(2 CTF (x) phi - absorption)" if ctf
                       else "ideal: N * exp(-2 phi - absorption)",
        "ctf_correction": ctf_correction if ctf else "none",
        "filter": filter,
        "radial_cutoff": float(radial_cutoff),
        "radial_falloff": float(radial_falloff),
        "tomogram_units": "volts relative to ice (protein bright)",
        "seed": seed,
        "runtime_s": runtime_s,
    }


def _check_settings(shape, *, voxel_size_angstrom, counts, dose, ctf_correction) -> tuple[int, int, int]:
    """Validate the job's settings (:class:`InputError`); returns ``shape`` as three ints."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise InputError("a (z, y, x) shape with every size >= 8", field="shape", got=shape)
    if voxel_size_angstrom <= 0:
        raise InputError("a voxel size > 0 Å", field="voxel_size_angstrom", got=voxel_size_angstrom)
    if min(counts) < 0:
        raise InputError("counts >= 0", field="n_particles / n_vesicles / n_gold / n_membranes", got=counts)
    if dose is not None and dose <= 0:
        raise InputError("a total dose > 0 e/Å² (or None for noiseless)", field="dose", got=dose)
    if ctf_correction not in ("phaseflip", "none"):
        raise InputError("ctf_correction 'phaseflip' or 'none'", field="ctf_correction", got=ctf_correction)
    return shape

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
    shape = _check_settings(shape, voxel_size_angstrom=voxel_size_angstrom, dose=dose, ctf_correction=ctf_correction,
                            counts=(n_particles, n_vesicles, n_gold, n_membranes))
    imaging = _Imaging(voxel_size_angstrom=voxel_size_angstrom, ctf=ctf, defocus_um=defocus_um, voltage_kv=voltage_kv,
                       cs_mm=cs_mm, amplitude_contrast=amplitude_contrast, bfactor=bfactor, dose=dose, noise=noise,
                       mean_free_path_nm=mean_free_path_nm, ice_potential_v=ice_potential_v,
                       protein_potential_v=protein_potential_v, gold_potential_v=gold_potential_v,
                       gold_absorption_v=gold_absorption_v)
    angles = (np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1) if tilt_angles_deg is not None
              else _tilt_angles(tilt_range_deg[0], tilt_range_deg[1], tilt_step_deg))
    order = _acq_order(angles, scheme=acquisition)
    rng = np.random.default_rng(seed)

    species = species_maps(structures, maps=maps, voxel_size_angstrom=voxel_size_angstrom,
                           protein_potential_v=protein_potential_v, ice_potential_v=ice_potential_v)
    probs = species_probabilities(len(species), abundances)
    yield Progress(1, 6, "species maps ready")

    slab = place_slab(shape, voxel_size_angstrom=voxel_size_angstrom, rng=rng, ice_thickness_nm=ice_thickness_nm,
                      n_vesicles=n_vesicles, vesicle_radius_nm=vesicle_radius_nm, n_membranes=n_membranes,
                      n_gold=n_gold, gold_diameter_nm=gold_diameter_nm)
    truth = place_particles(species, slab, n=n_particles, shape=shape, rng=rng, probabilities=probs,
                            min_gap_nm=min_gap_nm, voxel_size_angstrom=voxel_size_angstrom)
    if len(truth) < n_particles:
        warnings.warn(f"placed {len(truth)} of {n_particles} particles: the slab is full", stacklevel=2)
    yield Progress(2, 6, f"placed {len(truth)} particles")

    vol = sample_potential(species, truth, slab, shape=shape, voxel_size_angstrom=voxel_size_angstrom, device=device)
    yield Progress(3, 6, "sample potential built")

    gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(0, 2**62)))
    tilt_series, flux, h = _image_tilt_series(vol, angles, slab, imaging, generator=gen, device=device)
    yield Progress(4, 6, "tilt series imaged")
    yield Partial("tilt_series", tilt_series.cpu().numpy())

    tomo = _reconstruct(tilt_series, flux, angles, imaging, thickness=shape[0],
                        ctf=h if ctf_correction == "phaseflip" else None, filter=filter, radial_cutoff=radial_cutoff,
                        radial_falloff=radial_falloff, device=device)
    yield Progress(5, 6, "reconstructed")

    params = _params(imaging, shape=shape, species=species, probabilities=probs, truth=truth, n_requested=n_particles,
                     min_gap_nm=min_gap_nm, slab=slab, gold_diameter_nm=gold_diameter_nm, angles=angles,
                     acquisition=acquisition, ctf_correction=ctf_correction, filter=filter,
                     radial_cutoff=radial_cutoff, radial_falloff=radial_falloff, seed=seed,
                     runtime_s=time.perf_counter() - t_start)
    yield Progress(6, 6, "done")
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

    out = _output_folder(out_dir)
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
