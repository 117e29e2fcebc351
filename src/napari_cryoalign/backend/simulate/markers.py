"""Gold-marker tilt series with beam-induced deformation (the SparseAlign experiments).

A thin slab holds gold beads at random, non-overlapping positions. Image ``i`` of the tilt
series is taken at angle ``theta_i`` and time ``t_i`` (from the acquisition order, see
:func:`napari_cryoalign.backend.deformation.times_from_order`); it sees every bead at its
deformed position ``r + D(r, t_i)`` (:class:`~napari_cryoalign.backend.deformation.PolynomialDeformation`),
projected with the convention of :mod:`napari_cryoalign.backend.tomography`
(``u = x cos + z sin``, ``v = y``). Beads are projected analytically, as in the paper's
forward model:

* ``profile="gaussian"``: ``Psi(u, v) = sum_j exp(-|q - q_j|^2 / (2 sigma^2))`` sampled at the
  pixel centres (peak 1 per bead; SparseAlign eq. 21, sigma = ``profile_sigma_nm``);
* ``profile="ball"``: the projected thickness of a sphere divided by its diameter
  (``sqrt(1 - (2 d / D)^2)``), averaged over ``supersample^2`` points per pixel.

``Psi`` is the *marker image* (the ``ideal`` field). Recorded electron counts follow the
paper (section IV-B): ``I = I0 exp(-C V_abs D Psi)`` with ``C`` the interaction constant,
``V_abs`` the absorption potential of gold and ``D`` the bead diameter; with ``ctf=True``
the phase ``phi = C V_phase D Psi`` is imaged through the CTF in the exponential form of the
weak-phase approximation, ``I = I0 exp(-C V_abs D Psi + 2 CTF (x) phi)``. Noise: Poisson
(``Poi(I)``), additive Gaussian (``I + N(0, noise_variance)``) or none.

The 2D configuration of the paper (x-z plane, 1D detector) is represented as a stack of
shape ``(n_tilts, 1, n_detector)``: one detector row at ``y = 0``, all beads at ``y = 0``, and
the bead profile depends on ``u`` only.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np
import torch

from ...errors import InputError
from ..deformation import PolynomialDeformation, acquisition_order as _acq_order, times_from_order
from ..jobs import Event, Progress, run_job
from ..tomography import project_points, tilt_angles as _tilt_angles
from .common import _check_outputs, _output_folder
from .imaging import _check_profile, apply_dose_noise, interaction_constant, render_markers

__all__ = [
    "PRESETS",
    "MarkerTiltSeries",
    "simulate_marker_tiltseries_job",
    "simulate_marker_tiltseries",
    "sample_marker_tiltseries_job",
    "sample_marker_tiltseries",
    "write_marker_tiltseries",
    "read_marker_truth",
    "OUTPUT_FILES",
    "check_outputs",
]

#: files written by :func:`write_marker_tiltseries`
OUTPUT_FILES = ("tiltseries.mrc", "tiltseries_ideal.mrc", "tiltseries.tlt", "order.txt", "truth.json")


def check_outputs(out_dir: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Raise :class:`InputError` now if writing into ``out_dir`` would fail (before a run)."""
    _check_outputs(out_dir, OUTPUT_FILES, overwrite=overwrite)

#: the paper's normalised length L = 1 is mapped onto this many nm in the presets
PAPER_L_NM = 819.2

PRESETS: dict[str, dict[str, Any]] = {
    # SparseAlign section IV-B (3D simulated data): 20 beads of 15 nm in 819.2 x 819.2 x 100 nm,
    # 140 tilts in [-70, 70], 64 x 64 pixels (12.8 nm), Gaussian shape function with std 15 nm,
    # D_z = (P0 + P1 x^2 + P2 y^2) t with P0 = 200 nm, P1 = P2 = -100 (coordinates normalised by
    # the field of view L = 819.2 nm, so P1, P2 are nm at x/L = 1; see docs), t linear in the
    # sequential acquisition -70 -> +70.
    "paper3d": dict(
        geometry="3d",
        n_markers=20,
        bead_diameter_nm=15.0,
        field_of_view_nm=(819.2, 819.2),
        thickness_nm=100.0,
        detector_shape=(64, 64),
        tilt_range_deg=(-70.0, 70.0),
        n_tilts=140,
        endpoint=True,
        acquisition="sequential",
        profile="gaussian",
        profile_sigma_nm=15.0,
        deformation_terms={"z": {"1": 200.0, "x^2": -100.0, "y^2": -100.0}},
        deformation_variables="xy",
        deformation_degree=2,
        region_fraction=(1.0, 1.0, 1.0),
        noise="poisson",
        electrons_per_pixel=1024.0,
    ),
    # SparseAlign section IV-A (illustrative 2D example): 10 beads in x in [-2L/5, 2L/5],
    # z in [-L/10, L/10]; D_z = (P0 + P1 x + P2 z + P3 x^2 + P4 z^2 + P5 xz) t with P0 = 0,
    # P1..P5 = -1 (L units); 20 angles in [-70, 70) (endpoint excluded); 64 detector pixels on
    # [-L/2, L/2]; profile exp(-((u - rho)/0.05)^2) (the reference code), i.e. std 0.05/sqrt(2) L.
    "paper2d": dict(
        geometry="2d",
        n_markers=10,
        bead_diameter_nm=15.0,
        field_of_view_nm=(PAPER_L_NM, PAPER_L_NM),
        thickness_nm=0.2 * PAPER_L_NM,
        detector_shape=(1, 64),
        tilt_range_deg=(-70.0, 70.0),
        n_tilts=20,
        endpoint=False,
        acquisition="sequential",
        profile="gaussian",
        profile_sigma_nm=0.05 / math.sqrt(2.0) * PAPER_L_NM,
        deformation_terms={"z": {"1": 0.0, "x": -PAPER_L_NM, "z": -PAPER_L_NM, "x^2": -PAPER_L_NM,
                                 "z^2": -PAPER_L_NM, "xz": -PAPER_L_NM}},
        deformation_variables="xz",
        deformation_degree=2,
        region_fraction=(0.8, 1.0, 1.0),
        noise="none",
        electrons_per_pixel=1024.0,
    ),
}


# ----------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MarkerTiltSeries:
    """A simulated gold-marker tilt series and its ground truth.

    Attributes
    ----------
    tilt_series : ``(n_tilts, y, x)`` float32, recorded electron counts per pixel (noisy
        unless ``noise="none"``; beads are dark)
    ideal : ``(n_tilts, y, x)`` float32, the noiseless marker image ``Psi`` of the forward
        model (beads bright, peak about 1), what SparseAlign fits
    tilt_angles_deg : ``(n_tilts,)`` degrees, stack order
    acquisition_order : ``(n_tilts,)`` stack indices, first acquired first
    times : ``(n_tilts,)`` acquisition time in [0, 1] of each stack image
    bead_positions_nm : ``(n_beads, 3)`` undeformed ``(x, y, z)`` in nm relative to the volume centre
    bead_positions_px : ``(n_beads, 3)`` the same in pixels, 0-based indices of a volume of
        shape ``volume_shape`` (centre at ``N // 2``)
    projected_px : ``(n_tilts, n_beads, 2)`` deformed projected centres ``(u, v)`` as 0-based
        detector pixel indices (``u`` along x, ``v`` along y)
    deformation : the :class:`PolynomialDeformation` with its true coefficients
    pixel_size_nm : detector pixel size (nm); also the voxel size of ``volume_shape``
    bead_diameter_nm : bead diameter (nm)
    volume_shape : ``(z, y, x)`` in pixels of the sample slab
    params : every simulation parameter (JSON-ready)
    """

    tilt_series: np.ndarray
    ideal: np.ndarray
    tilt_angles_deg: np.ndarray
    acquisition_order: np.ndarray
    times: np.ndarray
    bead_positions_nm: np.ndarray
    bead_positions_px: np.ndarray
    projected_px: np.ndarray
    deformation: PolynomialDeformation
    pixel_size_nm: float
    bead_diameter_nm: float
    volume_shape: tuple[int, int, int]
    params: dict = field(default_factory=dict)

    @property
    def pixel_size_angstrom(self) -> float:
        return 10.0 * self.pixel_size_nm

    def truth_dict(self) -> dict:
        """The content of ``truth.json`` (see ``docs/simulate_tomograms_tiltseries.md``)."""
        ny, nx = self.tilt_series.shape[1:]
        return {
            "format": "napari-cryoalign marker tilt-series truth, version 1",
            "geometry": {
                "projection": "u = x cos(theta) + z sin(theta), v = y (relative to centres), tilt axis = y",
                "detector_shape_yx": [int(ny), int(nx)],
                "detector_center_px": [int(nx // 2), int(ny // 2)],
                "pixel_size_nm": float(self.pixel_size_nm),
                "volume_shape_zyx": [int(v) for v in self.volume_shape],
                "coordinate_origin": "volume centre, voxel N//2 on each axis; nm or pixels",
                "dimension": self.params.get("geometry", "3d"),
            },
            "tilt_angles_deg": [float(a) for a in self.tilt_angles_deg],
            "acquisition_order": [int(i) for i in self.acquisition_order],
            "times": [float(t) for t in self.times],
            "beads": {
                "diameter_nm": float(self.bead_diameter_nm),
                "positions_nm_xyz": np.round(self.bead_positions_nm, 6).tolist(),
                "positions_px_xyz": np.round(self.bead_positions_px, 6).tolist(),
                "projected_px_uv": np.round(self.projected_px, 6).tolist(),
            },
            "deformation": self.deformation.to_dict(),
            "imaging": {k: self.params[k] for k in sorted(self.params) if k not in ("deformation",)},
        }


def read_marker_truth(path: str | os.PathLike) -> dict:
    """Read ``truth.json`` written by :func:`write_marker_tiltseries`.

    Returns the JSON dict with ``"deformation_model"`` added (a :class:`PolynomialDeformation`)
    and the arrays as numpy arrays (``positions_nm_xyz``, ``projected_px_uv``, ``times``, ...).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("an existing truth.json file", path=p, field="path", got="no such file")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InputError("valid JSON", path=p, field="content", got=str(e)) from None
    for key in ("deformation", "beads", "tilt_angles_deg", "times"):
        if key not in d:
            raise InputError("a marker truth file (napari-cryoalign)", path=p, field=key, got="missing")
    d["deformation_model"] = PolynomialDeformation.from_dict(d["deformation"])
    for k in ("positions_nm_xyz", "positions_px_xyz", "projected_px_uv"):
        d["beads"][k] = np.asarray(d["beads"][k], dtype=np.float64)
    for k in ("tilt_angles_deg", "times", "acquisition_order"):
        d[k] = np.asarray(d[k])
    return d


# ----------------------------------------------------------------------------------------
# Simulation: settings, then the stages
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Geometry:
    """Sample and detector of a marker simulation (nm unless stated)."""

    two_d: bool
    n_markers: int
    diameter_nm: float
    fov_nm: np.ndarray  # (x, y) field of view
    thickness_nm: float
    detector: tuple[int, int]  # (y, x) pixels

    @property
    def pixel_nm(self) -> float:
        return float(self.fov_nm[0] / self.detector[1])

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` pixels of the sample slab."""
        ny, nx = self.detector
        return int(math.ceil(self.thickness_nm / self.pixel_nm)), ny, nx


def _preset_values(preset: str | None) -> dict[str, Any]:
    """The settings of ``preset`` over those of ``"paper3d"`` (every setting has a value)."""
    if preset is not None and preset not in PRESETS:
        raise InputError(f"a preset among {sorted(PRESETS)}", field="preset", got=preset)
    base = dict(PRESETS["paper3d"])
    if preset is not None:
        base.update(PRESETS[preset])
    return base


def _geometry(base: dict, *, geometry, n_markers, bead_diameter_nm, field_of_view_nm, thickness_nm,
              detector_shape) -> _Geometry:
    """The sample and detector, each value given or else the preset's (``base``); validated."""
    geometry = base["geometry"] if geometry is None else geometry
    if geometry not in ("2d", "3d"):
        raise InputError("geometry '2d' or '3d'", field="geometry", got=geometry)
    two_d = geometry == "2d"
    n = int(base["n_markers"] if n_markers is None else n_markers)
    diameter = float(base["bead_diameter_nm"] if bead_diameter_nm is None else bead_diameter_nm)
    fov = np.asarray(base["field_of_view_nm"] if field_of_view_nm is None else field_of_view_nm,
                     dtype=np.float64).reshape(-1)
    thickness = float(base["thickness_nm"] if thickness_nm is None else thickness_nm)
    det = tuple(int(v) for v in (base["detector_shape"] if detector_shape is None else detector_shape))
    if two_d and detector_shape is None:
        det = (1, det[-1])
    if len(det) != 2 or min(det) < 1:
        raise InputError("detector shape (y, x) of positive integers", field="detector_shape", got=det)
    if two_d and det[0] != 1:
        raise InputError("one detector row for the 2D geometry", field="detector_shape", got=det)
    if n < 0 or diameter <= 0 or thickness <= 0 or fov.size != 2 or np.any(fov <= 0):
        raise InputError("n_markers >= 0, bead diameter, thickness and field of view > 0",
                         field="marker parameters", got=(n, diameter, thickness, fov.tolist()))
    return _Geometry(two_d=two_d, n_markers=n, diameter_nm=diameter, fov_nm=fov, thickness_nm=thickness, detector=det)


def _tilt_scheme(base: dict, *, tilt_angles_deg, tilt_range_deg, n_tilts, endpoint, acquisition):
    """Angles ``(n_tilts,)`` (degrees, stack order), acquisition order ``(n_tilts,)``, times ``(n_tilts,)``
    in [0, 1] and the acquisition as given (a scheme name or the explicit order)."""
    if tilt_angles_deg is not None:
        angles = np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1)
    else:
        lo, hi = base["tilt_range_deg"] if tilt_range_deg is None else tilt_range_deg
        nt = int(base["n_tilts"] if n_tilts is None else n_tilts)
        angles = np.linspace(lo, hi, nt, endpoint=bool(base["endpoint"] if endpoint is None else endpoint))
    acq = base["acquisition"] if acquisition is None else acquisition
    order = _acq_order(angles, scheme=acq) if isinstance(acq, str) else np.asarray(acq, dtype=np.int64)
    return angles, order, times_from_order(order, angles.size), acq


def _incident_electrons(base: dict, *, noise, electrons_per_pixel, dose_per_tilt, pixel_nm) -> tuple[str, float]:
    """The noise model and ``I0``, incident electrons per pixel and image (``electrons_per_pixel``, else
    ``dose_per_tilt`` e/Å² times the pixel area, else the preset's)."""
    noise = base["noise"] if noise is None else noise
    if noise not in ("poisson", "gaussian", "none"):
        raise InputError("noise 'poisson', 'gaussian' or 'none'", field="noise", got=noise)
    if electrons_per_pixel is not None:
        i0 = float(electrons_per_pixel)
    elif dose_per_tilt is not None:
        i0 = float(dose_per_tilt) * (10.0 * pixel_nm) ** 2
    else:
        i0 = float(base["electrons_per_pixel"])
    if i0 <= 0:
        raise InputError("a dose > 0", field="electrons_per_pixel", got=i0)
    return noise, i0


def _place_beads(rng: np.random.Generator, geo: _Geometry, region_fraction: np.ndarray) -> np.ndarray:
    """``(n_markers, 3)`` non-overlapping bead centres ``(x, y, z)`` in nm from the volume centre, within
    ``region_fraction`` of the half-extents less one bead radius (``y = 0`` in the 2D geometry)."""
    half = np.array([geo.fov_nm[0] / 2, (0.0 if geo.two_d else geo.fov_nm[1] / 2), geo.thickness_nm / 2])
    half = half * region_fraction
    r = geo.diameter_nm / 2
    half = np.maximum(half - np.array([r, 0.0 if geo.two_d else r, r]), 0.0)
    n = geo.n_markers
    pts: list[np.ndarray] = []
    tries = 0
    while len(pts) < n:
        cand = rng.uniform(-1.0, 1.0, size=(256, 3)) * half
        if geo.two_d:
            cand[:, 1] = 0.0
        for c in cand:
            if all(np.linalg.norm(c - p) >= geo.diameter_nm for p in pts):
                pts.append(c)
                if len(pts) == n:
                    break
        tries += 1
        if tries > 200:
            raise InputError("fewer markers or a larger field of view (markers could not be placed "
                             "without overlap)", field="n_markers", got=n)
    return np.asarray(pts, dtype=np.float64).reshape(n, 3)


def _project_beads(beads_nm: np.ndarray, angles: np.ndarray, geo: _Geometry, *, deformation: PolynomialDeformation,
                   times: np.ndarray) -> np.ndarray:
    """``(n_tilts, n_beads, 2)`` deformed projected centres ``(u, v)`` as 0-based detector pixel indices."""
    ny, nx = geo.detector
    proj_px = project_points(beads_nm, angles, deformation=deformation, times=times) / geo.pixel_nm + np.array(
        [nx // 2, ny // 2], dtype=np.float64)
    if geo.two_d:
        proj_px[..., 1] = 0.0
    return proj_px


def _record_counts(ideal: torch.Tensor, geo: _Geometry, *, i0: float, noise: str, noise_variance: float | None,
                   ctf: bool, defocus_um: float, voltage_kv: float, cs_mm: float, amplitude_contrast: float,
                   phase_potential_v: float, absorption_potential_v: float, generator: torch.Generator,
                   device="cpu") -> torch.Tensor:
    """Recorded electron counts ``(n_tilts, y, x)`` float64 of the marker image ``ideal`` (float64, same shape):
    ``I0 exp(-C V_abs D Psi [+ 2 CTF (x) C V_phase D Psi])`` with Poisson, Gaussian or no noise."""
    c_int = interaction_constant(voltage_kv)
    log_i = -c_int * absorption_potential_v * geo.diameter_nm * ideal
    if ctf:
        from ..ctf import ctf_2d

        det = geo.detector
        phase = c_int * phase_potential_v * geo.diameter_nm * ideal
        h = ctf_2d(det, pixel_size_angstrom=10.0 * geo.pixel_nm, defocus_um=defocus_um, voltage_kv=voltage_kv,
                   cs_mm=cs_mm, amplitude_contrast=amplitude_contrast, device=device, dtype=torch.float64)
        log_i = log_i + 2.0 * torch.fft.irfftn(torch.fft.rfftn(phase, dim=(-2, -1)) * h, s=det, dim=(-2, -1))
    expected = i0 * torch.exp(log_i)
    if noise == "none":
        return expected
    return apply_dose_noise(expected, noise=noise, generator=generator,
                            variance=(i0 if noise_variance is None else float(noise_variance)))


def simulate_marker_tiltseries_job(
    *,
    preset: str | None = None,
    geometry: str | None = None,
    n_markers: int | None = None,
    bead_diameter_nm: float | None = None,
    field_of_view_nm: Sequence[float] | None = None,
    thickness_nm: float | None = None,
    detector_shape: Sequence[int] | None = None,
    tilt_angles_deg: Sequence[float] | None = None,
    tilt_range_deg: Sequence[float] | None = None,
    n_tilts: int | None = None,
    endpoint: bool | None = None,
    acquisition: str | Sequence[int] | None = None,
    deformation: PolynomialDeformation | None = None,
    profile: str | None = None,
    profile_sigma_nm: float | None = None,
    region_fraction: Sequence[float] | None = None,
    noise: str | None = None,
    electrons_per_pixel: float | None = None,
    dose_per_tilt: float | None = None,
    noise_variance: float | None = None,
    ctf: bool = False,
    defocus_um: float = 4.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    phase_potential_v: float = 29.87,
    absorption_potential_v: float = 5.39,
    seed: int | None = 0,
    device="cpu",
) -> Generator[Event, None, MarkerTiltSeries]:
    """Simulate a gold-marker tilt series with a polynomial beam-induced deformation (a job).

    Yields :class:`Progress` after the beads are placed (step 0), after each tilt image's
    marker image is rendered (step ``i + 1`` of ``n_tilts + 1``) and after the imaging
    (``n_tilts + 1``); closing the job stops it at the next of these.

    Parameters (every one defaults to the preset's value, else to the ``"paper3d"`` value)
    ----------
    preset : ``"paper3d"``, ``"paper2d"`` or None (see :data:`PRESETS`)
    geometry : ``"3d"`` (2D detector) or ``"2d"`` (x-z plane, 1D detector stored as
        ``(n_tilts, 1, n)``)
    n_markers : number of beads
    bead_diameter_nm : bead diameter (nm); beads never overlap (centre distance >= diameter)
    field_of_view_nm : ``(x, y)`` extent of the sample and of the detector at tilt 0 (nm)
    thickness_nm : slab thickness along z (nm)
    detector_shape : ``(y, x)`` pixels; pixel size = ``field_of_view_nm[0] / x``
    tilt_angles_deg : explicit angles (stack order); else ``n_tilts`` equally spaced angles in
        ``tilt_range_deg`` (``endpoint`` included or not)
    acquisition : ``"sequential"``, ``"bidirectional"``, ``"dose-symmetric"`` or an explicit
        order (stack indices, first acquired first); times ``t = k / (n - 1)``
    deformation : a :class:`PolynomialDeformation` (nm); default the preset's
    profile : ``"gaussian"`` or ``"ball"``; profile_sigma_nm : Gaussian std (nm)
    region_fraction : fraction of the half-extents (x, y, z) where bead centres may lie
        (the margin of one bead radius is always kept)
    noise : ``"poisson"``, ``"gaussian"`` or ``"none"``
    electrons_per_pixel : ``I0``, incident electrons per pixel and image (wins over
        ``dose_per_tilt``, e/Å² per image)
    noise_variance : variance of the Gaussian noise (counts²); default ``I0``
    ctf, defocus_um, voltage_kv, cs_mm, amplitude_contrast : optional CTF (weak-phase, exp form)
    phase_potential_v, absorption_potential_v : gold potential ``V = V_phase + i V_abs`` (V)
    seed : random seed (same seed -> same data)
    device : torch device

    Returns
    -------
    :class:`MarkerTiltSeries`
    """
    base = _preset_values(preset)
    geo = _geometry(base, geometry=geometry, n_markers=n_markers, bead_diameter_nm=bead_diameter_nm,
                    field_of_view_nm=field_of_view_nm, thickness_nm=thickness_nm, detector_shape=detector_shape)
    angles, order, times, acq = _tilt_scheme(base, tilt_angles_deg=tilt_angles_deg, tilt_range_deg=tilt_range_deg,
                                             n_tilts=n_tilts, endpoint=endpoint, acquisition=acquisition)
    if deformation is None:
        deformation = PolynomialDeformation.from_terms(
            base["deformation_terms"], degree=base["deformation_degree"], variables=base["deformation_variables"],
            length_scale_nm=float(geo.fov_nm[0]))
    prof = base["profile"] if profile is None else profile
    sigma_nm = float(base["profile_sigma_nm"] if profile_sigma_nm is None else profile_sigma_nm)
    _check_profile(prof, sigma_nm / geo.pixel_nm)
    frac = np.asarray(base["region_fraction"] if region_fraction is None else region_fraction, dtype=np.float64)
    noise, i0 = _incident_electrons(base, noise=noise, electrons_per_pixel=electrons_per_pixel,
                                    dose_per_tilt=dose_per_tilt, pixel_nm=geo.pixel_nm)

    rng = np.random.default_rng(seed)
    beads = _place_beads(rng, geo, frac)
    proj_px = _project_beads(beads, angles, geo, deformation=deformation, times=times)
    n_t = angles.size
    yield Progress(0, n_t + 1, f"{geo.n_markers} beads placed")

    ideal = torch.zeros((n_t, *geo.detector), dtype=torch.float32, device=device)
    for i in range(n_t):  # one image at a time: the same pixels as all at once
        ideal[i] = render_markers(proj_px[i:i + 1], geo.detector, profile=prof, sigma_px=sigma_nm / geo.pixel_nm,
                                  diameter_px=geo.diameter_nm / geo.pixel_nm, line_detector=geo.two_d,
                                  device=device)[0]
        yield Progress(i + 1, n_t + 1, f"tilt {i + 1}/{n_t} rendered")
    ideal = ideal.to(torch.float64)
    gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(0, 2**62)))
    counts = _record_counts(ideal, geo, i0=i0, noise=noise, noise_variance=noise_variance, ctf=ctf,
                            defocus_um=defocus_um, voltage_kv=voltage_kv, cs_mm=cs_mm,
                            amplitude_contrast=amplitude_contrast, phase_potential_v=phase_potential_v,
                            absorption_potential_v=absorption_potential_v, generator=gen, device=device)
    yield Progress(n_t + 1, n_t + 1, "imaged")

    nz, ny, nx = geo.volume_shape
    params = {
        "preset": preset,
        "geometry": "2d" if geo.two_d else "3d",
        "n_markers": geo.n_markers,
        "bead_diameter_nm": geo.diameter_nm,
        "field_of_view_nm": geo.fov_nm.tolist(),
        "thickness_nm": geo.thickness_nm,
        "detector_shape_yx": list(geo.detector),
        "pixel_size_nm": geo.pixel_nm,
        "acquisition": acq if isinstance(acq, str) else "explicit",
        "profile": prof,
        "profile_sigma_nm": sigma_nm,
        "region_fraction": frac.tolist(),
        "noise": noise,
        "electrons_per_pixel": i0,
        "noise_variance": (None if noise != "gaussian" else (i0 if noise_variance is None else float(noise_variance))),
        "intensity_model": "I = I0 * exp(-C * V_abs * D * Psi" + (" + 2 * CTF (x) (C * V_phase * D * Psi))"
                                                                  if ctf else ")"),
        "interaction_constant_per_V_nm": interaction_constant(voltage_kv),
        "ctf": bool(ctf),
        "defocus_um": float(defocus_um) if ctf else None,
        "voltage_kv": float(voltage_kv),
        "cs_mm": float(cs_mm),
        "amplitude_contrast": float(amplitude_contrast),
        "phase_potential_v": float(phase_potential_v),
        "absorption_potential_v": float(absorption_potential_v),
        "seed": seed,
    }
    return MarkerTiltSeries(
        tilt_series=counts.to(torch.float32).cpu().numpy(),
        ideal=ideal.to(torch.float32).cpu().numpy(),
        tilt_angles_deg=angles,
        acquisition_order=np.asarray(order, dtype=np.int64),
        times=times,
        bead_positions_nm=beads,
        bead_positions_px=beads / geo.pixel_nm + np.array([nx // 2, ny // 2, nz // 2], dtype=np.float64),
        projected_px=np.asarray(proj_px, dtype=np.float64),
        deformation=deformation,
        pixel_size_nm=geo.pixel_nm,
        bead_diameter_nm=geo.diameter_nm,
        volume_shape=geo.volume_shape,
        params=params,
    )


def simulate_marker_tiltseries(**kwargs) -> MarkerTiltSeries:
    """Plain-function form of :func:`simulate_marker_tiltseries_job` (same keyword arguments, no progress)."""
    return run_job(simulate_marker_tiltseries_job(**kwargs), progress=False)


# the plain function has the job's keyword-only parameters (for help(), magicgui and IDEs)
simulate_marker_tiltseries.__signature__ = inspect.signature(simulate_marker_tiltseries_job).replace(
    return_annotation=MarkerTiltSeries)


def sample_marker_tiltseries_job(seed: int = 0) -> Generator[Event, None, MarkerTiltSeries]:
    """A small realistic marker tilt series for the napari sample menu (< 3 s; a job).

    256 x 256 pixels of 4 nm (1.02 µm field of view), 12 beads of 10 nm in a 120 nm slab, 41
    tilts -60..60 every 3° acquired dose-symmetrically, doming ``D_z = (40 - 30 X^2 - 30 Y^2) t``
    nm plus a small in-plane shrink ``D_x = -8 X t``, ``D_y = -8 Y t`` nm (``X = x / L``,
    L = 1024 nm), ball profile, CTF at 4 µm underfocus, Poisson noise at 2 e/Å² per image.
    """
    angles = _tilt_angles(-60.0, 60.0, 3.0)
    model = PolynomialDeformation.from_terms(
        {"z": {"1": 40.0, "x^2": -30.0, "y^2": -30.0}, "x": {"x": -8.0}, "y": {"y": -8.0}},
        degree=2, variables="xy", length_scale_nm=1024.0)
    return (yield from simulate_marker_tiltseries_job(
        geometry="3d", n_markers=12, bead_diameter_nm=10.0, field_of_view_nm=(1024.0, 1024.0), thickness_nm=120.0,
        detector_shape=(256, 256), tilt_angles_deg=angles, acquisition="dose-symmetric", deformation=model,
        profile="ball", region_fraction=(0.85, 0.85, 1.0), noise="poisson", dose_per_tilt=2.0, ctf=True,
        defocus_um=4.0, seed=seed,
    ))


def sample_marker_tiltseries(seed: int = 0) -> MarkerTiltSeries:
    """Plain-function form of :func:`sample_marker_tiltseries_job`."""
    return run_job(sample_marker_tiltseries_job(seed), progress=False)


# ----------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------
def write_marker_tiltseries(result: MarkerTiltSeries, out_dir: str | os.PathLike, *, overwrite: bool = False,
                            write_ideal: bool = True) -> dict[str, Path]:
    """Write ``tiltseries.mrc`` (counts), ``tiltseries_ideal.mrc`` (``Psi``), ``tiltseries.tlt``,
    ``order.txt`` (acquisition order) and ``truth.json`` into ``out_dir`` (created if needed).

    Every file is written atomically; existing files are an error unless ``overwrite``.
    Returns the paths by name.
    """
    from ...io._atomic import atomic_write, check_output_path
    from ...io.mrc import write_mrc
    from ...io.tilt import write_acquisition_order, write_tlt

    out = _output_folder(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {"tilt_series": out / "tiltseries.mrc", "tlt": out / "tiltseries.tlt", "order": out / "order.txt",
             "truth": out / "truth.json"}
    if write_ideal:
        names["ideal"] = out / "tiltseries_ideal.mrc"
    for p in names.values():  # fail before writing anything
        check_output_path(p, overwrite=overwrite)
    vox = result.pixel_size_angstrom
    write_mrc(names["tilt_series"], result.tilt_series, voxel_size=vox, overwrite=overwrite, is_stack=True)
    if write_ideal:
        write_mrc(names["ideal"], result.ideal, voxel_size=vox, overwrite=overwrite, is_stack=True)
    write_tlt(names["tlt"], result.tilt_angles_deg, overwrite=overwrite)
    write_acquisition_order(names["order"], result.acquisition_order, overwrite=overwrite)
    with atomic_write(names["truth"], mode="w", overwrite=overwrite) as f:
        json.dump(result.truth_dict(), f, indent=1)
    return names
