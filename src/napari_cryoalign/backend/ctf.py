"""The contrast transfer function (CTF) of the microscope, in 2D (images) and 3D (tomograms).

Frequencies, layouts and array kinds as in :mod:`.fourier` (cycles per pixel / voxel divided by
the pixel size in Å; unshifted Fourier arrays, ``rfft=True``: the half last axis of ``rfftn``).

Sign convention
---------------
The CTF returned by :func:`ctf_2d` is the factor multiplied onto the Fourier transform of
the *projected Coulomb potential* (positive where there is protein) to get the Fourier
transform of the image contrast::

    gamma(k) = pi * lambda * dz * k^2 - (pi / 2) * Cs * lambda^3 * k^4 + phase_shift + arcsin(A)
    CTF(k)   = -sin(gamma(k)) * exp(-B k^2 / 4)

with ``dz`` the defocus (positive = underfocus), ``lambda`` the relativistic electron
wavelength, ``Cs`` the spherical aberration, ``A`` the amplitude contrast and ``B`` the
B-factor (Å²). At DC ``CTF = -A`` (e.g. -0.07): in underfocus the first lobe is negative,
so protein appears *dark* in images, as in raw micrographs. The first zero (Cs ignored,
no phase shift) is at ``k0 = sqrt((pi - arcsin A) / (pi lambda dz))``. Equivalently
``CTF = -(sqrt(1 - A^2) sin(chi) + A cos(chi))`` with ``chi = gamma - arcsin(A)``.
Particles prepared for RELION are usually contrast-inverted (protein bright); their transfer
function is ``-CTF`` (positive first lobe, ``+A`` at DC): the simulators in
:mod:`.simulate` multiply by ``-1`` when asked for bright protein (``invert_contrast``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .fourier import frequency_grid, frequency_radius

__all__ = ["ParticleCTF", "ctf_2d", "ctf_2d_batched", "ctf_3d", "ctf_premultiply", "ctf_weights",
           "electron_wavelength_angstrom"]


def electron_wavelength_angstrom(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV (300 kV -> 0.0197 Å)."""
    v = float(voltage_kv) * 1e3
    return 12.2643247 / math.sqrt(v * (1.0 + 0.978466e-6 * v))


def _ctf_from_k2(
    k2: torch.Tensor,
    defocus_a: torch.Tensor,
    *,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    bfactor: float,
    phase_shift_deg: float,
) -> torch.Tensor:
    """CTF from squared spatial frequency ``k2`` (1/Å²) and defocus in Å (broadcasting)."""
    if not 0.0 <= amplitude_contrast < 1.0:
        raise ValueError(f"amplitude_contrast must be in [0, 1), got {amplitude_contrast}")
    lam = electron_wavelength_angstrom(voltage_kv)
    cs_a = float(cs_mm) * 1e7
    gamma = (
        math.pi * lam * defocus_a * k2
        - 0.5 * math.pi * cs_a * lam**3 * k2 * k2
        + math.radians(phase_shift_deg)
        + math.asin(amplitude_contrast)
    )
    ctf = -torch.sin(gamma)
    if bfactor:
        ctf = ctf * torch.exp(-float(bfactor) * k2 / 4.0)
    return ctf


def ctf_2d_batched(
    shape: tuple[int, int],
    *,
    pixel_size_angstrom: float,
    defocus_um,
    defocus_v_um=None,
    astigmatism_angle_deg=0.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    bfactor: float = 0.0,
    phase_shift_deg: float = 0.0,
    rfft: bool = True,
    device="cpu",
    dtype=torch.float32,
) -> torch.Tensor:
    """A batch of 2D CTFs, one per defocus value.

    Parameters
    ----------
    shape : ``(y, x)`` image size in pixels
    pixel_size_angstrom : pixel size in Å
    defocus_um : tensor/array ``(B,)`` (or scalar) of defoci in µm, positive = underfocus.
        With astigmatism this is RELION's ``rlnDefocusU``.
    defocus_v_um : optional ``(B,)``, RELION's ``rlnDefocusV`` (µm); default = ``defocus_um``
    astigmatism_angle_deg : scalar or ``(B,)``, RELION's ``rlnDefocusAngle`` (degrees from
        the x axis to the U direction, counter-clockwise in (x, y))
    voltage_kv, cs_mm, amplitude_contrast : microscope parameters (kV, mm, fraction)
    bfactor : envelope ``exp(-B k²/4)``, B in Å²
    phase_shift_deg : additional phase shift (phase plate), degrees
    rfft : ``(B, y, x//2+1)`` unshifted rfft layout if true, else ``(B, y, x)`` unshifted

    Returns
    -------
    torch.Tensor ``(B, y, x//2+1)`` or ``(B, y, x)``, dtype ``dtype`` on ``device``.
    See the module docstring for the sign convention (``-sin(gamma)``, value ``-A`` at DC).
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (y, x), got {shape}")
    if pixel_size_angstrom <= 0:
        raise ValueError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
    fy, fx = frequency_grid(shape, rfft=rfft, device=device, dtype=torch.float64)
    fy = fy / pixel_size_angstrom
    fx = fx / pixel_size_angstrom
    k2 = (fx * fx + fy * fy)[None]  # (1, y, x')
    du = torch.as_tensor(defocus_um, dtype=torch.float64, device=device).reshape(-1)
    if defocus_v_um is None:
        dz = du.view(-1, 1, 1) * 1e4
    else:
        dv = torch.as_tensor(defocus_v_um, dtype=torch.float64, device=device).reshape(-1)
        ang = torch.as_tensor(astigmatism_angle_deg, dtype=torch.float64, device=device).reshape(-1)
        ang = torch.deg2rad(ang).view(-1, 1, 1)
        theta = torch.atan2(fy, fx)[None]
        dz = 0.5 * (du.view(-1, 1, 1) + dv.view(-1, 1, 1)) + 0.5 * (du - dv).view(-1, 1, 1) * torch.cos(
            2.0 * (theta - ang)
        )
        dz = dz * 1e4
    ctf = _ctf_from_k2(
        k2,
        dz,
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        bfactor=bfactor,
        phase_shift_deg=phase_shift_deg,
    )
    return ctf.to(dtype)


def ctf_2d(
    shape: tuple[int, int],
    *,
    pixel_size_angstrom: float,
    defocus_um: float,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    bfactor: float = 0.0,
    phase_shift_deg: float = 0.0,
    rfft: bool = True,
    device="cpu",
    dtype=torch.float32,
) -> torch.Tensor:
    """The 2D CTF of one image (no astigmatism).

    Parameters
    ----------
    shape : ``(y, x)`` image size in pixels
    pixel_size_angstrom : pixel size in Å
    defocus_um : defocus in µm, positive = underfocus
    voltage_kv : acceleration voltage (kV)
    cs_mm : spherical aberration (mm)
    amplitude_contrast : amplitude contrast fraction (0.07 for cryo)
    bfactor : envelope ``exp(-B k²/4)``, B in Å²
    phase_shift_deg : extra phase shift (degrees)
    rfft : return the unshifted rfft layout ``(y, x//2+1)``; else the full unshifted ``(y, x)``

    Returns
    -------
    torch.Tensor ``(y, x//2+1)`` or ``(y, x)``: multiply onto ``rfftn`` / ``fftn`` of the
    projected potential. ``-sin(gamma)`` convention, ``-amplitude_contrast`` at DC (module docstring).
    """
    return ctf_2d_batched(
        shape,
        pixel_size_angstrom=pixel_size_angstrom,
        defocus_um=[float(defocus_um)],
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        bfactor=bfactor,
        phase_shift_deg=phase_shift_deg,
        rfft=rfft,
        device=device,
        dtype=dtype,
    )[0]


def ctf_3d(
    shape: tuple[int, int, int],
    *,
    voxel_size_angstrom: float,
    defocus_um,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    bfactor: float = 0.0,
    phase_shift_deg: float = 0.0,
    rfft: bool = True,
    device="cpu",
    dtype=torch.float32,
) -> torch.Tensor:
    """The CTF as it appears in a tomographic reconstruction: the 2D CTF evaluated at ``|k|``.

    By the central-slice theorem every Fourier sample ``k`` of the reconstruction comes from
    a tilt image in which it has the same spatial frequency ``|k|``; with one defocus for
    all tilts (no defocus gradient across the tilted field of view) the 3D transfer function
    is therefore ``CTF_2D(|k|)`` (same convention as :func:`ctf_2d`).

    Parameters
    ----------
    shape : ``(z, y, x)``
    voxel_size_angstrom : voxel size in Å
    defocus_um : a float, or a ``(B,)`` array/tensor of defoci (µm, positive = underfocus)
    other parameters : as :func:`ctf_2d`

    Returns
    -------
    torch.Tensor ``(z, y, x//2+1)`` (``rfft``) or ``(z, y, x)``, unshifted; with a ``(B,)``
    defocus a leading batch axis ``(B, ...)``.
    """
    if len(shape) != 3:
        raise ValueError(f"shape must be (z, y, x), got {shape}")
    if voxel_size_angstrom <= 0:
        raise ValueError(f"voxel_size_angstrom must be > 0, got {voxel_size_angstrom}")
    r = frequency_radius(shape, rfft=rfft, device=device, dtype=torch.float64) / voxel_size_angstrom
    dz = torch.as_tensor(defocus_um, dtype=torch.float64, device=device)
    batched = dz.ndim > 0
    if batched:
        dz = dz.reshape(-1, 1, 1, 1)
        r = r[None]
    ctf = _ctf_from_k2(
        r * r,
        dz * 1e4,
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        bfactor=bfactor,
        phase_shift_deg=phase_shift_deg,
    )
    return ctf.to(dtype)


# ----------------------------------------------------------------------------------------
# Per-particle CTF for subtomogram alignment (CTF premultiplication)
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ParticleCTF:
    """The CTF of each subtomogram, for CTF-aware alignment scores (:func:`ctf_premultiply`).

    defocus_um : ``(n,)`` defocus per particle (µm, positive = underfocus; the mean of
        ``rlnDefocusU/V``); voltage_kv, cs_mm, amplitude_contrast : the optics (one group);
    voxel_size_angstrom : of the subtomograms; phase_flipped : the data were already CTF
        phase-flipped (RELION's ``rlnCtfDataArePhaseFlipped``), so only ``|CTF|`` is applied;
    premultiplied : the data are already multiplied by their CTF (RELION's
        ``rlnCtfDataAreCtfPremultiplied``): not multiplied again, only the averages' ``CTF²``
        weights use it.
    """

    defocus_um: np.ndarray
    voxel_size_angstrom: float
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    phase_flipped: bool = False
    premultiplied: bool = False

    def __post_init__(self):
        object.__setattr__(self, "defocus_um", np.asarray(self.defocus_um, dtype=np.float64).reshape(-1))

    def __len__(self) -> int:
        return int(self.defocus_um.size)

    def subset(self, idx) -> "ParticleCTF":
        """The CTFs of the particles ``idx`` (indices or a boolean mask)."""
        return replace(self, defocus_um=self.defocus_um[idx])

    def describe(self) -> str:
        lo, hi = float(self.defocus_um.min()), float(self.defocus_um.max())
        kind = "|CTF| (phase-flipped data)" if self.phase_flipped else "CTF"
        return (f"{kind} of each particle: defocus {lo:.2f}-{hi:.2f} µm, {self.voltage_kv:g} kV, "
                f"Cs {self.cs_mm:g} mm, amplitude contrast {self.amplitude_contrast:g}")


def ctf_weights(ctf: ParticleCTF, shape, *, index=slice(None), device="cpu") -> torch.Tensor:
    """The CTF of particles ``index`` with its first lobe positive (``|CTF|`` when phase-flipped).

    Returns ``(m, z, y, x//2+1)`` float32, rfft layout (unshifted), a function of ``|k|`` only
    (:func:`ctf_3d`): unchanged by the particle's rotation and shift.
    """
    c = ctf_3d(tuple(int(s) for s in shape), voxel_size_angstrom=ctf.voxel_size_angstrom,
               defocus_um=torch.as_tensor(np.atleast_1d(ctf.defocus_um[index])), voltage_kv=ctf.voltage_kv,
               cs_mm=ctf.cs_mm, amplitude_contrast=ctf.amplitude_contrast, device=device)
    if ctf.phase_flipped:
        return c.abs()
    return c * torch.sign(c[:, 0, 0, 1]).reshape(-1, 1, 1, 1)  # the sign of the lowest non-zero frequency


def ctf_premultiply(volumes, ctf: ParticleCTF, *, batch_size: int = 64, device="cpu"):
    """Each subtomogram filtered by its own CTF (*premultiplied*, as RELION 4/5 subtomograms are).

    A correlation score of a CTF-modulated particle against a reference without the CTF lets
    the frequency bands of negative CTF *subtract* from the score, so beyond the first zero
    (31 Å at 5 µm, 300 kV) half the signal works against the alignment. Premultiplying the
    particle by its CTF makes every band count positively (``CTF² x reference``): the score of
    a pose becomes the correlation with the CTF-filtered reference. The sign is normalised so
    that the first lobe is positive, i.e. the low frequencies keep the contrast the data have
    (protein bright stays bright); phase-flipped data get ``|CTF|``; premultiplied data are
    returned as they are.

    Parameters
    ----------
    volumes : ``(n, N, N, N)`` (z, y, x) subtomograms (numpy or torch)
    ctf : :class:`ParticleCTF` with ``n`` particles
    batch_size, device : torch batching

    Returns
    -------
    ndarray ``(n, N, N, N)`` float32 (for the alignment scores only: average the raw particles)
    """
    v = torch.as_tensor(np.asarray(volumes, dtype=np.float32)) if not isinstance(volumes, torch.Tensor) else volumes
    if v.ndim != 4 or len(ctf) != v.shape[0]:
        raise ValueError(f"volumes (n, N, N, N) and n CTFs needed, got {tuple(v.shape)} and {len(ctf)}")
    shape = tuple(int(s) for s in v.shape[1:])
    if ctf.premultiplied:
        return v.cpu().numpy().astype(np.float32, copy=True)
    out = torch.empty(v.shape, dtype=torch.float32)
    for s in range(0, v.shape[0], batch_size):
        e = min(v.shape[0], s + batch_size)
        c = ctf_weights(ctf, shape, index=slice(s, e), device=device)
        f = torch.fft.rfftn(v[s:e].to(device=device, dtype=torch.float32), dim=(1, 2, 3)) * c
        out[s:e] = torch.fft.irfftn(f, s=shape, dim=(1, 2, 3)).cpu()
    return out.numpy()
