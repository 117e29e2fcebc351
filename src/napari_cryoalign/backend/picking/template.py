"""Template matching: FFT cross-correlation over a rotation grid (the classical baseline).

For every rotation ``A`` of a grid (:func:`~napari_cryoalign.backend.geometry.rotation_grid`)
the reference is turned into what a particle with those Euler angles looks like in the
tomogram - rotated by ``A`` (:func:`~napari_cryoalign.backend.geometry.rotate_volume`,
batched), multiplied in Fourier space by the missing wedge of the tomogram
(:func:`~napari_cryoalign.backend.wedge.missing_wedge_mask`, tilt axis y) and optionally by
``|CTF|`` (a phase-flipped tomogram) and a low-pass, then masked by a sphere and normalised to
zero mean and unit variance under the mask. Its cross-correlation with the tomogram
(``torch.fft.rfftn``) divided by the local standard deviation of the tomogram under the same
mask (again by FFT) is the normalised cross-correlation (NCC, in [-1, 1]) of the template
placed at each voxel (local normalisation as in pytom-match-pick / STOPGAP). Per voxel the
maximum over rotations and its rotation index are kept; peaks of the score map, at least a
particle radius apart, are the picks, with the Euler angles of their best rotation.

The score cut-off that users of pytom-match-pick know is estimated too: the NCC of every
rotation at every voxel is, away from particles, close to Gaussian noise with standard
deviation ``sigma`` (accumulated during the search), so over ``n_search = n_voxels x
n_rotations`` trials the score that noise exceeds ``k`` times on average is
``sqrt(2) sigma erfcinv(2 k / n_search)`` (Rickgauer et al. 2017, eLife 6:e25648;
:func:`false_alarm_threshold`). The result carries it for ``k = 1`` as
``suggested_threshold``; ``false_positives=k`` cuts the picks there.

The tomogram is processed in tiles (``tile``, plus a halo of half the template box), so
memory is bounded and memory-mapped input works. Runs on any torch device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Generator

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from .._tensor import resolve_device
from ..ctf import ctf_3d
from ..fourier import frequency_radius, resample_voxel_size, sphere_mask
from ..geometry import matrix_to_euler, rotate_volume, rotation_grid
from ..jobs import Event, Partial, Progress, run_job
from ..wedge import missing_wedge_mask
from .infer import Picks, find_peaks
from .picker import check_tomogram

__all__ = ["TemplateMatchResult", "template_match_job", "template_match", "prepare_template", "false_alarm_threshold"]


@dataclass(frozen=True)
class TemplateMatchResult:
    """Result of template matching.

    Attributes
    ----------
    scores : ``(z, y, x)`` float32, best NCC over the rotations at each voxel
    best_rotation : ``(z, y, x)`` int32, index of the best rotation
    euler_deg : ``(n_rotations, 3)`` RELION (rot, tilt, psi) of the rotation grid
    picks : :class:`~.infer.Picks` (with ``euler_deg``), sorted by score
    seconds : wall time
    ncc_std : standard deviation of the NCC over all rotations and voxels searched
    n_search : number of (voxel, rotation) trials
    suggested_threshold : the NCC that noise is expected to exceed once in the whole search
        (:func:`false_alarm_threshold` with one false positive)
    """

    scores: np.ndarray
    best_rotation: np.ndarray
    euler_deg: np.ndarray
    picks: Picks
    seconds: float
    ncc_std: float = float("nan")
    n_search: int = 0
    suggested_threshold: float = float("nan")


def false_alarm_threshold(ncc_std: float, n_search: int, *, false_positives: float = 1.0) -> float:
    """Score cut-off with ``false_positives`` expected noise peaks (Rickgauer et al. 2017).

    Gaussian noise of standard deviation ``ncc_std`` exceeds ``sqrt(2) ncc_std erfcinv(2 k / n)``
    ``k`` times on average in ``n`` independent trials. The trials of a template search
    (neighbouring voxels and rotations) are correlated, so this is conservative, as in
    pytom-match-pick, whose ``--number-of-false-positives`` (default 1) it mirrors.
    """
    from scipy.special import erfcinv

    if not (np.isfinite(ncc_std) and ncc_std > 0) or n_search < 1:
        raise InputError("a positive NCC standard deviation and at least one trial", field="ncc_std",
                         got=f"{ncc_std}, {n_search} trials")
    if not (0.0 < false_positives < 0.5 * n_search):
        raise InputError(f"a number of false positives in (0, {0.5 * n_search:g})", field="false_positives",
                         got=false_positives)
    return float(np.sqrt(2.0) * ncc_std * erfcinv(2.0 * float(false_positives) / float(n_search)))


def prepare_template(
    template,
    *,
    template_voxel_size: float | None = None,
    voxel_size: float | None = None,
    path=None,
) -> np.ndarray:
    """Check a reference volume and bring it to the tomogram's voxel size.

    A cubic ``(n, n, n)`` finite array is required; with both voxel sizes given and
    different by more than 1 %, it is resampled by Fourier cropping/padding.
    """
    t = np.asarray(template, dtype=np.float32)
    if t.ndim != 3 or len(set(t.shape)) != 1 or t.shape[0] < 4:
        raise InputError("a cubic (n, n, n) reference volume with n >= 4", path=path, field="data",
                         got=f"shape {t.shape}")
    if not np.isfinite(t).all():
        raise InputError("finite voxel values (no NaN or inf)", path=path, field="data", got="non-finite voxels")
    if float(t.std()) == 0.0:
        raise InputError("a reference with some contrast", path=path, field="data", got="a constant volume")
    if template_voxel_size and voxel_size and abs(template_voxel_size / voxel_size - 1.0) > 0.01:
        t, _ = resample_voxel_size(t, from_voxel_angstrom=template_voxel_size, to_voxel_angstrom=voxel_size)
        t = np.asarray(t, dtype=np.float32)
    return t


def _local_std(vf: torch.Tensor, v2f: torch.Tensor, mf: torch.Tensor, n: float, shape) -> torch.Tensor:
    mean = torch.fft.irfftn(vf * mf.conj(), s=shape) / n
    ex2 = torch.fft.irfftn(v2f * mf.conj(), s=shape) / n
    return torch.sqrt(torch.clamp(ex2 - mean * mean, min=0.0))


def _to_origin(vol: torch.Tensor, shape) -> torch.Tensor:
    """Zero-pad box(es) ``(..., b, b, b)`` to ``shape`` with the box centre (index b//2) moved to index 0."""
    b = vol.shape[-1]
    pad = []
    for n in reversed(shape):
        pad += [0, int(n) - b]
    out = F.pad(vol, pad)
    return torch.roll(out, shifts=(-(b // 2),) * 3, dims=(-3, -2, -1))


def template_match_job(
    tomogram,
    template,
    *,
    voxel_size: float | None = None,
    template_voxel_size: float | None = None,
    angular_step_deg: float = 30.0,
    rotations: np.ndarray | None = None,
    mask_radius: float | None = None,
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
    defocus_um: float | None = None,
    lowpass_angstrom: float | None = None,
    min_distance_angstrom: float | None = None,
    threshold: float | None = None,
    false_positives: float | None = None,
    max_picks: int | None = None,
    tile: tuple[int, int, int] = (128, 256, 256),
    batch: int = 8,
    device="cpu",
    path=None,
    template_path=None,
) -> Generator[Event, None, TemplateMatchResult]:
    """Template matching over a rotation grid (a job: ``Progress`` per rotation batch).

    Parameters
    ----------
    tomogram : ``(z, y, x)`` array or memmap
    template : ``(n, n, n)`` reference (protein with the same contrast sign as the tomogram),
        centred at index ``n // 2``
    voxel_size, template_voxel_size : Å; the template is resampled when they differ
    angular_step_deg : spacing of the rotation grid (ignored when ``rotations`` is given)
    rotations : ``(n, 3, 3)`` matrices ``A`` to search instead of a grid
    mask_radius : sphere mask radius in voxels (default: the radius that holds 99 % of the
        template's positive density, plus 1, at most ``n // 2 - 1``)
    tilt_range_deg : tilt range for the missing wedge applied to the template (None: none)
    defocus_um : if given, the template is multiplied by ``|CTF|`` (phase-flipped tomogram)
    lowpass_angstrom : low-pass of the template (raised cosine), Å
    min_distance_angstrom : minimum distance between picks (default the mask radius)
    threshold : minimum NCC of a pick (default: none, use ``max_picks``)
    false_positives : with ``threshold`` None, cut the picks at the score that noise exceeds
        this many times in the whole search (:func:`false_alarm_threshold`; pytom-match-pick: 1)
    max_picks : at most this many picks
    tile : tile size ``(z, y, x)``; the halo is half the template box
    batch : rotations correlated at once
    device : torch device or "auto"

    Returns
    -------
    :class:`TemplateMatchResult`
    """
    t0 = time.perf_counter()
    shape = check_tomogram(tomogram, path=path)
    dev = resolve_device(device)
    tmpl = prepare_template(template, template_voxel_size=template_voxel_size, voxel_size=voxel_size,
                            path=template_path)
    b = tmpl.shape[0]
    if b > min(shape):
        raise InputError(f"a reference box no larger than the tomogram's smallest axis ({min(shape)} voxels)",
                         path=template_path, field="data", got=f"box {b}")
    vs = float(voxel_size) if voxel_size else 1.0
    if rotations is None:
        rot = rotation_grid(angular_step_deg)
    else:
        rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    eul = matrix_to_euler(rot)
    t_ref = torch.from_numpy(tmpl).to(dev)
    t_ref = t_ref - t_ref.mean()
    if mask_radius is None:
        pos = torch.clamp(t_ref, min=0)
        grid_r = torch.sqrt(sum(g**2 for g in torch.meshgrid(*[torch.arange(b, device=dev, dtype=torch.float32) - b // 2] * 3,
                                                              indexing="ij")))
        order = torch.argsort(grid_r.reshape(-1))
        cum = torch.cumsum(pos.reshape(-1)[order], 0)
        k = int(torch.searchsorted(cum, 0.99 * cum[-1]))
        mask_radius = float(min(grid_r.reshape(-1)[order][min(k, order.numel() - 1)] + 1.0, b // 2 - 1))
    mask = sphere_mask((b, b, b), mask_radius, device=dev)
    n_mask = float(mask.sum())
    # Fourier filter of the template: wedge x |CTF| x low-pass
    filt = torch.ones((b, b, b // 2 + 1), device=dev)
    if tilt_range_deg is not None:
        filt = filt * missing_wedge_mask((b, b, b), tilt_min_deg=tilt_range_deg[0], tilt_max_deg=tilt_range_deg[1],
                                         rfft=True, device=dev)
    if defocus_um is not None:
        filt = filt * ctf_3d((b, b, b), voxel_size_angstrom=vs, defocus_um=defocus_um, device=dev).abs()
    if lowpass_angstrom is not None:
        r = frequency_radius((b, b, b), rfft=True, device=dev)
        cut = vs / float(lowpass_angstrom)
        w = 2.0 / b
        filt = filt * 0.5 * (1 + torch.cos(math.pi * ((r - (cut - w / 2)) / w).clamp(0, 1)))

    def templates(idx: slice) -> torch.Tensor:
        r_t = torch.from_numpy(rot[idx]).to(dev, torch.float32)
        tr = rotate_volume(t_ref.expand(r_t.shape[0], b, b, b), r_t)
        tr = torch.fft.irfftn(torch.fft.rfftn(tr, dim=(-3, -2, -1)) * filt, s=(b, b, b), dim=(-3, -2, -1))
        tr = tr * mask
        mu = tr.sum(dim=(-3, -2, -1), keepdim=True) / n_mask
        tr = (tr - mu) * mask
        sd = torch.sqrt((tr * tr).sum(dim=(-3, -2, -1), keepdim=True) / n_mask).clamp(min=1e-12)
        return tr / sd

    halo = b // 2 + 1
    tz, ty, tx = (max(1, int(t)) for t in tile)
    scores = np.full(shape, -1.0, dtype=np.float32)
    best = np.zeros(shape, dtype=np.int32)
    tiles = [(z0, y0, x0) for z0 in range(0, shape[0], tz) for y0 in range(0, shape[1], ty)
             for x0 in range(0, shape[2], tx)]
    n_batches = -(-len(rot) // batch)
    total = len(tiles) * n_batches
    done = 0
    s1 = s2 = 0.0  # sum and sum of squares of the NCC over all (voxel, rotation) trials
    n_trials = 0
    for z0, y0, x0 in tiles:
        z1, y1, x1 = min(z0 + tz, shape[0]), min(y0 + ty, shape[1]), min(x0 + tx, shape[2])
        za, ya, xa = max(0, z0 - halo), max(0, y0 - halo), max(0, x0 - halo)
        zb, yb, xb = min(shape[0], z1 + halo), min(shape[1], y1 + halo), min(shape[2], x1 + halo)
        blk = torch.from_numpy(np.array(tomogram[za:zb, ya:yb, xa:xb], dtype=np.float32, copy=True)).to(dev)
        # pad by the halo (with the block mean) so that correlations do not wrap around
        fill = float(blk.mean())
        pshape = tuple(int(s) + 2 * halo for s in blk.shape)
        v = torch.full(pshape, fill, device=dev)
        v[halo:-halo, halo:-halo, halo:-halo] = blk
        v = v - fill
        vf = torch.fft.rfftn(v)
        v2f = torch.fft.rfftn(v * v)
        mf = torch.fft.rfftn(_to_origin(mask, pshape))
        sd = _local_std(vf, v2f, mf, n_mask, pshape)
        sd = torch.where(sd > 1e-6 * float(sd.max()), sd, torch.full_like(sd, float("inf")))
        # interior of this tile inside the padded block
        sl = (slice(halo + z0 - za, halo + z1 - za), slice(halo + y0 - ya, halo + y1 - ya),
              slice(halo + x0 - xa, halo + x1 - xa))
        tile_best = torch.full((z1 - z0, y1 - y0, x1 - x0), -2.0, device=dev)
        tile_idx = torch.zeros((z1 - z0, y1 - y0, x1 - x0), dtype=torch.int64, device=dev)
        denom = (n_mask * sd)[sl]
        n_valid = int(torch.isfinite(denom).sum())  # NCC is 0 where the tomogram is flat
        for i0 in range(0, len(rot), batch):
            i1 = min(len(rot), i0 + batch)
            tp = templates(slice(i0, i1))
            tf = torch.fft.rfftn(_to_origin(tp, pshape), dim=(-3, -2, -1))
            cc = torch.fft.irfftn(vf[None] * tf.conj(), s=pshape, dim=(-3, -2, -1))
            ncc = cc[(slice(None),) + sl] / denom
            m, a = ncc.max(dim=0)
            s1 += float(ncc.sum(dtype=torch.float64))
            s2 += float((ncc * ncc).sum(dtype=torch.float64))
            n_trials += n_valid * (i1 - i0)
            better = m > tile_best
            tile_best = torch.where(better, m, tile_best)
            tile_idx = torch.where(better, a + i0, tile_idx)
            done += 1
            yield Progress(done, total, f"rotations {i1}/{len(rot)}")
        scores[z0:z1, y0:y1, x0:x1] = tile_best.cpu().numpy()
        best[z0:z1, y0:y1, x0:x1] = tile_idx.cpu().numpy().astype(np.int32)
    mean = s1 / max(n_trials, 1)
    ncc_std = float(np.sqrt(max(s2 / max(n_trials, 1) - mean * mean, 0.0)))
    suggested = false_alarm_threshold(ncc_std, n_trials) if ncc_std > 0 and n_trials >= 4 else float("nan")
    if threshold is None and false_positives is not None:
        if not np.isfinite(suggested):
            raise InputError("a tomogram with some contrast under the template mask", path=path, field="data",
                             got="no NCC variation to estimate a cut-off from")
        threshold = false_alarm_threshold(ncc_std, n_trials, false_positives=false_positives)
    md = (float(min_distance_angstrom) / vs) if min_distance_angstrom is not None else float(mask_radius)
    xyz, sc = find_peaks(scores, min_distance=md, threshold=-1.0 if threshold is None else threshold,
                         max_picks=max_picks)
    ii = np.round(xyz).astype(np.int64)
    picks = Picks(xyz, sc, eul[best[ii[:, 2], ii[:, 1], ii[:, 0]]] if len(sc) else np.zeros((0, 3)))
    yield Partial("picks", picks)
    return TemplateMatchResult(scores=scores, best_rotation=best, euler_deg=eul, picks=picks,
                               seconds=time.perf_counter() - t0, ncc_std=ncc_std, n_search=int(n_trials),
                               suggested_threshold=suggested)


def template_match(tomogram, template, *, progress: bool = False, **kwargs) -> TemplateMatchResult:
    """Plain-function form of :func:`template_match_job`."""
    return run_job(template_match_job(tomogram, template, **kwargs), progress=progress, description="template matching")
