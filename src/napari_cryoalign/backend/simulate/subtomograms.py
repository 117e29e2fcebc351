"""Simulated subtomogram sets with known truth (the Gum-Net / Jim-Net protocol).

Each particle is one of several packaged structures (:mod:`.structures`), randomly rotated
(uniform on SO(3)) and shifted, seen through the contrast transfer function and the missing
wedge of a single-axis tilt series, with noise at a requested signal-to-noise ratio.

Steps for particle ``i`` (all batched in torch):

1. ``v_i = transform_reference_to_particle(reference[c_i], A_i, origin_i)``: the reference
   (Coulomb potential, protein positive) rotated by ``A_i`` (RELION matrix of the Euler angles
   in the STAR file) and displaced so that its centre lies at ``N//2 - origin_i`` (voxels):
   exactly the meaning of ``rlnAngle*`` / ``rlnOrigin*Angst`` in ``CONVENTIONS.md``.
2. ``s_i = sign * IFFT( FFT(v_i) * CTF_3D(|k|; defocus_i) * M(k) )`` with ``M`` the observed
   Fourier mask (missing wedge of a tilt series about y, beam along z, and the Nyquist
   sphere ``|k| <= 1/2``) and ``sign = -1`` when ``invert_contrast`` (default: protein
   bright, as tomograms are usually displayed; the CTF itself makes protein dark).
3. Noise ``n_i = IFFT( FFT(e_1) * |CTF| * M ) * sqrt(f) + IFFT( FFT(e_2) * M ) * sqrt(1 - f)``
   (each term first scaled to unit variance) with ``e_1, e_2`` white Gaussian noise and
   ``f = noise_ctf_fraction`` (0.5: half the noise passes the microscope optics, as in the
   aitom simulator), then scaled so that ``var(n_i) = var(s_i) / SNR`` exactly.
4. ``volume_i = s_i + n_i``.

**SNR** = signal variance / noise variance, both measured over the whole ``box^3`` of
particle ``i``, the signal *after* CTF and missing wedge (step 2), the noise after its
own filtering (step 3). This is the definition of the Gum-Net / Jim-Net papers
(Supplementary S3; aitom's ``signal_variance = var(IFFT(FFT(v) * ctf * mask))``). Because
the noise is limited to the observed Fourier region like the signal, the missing wedge is
visible in the power spectrum of every subtomogram, noise included.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Sequence

import numpy as np
import torch

from ...errors import InputError
from ..ctf import ctf_3d
from ..geometry import (
    euler_to_matrix,
    matrix_to_euler,
    random_rotations,
    transform_reference_to_particle,
)
from ..jobs import Partial, Progress, run_job
from ..wedge import observed_fourier_mask
from .common import (
    _at_snr,
    _check_noise_shift_defocus,
    _draw_defocus,
    _noise_generator,
    _optics,
    _simulate_batches,
)
from .procedural import is_procedural_name, procedural_seed
from .structures import list_structures, load_structure_map

__all__ = [
    "SubtomogramSet",
    "simulate_subtomograms",
    "simulate_subtomograms_job",
    "write_subtomogram_set",
    "sample_subtomograms",
]

SNR_DEFINITION = (
    "SNR = var(signal) / var(noise) per particle, both over the whole box; signal = potential "
    "rotated/shifted, times CTF_3D and the observed Fourier mask (missing wedge and |k| <= 1/2); "
    "noise = white Gaussian noise filtered by the same mask (fraction noise_ctf_fraction also by |CTF|)"
)


@dataclass(frozen=True, eq=False)
class SubtomogramSet:
    """A simulated subtomogram set and its ground truth.

    Attributes
    ----------
    volumes : ndarray ``(n, z, y, x)`` float32, the noisy subtomograms
    rotations : ndarray ``(n, 3, 3)`` float64, ``A`` of each particle (reference -> particle,
        acting on (x, y, z), ``euler_to_matrix(euler_deg)``)
    euler_deg : ndarray ``(n, 3)``, RELION (rot, tilt, psi) in degrees
    origins_angstrom : ndarray ``(n, 3)``, ``rlnOriginX/Y/ZAngst``: the particle centre is at
        voxel ``N//2 - origin / voxel_size`` (x, y, z)
    classes : ndarray ``(n,)`` int64, 1-based index into ``class_names``
    class_names : tuple of structure names
    references : ndarray ``(n_classes, z, y, x)`` float32, the unrotated, noise-free potentials
    mask : ndarray ``(z, y, x)`` float32, observed Fourier mask shared by all particles
        (1 = measured), ``fftshift``-ed (DC at index N//2)
    defocus_um : ndarray ``(n,)`` (NaN when no CTF)
    signal_variance, noise_variance : ndarray ``(n,)``, measured as in the module docstring
    voxel_size_angstrom : float
    params : dict, every parameter of the run (JSON-serialisable)
    """

    volumes: np.ndarray
    rotations: np.ndarray
    euler_deg: np.ndarray
    origins_angstrom: np.ndarray
    classes: np.ndarray
    class_names: tuple
    references: np.ndarray
    mask: np.ndarray
    defocus_um: np.ndarray
    signal_variance: np.ndarray
    noise_variance: np.ndarray
    voxel_size_angstrom: float
    params: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.volumes.shape[0])

    @property
    def origins_voxels(self) -> np.ndarray:
        """``origins_angstrom / voxel_size`` ``(n, 3)`` (x, y, z), for ``align_particle_to_reference``."""
        return self.origins_angstrom / self.voxel_size_angstrom

    @property
    def masks(self) -> np.ndarray:
        """The observed Fourier mask of every particle ``(n, z, y, x)`` (a read-only broadcast view)."""
        return np.broadcast_to(self.mask, self.volumes.shape)


def _check(structures, n_per_class, box, voxel, snr, max_shift, defocus, frac):
    if isinstance(structures, str):
        structures = [s for s in structures.split(",") if s]
    structures = list(structures)
    if not structures:
        raise InputError("at least one structure name", field="structures", got="none")
    known = list_structures()
    bad = [s for s in structures if s not in known and not is_procedural_name(s)]
    if bad:
        raise InputError(f"structure names among {known} or 'procedural:<seed>'", field="structures",
                         got=", ".join(bad))
    for s in structures:
        if is_procedural_name(s):
            procedural_seed(s)  # validates the seed
    if int(n_per_class) != n_per_class or n_per_class < 1:
        raise InputError("an integer >= 1", field="n_per_class", got=n_per_class)
    if int(box) != box or box < 8:
        raise InputError("an integer box size >= 8 voxels", field="box", got=box)
    if not voxel > 0:
        raise InputError("a voxel size > 0 Å", field="voxel_size_angstrom", got=voxel)
    _check_noise_shift_defocus(snr, max_shift, box, defocus, unit="voxels", shift_field="max_shift_voxels")
    if not 0.0 <= frac <= 1.0:
        raise InputError("a fraction in [0, 1]", field="noise_ctf_fraction", got=frac)
    return structures


def _unit_var(x: torch.Tensor) -> torch.Tensor:
    v = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return x / v.clamp(min=1e-30).sqrt()


def simulate_subtomograms_job(
    structures: Sequence[str] | str,
    *,
    n_per_class: int,
    box: int = 32,
    voxel_size_angstrom: float = 12.0,
    snr: float | None = 0.1,
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
    max_shift_voxels: float = 3.0,
    defocus_um: float | tuple[float, float] | None = 5.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    bfactor: float = 0.0,
    invert_contrast: bool = True,
    noise_ctf_fraction: float = 0.5,
    shuffle: bool = True,
    seed: int = 0,
    noise_seed: int | None = None,
    batch_size: int = 64,
    device="cpu",
) -> Generator[Progress | Partial, None, SubtomogramSet]:
    """Job version of :func:`simulate_subtomograms`: yields :class:`Progress` per batch."""
    structures = _check(structures, n_per_class, box, voxel_size_angstrom, snr, max_shift_voxels, defocus_um,
                        noise_ctf_fraction)
    box = int(box)
    n_per_class = int(n_per_class)
    refs, voxels = [], []
    for name in structures:
        d, v = load_structure_map(name, voxel_size_angstrom=voxel_size_angstrom, box=box)
        refs.append(d)
        voxels.append(v)
    voxel = float(voxels[0])
    references = np.stack(refs).astype(np.float32)
    n = n_per_class * len(structures)

    rng = np.random.default_rng(seed)
    classes = np.repeat(np.arange(1, len(structures) + 1), n_per_class)
    if shuffle:
        classes = classes[rng.permutation(n)]
    euler = matrix_to_euler(random_rotations(n, seed=rng))
    rotations = euler_to_matrix(euler)  # exactly the matrices of the written angles
    displacement = rng.uniform(-max_shift_voxels, max_shift_voxels, size=(n, 3))  # centre - N//2, (x,y,z)
    origins_vox = -displacement
    defocus = _draw_defocus(rng, defocus_um, n)
    noise_seed, gen = _noise_generator(rng, noise_seed)

    shape = (box, box, box)
    mask_r = observed_fourier_mask(shape, tilt_range_deg=tilt_range_deg, rfft=True, device=device)
    ref_t = torch.from_numpy(references).to(device)
    sign = -1.0 if (invert_contrast and defocus_um is not None) else 1.0

    def filtered(x: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfftn(torch.fft.rfftn(x, dim=(1, 2, 3)) * filt, s=shape, dim=(1, 2, 3))

    def unit_noise(m: int, filt: torch.Tensor) -> torch.Tensor:  # step 3 of the module docstring
        e1 = torch.randn((m, *shape), generator=gen).to(device)
        e2 = torch.randn((m, *shape), generator=gen).to(device)
        n1, n2 = _unit_var(filtered(e1, filt.abs())), _unit_var(filtered(e2, mask_r))
        return _unit_var(math.sqrt(noise_ctf_fraction) * n1 + math.sqrt(1.0 - noise_ctf_fraction) * n2)

    def simulate(sl: slice):
        m = sl.stop - sl.start
        cls = torch.from_numpy(classes[sl] - 1).to(device)
        rot = torch.from_numpy(rotations[sl]).to(device=device, dtype=torch.float32)
        ori = torch.from_numpy(origins_vox[sl]).to(device=device, dtype=torch.float32)
        part = transform_reference_to_particle(ref_t[cls], rot, ori)
        if defocus_um is None:
            ctf = torch.ones((m, 1, 1, 1), device=device)
        else:
            ctf = ctf_3d(shape, voxel_size_angstrom=voxel, defocus_um=torch.from_numpy(defocus[sl]),
                         voltage_kv=voltage_kv, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast,
                         bfactor=bfactor, device=device)
        filt = ctf * mask_r
        return _at_snr(sign * filtered(part, filt), snr, lambda: unit_noise(m, filt))

    volumes, sig_var, noise_var = yield from _simulate_batches(n, batch_size, shape, simulate,
                                                               message="simulating subtomograms", unit="subtomograms")

    mask_full = observed_fourier_mask(shape, tilt_range_deg=tilt_range_deg, rfft=False)
    params = dict(
        kind="subtomograms",
        structures=list(structures),
        n_per_class=n_per_class,
        n=n,
        box=box,
        voxel_size_angstrom=voxel,
        snr=snr,
        snr_definition=SNR_DEFINITION,
        tilt_range_deg=None if tilt_range_deg is None else [float(t) for t in tilt_range_deg],
        max_shift_voxels=float(max_shift_voxels),
        shift_distribution="uniform in [-max_shift, max_shift] per axis (x, y, z)",
        rotation_distribution="uniform on SO(3) (Haar)",
        defocus_um=None if defocus_um is None else [float(x) for x in np.atleast_1d(defocus_um)],
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        bfactor=bfactor,
        invert_contrast=invert_contrast,
        noise_ctf_fraction=noise_ctf_fraction,
        shuffle=shuffle,
        seed=seed,
        noise_seed=int(noise_seed),
    )
    return SubtomogramSet(
        volumes=volumes,
        rotations=rotations,
        euler_deg=euler,
        origins_angstrom=origins_vox * voxel,
        classes=classes.astype(np.int64),
        class_names=tuple(structures),
        references=references,
        mask=torch.fft.fftshift(mask_full).numpy().astype(np.float32),
        defocus_um=defocus,
        signal_variance=sig_var,
        noise_variance=noise_var,
        voxel_size_angstrom=voxel,
        params=params,
    )


def simulate_subtomograms(structures: Sequence[str] | str, **kwargs) -> SubtomogramSet:
    """Simulate a subtomogram set with ground truth (Gum-Net / Jim-Net protocol).

    Parameters
    ----------
    structures : names from :func:`~.structures.list_structures` (list or comma-separated), or
        ``"procedural:<seed>"`` (:mod:`.procedural`; seeds >= 10000 are held out from training)
    n_per_class : particles per structure
    box : cube edge in voxels (default 32)
    voxel_size_angstrom : voxel size in Å (default 12, as in Gum-Net's simulated sets)
    snr : signal variance / noise variance (module docstring); None = no noise
    tilt_range_deg : (min, max) tilt angles, default (-60, 60) (a 30° missing wedge on each
        side); None = no missing wedge (only the Nyquist sphere)
    max_shift_voxels : particle centres are displaced uniformly in ``[-m, m]`` per axis
    defocus_um : defocus in µm (positive = underfocus), a (min, max) range drawn uniformly
        per particle, or None for no CTF
    voltage_kv, cs_mm, amplitude_contrast, bfactor : CTF parameters (:func:`~..ctf.ctf_2d`)
    invert_contrast : multiply the CTF-filtered signal by -1 so that protein is bright (default);
        without a CTF (``defocus_um=None``) the potential is used as it is (protein bright)
    noise_ctf_fraction : fraction of the noise variance that also passes the CTF (0.5)
    shuffle : shuffle the class order (otherwise blocks of ``n_per_class``)
    seed : seeds poses, shifts, defocus, classes and (unless ``noise_seed``) the noise
    noise_seed : seed of the noise alone: same ``seed`` with another ``noise_seed`` gives the
        same particles with independent noise
    batch_size : particles per torch batch
    device : torch device for the computation ("cpu", "cuda", ...)

    Returns
    -------
    SubtomogramSet
    """
    return run_job(simulate_subtomograms_job(structures, **kwargs), progress=False)


# the plain function has the job's keyword-only parameters (for help(), magicgui and IDEs)
simulate_subtomograms.__signature__ = inspect.signature(simulate_subtomograms_job).replace(
    return_annotation=SubtomogramSet)


# ----------------------------------------------------------------------------- writing

def write_subtomogram_set(sset: SubtomogramSet, out_dir: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Write a :class:`SubtomogramSet` to a folder.

    Layout::

        out_dir/particles.star                 rlnImageName, rlnAngleRot/Tilt/Psi, rlnOriginX/Y/ZAngst,
                                               rlnClassNumber, rlnDefocusU/V (Å), optics block
        out_dir/subtomograms/subtomo_000000.mrc one volume per particle (voxel size in the header)
        out_dir/references/<name>.mrc          the noise-free unrotated maps (class i = i-th name)
        out_dir/observed_mask.mrc              Fourier mask, fftshift-ed (DC at N//2)
        out_dir/params.json                    every parameter, the seed, the SNR definition

    Every file is written atomically; existing files are an error unless ``overwrite``.

    Returns
    -------
    dict with the paths: ``star``, ``params``, ``mask``, ``references`` (list), ``folder``.
    """
    from ...io._atomic import write_json
    from ...io.mrc import write_mrc
    from ...io.star_images import write_subtomograms

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "references").mkdir(exist_ok=True)
    vox = sset.voxel_size_angstrom
    extra = {}
    if np.all(np.isfinite(sset.defocus_um)):
        extra = {"rlnDefocusU": sset.defocus_um * 1e4, "rlnDefocusV": sset.defocus_um * 1e4,
                 "rlnDefocusAngle": np.zeros(sset.n)}
    optics = _optics(sset.params)
    star = write_subtomograms(out / "particles.star", sset.volumes, voxel_size=vox, folder=out / "subtomograms",
                              overwrite=overwrite, euler_deg=sset.euler_deg, origins_angstrom=sset.origins_angstrom,
                              classes=sset.classes, extra_columns=extra or None, optics=optics, form="relion4")
    refs = [write_mrc(out / "references" / f"{name.replace(':', '_')}.mrc", sset.references[i], voxel_size=vox,
                      overwrite=overwrite)
            for i, name in enumerate(sset.class_names)]
    mask = write_mrc(out / "observed_mask.mrc", sset.mask, voxel_size=vox, overwrite=overwrite)
    params = dict(sset.params)
    params["class_numbers"] = {name: i + 1 for i, name in enumerate(sset.class_names)}
    params["files"] = {"star": star.name, "references": [f"references/{p.name}" for p in refs],
                       "observed_mask": mask.name}
    pj = write_json(out / "params.json", params, overwrite=overwrite)
    return {"star": star, "params": pj, "mask": mask, "references": refs, "folder": out / "subtomograms"}


def sample_subtomograms(seed: int = 0) -> SubtomogramSet:
    """A small demo set for napari's sample data: 5 structures x 4 particles, 32^3, SNR 1 (< 1 s)."""
    return simulate_subtomograms(["ribosome", "cct", "mtor", "ruvab", "dengue_e_fab"], n_per_class=4, box=32,
                                 snr=1.0, seed=seed)
