"""Particle images with poses and CTFs for pose inference, and CESPED-style preprocessing.

:func:`load_particle_data` reads a RELION particle STAR file and its ``index@stack.mrcs``
images into a :class:`ParticleData`: images ``(n, N, N)``, poses ``A`` (RELION matrices,
``particle(A r) = reference(r)``), in-plane origins in Å (RELION sign), per-particle CTF
parameters, the half set (``rlnRandomSubset``) and a confidence per particle
(``rlnMaxValueProbDistribution`` when present, else 1; CESPED's weights).

:func:`preprocess_images` does what CESPED's ``ParticlesDataset`` does before the network:

1. per-image normalisation with the mean and standard deviation of the pixels **outside**
   the inscribed circle (radius ``N/2``: background noise statistics);
2. CTF phase flipping: the image's Fourier transform is multiplied by ``sign(T)`` with
   ``T = -CTF`` the transfer function of protein-bright particles (RELION's CTF sign;
   :mod:`..fourier` documents ``CTF = -sin(gamma)``, ``T = +A`` at DC, so low frequencies are
   left alone, as CESPED's ``sign(-ctf)`` does);
3. optional resizing to the model's image size by Fourier cropping (band-limited
   down-sampling; the pixel size grows by ``N / image_size``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ..ctf import ctf_2d_batched
from ..geometry import euler_to_matrix

__all__ = [
    "CONFIDENCE_COLUMN",
    "CTFParams",
    "ParticleData",
    "fourier_resize",
    "load_particle_data",
    "normalize_outside_circle",
    "particle_data_from_simulation",
    "preprocess_images",
    "resized_pixel_size",
    "transfer_function",
]

CONFIDENCE_COLUMN = "rlnMaxValueProbDistribution"


@dataclass(frozen=True, eq=False)
class CTFParams:
    """Per-particle CTF parameters (RELION columns), arrays of shape ``(n,)``.

    ``defocus_u_angstrom``/``defocus_v_angstrom`` (``rlnDefocusU/V``, Å, positive = underfocus),
    ``defocus_angle_deg`` (``rlnDefocusAngle``), ``voltage_kv``, ``cs_mm``,
    ``amplitude_contrast``, ``phase_shift_deg``, ``bfactor`` (``rlnCtfBfactor``, Å²).
    """

    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    defocus_angle_deg: np.ndarray
    voltage_kv: np.ndarray
    cs_mm: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift_deg: np.ndarray
    bfactor: np.ndarray

    def subset(self, idx) -> CTFParams:
        return CTFParams(**{k: np.asarray(getattr(self, k))[idx] for k in self.__dataclass_fields__})


@dataclass(frozen=True, eq=False)
class ParticleData:
    """Particle images and what is known about them.

    Attributes
    ----------
    images : ndarray ``(n, N, N)`` float32, as stored (not preprocessed)
    pixel_size_angstrom : float
    rotations : ndarray ``(n, 3, 3)`` RELION matrices ``A``, or None when the file has no angles
    origins_angstrom : ndarray ``(n, 2)``, ``rlnOriginX/YAngst`` (zeros when absent): the particle
        centre is at pixel ``N//2 - origin / pixel_size`` (x, y)
    ctf : CTFParams or None (no defocus columns: no CTF)
    half : ndarray ``(n,)`` of 1/2 (``rlnRandomSubset``; alternating when absent)
    confidence : ndarray ``(n,)`` (``rlnMaxValueProbDistribution``; ones when absent)
    table : the :class:`~napari_cryoalign.io.star.ParticleTable` read (None for simulated data)
    path : the STAR file (None for simulated data)
    """

    images: np.ndarray
    pixel_size_angstrom: float
    rotations: np.ndarray | None
    origins_angstrom: np.ndarray
    ctf: CTFParams | None
    half: np.ndarray
    confidence: np.ndarray
    table: object = None
    path: Path | None = None

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def box(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, idx) -> ParticleData:
        """The particles ``idx`` (an index array or boolean mask), in that order."""
        idx = np.flatnonzero(idx) if np.asarray(idx).dtype == bool else np.asarray(idx, dtype=np.int64)
        table = self.table
        if table is not None:
            table = replace(table, data=table.data.iloc[idx].reset_index(drop=True))
        return replace(self, images=self.images[idx],
                       rotations=None if self.rotations is None else self.rotations[idx],
                       origins_angstrom=self.origins_angstrom[idx],
                       ctf=None if self.ctf is None else self.ctf.subset(idx),
                       half=self.half[idx], confidence=self.confidence[idx], table=table)


def _column(table, label: str, default: float | None, path) -> np.ndarray | None:
    """Per-particle values of ``label``: the particle column, else the optics group's value, else ``default``."""
    df = table.data
    n = len(df)
    if label in df.columns:
        vals = np.asarray(df[label], dtype=np.float64)
    elif table.optics is not None and label in table.optics.columns:
        optics = table.optics
        if "rlnOpticsGroup" in df.columns and "rlnOpticsGroup" in optics.columns:
            m = dict(zip(optics["rlnOpticsGroup"].astype(int), optics[label].astype(float)))
            vals = df["rlnOpticsGroup"].astype(int).map(m).to_numpy(dtype=float, na_value=np.nan)
        else:
            vals = np.full(n, float(optics[label].iloc[0]))
    elif default is None:
        return None
    else:
        vals = np.full(n, float(default))
    if not np.isfinite(vals).all():
        raise InputError("finite numbers", path=path, field=label, got="NaN or a missing optics group")
    return vals


def _ctf_from_table(table, path) -> CTFParams | None:
    du = _column(table, "rlnDefocusU", None, path)
    if du is None:
        return None
    dv = _column(table, "rlnDefocusV", None, path)
    return CTFParams(
        defocus_u_angstrom=du,
        defocus_v_angstrom=du if dv is None else dv,
        defocus_angle_deg=_column(table, "rlnDefocusAngle", 0.0, path),
        voltage_kv=_column(table, "rlnVoltage", 300.0, path),
        cs_mm=_column(table, "rlnSphericalAberration", 2.7, path),
        amplitude_contrast=_column(table, "rlnAmplitudeContrast", 0.1, path),
        phase_shift_deg=_column(table, "rlnPhaseShift", 0.0, path),
        bfactor=_column(table, "rlnCtfBfactor", 0.0, path),
    )


def load_particle_data(star_path: str | os.PathLike, *, require_poses: bool = False,
                       data_dir: str | os.PathLike | None = None, pixel_size_angstrom: float | None = None,
                       ctf: bool = True) -> ParticleData:
    """Read a particle STAR file and its 2D image stack(s).

    Parameters
    ----------
    star_path : a RELION particle STAR file (3.0 - 5) with ``rlnImageName = index@stack.mrcs``
    require_poses : raise :class:`InputError` when ``rlnAngleRot/Tilt/Psi`` are missing (training)
    data_dir : folder the stack names resolve against (default: the STAR file's folder)
    pixel_size_angstrom : override the pixel size of the file (e.g. binned images whose STAR file
        still gives the detector pixel size)
    ctf : use the CTF columns (False: treat the images as CTF-free)

    Raises
    ------
    InputError
        Missing file, columns or stacks; non-square images; missing angles with ``require_poses``.
    """
    from ...io.star import ANGLE_COLUMNS
    from ...io.star_columns import euler_deg, origins_angstrom
    from ...io.star_images import read_particle_images

    path = Path(star_path)
    images, table = read_particle_images(path, data_dir=data_dir)
    if images.shape[1] != images.shape[2]:
        raise InputError("square particle images", path=path, field="rlnImageName", got=f"{images.shape[1:]} (y, x)")
    df = table.data
    has_angles = all(c in df.columns for c in ANGLE_COLUMNS[:2])
    if require_poses and not has_angles:
        raise InputError("poses in rlnAngleRot, rlnAngleTilt (and rlnAnglePsi) to train on", path=path,
                         field="rlnAngleRot", got="columns " + ", ".join(map(str, df.columns[:12])))
    rotations = euler_to_matrix(euler_deg(table)) if has_angles else None
    n = len(df)
    if "rlnRandomSubset" in df.columns:
        half = np.asarray(df["rlnRandomSubset"], dtype=np.int64)
        if not np.isin(half, (1, 2)).all():
            raise InputError("rlnRandomSubset values 1 or 2", path=path, field="rlnRandomSubset",
                             got=sorted(set(half.tolist()))[:5])
    else:
        half = np.where(np.arange(n) % 2 == 0, 1, 2).astype(np.int64)
    conf = np.ones(n)
    if CONFIDENCE_COLUMN in df.columns:
        conf = np.asarray(df[CONFIDENCE_COLUMN], dtype=np.float64)
        if not (np.isfinite(conf).all() and (conf >= 0).all()):
            raise InputError("confidences >= 0", path=path, field=CONFIDENCE_COLUMN, got="negative or NaN")
    px = float(table.voxel_size)
    if pixel_size_angstrom is not None:
        if not pixel_size_angstrom > 0:
            raise InputError("a pixel size > 0 Angstrom", path=path, field="pixel_size_angstrom", got=pixel_size_angstrom)
        px = float(pixel_size_angstrom)
    return ParticleData(images=images, pixel_size_angstrom=px, rotations=rotations,
                        origins_angstrom=origins_angstrom(table)[:, :2], ctf=_ctf_from_table(table, path) if ctf else None,
                        half=half, confidence=conf, table=table, path=path)


def particle_data_from_simulation(pset) -> ParticleData:
    """A :class:`ParticleData` from a simulator's ``ParticleImageSet`` (no files involved)."""
    n = pset.n
    p = pset.params
    ctf = None
    if np.all(np.isfinite(pset.defocus_u_um)):
        ctf = CTFParams(defocus_u_angstrom=pset.defocus_u_um * 1e4, defocus_v_angstrom=pset.defocus_v_um * 1e4,
                        defocus_angle_deg=np.asarray(pset.defocus_angle_deg, dtype=float),
                        voltage_kv=np.full(n, p.get("voltage_kv", 300.0)), cs_mm=np.full(n, p.get("cs_mm", 2.7)),
                        amplitude_contrast=np.full(n, p.get("amplitude_contrast", 0.07)),
                        phase_shift_deg=np.zeros(n), bfactor=np.full(n, float(p.get("bfactor", 0.0))))
    return ParticleData(images=np.asarray(pset.images, dtype=np.float32), pixel_size_angstrom=pset.pixel_size_angstrom,
                        rotations=np.asarray(pset.rotations), origins_angstrom=np.asarray(pset.origins_angstrom),
                        ctf=ctf, half=np.asarray(pset.random_subset, dtype=np.int64), confidence=np.ones(n))


def transfer_function(ctf: CTFParams | None, idx, shape: tuple[int, int], *, pixel_size_angstrom: float,
                      rfft: bool = True, device="cpu") -> torch.Tensor | None:
    """``T = -CTF`` of particles ``idx`` on the unshifted Fourier grid of ``shape`` (RELION sign: ``+A`` at DC).

    Returns ``(B, y, x//2+1)`` (``rfft``) or ``(B, y, x)``, float32, or None without CTF.
    Particles with different voltage/Cs/amplitude contrast are computed group by group.
    """
    if ctf is None:
        return None
    idx = np.atleast_1d(np.asarray(idx))
    out = None
    keys = np.stack([ctf.voltage_kv[idx], ctf.cs_mm[idx], ctf.amplitude_contrast[idx], ctf.phase_shift_deg[idx],
                     ctf.bfactor[idx]], axis=1)
    for key in np.unique(keys, axis=0):
        sel = np.flatnonzero((keys == key).all(axis=1))
        rows = idx[sel]
        t = -ctf_2d_batched(shape, pixel_size_angstrom=pixel_size_angstrom,
                            defocus_um=ctf.defocus_u_angstrom[rows] * 1e-4, defocus_v_um=ctf.defocus_v_angstrom[rows] * 1e-4,
                            astigmatism_angle_deg=ctf.defocus_angle_deg[rows], voltage_kv=float(key[0]),
                            cs_mm=float(key[1]), amplitude_contrast=float(key[2]), phase_shift_deg=float(key[3]),
                            bfactor=float(key[4]), rfft=rfft, device=device)
        if out is None:
            out = torch.empty((len(idx),) + tuple(t.shape[1:]), dtype=t.dtype, device=device)
        out[torch.as_tensor(sel, device=device)] = t
    return out


def normalize_outside_circle(images: torch.Tensor) -> torch.Tensor:
    """Subtract the mean and divide by the standard deviation of the pixels outside the inscribed circle.

    ``images``: ``(B, N, N)``; the circle has radius ``N/2`` about ``N//2`` (CESPED's noise statistics).
    """
    n = images.shape[-1]
    ax = torch.arange(n, device=images.device, dtype=torch.float32) - n // 2
    outside = (ax[:, None] ** 2 + ax[None, :] ** 2) > (n / 2.0) ** 2
    bg = images[:, outside]
    mean = bg.mean(dim=1).view(-1, 1, 1)
    std = bg.std(dim=1).clamp(min=1e-6).view(-1, 1, 1)
    return (images - mean) / std


def fourier_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Band-limited resampling of ``(B, N, N)`` images to ``(B, size, size)`` (centred Fourier crop / zero pad).

    The box keeps its physical extent (pixel size times ``N / size``) and its centre ``N//2``;
    pixel values keep their scale (means are preserved).
    """
    n = images.shape[-1]
    if size == n:
        return images
    f = torch.fft.fftshift(torch.fft.fft2(images), dim=(-2, -1))
    out = torch.zeros(images.shape[:-2] + (size, size), dtype=f.dtype, device=f.device)
    m = min(n, size)
    si, so = n // 2 - m // 2, size // 2 - m // 2
    out[..., so:so + m, so:so + m] = f[..., si:si + m, si:si + m]
    res = torch.fft.ifft2(torch.fft.ifftshift(out, dim=(-2, -1))).real
    return (res * (size * size) / (n * n)).to(images.dtype)


def preprocess_images(data: ParticleData, idx=None, *, image_size: int | None = None, phase_flip: bool = True,
                      normalize: bool = True, device="cpu") -> torch.Tensor:
    """CESPED preprocessing of particles ``idx`` (default all): normalise, phase-flip, resize.

    Returns ``(B, S, S)`` float32 on ``device`` with ``S = image_size`` (default ``N``); the
    pixel size becomes ``data.pixel_size_angstrom * N / S``.
    """
    idx = np.arange(data.n) if idx is None else np.atleast_1d(np.asarray(idx))
    img = torch.as_tensor(np.ascontiguousarray(data.images[idx]), dtype=torch.float32, device=device)
    if normalize:
        img = normalize_outside_circle(img)
    n = img.shape[-1]
    if phase_flip and data.ctf is not None:
        t = transfer_function(data.ctf, idx, (n, n), pixel_size_angstrom=data.pixel_size_angstrom, device=device)
        img = torch.fft.irfft2(torch.fft.rfft2(img) * torch.sign(t), s=(n, n))
    if image_size is not None and int(image_size) != n:
        if int(image_size) < 8:
            raise InputError("an image size >= 8 pixels", field="image_size", got=image_size)
        img = fourier_resize(img, int(image_size))
    return img.contiguous()


def resized_pixel_size(data: ParticleData, image_size: int | None) -> float:
    """Pixel size (Å) after :func:`preprocess_images` resizes to ``image_size``."""
    return data.pixel_size_angstrom * data.box / (image_size or data.box)

