"""The learned, unsupervised subtomogram aligner (Gum-Net) and its shipped default weights.

* :func:`align_learned` (and the cancellable :func:`align_learned_job`) -- one forward pass per
  particle: rotation, shift and a wedge-aware score for each particle against a reference
  (method ``"learned"``);
* training and fine-tuning: :mod:`.learned_train` (it uses the losses defined here);
* :func:`load_default_model`, :func:`load_model`, :func:`save_model` -- model files.

The network is :class:`~.gumnet.GumNet`; see ``docs/align_learned.md`` for the architecture,
its deviations from the paper, the training of the default weights and measured accuracy.

Model file format (``torch.save`` of a plain dict, read with ``weights_only=True``)::

    {"format": "napari-cryoalign-gumnet", "version": 1,
     "header": {"architecture": GumNetConfig.to_dict(), "metadata": {...}, "created": "..."},
     "state_dict": {...}}
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ...io.modelfile import read_model_file, write_model_file
from ..fourier import pad_or_crop
from ..geometry import shift_phase_ramp
from ..jobs import Partial, Progress, run_job
from ..peaks import find_peak
from .gumnet import (
    GumNet,
    GumNetConfig,
    constrained_correlation_map,
    crop_fourier_mask,
    fourier_crop,
    imputed_correlation_map,
    origin_from_peak,
    pair_correlation,
    standardize,
    warp_and_impute,
)
from .scoring import mask_to_rfft
from .types import AlignmentResult

__all__ = [
    "DEFAULT_WEIGHTS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GumNet",
    "GumNetConfig",
    "align_learned",
    "align_learned_job",
    "load_default_model",
    "load_model",
    "save_model",
]

FORMAT_NAME = "napari-cryoalign-gumnet"
FORMAT_VERSION = 1
DEFAULT_WEIGHTS = "gumnet_default.pt"


# --------------------------------------------------------------------------------- model files
def save_model(model: GumNet, path: str | os.PathLike, *, metadata: dict | None = None,
               overwrite: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    model : the network
    path : output file (``.pt``); an existing file is an error unless ``overwrite``
    metadata : JSON-like dict stored in the header (training data, losses, ...); merged over
        ``model.metadata`` when the model has one

    Returns
    -------
    Path of the written file.
    """
    if not isinstance(model, GumNet):
        raise InputError("a GumNet model", field="model", got=type(model).__name__)
    meta = dict(getattr(model, "metadata", None) or {})
    meta.update(metadata or {})
    return write_model_file(path, format_name=FORMAT_NAME, version=FORMAT_VERSION,
                            header={"architecture": model.config.to_dict(), "metadata": meta},
                            state_dict=model.state_dict(), overwrite=overwrite)


def load_model(path: str | os.PathLike, *, device="cpu") -> GumNet:
    """Read a model file written by :func:`save_model`; the model is in eval mode on ``device``.

    ``model.metadata`` holds the header's metadata (training data and the like).

    Raises
    ------
    InputError
        ``field="path"`` missing file; ``"file"`` not a readable torch file (corrupted,
        truncated, or a pickle that ``weights_only`` refuses); ``"format"`` another tool's
        file; ``"version"`` a newer format; ``"architecture"`` / ``"state_dict"`` weights that
        do not fit the described network.
    """
    p = Path(path)
    obj = read_model_file(p, format_name=FORMAT_NAME, max_version=FORMAT_VERSION, what="Gum-Net model")
    header, state = obj["header"], obj["state_dict"]
    try:
        cfg = GumNetConfig.from_dict(header["architecture"])
        model = GumNet(cfg)
    except Exception as err:  # noqa: BLE001
        raise InputError("valid Gum-Net architecture parameters", path=p, field="architecture",
                         got=f"{type(err).__name__}: {err}") from None
    try:
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001
        msg = " ".join(str(err).split())[:200]
        raise InputError("weights matching the architecture in the header", path=p, field="state_dict",
                         got=msg) from None
    model.metadata = dict(header.get("metadata") or {})
    return model.to(device).eval()


def default_weights_path() -> Path:
    """Path of the shipped default weights (``napari_cryoalign/weights/gumnet_default.pt``)."""
    return Path(str(resources.files("napari_cryoalign").joinpath("weights", DEFAULT_WEIGHTS)))


def load_default_model(*, device="cpu") -> GumNet:
    """The shipped default Gum-Net (trained on simulated 32^3 subtomograms at 12 Å/voxel; see
    ``weights/gumnet_default.md``), in eval mode on ``device``."""
    return load_model(default_weights_path(), device=device)


# --------------------------------------------------------------------------------- validation
def _volumes(x, name: str, *, ndim: int, box: int | None = None,
             why: str = "the model's input size; resample the volumes first") -> torch.Tensor:
    arr = x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != ndim or len(set(arr.shape[-3:])) != 1:
        want = "(n, z, y, x)" if ndim == 4 else "(z, y, x)"
        raise InputError(f"an array of shape {want} with a cubic box", field=name, got=f"shape {tuple(arr.shape)}")
    if box is not None and arr.shape[-1] != box:
        raise InputError(f"a box of {box} voxels ({why})",
                         field=name, got=f"box {arr.shape[-1]}")
    t = torch.as_tensor(np.asarray(arr, dtype=np.float32)) if not isinstance(arr, torch.Tensor) else arr.float()
    if not torch.isfinite(t).all():
        raise InputError("finite values (no NaN or inf)", field=name, got="non-finite voxels")
    return t


def _masks(m, name: str, n: int, box: int) -> torch.Tensor | None:
    """None, or ``(1 | n, box, box, box)`` float32 in [0, 1]."""
    if m is None:
        return None
    arr = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] not in (1, n) or arr.shape[1:] != (box, box, box):
        raise InputError(f"an fftshift-ed Fourier mask of shape ({box}, {box}, {box}) or ({n}, {box}, {box}, {box})",
                         field=name, got=f"shape {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise InputError("mask values between 0 and 1", field=name, got=f"range [{arr.min()}, {arr.max()}]")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _pick(masks: torch.Tensor | None, idx) -> torch.Tensor | None:
    if masks is None:
        return None
    return masks[0] if masks.shape[0] == 1 else masks[idx]


# --------------------------------------------------------------------------------- inference
def _rotation_losses(moving, fixed, mmask, rot, max_shift: float, *, loss_box: int | None = None,
                     correlation: str = "imputed", fixed_mask=None):
    """``1 - r`` (correlation at the best shift within ``max_shift``) of ``k`` rotations per pair.

    ``moving`` ``(B, n, n, n)``, ``fixed`` ``(B | 1, n, n, n)``, ``rot`` ``(B, k, 3, 3)``; the warp
    and the correlation run on Fourier-cropped ``loss_box^3`` copies when given. ``correlation``:
    ``"imputed"`` (:func:`.gumnet.imputed_correlation_map`, Gum-Net's) or ``"constrained"``
    (:func:`.gumnet.constrained_correlation_map`: only the region both measured, ``fixed_mask``
    ``(B | 1, n, n, n)`` fftshift-ed being the fixed volume's own, None = all measured). Returns
    losses ``(B, k)`` (differentiable w.r.t. ``rot``) and the peak shifts ``(B * k, 3)`` in voxels
    of the full box.
    """
    b, k = rot.shape[:2]
    box = moving.shape[-1]
    mv, fx, mm, fm, scale = moving, fixed, mmask, fixed_mask, 1.0
    if loss_box is not None and loss_box != box:
        mv, fx = fourier_crop(moving, loss_box), fourier_crop(fixed, loss_box)
        mm = None if mmask is None else crop_fourier_mask(mmask, loss_box)
        fm = None if fixed_mask is None else crop_fourier_mask(fixed_mask, loss_box)
        scale = loss_box / box
    if mm is not None and mm.ndim == 4:
        mm = mm.repeat_interleave(k, 0)
    fx_k = fx.expand(b, -1, -1, -1).repeat_interleave(k, 0)
    rk = rot.reshape(-1, 3, 3)
    zero = torch.zeros((rk.shape[0], 3), dtype=rk.dtype, device=rk.device)
    _, warped, mh = warp_and_impute(mv.repeat_interleave(k, 0), fx_k, rk, zero, moving_mask=mm)
    if correlation != "constrained":  # "imputed" (train_job checks the name)
        cmap = imputed_correlation_map(warped, fx_k, mh)
    else:
        if fm is not None:
            fm = mask_to_rfft(fm.to(mh)[None] if fm.ndim == 3 else fm.to(mh))
            mh = mh * fm.expand(b, -1, -1, -1).repeat_interleave(k, 0)
        cmap = constrained_correlation_map(warped, fx_k, mh)
    d, values = find_peak(cmap, max_shift=max_shift * scale, window="cube", subpixel=False)
    return (1.0 - values).view(b, k), d / scale


def _hypothesis_losses(model, moving, fixed, mmask, *, loss_box: int | None = None, correlation: str = "imputed",
                       fixed_mask=None):
    """Forward pass, then for every hypothesis the best correlation over shifts (``correlation``:
    imputed or constrained, :func:`_rotation_losses`).

    Returns rotations ``(B, K, 3, 3)``, origins ``(B, K, 3)`` (voxels of the full box, from the
    correlation peak) and losses ``(B, K)`` = ``1 - r`` (differentiable w.r.t. the rotations).
    """
    rot = model(moving, fixed)
    losses, d = _rotation_losses(moving, fixed, mmask, rot, model.config.max_shift, loss_box=loss_box,
                                 correlation=correlation, fixed_mask=fixed_mask)
    origins = origin_from_peak(rot.reshape(-1, 3, 3).detach(), d).view(*rot.shape[:2], 3)
    return rot, origins, losses


def _grid_mean(grid: torch.Tensor, probs: torch.Tensor, centre: torch.Tensor, radius_deg: float) -> torch.Tensor:
    """Probability-weighted chordal mean of the grid rotations within ``radius_deg`` of ``centre``.

    ``probs`` ``(B, M)``, ``centre`` ``(B,)`` grid indices. The mean matrix is projected onto
    SO(3) (SVD), which places the estimate between grid points. Returns ``(B, 3, 3)``.
    """
    c = grid[centre]  # (B, 3, 3)
    tr = torch.einsum("mij,bij->bm", grid, c)
    near = tr >= 1.0 + 2.0 * math.cos(math.radians(radius_deg))
    w = probs * near
    w = w / w.sum(1, keepdim=True).clamp(min=1e-30)
    mean = torch.einsum("bm,mij->bij", w, grid)
    u, _, vh = torch.linalg.svd(mean)
    d = torch.sign(torch.linalg.det(u @ vh))
    u = torch.cat([u[..., :2], u[..., 2:] * d.view(-1, 1, 1)], dim=-1)
    return u @ vh


def _grid_candidate_losses(model, moving, fixed, mmask, logits, k: int, *, loss_box: int | None = None,
                           correlation: str = "imputed", fixed_mask=None):
    """The ``k`` most probable grid rotations of each pair and their ``1 - r`` (the ``correlation`` of
    :func:`_rotation_losses` at the best shift, on ``loss_box^3`` copies). Returns indices ``(B, k)``, losses ``(B, k)``
    (no gradient: the grid rotations are constants)."""
    idx = logits.topk(k, dim=1).indices
    with torch.no_grad():
        losses, _ = _rotation_losses(moving, fixed, mmask, model.grid[idx], model.config.max_shift, loss_box=loss_box,
                                     correlation=correlation, fixed_mask=fixed_mask)
    return idx, losses


def _shift_and_score(moving, fixed, rot, mmask, rmask, max_shift: float):
    """Sub-voxel origin of the chosen rotation (full-box imputed-correlation peak) and the
    wedge-aware score: the correlation of the aligned particle and the reference over the Fourier
    region both measured. One warp and one mask rotation serve both; the shift is applied to
    the warped particle as a Fourier phase. Returns origins ``(B, 3)`` and scores ``(B,)``."""
    zero = torch.zeros((rot.shape[0], 3), dtype=rot.dtype, device=rot.device)
    _, warped, mh = warp_and_impute(moving, fixed, rot, zero, moving_mask=mmask)
    d, _ = find_peak(imputed_correlation_map(warped, fixed, mh), max_shift=max_shift, window="cube")
    if rmask is not None:
        mh = mh * mask_to_rfft(rmask)
    dims = (1, 2, 3)
    s = moving.shape[1:]
    shifted = torch.fft.rfftn(warped, dim=dims) * shift_phase_ramp(s, -d.to(warped.dtype))  # warped(r + d)
    a = torch.fft.irfftn(shifted * mh, s=s, dim=dims)
    b = torch.fft.irfftn(torch.fft.rfftn(fixed, dim=dims) * mh, s=s, dim=dims)
    return origin_from_peak(rot, d), pair_correlation(a, b)


def _resampling(model: GumNet | None, voxel_size: float | None) -> tuple[bool, str]:
    """Whether volumes given at ``voxel_size`` are resampled for ``model`` (it has a working voxel size and
    ``voxel_size`` is given), and what a wrong box is told; a ``voxel_size`` that is not > 0 is an error."""
    if voxel_size is not None and not (np.isfinite(voxel_size) and voxel_size > 0):
        raise InputError("a voxel size > 0 Å, or None", field="voxel_size", got=voxel_size)
    working = model is not None and model.config.voxel_size is not None
    why = ("the model's input size; or give voxel_size= and they are resampled" if working
           else "the model's input size; resample the volumes first")
    return working and voxel_size is not None, why


def model_box(n: int, voxel_size: float | None, config: GumNetConfig) -> int:
    """The edge (voxels) that a box of ``n`` voxels at ``voxel_size`` Å spans at the model's
    ``config.voxel_size`` (even, at least 2); ``n`` itself when either voxel size is unknown."""
    if voxel_size is None or config.voxel_size is None:
        return int(n)
    return max(2, 2 * int(round(n * float(voxel_size) / config.voxel_size / 2.0)))


def _to_model_box(x: torch.Tensor, m: int, box: int) -> torch.Tensor:
    """``(B, n, n, n)`` volumes resampled to ``m``³ (centred Fourier crop or zero pad: the same extent
    at ``n / m`` times the voxel size), less their mean, then centred in (or cropped to) ``box``³."""
    n = x.shape[-1]
    if m != n:
        dims = (-3, -2, -1)
        spec = torch.fft.fftshift(torch.fft.fftn(x.double(), dim=dims), dim=dims)
        shape = (*x.shape[:-3], m, m, m)
        spec = torch.complex(pad_or_crop(spec.real, shape), pad_or_crop(spec.imag, shape))
        x = torch.fft.ifftn(torch.fft.ifftshift(spec, dim=dims), dim=dims).real.to(x.dtype)
    x = x - x.mean(dim=(-3, -2, -1), keepdim=True)
    return x if m == box else pad_or_crop(x, (*x.shape[:-3], box, box, box))


def resampled_to_model(x: torch.Tensor, m: int, box: int, *, chunk: int = 64) -> torch.Tensor:
    """:func:`_to_model_box` of ``(n, N, N, N)`` volumes, ``chunk`` at a time (bounded memory)."""
    return torch.cat([_to_model_box(x[i:i + chunk], m, box) for i in range(0, x.shape[0], chunk)])


def _mask_to_model_box(mask: torch.Tensor, m: int, box: int) -> torch.Tensor:
    """The fftshift-ed Fourier mask ``(..., n, n, n)`` of volumes resampled by :func:`_to_model_box`:
    each frequency of the ``box``³ grid takes the nearest one of the ``n``³ grid (0 beyond the
    data's band)."""
    n = mask.shape[-1]
    f = (torch.arange(box, dtype=torch.float64) - box // 2) * (m / box)  # in voxels of the m-box spectrum
    ok = f.abs() <= min(m, n) / 2.0
    idx = torch.round(f + n // 2).long() % n  # +Nyquist is -Nyquist (index 0)
    out = mask[..., idx, :, :][..., :, idx, :][..., :, :, idx]
    keep = (ok[:, None, None] & ok[None, :, None] & ok[None, None, :]).to(out.dtype)
    return out * keep


def align_learned_job(
    particles,
    reference,
    *,
    particle_masks=None,
    reference_mask=None,
    model: GumNet | None = None,
    batch_size: int = 32,
    search_box: int | None = 16,
    candidates: int = 1,
    voxel_size: float | None = None,
    device="cpu",
) -> Generator[Progress | Partial, None, AlignmentResult]:
    """Job version of :func:`align_learned` (same arguments and result): yields ``Progress(0, n_batches)``
    before the first batch and ``Progress(k, n_batches)`` after batch ``k``. Closing it stops it between
    batches (the model's train/eval mode is restored)."""
    t0 = time.perf_counter()
    if model is None:
        model = load_default_model(device=device)
    if not isinstance(model, GumNet):
        raise InputError("a GumNet model (load_model / load_default_model)", field="model", got=type(model).__name__)
    box = model.config.box
    resample, why = _resampling(model, voxel_size)
    parts = _volumes(particles, "particles", ndim=4, box=None if resample else box, why=why)
    n_box = parts.shape[-1]
    ref = _volumes(reference, "reference", ndim=3, box=n_box, why="the particles' box" if resample else why)
    m = model_box(n_box, voxel_size, model.config)
    resample = resample and not m == n_box == box
    factor = n_box / m if resample else 1.0  # data voxels per model voxel
    n = parts.shape[0]
    if int(batch_size) < 1:
        raise InputError("an integer >= 1", field="batch_size", got=batch_size)
    if search_box is not None and not 8 <= int(search_box) <= box:
        raise InputError(f"a search box between 8 and {box} voxels, or None", field="search_box", got=search_box)
    search_box = None if search_box is None or int(search_box) == box else int(search_box)
    if int(candidates) != candidates or candidates < 1:
        raise InputError("an integer >= 1", field="candidates", got=candidates)
    candidates = int(candidates)
    if model.config.head == "grid" and candidates > len(model.grid):
        raise InputError(f"at most {len(model.grid)} (the model's rotation grid)", field="candidates", got=candidates)
    pm = _masks(particle_masks, "particle_masks", n, n_box)
    rm = _masks(reference_mask, "reference_mask", 1, n_box)
    if resample:
        ref = _to_model_box(ref[None], m, box)[0]
        rm = None if rm is None else _mask_to_model_box(rm, m, box)
        if pm is not None and pm.shape[0] == 1:
            pm = _mask_to_model_box(pm, m, box)
    rots = np.empty((n, 3, 3))
    origins = np.empty((n, 3))
    scores = np.empty(n)
    starts = range(0, n, int(batch_size))
    yield Progress(0, len(starts), f"learned alignment of {n} particles"
                   + (f" (resampled to {m}³ at {voxel_size * factor:.3g} Å, in a {box}³ box)" if resample else ""))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            fixed_all = standardize(ref[None].to(device))
        rm_d = None if rm is None else rm[0].to(device)
        for done, start in enumerate(starts, 1):
            idx = slice(start, min(n, start + int(batch_size)))
            with torch.no_grad():  # not around the yield: the consumer's grad mode stays its own
                moving, mm = parts[idx].to(device), _pick(pm, idx)
                if resample:
                    moving = _to_model_box(moving, m, box)
                    if mm is not None and pm.shape[0] > 1:
                        mm = _mask_to_model_box(mm, m, box)
                r, o, sc = _align_batch(model, moving, fixed_all, mm, rm_d,
                                        candidates=candidates, search_box=search_box)
            scores[idx] = sc.cpu().numpy()
            rots[idx] = r.double().cpu().numpy()
            origins[idx] = o.double().cpu().numpy() * factor
            yield Progress(done, len(starts), f"{idx.stop}/{n} particles")
    finally:
        model.train(was_training)
    return AlignmentResult(rotations=rots, origins_voxels=origins, scores=scores, method="learned",
                           seconds=time.perf_counter() - t0)


def _align_batch(model: GumNet, moving, fixed_all, mmask, rmask, *, candidates: int, search_box: int | None):
    """Rotations ``(B, 3, 3)``, origins ``(B, 3)`` and scores ``(B,)`` of one batch of particles ``(B, n, n, n)``
    against the standardised reference ``fixed_all`` ``(1, n, n, n)`` (see :func:`align_learned`)."""
    moving = standardize(moving)
    b = moving.shape[0]
    fixed = fixed_all.expand(b, -1, -1, -1)
    mm = None if mmask is None else mmask.to(moving.device)
    if model.config.head == "grid":
        logits = model(moving, fixed_all)
        if candidates > 1:  # the most probable rotations, the best-correlating one kept
            top, losses = _grid_candidate_losses(model, moving, fixed, mm, logits, candidates, loss_box=search_box)
            centre = top[torch.arange(b, device=top.device), losses.argmin(1)]
        else:
            centre = logits.argmax(1)
        r = _grid_mean(model.grid, torch.softmax(logits, 1), centre, 1.5 * model.config.grid_step_deg)
    else:
        rot, _, losses = _hypothesis_losses(model, moving, fixed, mm, loss_box=search_box)
        r = rot[torch.arange(b, device=losses.device), losses.argmin(1)]
    o, sc = _shift_and_score(moving, fixed, r, mm, rmask, model.config.max_shift)
    return r, o, sc


def align_learned(
    particles,
    reference,
    *,
    particle_masks=None,
    reference_mask=None,
    model: GumNet | None = None,
    batch_size: int = 32,
    search_box: int | None = 16,
    candidates: int = 1,
    voxel_size: float | None = None,
    device="cpu",
) -> AlignmentResult:
    """Align subtomograms to a reference with Gum-Net (one forward pass per particle).

    Parameters
    ----------
    particles : array ``(n, z, y, x)``, cubic boxes: of the model's size (32 for the default), or of
        any even size when ``voxel_size`` is given and the model has one (``model.config.voxel_size``)
    reference : array ``(z, y, x)``, same box and voxel size
    particle_masks : observed Fourier masks, fftshift-ed (DC at ``N // 2``), ``(z, y, x)``
        shared or ``(n, z, y, x)``; None = fully observed (no missing-wedge imputation)
    reference_mask : the reference's observed Fourier mask (fftshift-ed) or None; used in the score
    model : a :class:`GumNet`; None loads the shipped default (:func:`load_default_model`)
    batch_size : particles per forward pass
    search_box : the ``K`` hypotheses (or ``candidates``) are compared on Fourier-cropped
        ``search_box^3`` copies (fast, and as in training); the chosen one gets its sub-voxel
        shift at the full box. None = compare at the full box
    candidates : head ``"grid"``: 1 (fastest) keeps the most probable grid rotation; ``k > 1``
        compares the ``k`` most probable by the imputed correlation and keeps the best. Either
        way the rotation is the probability-weighted mean of the grid rotations within 1.5 grid
        steps of the chosen one
    voxel_size : Å per voxel of ``particles`` and ``reference``, or None. With a model that has a
        working voxel size (``model.config.voxel_size``), the volumes (and masks) are resampled to it
        first: Fourier crop or pad of the whole box (its extent kept), the result centred in the
        model's box (zero-padded, or cropped when larger), so that a particle spans as many voxels as
        in training. Origins come back in voxels of the data; their precision is then the model's
        voxel. None, or a model without one: the volumes are used as given
    device : torch device

    Returns
    -------
    AlignmentResult
        ``rotations`` ``(n, 3, 3)`` RELION ``A`` (reference -> particle), ``origins_voxels``
        ``(n, 3)`` (x, y, z), ``scores`` ``(n,)`` wedge-aware correlation of the aligned particle
        with the reference, ``method="learned"``. Head ``"hypotheses"``: of the model's ``K``
        rotation hypotheses, each particle keeps the one with the highest imputed correlation (no
        ground truth involved); head ``"grid"``: see ``candidates``. The shift is the peak of the
        imputed correlation within ``model.config.max_shift`` voxels.

    Raises
    ------
    InputError
        Volumes that are not cubic boxes of the model's size (without resampling) or not of the
        particles' box (the reference), non-finite voxels, masks of the wrong shape or outside [0, 1],
        options out of range, ``model`` not a :class:`GumNet`.
    """
    return run_job(align_learned_job(particles, reference, particle_masks=particle_masks, reference_mask=reference_mask,
                                     model=model, batch_size=batch_size, search_box=search_box, candidates=candidates,
                                     voxel_size=voxel_size, device=device), progress=False)
