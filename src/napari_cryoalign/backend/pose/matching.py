"""Global search of a map's projections over the SO(3) grid: the image likelihood under a known map.

The pose network (:mod:`.model`) has to learn what the protein looks like from every direction.
The particles it was trained on also give that directly: the reconstruction of the training
half from its known poses (stored with each network, :class:`.train.PoseModel`). This module
scores an image against that map's projections at every rotation of a HEALPix SO(3) grid, in
one pass of matrix products, and turns the scores into a log-likelihood that prediction adds
to the network's log-probabilities (:func:`.predict.predict_poses_job` with ``map_search``):

    log p(A | x) = log p_net(A | x) + log L(x | A) + const.

**Likelihood.** With the image ``x`` normalised to unit noise (:func:`.data.normalize_outside_circle`)
and phase flipped, the expected image at pose ``A`` and displacement ``d`` is ``s · |T| · P_A``
(``P_A`` the Fourier slice of the map, ``|T|`` the CTF amplitude, ``s`` an unknown scale).
White Gaussian noise of variance ``N²`` per unnormalised Fourier coefficient gives, with ``s``
profiled out (its best value),

    log L(x | A, d) = c(A, d)² / (2 N²),   c = Re Σ_k conj(|T| P_A)(k) X(k) e^{2πi k·d/N} / ‖|T| P_A‖,

and the largest ``log L`` over ``d`` is kept for each ``A``. The sums run over the rfft half
plane inside ``|k| ≤ k_max`` (weights 2 for ``kx > 0``, 1 on the ``kx = 0`` column, so they equal
the full-plane sums), DC excluded.

**Coarse to fine.** All ``72·8^L`` rotations of the coarse grid (level ``L``, default 2: 4,608,
15°) are scored at low resolution (``k ≤ k_coarse``) at the particle's centre (found first by
cross-correlation with the rotational average of the projections) and its four neighbours 1 px
away. The ``candidates`` best coarse rotations (and the network's, when combined)
are expanded to their children on the fine grid (level ``L + 1``: 4 nested HEALPix directions
times 3 in-plane angles each, 7.5°), which are scored at full resolution (``k ≤ k_fine``) over
a finer displacement lattice around the best coarse displacement. Both grids' projections are
computed once per map (:func:`prepare_map_search`) and kept as matrices. Finally
:func:`refine_rotations` searches small rotations ``A Δ`` around the chosen grid point (slices
sampled at the fine frequencies only), off the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InputError
from ..peaks import find_peak
from .grid import grid_spacing_deg, healpix_npix, local_offsets, so3_healpix_grid
from .reconstruct import FourierProjector, slice_values

__all__ = ["FoundPoses", "MapSearch", "MapSearchResult", "map_search", "prepare_map_search", "refine_rotations",
           "refinement_offsets", "search_poses"]


@dataclass(frozen=True, eq=False)
class _Table:
    """Projections of one grid on one set of frequencies: ``reim`` ``(G, 2F)`` (real parts, then
    imaginary parts), ``power`` ``(G, F)``, ``template`` ``(F,)`` complex (their mean over the grid)."""

    level: int
    rotations: torch.Tensor  # (G, 3, 3)
    index: torch.Tensor  # (F,) flat indices into the unshifted (S, S) Fourier grid
    weight: torch.Tensor  # (F,) 1 or 2 (rfft half-plane weights)
    kx: torch.Tensor  # (F,) frequency in cycles per box
    ky: torch.Tensor
    reim: torch.Tensor
    power: torch.Tensor
    template: torch.Tensor


@dataclass(frozen=True, eq=False)
class MapSearch:
    """A map prepared for :func:`map_search` (see the module docstring).

    Attributes
    ----------
    coarse, fine : the two grids' projection tables (levels ``level`` and ``level + 1``)
    size : image size ``S`` (pixels; the map is ``S³``)
    """

    coarse: _Table
    fine: _Table
    size: int

    @property
    def nbytes(self) -> int:
        return sum(t.power.numel() * 3 * 4 for t in (self.coarse, self.fine))


@dataclass(frozen=True, eq=False)
class MapSearchResult:
    """Best fine-grid pose per image and the scores of the evaluated candidates.

    Attributes
    ----------
    fine_index : ``(B, C)`` fine-grid indices of the evaluated candidates
    log_likelihood : ``(B, C)`` ``log L`` of each candidate (best displacement; ``-inf`` for
        repeats of an index already in the row)
    displacement : ``(B, C, 2)`` that displacement, pixels (x, y) from the box centre
    """

    fine_index: torch.Tensor
    log_likelihood: torch.Tensor
    displacement: torch.Tensor


def _frequencies(size: int, k_max: float, device):
    f = torch.fft.fftfreq(size, d=1.0 / size, device=device)
    ky, kx = torch.meshgrid(f, f, indexing="ij")
    keep = (kx >= 0) & (kx ** 2 + ky ** 2 <= k_max ** 2) & ((kx != 0) | (ky != 0))
    if size % 2 == 0:
        keep &= kx < size // 2  # the Nyquist column has no partner in the half plane
    index = torch.nonzero(keep.reshape(-1))[:, 0]
    kxs, kys = kx.reshape(-1)[index], ky.reshape(-1)[index]
    weight = torch.where(kxs > 0, 2.0, 1.0)
    return index, weight, kxs, kys


def _table(projector: FourierProjector, level: int, k_max: float, chunk: int = 2048) -> _Table:
    dev = projector.ft.device
    size = projector.box
    rot = torch.as_tensor(so3_healpix_grid(level), dtype=torch.float32, device=dev)
    index, weight, kx, ky = _frequencies(size, k_max, dev)
    k = torch.stack([kx, ky], dim=1)
    f = index.numel()
    reim = torch.empty((rot.shape[0], 2 * f), dtype=torch.float32, device=dev)
    for s in range(0, rot.shape[0], chunk):
        p = slice_values(projector, rot[s:s + chunk], k)
        reim[s:s + chunk, :f] = p.real
        reim[s:s + chunk, f:] = p.imag
    re, im = reim[:, :f], reim[:, f:]
    template = torch.complex(re.mean(dim=0), im.mean(dim=0))
    return _Table(level, rot, index, weight, kx, ky, reim, re * re + im * im, template)


def prepare_map_search(projector: FourierProjector, *, level: int = 2, coarse_max_frequency: float | None = None,
                       max_frequency: float | None = None) -> MapSearch:
    """Projection tables of a map on the SO(3) grids of ``level`` (coarse) and ``level + 1`` (fine).

    ``projector``: :func:`.reconstruct.prepare_projector` of an ``(S, S, S)`` map (the model's
    pixel size). ``max_frequency`` (fine) and ``coarse_max_frequency``: radii in cycles per box
    (defaults ``0.35 S`` and ``0.16 S``). Memory: ``12 · 72 · 8^(level+1) · F`` bytes for the fine
    table (F ≈ π k_max² / 2 frequencies): 370 MB for ``S = 64`` at level 2 (``MapSearch.nbytes``).
    """
    size = projector.box
    if not 0 <= int(level) <= 3:
        raise InputError("a coarse grid level from 0 to 3", field="level", got=level)
    k_fine = 0.35 * size if max_frequency is None else float(max_frequency)
    k_coarse = 0.16 * size if coarse_max_frequency is None else float(coarse_max_frequency)
    for name, k in (("max_frequency", k_fine), ("coarse_max_frequency", k_coarse)):
        if not 1.0 <= k <= size / 2:
            raise InputError(f"a radius from 1 to {size / 2} cycles per box", field=name, got=k)
    return MapSearch(coarse=_table(projector, int(level), min(k_coarse, k_fine)),
                     fine=_table(projector, int(level) + 1, k_fine), size=size)


def _shift_lattice(radius: float, step: float, device) -> torch.Tensor:
    """Displacements ``(D, 2)`` on a square lattice of ``step`` inside the disc of ``radius``, (0, 0) included."""
    r = np.arange(-np.floor(radius / step), np.floor(radius / step) + 1) * step
    d = np.array([(x, y) for y in r for x in r if x * x + y * y <= radius * radius + 1e-9])
    return torch.as_tensor(d, dtype=torch.float32, device=device)


def _image_side(table: _Table, images_ft: torch.Tensor, amplitude: torch.Tensor | None):
    """Weighted image coefficients ``w |T| X`` ``(B, F)`` complex and ``w T²`` ``(B, F)``."""
    x = images_ft.reshape(images_ft.shape[0], -1)[:, table.index]
    if amplitude is None:
        a = torch.ones((x.shape[0], table.index.numel()), dtype=torch.float32, device=x.device)
    else:
        a = amplitude.reshape(amplitude.shape[0], -1)[:, table.index]
    return table.weight * a * x, table.weight * a * a


def _phases(table: _Table, shifts: torch.Tensor, size: int) -> torch.Tensor:
    """``e^{2πi k·d/N}`` ``(..., F)`` for displacements ``(..., 2)``."""
    ang = (2 * np.pi / size) * (shifts[..., 0:1] * table.kx + shifts[..., 1:2] * table.ky)
    return torch.polar(torch.ones_like(ang), ang)


def _best_over_shifts(table: _Table, y: torch.Tensor, a2: torch.Tensor, reim: torch.Tensor, power: torch.Tensor,
                      local: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``log L`` ``(B, C)`` of candidates with projections ``reim`` ``(B, C, 2F)`` and ``power``
    ``(B, C, F)`` on ``table``'s frequencies, the best over displacements ``local`` ``(B, D, 2)``,
    and the index of that displacement ``(B, C)``; ``y, a2`` from :func:`_image_side`."""
    yy = y[:, None, :] * _phases(table, local, size)  # (B, D, F)
    val = torch.cat([yy.real, yy.imag], dim=2) @ reim.transpose(1, 2)  # (B, D, C)
    best, which = val.max(dim=1)
    den = torch.einsum("bf,bcf->bc", a2, power).clamp(min=1e-20)
    return best.clamp(min=0) ** 2 / den / (2.0 * float(size) ** 2), which  # 2 N²: twice the noise variance


def _centre(search: MapSearch, x_ft: torch.Tensor, amplitude: torch.Tensor | None, max_shift: float) -> torch.Tensor:
    """Displacement ``(B, 2)`` of each particle from the box centre, by cross-correlation with the
    rotational average of the projections (the mean of the fine table: the same for every pose,
    centred on the map's centre), times ``|T|``."""
    f = search.fine
    s = search.size
    y, _ = _image_side(f, x_ft, amplitude)
    z = torch.zeros((y.shape[0], s * s), dtype=y.dtype, device=y.device)
    z[:, f.index] = y * f.template.conj()
    cc = torch.fft.ifft2(z.reshape(-1, s, s)).real  # half-plane weights 2: the real part is the full sum / N²
    return find_peak(cc, max_shift=max_shift)[0]


def map_search(search: MapSearch, images: torch.Tensor, amplitude: torch.Tensor | None, *, max_shift: float,
               candidates: int = 16, extra_coarse: torch.Tensor | None = None) -> MapSearchResult:
    """Score images against the map over the SO(3) grid (module docstring).

    Parameters
    ----------
    images : ``(B, S, S)`` preprocessed (normalised, phase-flipped) images, centre ``S//2``
    amplitude : ``(B, S, S)`` ``|T|`` on the unshifted full Fourier grid, or None (no CTF)
    max_shift : largest displacement searched, pixels
    candidates : coarse rotations kept per image
    extra_coarse : ``(B, E)`` more coarse-grid indices to expand (e.g. the network's best)

    Displacements: the particle's centre is first found by cross-correlation with the
    rotationally averaged projection (one FFT); the coarse grid is scored at that centre and its
    four neighbours 1 px away, the fine grid on a 3 x 3 lattice of 0.5 px around the best
    coarse displacement. Every displacement is clipped to ``max_shift``.
    """
    s = search.size
    if images.shape[-2:] != (s, s):
        raise InputError(f"images of {s}x{s} pixels (the map's size)", field="images", got=tuple(images.shape))
    b = images.shape[0]
    dev = images.device
    x_ft = torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1)))
    centre = _centre(search, x_ft, amplitude, max_shift)
    # --- coarse: every rotation, the centre and its 4 neighbours
    c = search.coarse
    shifts = _clip(centre[:, None, :] + _shift_lattice(1.01, 1.0, dev)[None], max_shift)  # (B, D, 2)
    y, a2 = _image_side(c, x_ft, amplitude)
    yy = y[:, None, :] * _phases(c, shifts, s)  # (B, D, F)
    dot = (torch.cat([yy.real, yy.imag], dim=2).reshape(-1, c.reim.shape[1]) @ c.reim.T).reshape(
        b, shifts.shape[1], -1)  # (B, D, G)
    best, which = dot.max(dim=1)
    ll = best.clamp(min=0) ** 2 / (a2 @ c.power.T).clamp(min=1e-20)
    top = ll.topk(min(int(candidates), ll.shape[1]), dim=1).indices  # (B, K), best first
    d0 = shifts[torch.arange(b, device=dev), which.gather(1, top[:, :1])[:, 0]]  # (B, 2) of the best
    if extra_coarse is not None:
        top = torch.cat([top, extra_coarse.to(top)], dim=1)
    # --- fine: the children of the kept coarse rotations (4 directions x 3 in-plane angles)
    f = search.fine
    np_c, np_f = healpix_npix(c.level), healpix_npix(f.level)
    n_psi_f = 6 * 2 ** f.level
    direction, psi = top % np_c, top // np_c
    child_dir = 4 * direction[..., None] + torch.arange(4, device=dev)  # (B, K, 4)
    child_psi = (2 * psi[..., None] + torch.tensor([-1, 0, 1], device=dev)) % n_psi_f  # (B, K, 3)
    child = (child_psi[..., :, None] * np_f + child_dir[..., None, :]).reshape(b, -1)  # (B, C)
    local = _clip(d0[:, None, :] + _shift_lattice(0.75, 0.5, dev)[None], max_shift)  # (B, 9, 2)
    y, a2 = _image_side(f, x_ft, amplitude)
    best_ll, which = _best_over_shifts(f, y, a2, f.reim[child], f.power[child], local, s)  # (B, C)
    best_d = local.gather(1, which[..., None].expand(-1, -1, 2))
    # children shared by two kept coarse rotations are counted once
    order = child.sort(dim=1)
    dup = torch.zeros_like(child, dtype=torch.bool)
    dup[:, 1:] = order.values[:, 1:] == order.values[:, :-1]
    dup = torch.zeros_like(dup).scatter(1, order.indices, dup)
    return MapSearchResult(child, best_ll.masked_fill(dup, -torch.inf), best_d)


def _clip(d: torch.Tensor, max_shift: float) -> torch.Tensor:
    """Displacements ``(..., 2)`` pulled back inside the disc of radius ``max_shift``."""
    r = d.norm(dim=-1, keepdim=True)
    return torch.where(r > max_shift, d * (max_shift / r.clamp(min=1e-12)), d)


def refine_rotations(search: MapSearch, projector: FourierProjector, images: torch.Tensor,
                     amplitude: torch.Tensor | None, rotations: torch.Tensor, displacement: torch.Tensor, *,
                     offsets: torch.Tensor, max_shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Local refinement off the grid: the best of ``A Δ_j`` by ``log L`` at full resolution.

    ``rotations`` ``(B, 3, 3)`` and ``displacement`` ``(B, 2)`` pixels are the start (e.g. the
    map search's best); ``offsets`` ``(J, 3, 3)`` small rotations (identity included). The
    slices are sampled at the fine table's frequencies only, each scored on the 3 x 3 lattice of
    0.5 px around ``displacement``. Returns ``(rotations (B, 3, 3), displacement (B, 2))``.
    """
    f = search.fine
    s = search.size
    b, j = rotations.shape[0], offsets.shape[0]
    x_ft = torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1)))
    cand = (rotations[:, None] @ offsets[None]).reshape(-1, 3, 3)  # (B·J, 3, 3)
    p = slice_values(projector, cand, torch.stack([f.kx, f.ky], dim=1)).reshape(b, j, -1)  # (B, J, F)
    local = _clip(displacement[:, None, :] + _shift_lattice(0.75, 0.5, images.device)[None], max_shift)
    y, a2 = _image_side(f, x_ft, amplitude)
    ll, which = _best_over_shifts(f, y, a2, torch.cat([p.real, p.imag], dim=2), p.real ** 2 + p.imag ** 2, local, s)
    k = ll.argmax(dim=1)  # (B,)
    ar = torch.arange(b, device=images.device)
    return cand.reshape(b, j, 3, 3)[ar, k], local[ar, which[ar, k]]


def refinement_offsets(level: int, *, device="cpu") -> tuple[torch.Tensor, ...]:
    """The two rounds of small rotations of :func:`search_poses` after a grid of ``level``: 19 each,
    within half the grid spacing in steps of a third of it, then three times finer."""
    spacing = grid_spacing_deg(level)
    return tuple(torch.as_tensor(local_offsets(max_angle_deg=0.5 * spacing / f, step_deg=spacing / 3.0 / f),
                                 dtype=torch.float32, device=device) for f in (1.0, 3.0))


@dataclass(frozen=True, eq=False)
class FoundPoses:
    """What :func:`search_poses` chose per image: fine-grid ``index`` ``(B,)``, its posterior
    probability among the candidates ``confidence`` ``(B,)``, its ``log_likelihood`` ``(B,)`` (nats;
    grows with the particle's signal and its fit to the map), the refined ``rotations``
    ``(B, 3, 3)`` and ``displacement`` ``(B, 2)`` pixels (x, y) from the box centre."""

    index: torch.Tensor
    confidence: torch.Tensor
    log_likelihood: torch.Tensor
    rotations: torch.Tensor
    displacement: torch.Tensor


def search_poses(search: MapSearch, projector: FourierProjector, images: torch.Tensor,
                 amplitude: torch.Tensor | None, *, max_shift: float, candidates: int = 16,
                 log_prior: torch.Tensor | None = None, prior_candidates: int = 4,
                 refine_offsets: tuple[torch.Tensor, ...] = ()) -> FoundPoses:
    """The map search with an optional prior, then local refinement: what prediction runs per batch.

    ``log_prior`` ``(B, G_fine)``: log-probabilities on the fine grid (the pose network's, whose
    grid this is), added to ``log L``; the parents of its ``prior_candidates`` best rotations are
    expanded too. Without it this is global projection matching against the map.
    ``refine_offsets``: rounds of :func:`refine_rotations` (e.g. :func:`refinement_offsets`).
    """
    extra = None
    if log_prior is not None and prior_candidates:
        top = log_prior.topk(min(int(prior_candidates), log_prior.shape[1]), dim=1).indices
        np_f, np_c = healpix_npix(search.fine.level), healpix_npix(search.coarse.level)
        extra = (top // np_f // 2) * np_c + (top % np_f) // 4  # coarse parent: in-plane // 2, direction // 4
    res = map_search(search, images, amplitude, max_shift=max_shift, candidates=candidates, extra_coarse=extra)
    post = res.log_likelihood if log_prior is None else res.log_likelihood + log_prior.gather(1, res.fine_index)
    conf, j = torch.softmax(post, dim=1).max(dim=1)
    ar = torch.arange(j.shape[0], device=j.device)
    index, disp = res.fine_index[ar, j], res.displacement[ar, j]
    rot = search.fine.rotations[index]
    for off in refine_offsets:
        rot, disp = refine_rotations(search, projector, images, amplitude, rot, disp, offsets=off, max_shift=max_shift)
    return FoundPoses(index, conf, res.log_likelihood[ar, j], rot, disp)
