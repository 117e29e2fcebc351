"""Direct Fourier reconstruction from particle images and poses, Fourier-slice projection, half maps, FSC.

Geometry (docs/conventions.md): the image of a particle with pose ``A`` is the projection of
the reference rotated by ``A``, so by the central-slice theorem its 2D Fourier transform is
the reference's 3D transform on the plane ``k_ref = A^T (kx, ky, 0)`` (``(x, y, z)`` order,
``A`` = RELION's ``Euler_angles2matrix``, the simulator's :func:`..simulate.particles.project`).

:func:`reconstruct` (RELION's ``relion_reconstruct --ctf --pad 2`` in spirit):

1. each image is centred (shifted by ``+origin / pixel``) and Fourier transformed (phase
   origin at the box centre ``N//2``);
2. every Fourier sample ``F_i(k)`` (inside Nyquist) is inserted at ``A_i^T k`` into a
   ``pad``-times finer ``(pad N)³`` Fourier volume (pad 2 = RELION's default) with
   trilinear weights ``w``: ``num += w T_i F_i``, ``den += w T_i²`` (``T = -CTF``, the transfer of
   protein-bright particles; ``T = 1`` without CTF); with symmetry every mate ``A_i g`` is
   inserted;
3. ``V(k) = num / (den + λ)`` (a Wiener-like filter, ``λ = regularization * mean(den)`` over the
   sampled shells), inverse transform, centre crop to ``N³``.

:func:`project_fourier` is the matching forward model (Fourier-slice extraction with a
sinc²-pre-corrected, padded map), used for the FFT shift search and projection matching.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InputError
from ..jobs import Partial, Progress, run_job
from ..symmetry import normalize_symmetry, point_group
from .data import ParticleData, transfer_function

__all__ = [
    "FourierProjector",
    "ReconstructionResult",
    "pearson_correlation",
    "prepare_projector",
    "project_fourier",
    "slice_values",
    "reconstruct",
    "reconstruct_half_maps",
    "reconstruct_half_maps_job",
    "reconstruct_job",
]


def _centred_ft_2d(images: torch.Tensor, size: int) -> torch.Tensor:
    """2D FT of ``(B, N, N)`` images zero-padded to ``size``, with the phase origin at the box centre ``N//2``."""
    b, n = images.shape[0], images.shape[-1]
    padded = torch.zeros((b, size, size), dtype=images.dtype, device=images.device)
    o = size // 2 - n // 2
    padded[:, o:o + n, o:o + n] = images
    return torch.fft.fft2(torch.fft.ifftshift(padded, dim=(-2, -1)))


def _plane_coords(size: int, device) -> torch.Tensor:
    """``(size*size, 3)`` Fourier indices ``(kx, ky, 0)`` of an unshifted ``size²`` grid (row-major y, x)."""
    f = torch.fft.fftfreq(size, d=1.0 / size, device=device)
    ky, kx = torch.meshgrid(f, f, indexing="ij")
    return torch.stack([kx.reshape(-1), ky.reshape(-1), torch.zeros_like(kx).reshape(-1)], dim=1)


def _corners(q: torch.Tensor, size: int):
    """Trilinear corners of points ``q`` ``(M, 3)`` (x, y, z index units, may be negative) in a periodic ``size³`` grid.

    Yields ``(flat_index (M,), weight (M,))`` for the 8 corners; flat index of ``[z, y, x]``.
    """
    q0 = torch.floor(q)
    t = q - q0
    # wrap into [0, size) once, in float (exact for these small integers), then index arithmetic
    q0 = q0 + size * (q0 < 0)
    base = [q0[:, k].to(torch.int64) for k in range(3)]
    wrap = [(base[k] + 1) * (base[k] + 1 < size) for k in range(3)]
    ws = [(1 - t[:, k], t[:, k]) for k in range(3)]
    for dx in (0, 1):
        ix = wrap[0] if dx else base[0]
        for dy in (0, 1):
            iy = wrap[1] if dy else base[1]
            wxy = ws[0][dx] * ws[1][dy]
            flat_xy = iy * size + ix
            for dz in (0, 1):
                iz = wrap[2] if dz else base[2]
                yield iz * (size * size) + flat_xy, wxy * ws[2][dz]


def _check_inputs(images, rotations, origins, n_name="images"):
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InputError("images of shape (n, N, N)", field=n_name, got=tuple(images.shape))
    if rotations.shape != (images.shape[0], 3, 3):
        raise InputError(f"rotations of shape ({images.shape[0]}, 3, 3)", field="rotations", got=tuple(rotations.shape))
    if origins is not None and origins.shape != (images.shape[0], 2):
        raise InputError(f"origins of shape ({images.shape[0]}, 2)", field="origins_angstrom", got=tuple(origins.shape))


@dataclass
class _Accumulator:
    """Running Fourier sums ``num`` (complex, flattened ``(P³,)``) and ``den`` (real) of one map."""

    size: int
    num: torch.Tensor
    den: torch.Tensor

    @classmethod
    def empty(cls, size: int, device) -> _Accumulator:
        return cls(size, torch.zeros(size**3, dtype=torch.complex64, device=device),
                   torch.zeros(size**3, dtype=torch.float32, device=device))

    def add(self, other: _Accumulator) -> _Accumulator:
        return _Accumulator(self.size, self.num + other.num, self.den + other.den)


def _insert(acc: _Accumulator, images: torch.Tensor, rotations: torch.Tensor, transfer: torch.Tensor | None,
            weights: torch.Tensor | None, group: torch.Tensor) -> None:
    """Insert a batch: images ``(B, N, N)`` (already centred), rotations ``(B, 3, 3)``, ``transfer`` ``(B, N, N)``.

    The images' ``N²`` Fourier samples land on the ``pad``-times finer 3D grid (spacing ``1/(pad N)``);
    trilinear weights spread each over its 8 neighbours, and the division by the summed weights
    in :func:`_finish` interpolates between them.
    """
    size = acc.size
    n = images.shape[-1]
    ft = _centred_ft_2d(images, n)  # (B, N, N)
    plane = _plane_coords(n, images.device)  # (N², 3) in the image's Fourier index units
    keep = (plane[:, 0] ** 2 + plane[:, 1] ** 2) < (n / 2.0) ** 2 * (1.0 - 1e-6)  # inside Nyquist
    plane = plane[keep] * (size / n)  # -> index units of the padded (finer) 3D grid
    ft = ft.reshape(ft.shape[0], -1)[:, keep]
    t = None if transfer is None else transfer.reshape(transfer.shape[0], -1)[:, keep]
    w_img = torch.ones(images.shape[0], device=images.device) if weights is None else weights
    data = ft * (w_img[:, None] if t is None else (t * w_img[:, None]))
    ctf2 = (torch.ones_like(ft.real) if t is None else t * t) * w_img[:, None]
    # (M, 3) rows (Re, Im, weight): one scatter per corner for numerator and denominator together
    vals = torch.stack([data.real.reshape(-1), data.imag.reshape(-1), ctf2.reshape(-1)], dim=1)
    target = torch.cat([torch.view_as_real(acc.num), acc.den[:, None]], dim=1)
    for g in group:
        rot = rotations @ g  # A g
        q = torch.einsum("bji,pj->bpi", rot, plane).reshape(-1, 3)  # (A g)^T k
        idx_all, w_all = zip(*_corners(q, size))
        target.index_add_(0, torch.cat(idx_all), torch.cat([vals * w[:, None] for w in w_all]))
    acc.num.copy_(torch.view_as_complex(target[:, :2].contiguous()))
    acc.den.copy_(target[:, 2])


def _finish(acc: _Accumulator, n: int, *, regularization: float) -> torch.Tensor:
    """``(N, N, N)`` map from the Fourier sums: Wiener-like division, inverse FT, centre crop."""
    size = acc.size
    den = acc.den
    sampled = den[den > 0]
    lam = regularization * (sampled.mean() if sampled.numel() else torch.tensor(1.0, device=den.device))
    vol_ft = (acc.num / (den + lam)).reshape(size, size, size)
    # Hermitian symmetry: a real map; average k and -k (both were inserted with the full 2D FT)
    vol = torch.fft.fftshift(torch.fft.ifftn(vol_ft).real)
    o = size // 2 - n // 2
    return vol[o:o + n, o:o + n, o:o + n].contiguous()


def _group_tensor(symmetry: str, device) -> torch.Tensor:
    return torch.as_tensor(point_group(normalize_symmetry(symmetry)), dtype=torch.float32, device=device)


def _accumulate_job(images, rotations, origins_px, transfer_fn, weights, *, symmetry, pad, batch_size, device,
                    message, step0=0, total=None) -> Generator[Progress, None, _Accumulator]:
    n_img, n = images.shape[0], images.shape[-1]
    size = round(pad * n)
    size += size % 2
    acc = _Accumulator.empty(size, device)
    group = _group_tensor(symmetry, device)
    from ..geometry import shift_image

    n_batches = max(1, -(-n_img // batch_size))
    total = total or n_batches
    for b in range(n_batches):
        sl = slice(b * batch_size, min(n_img, (b + 1) * batch_size))
        img = torch.as_tensor(np.ascontiguousarray(images[sl]), dtype=torch.float32, device=device)
        if origins_px is not None:
            img = shift_image(img, torch.as_tensor(origins_px[sl], dtype=torch.float32, device=device))
        rot = torch.as_tensor(rotations[sl], dtype=torch.float32, device=device)
        t = None if transfer_fn is None else transfer_fn(np.arange(sl.start, sl.stop), n)
        w = None if weights is None else torch.as_tensor(weights[sl], dtype=torch.float32, device=device)
        _insert(acc, img, rot, t, w, group)
        yield Progress(step0 + b + 1, total, f"{message}: {sl.stop}/{n_img} images")
    return acc


@dataclass(frozen=True, eq=False)
class ReconstructionResult:
    """A reconstruction and, with half maps, their FSC.

    Attributes
    ----------
    volume : ndarray ``(N, N, N)`` float32 (z, y, x), from all particles
    half1, half2 : ndarrays or None, from the particles of half set 1 / 2
    fsc : :class:`~napari_cryoalign.backend.align.average.FSCReport` of the half maps (soft
        spherical mask), or None
    pixel_size_angstrom : float
    symmetry : point group used
    n_particles : int
    """

    volume: np.ndarray
    half1: np.ndarray | None
    half2: np.ndarray | None
    fsc: object
    pixel_size_angstrom: float
    symmetry: str
    n_particles: int


def _transfer_fn(data: ParticleData, idx: np.ndarray, device):
    if data.ctf is None:
        return None

    def fn(rows, size):
        # T on the images' own Fourier grid (unshifted, full)
        return transfer_function(data.ctf, idx[rows], (size, size), pixel_size_angstrom=data.pixel_size_angstrom,
                                 rfft=False, device=device)

    return fn


def reconstruct_job(images, rotations, *, pixel_size_angstrom: float = 1.0, origins_angstrom=None,
                    transfer=None, weights=None, symmetry: str = "C1", pad: float = 2.0,
                    regularization: float = 0.01, batch_size: int = 64,
                    device="cpu") -> Generator[Progress, None, np.ndarray]:
    """Job version of :func:`reconstruct`."""
    images = np.asarray(images)
    rotations = np.asarray(rotations, dtype=np.float64)
    origins = None if origins_angstrom is None else np.asarray(origins_angstrom, dtype=np.float64)[:, :2]
    _check_inputs(images, rotations, origins)
    if not pad >= 1:
        raise InputError("a padding factor >= 1", field="pad", got=pad)
    acc = yield from _accumulate_job(images, rotations, None if origins is None else origins / pixel_size_angstrom,
                                     transfer, weights, symmetry=symmetry, pad=pad, batch_size=batch_size,
                                     device=device, message="reconstructing")
    return _finish(acc, images.shape[-1], regularization=regularization).cpu().numpy()


def reconstruct(images, rotations, **kwargs) -> np.ndarray:
    """Direct Fourier reconstruction ``(N, N, N)`` float32 from images ``(n, N, N)`` and poses ``A`` ``(n, 3, 3)``.

    Parameters
    ----------
    images : ``(n, N, N)`` particle images (protein bright), numpy
    rotations : ``(n, 3, 3)`` RELION matrices ``A``
    pixel_size_angstrom : Å (to convert origins)
    origins_angstrom : ``(n, 2)`` ``rlnOriginX/YAngst`` or None
    transfer : None (no CTF) or a callable ``(rows, N) -> (B, N, N)`` transfer functions on the
        unshifted full Fourier grid of the images (see :func:`reconstruct_particles`)
    weights : ``(n,)`` per-image weights (e.g. confidences), or None
    symmetry : point group, every mate ``A g`` is inserted
    pad : Fourier padding factor (2 = RELION's default)
    regularization : ``λ / mean(den)`` of the Wiener-like division
    """
    return run_job(reconstruct_job(images, rotations, **kwargs), progress=False)


def reconstruct_half_maps_job(data: ParticleData, rotations=None, *, origins_angstrom=None, symmetry: str = "C1",
                              half_maps: bool = True, weights=None, pad: float = 2.0, regularization: float = 0.01,
                              batch_size: int = 64, mask=None,
                              device="cpu") -> Generator[Progress | Partial, None, ReconstructionResult]:
    """Reconstruct particles with given poses (default: their own), half maps and the half-map FSC.

    Parameters
    ----------
    data : ParticleData (CTF, half sets and pixel size are taken from it)
    rotations : ``(n, 3, 3)`` poses (default ``data.rotations``)
    origins_angstrom : ``(n, 2)`` (default ``data.origins_angstrom``)
    half_maps : also reconstruct the two half sets separately (the full map is their sum) and
        compute their FSC (with ``mask``, default a soft sphere of radius 0.4 N)
    weights : per-particle weights or None

    Yields ``Progress`` and ``Partial("volume", map)`` at the end of each half.
    """
    from ..align.average import default_fsc_mask, fsc_report

    rot = data.rotations if rotations is None else np.asarray(rotations, dtype=np.float64)
    if rot is None:
        raise InputError("poses (rlnAngleRot/Tilt/Psi) to reconstruct from", path=data.path, field="rlnAngleRot",
                         got="none")
    ori = data.origins_angstrom if origins_angstrom is None else np.asarray(origins_angstrom, dtype=np.float64)
    _check_inputs(data.images, rot, ori[:, :2])
    sym = normalize_symmetry(symmetry)
    n = data.box
    px = data.pixel_size_angstrom
    groups = [np.flatnonzero(data.half == h) for h in (1, 2)] if half_maps else [np.arange(data.n)]
    groups = [g for g in groups if g.size]
    if half_maps and len(groups) < 2:
        raise InputError("particles in both half sets (rlnRandomSubset 1 and 2) for half maps", path=data.path,
                         field="rlnRandomSubset", got="only one half set")
    total = sum(max(1, -(-g.size // batch_size)) for g in groups)
    accs, step = [], 0
    for k, idx in enumerate(groups):
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[idx]
        acc = yield from _accumulate_job(data.images[idx], rot[idx], ori[idx, :2] / px, _transfer_fn(data, idx, device),
                                         w, symmetry=sym, pad=pad, batch_size=batch_size, device=device,
                                         message=f"half {k + 1}" if half_maps else "reconstructing",
                                         step0=step, total=total)
        step += max(1, -(-idx.size // batch_size))
        accs.append(acc)
        yield Partial("volume", _finish(acc, n, regularization=regularization).cpu().numpy())
    if not half_maps:
        vol = _finish(accs[0], n, regularization=regularization).cpu().numpy()
        return ReconstructionResult(vol, None, None, None, px, sym, data.n)
    h1 = _finish(accs[0], n, regularization=regularization).cpu().numpy()
    h2 = _finish(accs[1], n, regularization=regularization).cpu().numpy()
    vol = _finish(accs[0].add(accs[1]), n, regularization=regularization).cpu().numpy()
    report = fsc_report(h1, h2, voxel_size_angstrom=px, mask=default_fsc_mask(n) if mask is None else mask)
    return ReconstructionResult(vol, h1, h2, report, px, sym, data.n)


def reconstruct_half_maps(data: ParticleData, rotations=None, **kwargs) -> ReconstructionResult:
    """Plain-function version of :func:`reconstruct_half_maps_job`."""
    return run_job(reconstruct_half_maps_job(data, rotations, **kwargs), progress=False)


# ----------------------------------------------------------------------------- projection
@dataclass(frozen=True, eq=False)
class FourierProjector:
    """A map prepared for Fourier-slice projection: its padded, centred 3D FT as a ``(1, 2, P, P, P)``
    real/imag volume (zero frequency at index ``P // 2``), and sizes."""

    ft: torch.Tensor
    size: int
    box: int


def prepare_projector(volume, *, pad: float = 2.0, device="cpu") -> FourierProjector:
    """Pad a ``(N, N, N)`` map by ``pad``, divide by the trilinear kernel's sinc² (gridding pre-correction), transform."""
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float32), device=device)
    n = vol.shape[-1]
    if vol.shape != (n, n, n):
        raise InputError("a cubic map (N, N, N)", field="volume", got=tuple(vol.shape))
    size = round(pad * n)
    size += size % 2
    padded = torch.zeros((size,) * 3, dtype=torch.float32, device=device)
    o = size // 2 - n // 2
    padded[o:o + n, o:o + n, o:o + n] = vol
    ax = (torch.arange(size, device=device, dtype=torch.float32) - size // 2) / size
    s = torch.sinc(ax) ** 2
    padded = padded / (s[:, None, None] * s[None, :, None] * s[None, None, :])
    ft = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(padded)))  # zero frequency at size // 2
    vol = torch.view_as_real(ft.to(torch.complex64)).permute(3, 0, 1, 2)[None].contiguous()
    return FourierProjector(vol, size, n)


def project_fourier(projector: FourierProjector, rotations) -> torch.Tensor:
    """Fourier transforms of the projections at poses ``A`` ``(B, 3, 3)``: ``(B, N, N)`` complex, unshifted.

    The phase origin is the box centre ``N//2`` (the transform of ``ifftshift(image)``);
    ``torch.fft.fftshift(torch.fft.ifft2(out).real)`` is the projection image.
    """
    n, size = projector.box, projector.size
    plane = _plane_coords(n, projector.ft.device)
    out = slice_values(projector, rotations, plane[:, :2]).reshape(-1, n, n)
    r2 = plane[:, 0] ** 2 + plane[:, 1] ** 2
    inside = (r2 < (size / 2.0) ** 2).reshape(n, n)
    return out * inside


def slice_values(projector: FourierProjector, rotations, frequencies: torch.Tensor) -> torch.Tensor:
    """Central-slice values ``(B, P)`` complex at in-plane frequencies ``(P, 2)`` (kx, ky in cycles per box ``N``).

    The values of the map's transform at ``Aᵀ (kx, ky, 0)`` (trilinear), phase origin at the box
    centre; :func:`project_fourier` is this on the whole ``N²`` grid.
    """
    rot = torch.as_tensor(np.asarray(rotations, dtype=np.float32) if not isinstance(rotations, torch.Tensor)
                          else rotations, dtype=torch.float32, device=projector.ft.device).reshape(-1, 3, 3)
    n, size = projector.box, projector.size
    k = torch.as_tensor(frequencies, dtype=torch.float32, device=rot.device) * (size / n)
    q = torch.einsum("bji,pj->bpi", rot[:, :2, :], k)  # (B, P, 3): x, y, z in padded-grid index units
    # trilinear interpolation in one fused op: grid_sample's (x, y, z) run along (W, H, D) = the
    # map's (x, y, z) axes; align_corners=True maps -1 / 1 to index 0 / P - 1. Only the corners
    # beyond the inscribed sphere (masked by project_fourier) would need the periodic wrap.
    grid = ((q + size // 2) * (2.0 / (size - 1)) - 1.0).reshape(1, rot.shape[0], k.shape[0], 1, 3)
    vals = torch.nn.functional.grid_sample(projector.ft, grid, mode="bilinear", padding_mode="zeros",
                                           align_corners=True)[0, :, :, :, 0]  # (2, B, P)
    return torch.complex(vals[0], vals[1])


def pearson_correlation(a, b, *, mask=None) -> float:
    """Real-space Pearson correlation of two maps (both multiplied by ``mask`` first, as CESPED does)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise InputError(f"two maps of one shape (first is {x.shape})", field="shape", got=y.shape)
    if mask is not None:
        m = np.asarray(mask, dtype=np.float64)
        x, y = x * m, y * m
    x = x.ravel() - x.mean()
    y = y.ravel() - y.mean()
    d = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / d) if d > 0 else 0.0
