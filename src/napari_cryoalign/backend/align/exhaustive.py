"""Exhaustive subtomogram alignment: rotation grid x FFT translation search, constrained correlation.

The classical method (H-T align, Xu et al. 2012; F&A align, Chen et al. 2013, both based
on Förster's constrained correlation): for every rotation ``A`` of a grid covering SO(3)
the reference is rotated by ``A`` (so that it looks like the particle), its Fourier mask is
rotated with it, and the constrained correlation (:mod:`.scoring`) of particle and rotated
reference is computed for *every* translation at once by one inverse FFT. The best
(rotation, translation) within ``max_shift_voxels`` wins; the peak is refined to sub-voxel
precision by :func:`..peaks.find_peak` (a parabola through its neighbours on each axis). A coarse global grid (on
Fourier-binned volumes) is followed by ``refine_levels`` local grids, each three times finer.

Conventions (``docs/conventions.md``): the returned ``A`` maps reference to particle
coordinates, ``particle(A r) = reference(r)``; the origin (voxels, ``(x, y, z)``) puts the
particle's centre at ``N // 2 - origin``; ``geometry.align_particle_to_reference(particle,
A, origin)`` brings a particle onto the reference.

All heavy work is batched torch (``rfftn``/``irfftn``, ``grid_sample``) on ``device``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from ..geometry import local_rotation_grid, nearest_rotation, rotation_grid
from ..jobs import Partial, Progress, run_job
from ..peaks import find_peak, peak_window
from ..symmetry import reduce_rotation_grid
from .scoring import _tensor, band_mask, mask_to_rfft, rfft_weights
from .types import AlignmentResult

__all__ = ["align_exhaustive", "align_exhaustive_job", "band_box", "refine_alignment", "refine_alignment_job"]

_DIMS = (-3, -2, -1)


# ----------------------------------------------------------------------------- inputs
#: distinct grid optima refined per particle (``candidates`` of :func:`align_exhaustive`)
DEFAULT_CANDIDATES = 3


def _check_volumes(particles, reference, particle_masks, reference_mask, device):
    p = _tensor(particles, device=device)
    if p.ndim == 3:
        p = p[None]
    if p.ndim != 4 or p.shape[0] == 0:
        raise InputError("particles of shape (n, z, y, x)", field="particles", got=f"shape {tuple(p.shape)}")
    n, nz, ny, nx = p.shape
    if not (nz == ny == nx):
        raise InputError("cubic boxes (z = y = x)", field="particles", got=f"shape {tuple(p.shape[1:])}")
    if nx % 2:
        raise InputError("an even box size", field="box", got=nx)
    r = _tensor(reference, device=device)
    if tuple(r.shape) != tuple(p.shape[1:]):
        raise InputError(f"a reference of the particles' box {tuple(p.shape[1:])}", field="reference",
                         got=f"shape {tuple(r.shape)}")
    if not torch.isfinite(p).all():
        raise InputError("finite voxel values", field="particles", got="NaN or inf")
    pm = None
    if particle_masks is not None:
        pm = _tensor(particle_masks, device=device)
        if pm.ndim == 3:
            pm = pm[None]
        if pm.ndim != 4 or tuple(pm.shape[1:]) != tuple(p.shape[1:]) or pm.shape[0] not in (1, n):
            raise InputError(f"Fourier masks of shape {tuple(p.shape[1:])} or (n, ...)", field="particle_masks",
                             got=f"shape {tuple(pm.shape)}")
    rm = None
    if reference_mask is not None:
        rm = _tensor(reference_mask, device=device)
        if tuple(rm.shape) != tuple(p.shape[1:]):
            raise InputError(f"a Fourier mask of shape {tuple(p.shape[1:])}", field="reference_mask",
                             got=f"shape {tuple(rm.shape)}")
    return p, r, pm, rm


def _bin_fourier(x: torch.Tensor, n_out: int) -> torch.Tensor:
    """Fourier-crop a batch ``(B, N, N, N)`` to ``(B, n, n, n)`` keeping the box centre N//2 (band-limited binning)."""
    n_in = x.shape[-1]
    if n_out == n_in:
        return x
    F = torch.fft.fftshift(torch.fft.fftn(x, dim=_DIMS), dim=_DIMS)
    lo = n_in // 2 - n_out // 2
    F = F[..., lo:lo + n_out, lo:lo + n_out, lo:lo + n_out]
    out = torch.fft.ifftn(torch.fft.ifftshift(F, dim=_DIMS), dim=_DIMS).real
    return (out * (n_out ** 3 / n_in ** 3)).to(x.dtype)


def _crop_mask(m: torch.Tensor, n_out: int) -> torch.Tensor:
    """Centre crop of an fftshift-ed Fourier mask (DC at N//2) to the binned box."""
    n_in = m.shape[-1]
    lo = n_in // 2 - n_out // 2
    return m[..., lo:lo + n_out, lo:lo + n_out, lo:lo + n_out]


def band_box(box: int, max_frequency: float, *, minimum: int = 8) -> int:
    """The smallest even box (at least ``minimum``, at most ``box``) whose Nyquist frequency covers
    ``max_frequency`` cycles/voxel of a ``box``-sized volume: Fourier-cropping to it keeps every
    frequency up to ``max_frequency`` (``box = 32``, ``0.25`` -> 16)."""
    small = 2 * math.ceil(float(max_frequency) * box - 1e-9)
    return int(min(box, max(int(minimum), small)))


def _cropped(p, r, pm, rm, small: int):
    """Particles, reference and Fourier masks Fourier-cropped to ``small`` (band-limited binning)."""
    return (_bin_fourier(p, small), _bin_fourier(r[None], small)[0],
            None if pm is None else _crop_mask(pm, small), None if rm is None else _crop_mask(rm, small))


def _polish(p, r, pm, rm, rot, *, max_frequency, max_shift, pairs, device):
    """Sub-voxel shift (n, 3) and score (n,) of every particle at its rotation ``rot`` (n, 3, 3), on the full box
    (one rotated reference per particle: what a search on cropped volumes leaves to do at full size)."""
    prob = _Problem(p, r, pm, rm, max_frequency=max_frequency, max_shift=max_shift, device=device)
    _, score, shift = _local_search(prob, rot, max_angle=1e-6, step=1.0, pairs=pairs, final=True,
                                    progress_cb=lambda i, k: None)
    return score, shift


# ----------------------------------------------------------------------------- core
_BASE: dict = {}


def _rotate_cubes(vol: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Fast batched ``geometry.rotate_volume`` for cubes: ``out(R (r - c) + c) = in(r)``, trilinear, zero padding.

    ``vol`` (B, N, N, N) or (N, N, N) shared by all rotations, ``rot`` (B, 3, 3) on (x, y, z), centre c = N // 2.
    Same result as :func:`..geometry.rotate_volume` (tested) through ``affine_grid``'s batched matmul.
    """
    b = rot.shape[0]
    n = vol.shape[-1]
    key = (n, vol.device, vol.dtype)
    base = _BASE.get(key)
    if base is None:  # normalised (x, y, z, 1) of every output voxel, (z, y, x) order
        lin = torch.linspace(-1.0, 1.0, n, device=vol.device, dtype=vol.dtype)
        gz, gy, gx = torch.meshgrid(lin, lin, lin, indexing="ij")
        base = torch.stack([gx, gy, gz, torch.ones_like(gx)], -1).reshape(-1, 4)
        _BASE.clear()
        _BASE[key] = base
    rt = rot.transpose(1, 2).to(vol.dtype)
    d = 2.0 * (n // 2) / (n - 1) - 1.0  # the box centre in normalised coordinates
    ones = torch.full((b, 3, 1), d, dtype=vol.dtype, device=vol.device)
    theta = torch.cat([rt, ones - rt @ ones], dim=2)  # (b, 3, 4)
    grid = torch.matmul(base, theta.transpose(1, 2)).view(b, n, n, n, 3)
    src = vol.expand(b, n, n, n) if vol.ndim == 3 else vol
    return F.grid_sample(src.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]


class _Problem:
    """Particles, reference and masks at one box size, prepared for the FFT search."""

    def __init__(self, p, r, pm, rm, *, max_frequency, max_shift, device):
        self.n = p.shape[0]
        self.box = p.shape[-1]
        shape = tuple(p.shape[1:])
        self.shape = shape
        self.device = device
        band = band_mask(shape, max_frequency=max_frequency, device=device)
        w = rfft_weights(shape, device=device)  # rfft multiplicity for the power sums
        fp = torch.fft.rfftn(p, dim=_DIMS)  # (n, z, y, x')
        mp = band if pm is None else band * mask_to_rfft(pm)  # (1 or n, z, y, x')
        if mp.ndim == 3:
            mp = mp[None]
        self.fpm = (fp * mp).flatten(1)  # masked particle spectra (n, K)
        self.pw = ((fp.real ** 2 + fp.imag ** 2) * mp * w).flatten(1)  # (n, K) power x mask x multiplicity
        self.mpw = (mp * w).flatten(1)  # (1 or n, K)
        self.ref = r
        self.ref_mask = rm  # full fftshift-ed, rotated per rotation; None = all observed
        self.max_shift = float(max_shift)
        self.allowed = torch.nonzero(peak_window(shape, self.max_shift, device=device).flatten()).flatten()  # flat

    def rotated_reference(self, rot: torch.Tensor):
        """``rot`` (R, 3, 3) -> conj rfft of the rotated reference x its mask (R, K), its power (R, K), mask (R, K)
        or None."""
        fr = torch.fft.rfftn(_rotate_cubes(self.ref, rot), dim=_DIMS).flatten(1)
        mr = None
        if self.ref_mask is not None:
            m = _rotate_cubes(self.ref_mask, rot).clamp(0.0, 1.0)
            mr = mask_to_rfft(m).flatten(1)
        power = fr.real ** 2 + fr.imag ** 2
        frm = fr.conj()
        if mr is not None:
            frm = frm * mr
            power = power * mr
        return frm, power, mr

    def _maps(self, idx: torch.Tensor, frm, power, mr):
        """Correlation maps (P, R, z, y, x) of particles ``idx`` (P,) and rotated references, and their
        normalisation (P, R) (the constrained correlation is their product).

        ``frm``, ``power``, ``mr``: from :meth:`rotated_reference`, shaped (R, K) (the same
        rotations for every particle) or (P, R, K) (per particle).
        """
        fpm = self.fpm[idx]
        pw = self.pw[idx]
        mpw = self.mpw if self.mpw.shape[0] == 1 else self.mpw[idx]
        shared = frm.ndim == 2
        if shared:
            cross = fpm[:, None] * frm[None]
            pp = pw @ mr.T if mr is not None else pw.sum(1, keepdim=True).expand(-1, frm.shape[0])
            pr = mpw @ power.T
            if pr.shape[0] == 1:
                pr = pr.expand(len(idx), -1)
        else:
            cross = fpm[:, None] * frm
            pp = torch.einsum("pk,prk->pr", pw, mr) if mr is not None else pw.sum(1, keepdim=True).expand(
                -1, frm.shape[1])
            pr = torch.einsum("pk,prk->pr", mpw.expand(len(idx), -1), power)
        P, R = cross.shape[:2]
        cross = cross.view(P, R, self.shape[0], self.shape[1], -1)
        ccmap = torch.fft.irfftn(cross, s=self.shape, dim=_DIMS)
        norm = float(np.prod(self.shape)) / torch.sqrt(pp * pr).clamp(min=1e-30)  # (P, R)
        return ccmap, norm

    def scores(self, idx: torch.Tensor, frm, power, mr) -> torch.Tensor:
        """Constrained correlation (P, R) at the best shift within the window (arguments as :meth:`_maps`)."""
        ccmap, norm = self._maps(idx, frm, power, mr)
        return ccmap.flatten(-3).index_select(-1, self.allowed).max(-1).values * norm

    def peak(self, idx: torch.Tensor, frm, power, mr) -> tuple[torch.Tensor, torch.Tensor]:
        """Sub-voxel shift (P, 3) (x, y, z) and score (P,) of one rotated reference per particle
        (``frm``, ``power``, ``mr`` shaped (P, 1, K)), by :func:`..peaks.find_peak` within the window."""
        ccmap, norm = self._maps(idx, frm, power, mr)
        return find_peak(ccmap[:, 0] * norm[:, 0, None, None, None], max_shift=self.max_shift, window="ball")


def _pairs_per_batch(box: int, batch_size: int) -> int:
    """Particle x rotation pairs per FFT batch: ``batch_size`` at 32^3, scaled by volume."""
    return max(1, int(batch_size * (32 ** 3) / box ** 3))


def _global_search(prob: _Problem, rotations: np.ndarray, pairs: int, keep: int = 1):
    """The ``keep`` best grid rotations per particle: returns (indices into rotations (n, keep), scores (n, keep)),
    best first."""
    n = prob.n
    keep = max(1, min(int(keep), len(rotations)))
    best = torch.full((n, keep), -float("inf"), device=prob.device)
    best_idx = torch.zeros((n, keep), dtype=torch.long, device=prob.device)
    rot_t = torch.as_tensor(rotations, dtype=torch.float32, device=prob.device)
    r_chunk = max(1, min(len(rotations), pairs))
    p_chunk = max(1, pairs // r_chunk)
    n_r = math.ceil(len(rotations) / r_chunk)
    for ci, r0 in enumerate(range(0, len(rotations), r_chunk)):
        rot = rot_t[r0:r0 + r_chunk]
        frm, power, mr = prob.rotated_reference(rot)
        for p0 in range(0, n, p_chunk):
            idx = torch.arange(p0, min(n, p0 + p_chunk), device=prob.device)
            s = prob.scores(idx, frm, power, mr)
            cand = torch.arange(r0, r0 + s.shape[1], device=prob.device).expand_as(s)
            allv = torch.cat([best[idx], s], 1)
            alli = torch.cat([best_idx[idx], cand], 1)
            top, where = allv.topk(keep, dim=1)
            best[idx] = top
            best_idx[idx] = alli.gather(1, where)
        yield Progress(ci + 1, n_r, f"rotations {min(len(rotations), r0 + r_chunk)}/{len(rotations)}")
    return best_idx.cpu().numpy(), best.cpu().numpy()


def _distinct_candidates(grid: np.ndarray, idx: np.ndarray, *, k: int, min_angle: float) -> list[list[int]]:
    """Per particle, up to ``k`` of its ranked grid indices that are ``min_angle`` degrees apart (best first)."""
    from ..geometry import geodesic_angle_deg

    out = []
    for row in idx:
        chosen: list[int] = []
        for j in row:
            if len(chosen) == k:
                break
            if all(geodesic_angle_deg(grid[j], grid[c]) > min_angle for c in chosen):
                chosen.append(int(j))
        out.append(chosen)
    return out


def _best_per_particle(owner: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    """For each of ``n`` particles, the index of its highest-scoring row (``owner[j]`` = row j's particle)."""
    best = np.full(n, -np.inf)
    pick = np.zeros(n, dtype=np.int64)
    for j, (o, sc) in enumerate(zip(owner, score)):
        if sc > best[o]:
            best[o], pick[o] = sc, j
    return pick


def _local_search(prob: _Problem, centers: np.ndarray, *, max_angle: float, step: float, pairs: int,
                  final: bool, progress_cb, owner: np.ndarray | None = None):
    """Per particle, the best rotation on a local grid around ``centers`` (n, 3, 3).

    Returns rotations (n, 3, 3), scores (n,) and, when ``final``, sub-voxel shifts (n, 3) (x, y, z).
    ``owner`` (len(centers),) names the particle of each centre (default: centre i is particle i).
    """
    n = len(centers)
    owner_t = torch.as_tensor(np.arange(n) if owner is None else np.asarray(owner), dtype=torch.long,
                              device=prob.device)
    grids = np.stack([local_rotation_grid(c, max_angle_deg=max_angle, step_deg=step) for c in centers])  # (n, L, 3, 3)
    L = grids.shape[1]
    p_chunk = max(1, pairs // L)
    out_rot = np.empty((n, 3, 3))
    out_score = np.empty(n)
    out_shift = np.zeros((n, 3))
    n_chunks = math.ceil(n / p_chunk)
    for ci, p0 in enumerate(range(0, n, p_chunk)):
        idx = owner_t[p0:min(n, p0 + p_chunk)]
        g = torch.as_tensor(grids[p0:p0 + len(idx)], dtype=torch.float32, device=prob.device)
        frm, power, mr = prob.rotated_reference(g.reshape(-1, 3, 3))
        frm = frm.view(len(idx), L, -1)
        power = power.view(len(idx), L, -1)
        mr = None if mr is None else mr.view(len(idx), L, -1)
        s = prob.scores(idx, frm, power, mr)
        sb, sj = s.max(1)
        ar = torch.arange(len(idx), device=prob.device)
        out_rot[p0:p0 + len(idx)] = grids[p0:p0 + len(idx)][np.arange(len(idx)), sj.cpu().numpy()]
        out_score[p0:p0 + len(idx)] = sb.cpu().numpy()
        if final:
            mr_b = None if mr is None else mr[ar, sj][:, None]
            shift, best = prob.peak(idx, frm[ar, sj][:, None], power[ar, sj][:, None], mr_b)
            out_shift[p0:p0 + len(idx)] = shift.cpu().numpy()
            out_score[p0:p0 + len(idx)] = best.cpu().numpy()
        progress_cb(ci + 1, n_chunks)
    return out_rot, out_score, out_shift


def _climb(prob: _Problem, rot: np.ndarray, *, step: float, pairs: int, final: bool, max_climbs: int = 4,
           owner: np.ndarray | None = None):
    """Hill-climb on local 3x3x3 rotation lattices of spacing ``step`` (degrees) until no particle moves.

    Returns rotations (n, 3, 3), scores (n,) and, with ``final``, sub-voxel shifts (n, 3) (x, y, z).
    """
    score = shift = None
    for _ in range(max(1, int(max_climbs))):
        new, score, shift = _local_search(prob, rot, max_angle=step * 1.75, step=step, pairs=pairs, final=False,
                                          progress_cb=lambda i, k: None, owner=owner)
        moved = np.abs(new - rot).max(axis=(1, 2)) > 1e-9
        rot = new
        if not moved.any():
            break
    if final:
        _, score, shift = _local_search(prob, rot, max_angle=1e-6, step=1.0, pairs=pairs, final=True,
                                        progress_cb=lambda i, k: None, owner=owner)
    return rot, score, shift


def _checked_inputs(particles, reference, particle_masks, reference_mask, *, angular_step_deg, refine_levels,
                    max_shift_voxels, max_frequency, device):
    """The validated volumes of :func:`_check_volumes` and the shift radius in voxels (default box / 4)."""
    p, r, pm, rm = _check_volumes(particles, reference, particle_masks, reference_mask, device)
    box = p.shape[-1]
    if not (angular_step_deg > 0 and angular_step_deg <= 180):
        raise InputError("an angular step in (0, 180] degrees", field="angular_step_deg", got=angular_step_deg)
    if int(refine_levels) != refine_levels or refine_levels < 0:
        raise InputError("an integer >= 0", field="refine_levels", got=refine_levels)
    if max_shift_voxels is not None and not (0 <= max_shift_voxels <= box / 2):
        raise InputError(f"a maximum shift between 0 and box/2 = {box / 2} voxels", field="max_shift_voxels",
                         got=max_shift_voxels)
    if not (0 < max_frequency <= 0.5 * math.sqrt(3)):
        raise InputError("a maximum frequency in (0, 0.5] cycles/voxel", field="max_frequency", got=max_frequency)
    return p, r, pm, rm, box / 4 if max_shift_voxels is None else float(max_shift_voxels)


def align_exhaustive_job(
    particles,
    reference,
    *,
    particle_masks=None,
    reference_mask=None,
    angular_step_deg: float = 30.0,
    refine_levels: int = 2,
    max_shift_voxels: float | None = None,
    max_frequency: float = 0.5,
    coarse_bin: bool = True,
    candidates: int = DEFAULT_CANDIDATES,
    symmetry: str = "C1",
    batch_size: int = 256,
    crop_to_band: bool = False,
    extra_candidates=None,
    extra_replaces_last: bool = False,
    device="cpu",
) -> Generator[Progress | Partial, None, AlignmentResult]:
    """Job version of :func:`align_exhaustive`: yields :class:`Progress` per batch of rotations."""
    t0 = time.perf_counter()
    with torch.no_grad():
        p, r, pm, rm, max_shift = _checked_inputs(particles, reference, particle_masks, reference_mask,
                                                  angular_step_deg=angular_step_deg, refine_levels=refine_levels,
                                                  max_shift_voxels=max_shift_voxels, max_frequency=max_frequency,
                                                  device=device)
        box = p.shape[-1]
        pairs = _pairs_per_batch(box, batch_size)
    extra = None
    if extra_candidates is not None:
        extra = np.asarray(extra_candidates, dtype=np.float64)
        if extra.shape != (p.shape[0], 3, 3):
            raise InputError(f"one rotation matrix per particle, shape ({p.shape[0]}, 3, 3)",
                             field="extra_candidates", got=extra.shape)
    small = band_box(box, max_frequency) if crop_to_band else box
    if small < box:  # the whole search on the cropped band, then shift and score at full size
        with torch.no_grad():
            ps, rs, pms, rms = _cropped(p, r, pm, rm, small)
        inner = yield from align_exhaustive_job(
            ps, rs, particle_masks=pms, reference_mask=rms, angular_step_deg=angular_step_deg,
            refine_levels=refine_levels, max_shift_voxels=max_shift * small / box,
            max_frequency=min(0.5, max_frequency * box / small), coarse_bin=coarse_bin, candidates=candidates,
            symmetry=symmetry, batch_size=batch_size, extra_candidates=extra, extra_replaces_last=extra_replaces_last,
            device=device)
        with torch.no_grad():
            score, shift = _polish(p, r, pm, rm, inner.rotations, max_frequency=max_frequency, max_shift=max_shift,
                                   pairs=pairs, device=device)
        return AlignmentResult(rotations=inner.rotations, origins_voxels=-shift, scores=score, method="exhaustive",
                               seconds=time.perf_counter() - t0)
    with torch.no_grad():
        grid = rotation_grid(angular_step_deg)
        grid = grid[reduce_rotation_grid(grid, symmetry)]  # the asymmetric unit (all of it for C1)
        levels = max(1, int(refine_levels))
        pairs_r = max(1, min(len(grid), pairs))
        n_r = math.ceil(len(grid) / pairs_r)
        total = n_r + levels
        yield Progress(0, total, f"global search over {len(grid)} rotations")

        # coarse global search on Fourier-binned volumes (a 30 degree grid needs no high frequencies)
        small = box // 2 if (coarse_bin and box >= 24 and (box // 2) % 2 == 0) else box
        if small != box:
            fmax = min(0.5, max_frequency * box / small)
            prob = _Problem(_bin_fourier(p, small), _bin_fourier(r[None], small)[0],
                            None if pm is None else _crop_mask(pm, small),
                            None if rm is None else _crop_mask(rm, small),
                            max_frequency=fmax, max_shift=max_shift * small / box, device=device)
        else:
            prob = _Problem(p, r, pm, rm, max_frequency=max_frequency, max_shift=max_shift, device=device)
        k = max(1, int(candidates)) if refine_levels > 0 else 1
        search = _global_search(prob, grid, pairs, keep=4 * k if k > 1 else 1)
        while True:
            try:
                ev = next(search)
            except StopIteration as stop:
                ranked, ranked_scores = stop.value
                break
            yield Progress(ev.step, total, f"global search: {ev.message}")
        chosen = _distinct_candidates(grid, ranked, k=k, min_angle=1.5 * float(angular_step_deg))
        starts = [grid[c] for c in chosen]
        if extra is not None and extra_replaces_last:
            # the extra pose takes the place of the particle's last grid candidate only where it scores
            # better than that candidate on the coarse problem (the same number of starts, the same cost)
            _, extra_score, _ = _local_search(prob, extra, max_angle=1e-6, step=1.0, pairs=pairs, final=False,
                                              progress_cb=lambda i, k: None)
            for i, c in enumerate(chosen):
                if len(c) < k:
                    starts[i] = np.concatenate([starts[i], extra[i][None]])
                elif extra_score[i] > ranked_scores[i][list(ranked[i]).index(c[-1])]:
                    starts[i] = np.concatenate([starts[i][:-1], extra[i][None]])
        elif extra is not None:  # e.g. the learned aligner's pose: one more start per particle
            starts = [np.concatenate([g, extra[i][None]]) for i, g in enumerate(starts)]
        owner = np.concatenate([[i] * len(g) for i, g in enumerate(starts)]).astype(np.int64)
        rot = np.concatenate(starts)

        prob = _Problem(p, r, pm, rm, max_frequency=max_frequency, max_shift=max_shift, device=device)
        step = float(angular_step_deg)
        for level in range(levels):
            final = level == levels - 1
            if refine_levels == 0:  # just the translation at the grid rotation (and the score)
                several = len(owner) > p.shape[0]
                rot, score, shift = _local_search(prob, rot, max_angle=1e-6, step=1.0, pairs=pairs, final=True,
                                                  progress_cb=lambda i, k: None, owner=owner if several else None)
                if several:  # each particle's best start
                    pick = _best_per_particle(owner, score, p.shape[0])
                    rot, score, shift = rot[pick], score[pick], shift[pick]
            else:
                step /= 3.0
                if level == 0 and len(owner) > p.shape[0]:
                    # refine every distinct candidate one level, keep each particle's best (pseudo-symmetric
                    # structures have several near-equal basins on a coarse grid)
                    rot_c, score_c, _ = _climb(prob, rot, step=step, pairs=pairs, final=False, owner=owner)
                    rot = rot_c[_best_per_particle(owner, score_c, p.shape[0])]
                    if final:
                        rot, score, shift = _climb(prob, rot, step=step, pairs=pairs, final=True, max_climbs=1)
                else:
                    rot, score, shift = _climb(prob, rot, step=step, pairs=pairs, final=final)
            yield Progress(n_r + level + 1, total, f"local refinement {level + 1}/{levels} (step {step:.3g} deg)")
    result = AlignmentResult(rotations=rot, origins_voxels=-shift, scores=score, method="exhaustive",
                             seconds=time.perf_counter() - t0)
    return result


def align_exhaustive(particles, reference, **kwargs) -> AlignmentResult:
    """Align subtomograms to a reference by exhaustive search (rotation grid x FFT translations).

    Parameters
    ----------
    particles : array/tensor ``(n, N, N, N)`` (z, y, x), N even; a single ``(N, N, N)`` is allowed
    reference : ``(N, N, N)``
    particle_masks : Fourier masks of the particles, fftshift-ed (DC at ``N // 2``), ``(N, N, N)``
        shared or ``(n, N, N, N)``; None = fully observed. Use
        ``wedge.particle_fourier_mask(box, tilt_range_deg=...)`` (fftshift-ed), or
        ``SubtomogramSet.mask``, for a ±60° tilt range.
    reference_mask : Fourier mask of the reference (rotated with it); None = fully observed
        (a wedge-compensated average)
    angular_step_deg : step of the global rotation grid (degrees, default 30)
    refine_levels : local refinements after the global grid; each hill-climbs on 3x3x3 lattices
        of rotation vectors with a third of the previous spacing (default 2: 30 -> 10 -> 3.3 degrees)
    max_shift_voxels : largest translation searched (sphere radius, voxels; default N / 4)
    max_frequency : highest spatial frequency compared, cycles/voxel (default 0.5, Nyquist)
    coarse_bin : run the global grid on 2x Fourier-binned volumes (boxes >= 24; 8x faster)
    candidates : distinct grid optima (at least 1.5 steps apart) refined by the first local level,
        the best of which goes on (default 3; guards against pseudo-symmetric mates)
    symmetry : point group of the reference (:mod:`..symmetry`, default C1): the global grid
        covers only its asymmetric unit (about ``1 / |G|`` of the rotations); the pose returned is
        one of the equivalent mates ``A g``
    batch_size : particle x rotation pairs per FFT batch at 32³ (scaled for other boxes)
    extra_candidates : ``(n, 3, 3)`` rotations or None: one more start per particle (e.g. the
        learned aligner's pose), refined beside the grid's candidates; the best-scoring basin wins,
        so a wrong start cannot lower the score reached from the grid
    extra_replaces_last : with ``extra_candidates``: instead of an additional start, the extra pose
        replaces the particle's last (lowest-ranked) grid candidate where it scores better than that
        candidate on the coarse global-search problem, and is dropped elsewhere: the cost of the
        plain search, and a pose that is no better than the grid's third basin (an unsure
        network's) leaves the search as it was
    crop_to_band : run the whole search (grid and refinement) on volumes and masks Fourier-cropped
        to the smallest even box that holds ``max_frequency`` (:func:`band_box`; the same
        frequencies compared, the references rotated at the smaller box), then the sub-voxel
        shift and the score at full size at the rotation found. ``(box / small)³`` times fewer
        voxels per rotation: 8x for a 32³ box at 0.25 cycles/voxel (default False)
    device : torch device ("cpu", "cuda", ...)

    Returns
    -------
    AlignmentResult
        ``rotations`` (n, 3, 3) reference -> particle, ``origins_voxels`` (n, 3) (x, y, z),
        ``scores`` (n,) constrained correlation at the optimum, ``method="exhaustive"``.

    Raises
    ------
    InputError
        Non-cubic or odd boxes, a reference of another size, masks of the wrong shape,
        non-finite voxels, options out of range.
    """
    return run_job(align_exhaustive_job(particles, reference, **kwargs), progress=False)


def refine_alignment_job(
    particles,
    reference,
    initial: AlignmentResult,
    *,
    particle_masks=None,
    reference_mask=None,
    max_angle_deg: float = 20.0,
    levels: int = 2,
    max_shift_voxels: float | None = None,
    max_frequency: float = 0.5,
    batch_size: int = 256,
    crop_to_band: bool = False,
    device="cpu",
) -> Generator[Progress | Partial, None, AlignmentResult]:
    """Job version of :func:`refine_alignment`."""
    t0 = time.perf_counter()
    with torch.no_grad():
        p, r, pm, rm, max_shift = _checked_inputs(particles, reference, particle_masks, reference_mask,
                                                  angular_step_deg=max_angle_deg, refine_levels=levels,
                                                  max_shift_voxels=max_shift_voxels, max_frequency=max_frequency,
                                                  device=device)
        rot = nearest_rotation(np.asarray(initial.rotations, dtype=np.float64).reshape(-1, 3, 3))
        if len(rot) != p.shape[0]:
            raise InputError(f"{p.shape[0]} initial rotations (one per particle)", field="initial",
                             got=len(rot))
        box = p.shape[-1]
        pairs = _pairs_per_batch(box, batch_size)
    small = band_box(box, max_frequency) if crop_to_band else box
    if small < box:  # the climb on the cropped band, then shift and score at full size
        with torch.no_grad():
            ps, rs, pms, rms = _cropped(p, r, pm, rm, small)
        inner = yield from refine_alignment_job(
            ps, rs, replace(initial, rotations=rot), particle_masks=pms, reference_mask=rms,
            max_angle_deg=max_angle_deg, levels=levels, max_shift_voxels=max_shift * small / box,
            max_frequency=min(0.5, max_frequency * box / small), batch_size=batch_size, device=device)
        with torch.no_grad():
            score, shift = _polish(p, r, pm, rm, inner.rotations, max_frequency=max_frequency, max_shift=max_shift,
                                   pairs=pairs, device=device)
        seconds = time.perf_counter() - t0 + (initial.seconds if math.isfinite(initial.seconds) else 0.0)
        return AlignmentResult(rotations=inner.rotations, origins_voxels=-shift, scores=score, method=inner.method,
                               seconds=seconds)
    with torch.no_grad():
        prob = _Problem(p, r, pm, rm, max_frequency=max_frequency, max_shift=max_shift, device=device)
        levels = max(1, int(levels))
        step = float(max_angle_deg)
        for level in range(levels):
            step /= 3.0
            rot, score, shift = _climb(prob, rot, step=step, pairs=pairs, final=level == levels - 1)
            yield Progress(level + 1, levels, f"local refinement {level + 1}/{levels}")
    method = initial.method if initial.method.endswith("+refine") else f"{initial.method}+refine"
    seconds = time.perf_counter() - t0 + (initial.seconds if math.isfinite(initial.seconds) else 0.0)
    return AlignmentResult(rotations=rot, origins_voxels=-shift, scores=score, method=method, seconds=seconds)


def refine_alignment(particles, reference, initial: AlignmentResult, **kwargs) -> AlignmentResult:
    """Refine an alignment (e.g. the learned aligner's) by local exhaustive search around it.

    Each level hill-climbs on 3x3x3 lattices of rotations (spacing ``max_angle_deg / 3`` at
    the first level, three times finer at each next one; up to 4 moves per level) with every
    translation within ``max_shift_voxels`` searched by FFT. Parameters as :func:`align_exhaustive`
    (``crop_to_band``: the climb on the band-limited, cropped volumes, shift and score at full size); ``initial`` gives
    the starting rotations (its origins are re-estimated). ``method`` becomes
    ``initial.method + "+refine"`` (``"learned+refine"``); ``seconds`` includes the initial time.
    """
    return run_job(refine_alignment_job(particles, reference, initial, **kwargs), progress=False)
