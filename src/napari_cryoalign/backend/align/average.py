"""Subtomogram averaging: missing-wedge-compensated averages, half maps, FSC, iterative refinement.

* :func:`wedge_compensated_average` -- bring every particle onto the reference frame
  (``geometry.align_particle_to_reference``), rotate its Fourier mask with it, and divide
  the summed spectra by the summed masks: ``F_avg(k) = sum_i M_i(k) F_i(k) / max(sum_i M_i(k), w_min)``.
  Fourier samples no particle observed stay 0.
* :func:`average_particles` -- the average and, with ``half_maps``, the two half-set
  averages (even / odd particles), their FSC and the resolution at 0.143 and 0.5 in Å.
* :func:`iterative_average_job` -- reference-free (or reference-seeded) iterative
  averaging: align every particle of each half to that half's current average (gold
  standard: the halves never see each other), re-average, low-pass each half's reference
  to the current FSC 0.143 resolution, repeat. Yields ``Partial("average", volume)``,
  ``Partial("fsc", FSCResult)`` and ``Partial("alignment", AlignmentResult)`` every iteration.

Volumes are ``(z, y, x)``; Fourier masks fftshift-ed (DC at ``N // 2``), as in :mod:`.scoring`.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InputError
from ..fourier import FSCResult, fsc, lowpass, resolution_at, sphere_mask
from ..geometry import align_particle_to_reference
from ..jobs import Partial, Progress, run_job, subjob
from ..ctf import ctf_premultiply, ctf_weights
from ..symmetry import normalize_symmetry, symmetrize_volume
from .exhaustive import _rotate_cubes, align_exhaustive_job
from .methods import align_job
from .scoring import _tensor, mask_to_rfft
from .types import AlignmentResult

__all__ = [
    "AverageResult",
    "FSCReport",
    "align_average_job",
    "average_particles",
    "fsc_report",
    "gallery_slices",
    "half_set_indices",
    "iterative_average",
    "iterative_average_job",
    "wedge_compensated_average",
]

_DIMS = (-3, -2, -1)


@dataclass(frozen=True)
class FSCReport:
    """An FSC curve with its resolutions.

    Attributes
    ----------
    curve : FSCResult (``frequency`` in cycles/voxel, ``fsc`` per shell)
    resolution_0143 : Å where the FSC first drops below 0.143
    resolution_05 : Å where it first drops below 0.5
    voxel_size_angstrom : Å
    """

    curve: FSCResult
    resolution_0143: float
    resolution_05: float
    voxel_size_angstrom: float

    @property
    def frequency_per_angstrom(self) -> np.ndarray:
        """Shell frequencies in 1/Å."""
        return np.asarray(self.curve.frequency) / self.voxel_size_angstrom


@dataclass(frozen=True, eq=False)
class AverageResult:
    """A subtomogram average.

    Attributes
    ----------
    average : ndarray ``(z, y, x)`` float32, wedge-compensated average of all particles
    half1, half2 : ndarrays ``(z, y, x)`` or None, averages of the two half sets
    fsc : FSCReport or None, FSC of the half maps (masked by a soft sphere)
    alignment : AlignmentResult used (per particle, in input order)
    half : ndarray ``(n,)`` of 1/2, the half set of each particle
    iterations : number of alignment iterations run (0 = averaged with given poses)
    history : list of dicts per iteration (resolutions, mean score, seconds)
    """

    average: np.ndarray
    half1: np.ndarray | None
    half2: np.ndarray | None
    fsc: FSCReport | None
    alignment: AlignmentResult
    half: np.ndarray
    iterations: int = 0
    history: tuple = ()


def half_set_indices(n: int) -> np.ndarray:
    """Half set (1 or 2) of each of ``n`` particles: alternating, as RELION's ``rlnRandomSubset`` often is."""
    return (np.arange(n) % 2 + 1).astype(np.int64)


def _sums(particles: torch.Tensor, rotations, origins, masks, *, device, chunk: int = 64, ctf=None, index=None):
    """Sum of aligned spectra x rotated masks and sum of rotated masks (rfft layout).

    With ``ctf`` (:class:`~..ctf.ParticleCTF` of all particles; ``index`` the rows of these):
    ``sum M c F`` and ``sum M c²`` (Wiener-like CTF correction, ``c`` the first-lobe-positive
    CTF; for premultiplied data ``F`` already carries ``c``).
    """
    n = particles.shape[0]
    shape = tuple(particles.shape[1:])
    num = torch.zeros((shape[0], shape[1], shape[2] // 2 + 1), dtype=torch.complex64, device=device)
    wsum = torch.zeros(num.shape, dtype=torch.float32, device=device)
    rot = torch.as_tensor(np.asarray(rotations), dtype=torch.float32, device=device)
    ori = torch.as_tensor(np.asarray(origins), dtype=torch.float32, device=device)
    for s in range(0, n, chunk):
        sl = slice(s, min(n, s + chunk))
        aligned = align_particle_to_reference(particles[sl], rot[sl], ori[sl])
        f = torch.fft.rfftn(aligned, dim=_DIMS)
        if masks is None:
            m = torch.ones_like(f.real)
        else:
            mk = masks if masks.shape[0] == 1 else masks[sl]
            mk = mk.expand(aligned.shape[0], *shape)
            m = mask_to_rfft(_rotate_cubes(mk, rot[sl].transpose(1, 2)).clamp(0.0, 1.0))
        if ctf is not None:
            rows = np.arange(s, min(n, s + chunk)) if index is None else np.asarray(index)[sl]
            c = ctf_weights(ctf, shape, index=rows, device=device)
            num += (f * (m if ctf.premultiplied else m * c)).sum(0)
            wsum += (m * c * c).sum(0)
        else:
            num += (f * m).sum(0)
            wsum += m.sum(0)
    return num, wsum


#: the lowest real-space coverage an average is compensated for (padded boxes, :func:`_coverage`)
COVERAGE_FLOOR = 0.5


def _coverage(inside, rotations, origins, *, device, chunk: int = 64):
    """Real-space coverage of the reference frame: ``sum_i`` of particle ``i``'s inside-the-tomogram mask
    brought onto the reference frame like the particle (:func:`align_particle_to_reference`), ``(N, N, N)``;
    None when ``inside`` is None (no padded box). Boxes that are wholly inside add 1 everywhere."""
    if inside is None:
        return None
    m = _tensor(inside, device=device)
    n = m.shape[0]
    full = m.flatten(1).min(1).values >= 1.0
    cov = torch.full(tuple(m.shape[1:]), float(full.sum()), dtype=torch.float32, device=device)
    part = torch.nonzero(~full).flatten()
    rot = torch.as_tensor(np.asarray(rotations), dtype=torch.float32, device=device).reshape(n, 3, 3)
    ori = torch.as_tensor(np.asarray(origins), dtype=torch.float32, device=device).reshape(n, 3)
    for s in range(0, len(part), chunk):
        sl = part[s:s + chunk]
        cov += align_particle_to_reference(m[sl], rot[sl], ori[sl]).sum(0)
    return cov


def _finish(num: torch.Tensor, wsum: torch.Tensor, n: int, shape, coverage=None) -> np.ndarray:
    """``IFFT(num / max(wsum, floor))``; with ``coverage`` (:func:`_coverage`) the contrast of each voxel
    about the map's mean is divided by the fraction of particles that saw it (at least
    :data:`COVERAGE_FLOOR`): padded voxels were filled with their particle's mean and would otherwise
    pull the average towards it."""
    floor = max(1.0, 0.05 * n)
    avg = torch.fft.irfftn(num / wsum.clamp(min=floor), s=shape, dim=_DIMS)
    if coverage is not None:
        frac = (coverage / float(n)).clamp(min=COVERAGE_FLOOR, max=1.0)
        mean = avg.mean()
        avg = mean + (avg - mean) / frac
    return avg.cpu().numpy().astype(np.float32)


def _prepare(particles, particle_masks, device):
    p = _tensor(particles, device=device)
    if p.ndim != 4 or p.shape[0] == 0:
        raise InputError("particles of shape (n, z, y, x)", field="particles", got=f"shape {tuple(p.shape)}")
    if not (p.shape[1] == p.shape[2] == p.shape[3]):
        raise InputError("cubic boxes (z = y = x)", field="particles", got=f"shape {tuple(p.shape[1:])}")
    m = None
    if particle_masks is not None:
        m = _tensor(particle_masks, device=device)
        if m.ndim == 3:
            m = m[None]
        if tuple(m.shape[1:]) != tuple(p.shape[1:]) or m.shape[0] not in (1, p.shape[0]):
            raise InputError(f"Fourier masks of shape {tuple(p.shape[1:])} or (n, ...)", field="particle_masks",
                             got=f"shape {tuple(m.shape)}")
    return p, m


def _checked_inside(inside_masks, p):
    """``inside_masks`` as given, checked against particles ``p`` (n, N, N, N); None passes."""
    if inside_masks is None:
        return None
    shape = tuple(np.shape(inside_masks))
    if shape != tuple(p.shape):
        raise InputError(f"inside masks of the particles' shape {tuple(p.shape)}", field="inside_masks",
                         got=f"shape {shape}")
    return inside_masks


def _subset(inside_masks, idx):
    return None if inside_masks is None else inside_masks[idx]


def _alignment_arrays(alignment, n):
    if alignment is None:
        return np.broadcast_to(np.eye(3), (n, 3, 3)).copy(), np.zeros((n, 3))
    rot = np.asarray(alignment.rotations, dtype=np.float64).reshape(-1, 3, 3)
    ori = np.asarray(alignment.origins_voxels, dtype=np.float64).reshape(-1, 3)
    if len(rot) != n or len(ori) != n:
        raise InputError(f"one rotation and origin per particle ({n})", field="alignment",
                         got=f"{len(rot)} rotations, {len(ori)} origins")
    return rot, ori


def wedge_compensated_average(particles, alignment: AlignmentResult | None = None, *, particle_masks=None,
                              ctf=None, inside_masks=None, device="cpu") -> np.ndarray:
    """Missing-wedge-compensated average of particles brought onto the reference frame.

    Parameters
    ----------
    particles : ``(n, N, N, N)`` (z, y, x)
    alignment : rotations ``A`` (n, 3, 3) and origins (n, 3) voxels (x, y, z); None = as they are
    particle_masks : Fourier masks, fftshift-ed, ``(N, N, N)`` or ``(n, N, N, N)``; None = fully observed
    ctf : :class:`~..ctf.ParticleCTF` of the particles or None: a CTF-corrected average
        (``M_i c_i F_i`` over ``M_i c_i²``, ``c_i`` the first-lobe-positive CTF)
    inside_masks : ``(n, N, N, N)`` real-space masks of the voxels inside the tomogram (boxes padded
        at its faces, :meth:`.extract.Extraction.inside_masks`) or None: the average's contrast is
        divided by each voxel's coverage (:func:`_finish`)
    device : torch device

    Returns
    -------
    ndarray ``(N, N, N)`` float32: ``IFFT( sum_i M_i F_i / max(sum_i M_i, max(1, 0.05 n)) )`` with
    ``F_i`` the spectrum of the aligned particle and ``M_i`` its mask rotated by ``A_i^T``.
    """
    with torch.no_grad():
        p, m = _prepare(particles, particle_masks, device)
        rot, ori = _alignment_arrays(alignment, p.shape[0])
        num, w = _sums(p, rot, ori, m, device=device, ctf=ctf)
        cov = _coverage(_checked_inside(inside_masks, p), rot, ori, device=device)
        return _finish(num, w, p.shape[0], tuple(p.shape[1:]), coverage=cov)


def fsc_report(a, b, *, voxel_size_angstrom: float, mask=None) -> FSCReport:
    """FSC of two maps ``(N, N, N)`` and the resolutions (Å) at 0.143 and 0.5 (``fourier.fsc`` / ``resolution_at``).

    ``mask``: a real-space mask of the same shape (e.g. ``fourier.sphere_mask``), or None.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise InputError(f"two maps of one shape (first is {a.shape})", field="shape", got=f"{b.shape}")
    if mask is not None and np.shape(mask) != a.shape:
        raise InputError(f"a mask of the maps' shape {a.shape}", field="mask", got=f"{np.shape(mask)}")
    curve = fsc(a, b, mask=mask)
    return FSCReport(curve=curve,
                     resolution_0143=resolution_at(curve, 0.143, voxel_size_angstrom=voxel_size_angstrom),
                     resolution_05=resolution_at(curve, 0.5, voxel_size_angstrom=voxel_size_angstrom),
                     voxel_size_angstrom=float(voxel_size_angstrom))


def default_fsc_mask(box: int) -> np.ndarray:
    """Soft spherical mask (radius 0.4 N, 0.1 N cosine edge) used for half-map FSCs."""
    return sphere_mask((box,) * 3, radius=0.4 * box, soft_edge=max(2.0, 0.1 * box)).numpy()


def average_particles(particles, alignment: AlignmentResult | None = None, *, particle_masks=None,
                      half_maps: bool = True, voxel_size_angstrom: float = 1.0, half=None,
                      ctf=None, symmetry: str = "C1", inside_masks=None, device="cpu") -> AverageResult:
    """Average particles with given poses; with ``half_maps`` also the half-set averages and their FSC.

    Parameters
    ----------
    particles : ``(n, N, N, N)``
    alignment : AlignmentResult (rotations, origins in voxels); None = as they are
    particle_masks : Fourier masks (see :func:`wedge_compensated_average`)
    half_maps : compute the two half maps (particles by ``half``) and their FSC
    voxel_size_angstrom : Å, for the resolutions
    half : ``(n,)`` of 1/2 (e.g. ``rlnRandomSubset``); default alternating
    ctf : :class:`~..ctf.ParticleCTF` or None: CTF-corrected averages (:func:`wedge_compensated_average`)
    symmetry : point group imposed on the average and the half maps (:func:`..symmetry.symmetrize_volume`)
    inside_masks : ``(n, N, N, N)`` or None, as :func:`wedge_compensated_average`
    device : torch device
    """
    def sym(v):
        return v if normalize_symmetry(symmetry) == "C1" else symmetrize_volume(v, symmetry)

    with torch.no_grad():
        p, m = _prepare(particles, particle_masks, device)
        inside = _checked_inside(inside_masks, p)
        n = p.shape[0]
        rot, ori = _alignment_arrays(alignment, n)
        half = half_set_indices(n) if half is None else np.asarray(half, dtype=np.int64)
        shape = tuple(p.shape[1:])
        if alignment is None:
            alignment = AlignmentResult(rot, ori, np.full(n, np.nan), "given")
        if not half_maps or n < 2:
            num, w = _sums(p, rot, ori, m, device=device, ctf=ctf)
            cov = _coverage(inside, rot, ori, device=device)
            return AverageResult(sym(_finish(num, w, n, shape, cov)), None, None, None, alignment, half)
        sums = half_sums(p, rot, ori, half, particle_masks=m, ctf=ctf, inside=inside, device=device)
        return average_from_sums(sums, voxel_size_angstrom=voxel_size_angstrom, symmetry=symmetry,
                                 alignment=alignment, half=half, device=device)


@dataclass
class HalfSums:
    """The additive parts of a half-set average (what :func:`half_sums` returns for any subset of
    the particles; two subsets' sums add with ``+``, so a particle set sharded over processes
    averages to the same maps as one process, to float precision).

    ``num[h]`` the ``sum M c F`` of half ``h + 1`` ``(N, N, N//2+1)`` complex (rfft layout),
    ``wsum[h]`` its weights (``sum M`` or ``sum M c²``), ``coverage[h]`` the real-space coverage
    ``(N, N, N)`` or None (no padded box), ``count[h]`` the number of particles, ``shape`` the box.
    """

    num: list
    wsum: list
    coverage: list
    count: list
    shape: tuple

    def __add__(self, other: "HalfSums") -> "HalfSums":
        if tuple(self.shape) != tuple(other.shape):
            raise InputError(f"sums of one box {tuple(self.shape)}", field="shape", got=f"{tuple(other.shape)}")

        def add(a, b):
            return None if a is None and b is None else (b if a is None else (a if b is None else a + b))
        return HalfSums([a + b for a, b in zip(self.num, other.num)], [a + b for a, b in zip(self.wsum, other.wsum)],
                        [add(a, b) for a, b in zip(self.coverage, other.coverage)],
                        [a + b for a, b in zip(self.count, other.count)], self.shape)

    def numpy(self) -> "HalfSums":
        """The same sums as numpy arrays (to send between processes)."""
        def conv(v):
            return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
        return HalfSums([conv(v) for v in self.num], [conv(v) for v in self.wsum], [conv(v) for v in self.coverage],
                        list(self.count), tuple(self.shape))


def half_sums(particles, rotations, origins, half, *, particle_masks=None, ctf=None, inside=None,
              device="cpu") -> HalfSums:
    """The additive sums of both half sets (:class:`HalfSums`) for ``particles`` ``(n, N, N, N)`` tensor
    with rotations ``(n, 3, 3)``, origins ``(n, 3)`` voxels and ``half`` ``(n,)`` of 1/2; masks, CTF
    and inside masks as :func:`wedge_compensated_average`. A half with no particle gets zero sums."""
    shape = tuple(particles.shape[1:])
    half = np.asarray(half, dtype=np.int64)
    out = HalfSums([], [], [], [], shape)
    for h in (1, 2):
        idx = np.flatnonzero(half == h)
        if len(idx) == 0:
            z = torch.zeros((shape[0], shape[1], shape[2] // 2 + 1), dtype=torch.complex64, device=device)
            out.num.append(z)
            out.wsum.append(z.real.clone())
            out.coverage.append(None)
            out.count.append(0)
            continue
        mh = None if particle_masks is None else (particle_masks if particle_masks.shape[0] == 1
                                                  else particle_masks[idx])
        num, w = _sums(particles[idx], rotations[idx], origins[idx], mh, device=device, ctf=ctf, index=idx)
        out.num.append(num)
        out.wsum.append(w)
        out.coverage.append(_coverage(_subset(inside, idx), rotations[idx], origins[idx], device=device))
        out.count.append(int(len(idx)))
    return out


def average_from_sums(sums: HalfSums, *, voxel_size_angstrom: float = 1.0, symmetry: str = "C1",
                      alignment: AlignmentResult | None = None, half=None, device="cpu") -> AverageResult:
    """The average, the half maps and their FSC from :class:`HalfSums` (of one process, or added over
    shards). ``alignment`` and ``half`` are only carried into the result."""
    def sym(v):
        return v if normalize_symmetry(symmetry) == "C1" else symmetrize_volume(v, symmetry)

    def t(v):
        return None if v is None else torch.as_tensor(v, device=device)

    for h in (0, 1):
        if sums.count[h] == 0:
            raise InputError("particles in both half sets", field="half", got=f"none in half {h + 1}")
    shape = tuple(sums.shape)
    maps = [sym(_finish(t(sums.num[h]), t(sums.wsum[h]), sums.count[h], shape, t(sums.coverage[h])))
            for h in (0, 1)]
    cov = None if sums.coverage[0] is None and sums.coverage[1] is None else \
        sum(t(c) for c in sums.coverage if c is not None)
    avg = sym(_finish(t(sums.num[0]) + t(sums.num[1]), t(sums.wsum[0]) + t(sums.wsum[1]), sum(sums.count), shape, cov))
    report = fsc_report(maps[0], maps[1], voxel_size_angstrom=voxel_size_angstrom, mask=default_fsc_mask(shape[0]))
    return AverageResult(avg, maps[0], maps[1], report, alignment, half)


def iterative_average_job(
    particles,
    *,
    reference=None,
    particle_masks=None,
    initial: AlignmentResult | None = None,
    iterations: int = 3,
    angular_step_deg: float = 30.0,
    refine_levels: int = 2,
    max_shift_voxels: float | None = None,
    voxel_size_angstrom: float = 1.0,
    start_resolution_angstrom: float | None = None,
    half=None,
    ctf=None,
    symmetry: str = "C1",
    inside_masks=None,
    candidates: int = 3,
    max_search_frequency: float = 0.5,
    crop_to_band: bool = False,
    device="cpu",
) -> Generator[Progress | Partial, None, AverageResult]:
    """Job version of :func:`iterative_average` (yields Progress and the Partials listed there)."""
    t_start = time.perf_counter()
    symmetry = normalize_symmetry(symmetry)
    with torch.no_grad():
        p, m = _prepare(particles, particle_masks, device)
        inside = _checked_inside(inside_masks, p)
        # the alignment scores CTF-premultiplied particles; the averages are CTF-corrected
        scored = p if ctf is None else torch.from_numpy(ctf_premultiply(p, ctf, device=device)).to(device)
    n, box = p.shape[0], p.shape[-1]
    if n < 2:
        raise InputError("at least 2 particles to average in half sets", field="particles", got=n)
    if int(iterations) != iterations or iterations < 1:
        raise InputError("an integer >= 1", field="iterations", got=iterations)
    if not voxel_size_angstrom > 0:
        raise InputError("a voxel size > 0 Å", field="voxel_size_angstrom", got=voxel_size_angstrom)
    half = half_set_indices(n) if half is None else np.asarray(half, dtype=np.int64)
    idx_h = [np.flatnonzero(half == h) for h in (1, 2)]
    if any(len(i) == 0 for i in idx_h):
        raise InputError("particles in both half sets", field="half", got="an empty half set")
    vox = float(voxel_size_angstrom)
    res0 = float(start_resolution_angstrom) if start_resolution_angstrom else 4.0 * vox * 2.0  # 1/8 cycles/voxel
    rot, ori = _alignment_arrays(initial, n)
    scores = np.full(n, np.nan)
    total = int(iterations) * 3 + 1

    # the starting reference, shared by both halves (then they go their own ways)
    ref_mask = None
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float32)
        if ref.shape != (box,) * 3:
            raise InputError(f"a reference of the particles' box {(box,) * 3}", field="reference", got=f"{ref.shape}")
        start = "the given reference"
    elif initial is not None:
        ref = wedge_compensated_average(p, initial, particle_masks=m, ctf=ctf, inside_masks=inside, device=device)
        start = "the average under the given poses"
    else:  # reference-free: seed with one particle (its own wedge), not a featureless blob; a whole box
        seed = 0 if inside is None else int(np.argmax(np.asarray(inside).reshape(n, -1).mean(1)))
        ref = scored[seed].cpu().numpy()
        ref_mask = None if m is None else m[seed if m.shape[0] > 1 else 0].cpu().numpy()
        start = f"particle {seed} (reference-free)"
    ref = lowpass(ref, res0, voxel_size_angstrom=vox)
    if symmetry != "C1":
        ref = symmetrize_volume(ref, symmetry)
    refs = [ref, ref]
    res = res0
    history = []
    yield Progress(0, total, f"starting from {start}, low-passed to {res0:.3g} Å")
    result = None
    for it in range(int(iterations)):
        t_it = time.perf_counter()
        fmax = min(0.5, vox / res + 2.0 / box, float(max_search_frequency))
        for h in (0, 1):
            idx = idx_h[h]
            mh = None if m is None else (m if m.shape[0] == 1 else m[idx])
            job = align_exhaustive_job(scored[idx], refs[h], particle_masks=mh, reference_mask=ref_mask,
                                       angular_step_deg=angular_step_deg, refine_levels=refine_levels,
                                       max_shift_voxels=max_shift_voxels, max_frequency=fmax, symmetry=symmetry,
                                       candidates=candidates, crop_to_band=crop_to_band, device=device)
            ali = yield from subjob(job, at=(3 * it + h + 1, total), prefix=f"iteration {it + 1}, half {h + 1}",
                                    partials=False)
            rot[idx] = ali.rotations
            ori[idx] = ali.origins_voxels
            scores[idx] = ali.scores
        ref_mask = None  # averages are wedge-compensated
        alignment = AlignmentResult(rot.copy(), ori.copy(), scores.copy(), "exhaustive",
                                    seconds=time.perf_counter() - t_start)
        result = average_particles(p, alignment, particle_masks=m, half_maps=True, voxel_size_angstrom=vox,
                                   half=half, ctf=ctf, symmetry=symmetry, inside_masks=inside, device=device)
        res = max(result.fsc.resolution_0143, 2.0 * vox)
        refs = [lowpass(result.half1, res, voxel_size_angstrom=vox),
                lowpass(result.half2, res, voxel_size_angstrom=vox)]
        history.append({"iteration": it + 1, "resolution_0143": result.fsc.resolution_0143,
                        "resolution_05": result.fsc.resolution_05, "mean_score": float(np.mean(scores)),
                        "seconds": time.perf_counter() - t_it})
        yield Progress(3 * it + 3, total, f"iteration {it + 1}: FSC 0.143 at {result.fsc.resolution_0143:.3g} Å")
        yield Partial("average", result.average)
        yield Partial("fsc", result.fsc)
        yield Partial("alignment", alignment)
    yield Progress(total, total, "done")
    return AverageResult(result.average, result.half1, result.half2, result.fsc, result.alignment, half,
                         iterations=int(iterations), history=tuple(history))


def iterative_average(particles, **kwargs) -> AverageResult:
    """Iterative (reference-free or reference-seeded) alignment and averaging with gold-standard half sets.

    Parameters
    ----------
    particles : ``(n, N, N, N)`` (z, y, x), N even
    reference : ``(N, N, N)`` starting reference (low-passed to ``start_resolution_angstrom``);
        None = reference-free: the average under ``initial`` if given, else particle 0 with its
        own missing wedge
    particle_masks : Fourier masks, fftshift-ed, ``(N, N, N)`` or ``(n, N, N, N)``
    initial : AlignmentResult, starting poses (e.g. from a STAR file); default identity
    iterations : alignment / averaging rounds (default 3)
    angular_step_deg, refine_levels, max_shift_voxels : as :func:`.exhaustive.align_exhaustive`
    voxel_size_angstrom : Å
    start_resolution_angstrom : low-pass of the starting reference (default 8 voxels)
    half : ``(n,)`` half set 1/2 per particle (default alternating)
    ctf : :class:`~..ctf.ParticleCTF` or None: the searches score CTF-premultiplied particles and
        the averages are CTF-corrected (:func:`average_particles`)
    symmetry : point group imposed on the references and averages; the searches cover its
        asymmetric unit
    inside_masks : ``(n, N, N, N)`` real-space masks of boxes padded at the tomogram's faces, or None
        (:func:`wedge_compensated_average`); the padded voxels hold their particle's mean, so they add
        nothing to the alignment scores (which leave the mean out)
    candidates : distinct grid optima refined per particle (``align_exhaustive``, default 3)
    max_search_frequency : the searches compare frequencies up to the current resolution and at
        most this (cycles/voxel; default 0.5, no limit)
    crop_to_band : the searches run on volumes Fourier-cropped to that band, shift and score at
        full size (``align_exhaustive(crop_to_band=True)``; default False)
    device : torch device

    Each iteration aligns each half to its own reference (limited to the current FSC 0.143
    resolution), re-averages (wedge-compensated) and yields ``Partial("average", (N,N,N))``,
    ``Partial("fsc", FSCReport)`` and ``Partial("alignment", AlignmentResult)``.

    Returns
    -------
    AverageResult with half maps, FSC report and per-iteration ``history``.
    """
    return run_job(iterative_average_job(particles, **kwargs), progress=False)


def gallery_slices(particles, alignment: AlignmentResult, average, *, max_items: int = 24, order=None,
                   device="cpu") -> np.ndarray:
    """Central z slices of aligned particles next to the average's, for eyeballing.

    Parameters
    ----------
    particles : ``(n, N, N, N)``
    alignment : poses of the particles
    average : ``(N, N, N)``
    max_items : at most this many particles (the first of ``order``)
    order : particle indices in display order (default: ascending score, worst first)

    Returns
    -------
    ndarray ``(m, N, 2 N)`` float32: for each shown particle, its aligned central slice
    (normalised to zero mean, unit variance) and, on the right, the average's.
    """
    with torch.no_grad():
        p, _ = _prepare(particles, None, device)
        n, box = p.shape[0], p.shape[-1]
        rot, ori = _alignment_arrays(alignment, n)
        if order is None:
            order = np.argsort(np.nan_to_num(np.asarray(alignment.scores, dtype=float), nan=-np.inf), kind="stable")
        order = np.asarray(order, dtype=np.int64)[:max_items]
        idx = torch.as_tensor(order, device=p.device)
        aligned = align_particle_to_reference(p[idx], torch.as_tensor(rot[order], dtype=torch.float32),
                                              torch.as_tensor(ori[order], dtype=torch.float32))
        sl = aligned[:, box // 2].cpu().numpy()
    avg = np.asarray(average, dtype=np.float32)[box // 2]

    def _norm(x):
        x = x - x.mean(axis=(-2, -1), keepdims=True)
        return x / np.maximum(x.std(axis=(-2, -1), keepdims=True), 1e-12)

    right = np.broadcast_to(_norm(avg), sl.shape)
    return np.concatenate([_norm(sl), right], axis=-1).astype(np.float32)


def align_average_job(
    particles,
    *,
    reference=None,
    particle_masks=None,
    method: str = "exhaustive",
    iterations: int = 3,
    angular_step_deg: float = 30.0,
    voxel_size_angstrom: float = 1.0,
    initial: AlignmentResult | None = None,
    gallery_items: int = 24,
    candidates: int = 1,
    ctf=None,
    symmetry: str = "C1",
    inside_masks=None,
    device="cpu",
) -> Generator[Progress | Partial, None, AverageResult]:
    """Align and average in one job (what the "Align & average" widget runs).

    ``method="exhaustive"``: :func:`iterative_average_job` (reference-free when ``reference``
    is None). ``"learned"`` / ``"learned+refine"``: :func:`.methods.align_job` against
    ``reference`` (required) with ``angular_step_deg`` and ``candidates`` and the other
    settings at their defaults (what ``cryoalign align --method ...`` runs), then the half-set
    average. Yields ``Partial("average")``, ``Partial("fsc")``, ``Partial("alignment")`` and
    finally ``Partial("gallery", (m, N, 2N))`` (worst first).
    """
    if method == "exhaustive":
        result = yield from iterative_average_job(particles, reference=reference, particle_masks=particle_masks,
                                                  initial=initial, iterations=iterations,
                                                  angular_step_deg=angular_step_deg,
                                                  voxel_size_angstrom=voxel_size_angstrom, ctf=ctf,
                                                  symmetry=symmetry, inside_masks=inside_masks, device=device)
    elif method in ("learned", "learned+refine"):
        if reference is None:
            raise InputError("a reference for the learned aligner", field="reference", got="reference-free")
        yield Progress(0, 3, f"{method} alignment")
        ali = yield from subjob(align_job(particles, reference, method=method, particle_masks=particle_masks,
                                          angular_step_deg=angular_step_deg, candidates=candidates, ctf=ctf,
                                          symmetry=symmetry, voxel_size=voxel_size_angstrom, device=device),
                                at=(1, 3), prefix=method, partials=False)
        yield Progress(2, 3, "averaging")
        result = average_particles(particles, ali, particle_masks=particle_masks, half_maps=True,
                                   voxel_size_angstrom=voxel_size_angstrom, ctf=ctf, symmetry=symmetry,
                                   inside_masks=inside_masks, device=device)
        yield Partial("average", result.average)
        yield Partial("fsc", result.fsc)
        yield Partial("alignment", ali)
        yield Progress(3, 3, "done")
    else:
        raise InputError("method 'exhaustive', 'learned' or 'learned+refine'", field="method", got=method)
    if gallery_items:
        yield Partial("gallery", gallery_slices(particles, result.alignment, result.average, max_items=gallery_items,
                                                device=device))
    return result
