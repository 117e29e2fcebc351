"""Simulated single-particle images (CESPED-like): projections with CTF, shifts and noise.

For particle ``i`` with RELION matrix ``A_i`` (Euler angles in the STAR file) and in-plane
origin ``o_i`` (``rlnOriginX/YAngst``):

1. **Projection** (real space): the reference is rotated into the particle frame,
   ``P_i(A_i r) = reference(r)`` (``geometry.rotate_volume``, trilinear, about the box centre
   ``N//2``), and summed along z: ``proj_i(x, y) = sum_z P_i(x, y, z)``. By the central-slice
   theorem ``FT(proj_i)(kx, ky) = FT(reference)(A_i^T (kx, ky, 0))``, which is RELION's
   projection convention (pinned by a test).
2. **Shift**: the particle centre is moved to ``N//2 - o_i / pixel_size`` (RELION sign) by a
   Fourier phase ramp (:func:`..geometry.shift_image`).
3. **CTF** per particle (astigmatic, RELION ``rlnDefocusU/V/Angle``), multiplied onto the
   image's Fourier transform: ``s_i = sign * IFFT(FFT(shifted proj_i) * CTF_i)``, with
   ``sign = -1`` when ``invert_contrast`` (default: protein bright, as RELION particles are
   usually extracted; see :mod:`..fourier` for the sign convention of the CTF).
4. **Noise**: white Gaussian noise (shot noise of the detector is white) scaled so that
   ``var(noise_i) = var(s_i) / SNR`` exactly, both variances over the whole ``box^2`` image:
   ``image_i = s_i + noise_i``.

**SNR** = signal variance / noise variance per image, the signal measured over the whole box
after projection, shift and CTF.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator

import numpy as np
import torch

from ...errors import InputError
from ..ctf import ctf_2d_batched
from ..geometry import shift_image
from ..geometry import euler_to_matrix, matrix_to_euler, random_rotations, rotate_volume
from ..jobs import Partial, Progress, run_job
from ..symmetry import normalize_symmetry, symmetrize_volume
from .common import (
    _at_snr,
    _check_noise_shift_defocus,
    _draw_defocus,
    _noise_generator,
    _optics,
    _simulate_batches,
)
from .procedural import is_procedural_name
from .structures import list_structures, load_structure_map

__all__ = [
    "ParticleImageSet",
    "project",
    "simulate_particles",
    "simulate_particles_job",
    "write_particle_set",
    "sample_particles",
]

SNR_DEFINITION = (
    "SNR = var(signal) / var(noise) per image over the whole box; signal = projection of the rotated "
    "reference, shifted, times the particle's CTF; noise = white Gaussian"
)


@dataclass(frozen=True, eq=False)
class ParticleImageSet:
    """Simulated particle images and their truth.

    Attributes
    ----------
    images : ndarray ``(n, y, x)`` float32
    rotations : ndarray ``(n, 3, 3)``, ``A`` (reference -> particle, on (x, y, z))
    euler_deg : ndarray ``(n, 3)``, RELION (rot, tilt, psi), degrees
    origins_angstrom : ndarray ``(n, 2)``, ``rlnOriginX/YAngst``: particle centre at pixel
        ``N//2 - origin / pixel_size`` (x, y)
    defocus_u_um, defocus_v_um, defocus_angle_deg : ndarray ``(n,)``, RELION's astigmatic defocus
        (µm here; Å in the STAR file)
    random_subset : ndarray ``(n,)`` of 1/2 (``rlnRandomSubset``, two equal half-sets)
    structure : name of the structure
    reference : ndarray ``(z, y, x)`` float32, the map that was projected (pixel size, box)
    pixel_size_angstrom : float
    signal_variance, noise_variance : ndarray ``(n,)``
    params : dict of every parameter (JSON-serialisable)
    """

    images: np.ndarray
    rotations: np.ndarray
    euler_deg: np.ndarray
    origins_angstrom: np.ndarray
    defocus_u_um: np.ndarray
    defocus_v_um: np.ndarray
    defocus_angle_deg: np.ndarray
    random_subset: np.ndarray
    structure: str
    reference: np.ndarray
    pixel_size_angstrom: float
    signal_variance: np.ndarray
    noise_variance: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def origins_pixels(self) -> np.ndarray:
        """``origins_angstrom / pixel_size`` ``(n, 2)`` (x, y)."""
        return self.origins_angstrom / self.pixel_size_angstrom


def project(volume, rotations, *, shifts_pixels=None, interpolation: str = "linear") -> torch.Tensor | np.ndarray:
    """Projections of a reference at poses ``A``: rotate into the particle frame, sum along z.

    Parameters
    ----------
    volume : ``(z, y, x)`` reference (numpy or torch)
    rotations : ``(B, 3, 3)`` (or ``(3, 3)``) RELION matrices ``A`` (``particle(A r) = reference(r)``)
    shifts_pixels : optional ``(B, 2)`` in-plane shifts ``(x, y)`` applied after projection
        (``out(p + shift) = in(p)``, Fourier phase ramp); RELION origins correspond to
        ``shift = -origin``

    Returns
    -------
    ``(B, y, x)`` (or ``(y, x)`` for one matrix), same kind as ``volume``. The projection of a
    reference point at ``r`` (from the box centre) lands at ``(A r)_xy + shift``.
    """
    was_np = not isinstance(volume, torch.Tensor)
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float32)) if was_np else volume.float()
    rot = torch.as_tensor(np.asarray(rotations, dtype=np.float32)) if not isinstance(rotations, torch.Tensor) else rotations
    rot = rot.to(device=vol.device, dtype=vol.dtype)
    single = rot.ndim == 2
    if single:
        rot = rot[None]
    vols = vol[None].expand(rot.shape[0], *vol.shape)
    parts = rotate_volume(vols, rot, interpolation=interpolation)
    proj = parts.sum(dim=1)  # sum along z -> (B, y, x)
    if shifts_pixels is not None:
        sh = torch.as_tensor(np.asarray(shifts_pixels, dtype=np.float32)) if not isinstance(shifts_pixels, torch.Tensor) else shifts_pixels
        proj = shift_image(proj, sh.to(device=proj.device, dtype=proj.dtype).reshape(proj.shape[0], 2))
    if single:
        proj = proj[0]
    return proj.detach().cpu().numpy() if was_np else proj


def _check(structure, n, box, pixel, snr, max_shift, defocus, astig):
    if structure not in list_structures() and not is_procedural_name(structure):
        raise InputError(f"one of {list_structures()} or 'procedural:<seed>'", field="structure",
                         got=repr(structure))
    if int(n) != n or n < 1:
        raise InputError("an integer >= 1", field="n", got=n)
    if int(box) != box or box < 8:
        raise InputError("an integer box >= 8 pixels", field="box", got=box)
    if not pixel > 0:
        raise InputError("a pixel size > 0 Å", field="pixel_size_angstrom", got=pixel)
    _check_noise_shift_defocus(snr, max_shift, box, defocus, unit="pixels", shift_field="max_shift_pixels")
    if defocus is not None:
        d = np.atleast_1d(np.asarray(defocus, dtype=float))
        if astig < 0 or astig >= 2 * d[0]:
            raise InputError("an astigmatism >= 0 and < twice the smallest defocus", field="astigmatism_um", got=astig)


def simulate_particles_job(
    structure: str,
    *,
    n: int,
    box: int = 64,
    pixel_size_angstrom: float = 6.0,
    snr: float | None = 0.1,
    defocus_um: float | tuple[float, float] | None = (1.0, 3.0),
    astigmatism_um: float = 0.1,
    max_shift_pixels: float = 3.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    bfactor: float = 0.0,
    invert_contrast: bool = True,
    rotations: np.ndarray | None = None,
    symmetry: str = "C1",
    seed: int = 0,
    noise_seed: int | None = None,
    batch_size: int = 32,
    device="cpu",
) -> Generator[Progress | Partial, None, ParticleImageSet]:
    """Job version of :func:`simulate_particles`: yields :class:`Progress` per batch."""
    _check(structure, n, box, pixel_size_angstrom, snr, max_shift_pixels, defocus_um, astigmatism_um)
    n, box = int(n), int(box)
    symmetry = normalize_symmetry(symmetry)
    ref, pixel = load_structure_map(structure, voxel_size_angstrom=pixel_size_angstrom, box=box)
    if symmetry != "C1":
        ref = symmetrize_volume(ref, symmetry).astype(np.float32)
    rng = np.random.default_rng(seed)
    if rotations is None:
        euler = matrix_to_euler(random_rotations(n, seed=rng))
    else:
        rot_in = np.asarray(rotations, dtype=float)
        if rot_in.shape != (n, 3, 3):
            raise InputError(f"rotation matrices of shape ({n}, 3, 3)", field="rotations", got=rot_in.shape)
        euler = matrix_to_euler(rot_in)
    rot = euler_to_matrix(euler)
    displacement = rng.uniform(-max_shift_pixels, max_shift_pixels, size=(n, 2))  # centre - N//2 (x, y)
    origins_px = -displacement
    dmean = _draw_defocus(rng, defocus_um, n)
    if defocus_um is None:
        du = dv = dang = dmean
    else:
        du = dmean + astigmatism_um / 2
        dv = dmean - astigmatism_um / 2
        dang = rng.uniform(0.0, 180.0, size=n)
    subset = np.where(rng.permutation(n) < (n + 1) // 2, 1, 2).astype(np.int64)
    noise_seed, gen = _noise_generator(rng, noise_seed)

    ref_t = torch.from_numpy(ref).to(device)
    sign = -1.0 if (invert_contrast and defocus_um is not None) else 1.0

    def unit_noise(m: int) -> torch.Tensor:  # white, zero mean and unit variance per image
        e = torch.randn((m, box, box), generator=gen).to(device)
        e = e - e.mean(dim=(1, 2), keepdim=True)
        return e / e.var(dim=(1, 2), unbiased=False, keepdim=True).sqrt()

    def simulate(sl: slice):
        rot_t = torch.from_numpy(rot[sl]).to(device=device, dtype=torch.float32)
        img = project(ref_t, rot_t, shifts_pixels=torch.from_numpy(displacement[sl]).to(device=device,
                                                                                          dtype=torch.float32))
        if img.ndim == 2:
            img = img[None]
        if defocus_um is not None:
            ctf = ctf_2d_batched((box, box), pixel_size_angstrom=pixel, defocus_um=du[sl], defocus_v_um=dv[sl],
                                 astigmatism_angle_deg=dang[sl], voltage_kv=voltage_kv, cs_mm=cs_mm,
                                 amplitude_contrast=amplitude_contrast, bfactor=bfactor, device=device)
            img = torch.fft.irfftn(torch.fft.rfftn(img, dim=(1, 2)) * ctf, s=(box, box), dim=(1, 2))
        return _at_snr(sign * img, snr, lambda: unit_noise(len(img)))

    images, sig_var, noise_var = yield from _simulate_batches(n, batch_size, (box, box), simulate,
                                                              message="projecting particles", unit="images")

    params = dict(
        kind="particles", structure=structure, n=n, box=box, pixel_size_angstrom=pixel, snr=snr,
        snr_definition=SNR_DEFINITION,
        defocus_um=None if defocus_um is None else [float(x) for x in np.atleast_1d(defocus_um)],
        astigmatism_um=astigmatism_um, max_shift_pixels=float(max_shift_pixels),
        shift_distribution="uniform in [-max_shift, max_shift] per axis (x, y)",
        rotation_distribution="uniform on SO(3) (Haar)" if rotations is None else "given",
        projection="real space: trilinear rotation of the reference by A, sum along z",
        voltage_kv=voltage_kv, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast, bfactor=bfactor,
        invert_contrast=invert_contrast, seed=seed, noise_seed=int(noise_seed), symmetry=symmetry,
        symmetry_note=("C1: the structure as it is" if symmetry == "C1" else
                       f"the map was symmetrised under {symmetry} (RELION axes) before projection; "
                       "poses are defined up to A -> A g, g in the group"),
    )
    return ParticleImageSet(
        images=images, rotations=rot, euler_deg=euler, origins_angstrom=origins_px * pixel,
        defocus_u_um=du, defocus_v_um=dv, defocus_angle_deg=dang, random_subset=subset,
        structure=structure, reference=ref, pixel_size_angstrom=pixel,
        signal_variance=sig_var, noise_variance=noise_var, params=params,
    )


def simulate_particles(structure: str, **kwargs) -> ParticleImageSet:
    """Simulate particle images of one packaged structure with known poses, shifts and CTFs.

    Parameters
    ----------
    structure : a name from :func:`~.structures.list_structures`
    n : number of images
    box : image size in pixels (default 64)
    pixel_size_angstrom : pixel size in Å (default 6; the map is resampled by Fourier padding)
    snr : signal variance / noise variance per image (module docstring); None = no noise
    defocus_um : mean defocus in µm, or a (min, max) range drawn uniformly; None = no CTF
    astigmatism_um : ``defocusU - defocusV`` (µm); the astigmatism angle is uniform in [0, 180)
    max_shift_pixels : particle centres displaced uniformly in ``[-m, m]`` per axis
    voltage_kv, cs_mm, amplitude_contrast, bfactor : CTF parameters
    invert_contrast : protein bright (default; RELION-style particles) instead of dark
    rotations : optional ``(n, 3, 3)`` poses (e.g. from a symmetry group or a grid); default
        uniform random on SO(3)
    symmetry : point group (``C1`` default, ``Cn``, ``Dn``, ``T``, ``O``, ``I``; RELION axes): the map is
        symmetrised under the group before projection (:func:`..symmetry.symmetrize_volume`), so
        the truth poses hold up to ``A -> A g``; recorded in ``params["symmetry"]``
    seed, noise_seed : random seeds (same ``seed`` with another ``noise_seed``: same particles,
        independent noise)
    batch_size, device : torch batching and device

    Returns
    -------
    ParticleImageSet
    """
    return run_job(simulate_particles_job(structure, **kwargs), progress=False)


simulate_particles.__signature__ = inspect.signature(simulate_particles_job).replace(
    return_annotation=ParticleImageSet)



def write_particle_set(pset: ParticleImageSet, out_dir: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Write a :class:`ParticleImageSet`: ``particles.mrcs`` + ``particles.star`` + ``reference.mrc`` + ``params.json``.

    The STAR file has an optics block (``rlnImagePixelSize``, ``rlnImageSize``,
    ``rlnImageDimensionality`` 2, ``rlnVoltage``, ``rlnSphericalAberration``,
    ``rlnAmplitudeContrast``) and per particle ``rlnImageName`` (``000001@particles.mrcs``),
    ``rlnAngleRot/Tilt/Psi``, ``rlnOriginXAngst/YAngst``, ``rlnDefocusU/V`` (Å),
    ``rlnDefocusAngle`` (deg) and ``rlnRandomSubset`` (1/2). Files are written atomically.

    Returns
    -------
    dict with the paths ``star``, ``stack``, ``reference``, ``params``.
    """
    from ...io.mrc import write_mrc
    from ...io._atomic import write_json
    from ...io.star_images import write_particle_stack

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"rlnOriginXAngst": pset.origins_angstrom[:, 0], "rlnOriginYAngst": pset.origins_angstrom[:, 1]}
    if np.all(np.isfinite(pset.defocus_u_um)):
        extra.update(rlnDefocusU=pset.defocus_u_um * 1e4, rlnDefocusV=pset.defocus_v_um * 1e4,
                     rlnDefocusAngle=pset.defocus_angle_deg)
    extra["rlnRandomSubset"] = pset.random_subset
    p = pset.params
    optics = _optics(p)
    star = write_particle_stack(out / "particles.star", pset.images, voxel_size=pset.pixel_size_angstrom,
                                stack_path=out / "particles.mrcs", overwrite=overwrite, euler_deg=pset.euler_deg,
                                extra_columns=extra, optics=optics)
    ref = write_mrc(out / "reference.mrc", pset.reference, voxel_size=pset.pixel_size_angstrom, overwrite=overwrite)
    params = dict(p)
    params["files"] = {"star": star.name, "stack": "particles.mrcs", "reference": ref.name}
    pj = write_json(out / "params.json", params, overwrite=overwrite)
    return {"star": star, "stack": out / "particles.mrcs", "reference": ref, "params": pj}


def sample_particles(seed: int = 0) -> ParticleImageSet:
    """A small demo set for napari's sample data: 64 ribosome images, 48 px at 8 Å, SNR 0.5 (about 1 s)."""
    return simulate_particles("ribosome", n=64, box=48, pixel_size_angstrom=8.0, snr=0.5, seed=seed)
