"""Pose prediction: grid argmax, band-limited local refinement, FFT shift search, optional projection matching.

For each particle (:func:`predict_poses_job`):

1. preprocess (normalise, phase-flip, resize: :func:`.data.preprocess_images`) and run the
   network of the *other* half set (gold standard; the only network when the model has one);
2. the grid rotation ``A_k`` with the largest probability; **confidence** = that probability
   (CESPED writes it as ``rlnParticleFigureOfMerit``);
3. the network's output is a band-limited function on SO(3), so it is evaluated at
   ``A_k Δ_j`` for small offsets ``Δ_j`` around the grid point (finer than the grid) and the
   best one kept (``local_refine``). With ``map_search`` (the default when the model has its
   training-half maps) steps 2-3 are instead: the network's log-probabilities plus the
   log-likelihood of the image under the training half's map, over the whole SO(3) grid
   (:mod:`.matching`: a coarse-to-fine global search of precomputed projections; the fine grid
   is the network's, so the two add grid point by grid point), then a local search off the grid
   by the likelihood;
4. **shift search** (CESPED leaves shifts out): the reconstruction of the network's training
   half is projected at the pose (Fourier slice), multiplied by ``|T|`` (the image is phase
   flipped) and cross-correlated with the image by FFT; the peak (:func:`..peaks.find_peak`) within
   ``max_shift`` gives the particle's centre, written as RELION's ``origin = -displacement``;
5. optionally (``projection_refine``) a local projection-matching search: poses ``A Δ`` within
   ``refine_range_deg`` are scored by the best normalised cross-correlation over shifts,
   against the same training-half map.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InputError
from ..geometry import euler_to_matrix, matrix_to_euler
from ..jobs import Partial, Progress, run_job
from ..peaks import find_peak
from . import matching
from .data import ParticleData, preprocess_images, transfer_function
from .grid import grid_spacing_deg, local_offsets
from .harmonics import wigner_d
from .reconstruct import prepare_projector, project_fourier
from .train import PoseModel

__all__ = ["PosePrediction", "PoseRun", "pose_pipeline_job", "predict_poses", "predict_poses_job", "shift_search"]


@dataclass(frozen=True, eq=False)
class PosePrediction:
    """Predicted poses, one row per particle in input order.

    Attributes
    ----------
    rotations : ``(n, 3, 3)`` RELION matrices ``A``
    euler_deg : ``(n, 3)`` (rot, tilt, psi) in degrees
    origins_angstrom : ``(n, 2)`` ``rlnOriginX/YAngst`` from the shift search (zeros without it)
    confidence : ``(n,)`` probability of the best grid rotation (0..1)
    grid_rotations : ``(n, 3, 3)`` the grid argmax before any refinement
    network_half : ``(n,)`` which network predicted each particle (training half 1/2, or 0)
    refined : whether projection matching ran
    seconds : wall-clock time of the prediction
    map_search : whether the rotations combine the network with the map search (:mod:`.matching`)
    log_likelihood : ``(n,)`` with the map search, ``log L`` of the chosen grid pose (nats; low for
        particles that fit the map badly), else None
    """

    rotations: np.ndarray
    euler_deg: np.ndarray
    origins_angstrom: np.ndarray
    confidence: np.ndarray
    grid_rotations: np.ndarray
    network_half: np.ndarray
    refined: bool
    seconds: float
    map_search: bool = False
    log_likelihood: np.ndarray | None = None

    @property
    def particles_per_second(self) -> float:
        return float(len(self.confidence) / max(self.seconds, 1e-9))


def _network_for(model: PoseModel, half: np.ndarray, use_half: int | None) -> np.ndarray:
    if use_half is not None:
        if use_half not in model.nets:
            raise InputError(f"a network the model has ({model.halves})", field="use_half", got=use_half)
        return np.full(half.shape, int(use_half))
    if len(model.nets) == 1:
        return np.full(half.shape, model.halves[0])
    return np.where(half == 1, 2, 1)  # gold standard: the network that never saw the particle


def _cc_maps(images_ft: torch.Tensor, proj_ft: torch.Tensor) -> torch.Tensor:
    """Cross-correlation maps ``(B, S, S)`` (unshifted: index d = displacement d mod S)."""
    return torch.fft.ifft2(images_ft * proj_ft.conj()).real


def shift_search(images: torch.Tensor, projections_ft: torch.Tensor, *, max_shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Displacement of each image's particle from the box centre by FFT cross-correlation.

    ``images`` ``(B, S, S)``; ``projections_ft`` ``(B, S, S)`` transforms of the expected images
    (centred; :func:`.reconstruct.project_fourier` times the transfer). Returns
    ``(displacement (B, 2) pixels (x, y), normalised score (B,))``: the particle centre is at
    ``S//2 + displacement`` (RELION origin = ``-displacement * pixel``).
    """
    img_ft = torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1)))
    cc = _cc_maps(img_ft, projections_ft)
    d, val = find_peak(cc, max_shift=max_shift)
    norm = projections_ft.abs().pow(2).sum(dim=(1, 2)).sqrt().clamp(min=1e-12)
    return d, val / norm


def predict_poses_job(model: PoseModel, data: ParticleData, *, batch_size: int = 64, local_refine: bool = True,
                      shift_search_enabled: bool = True, max_shift_angstrom: float | None = None,
                      projection_refine: bool = False, refine_range_deg: float | None = None,
                      refine_step_deg: float | None = None, map_search: bool | None = None, map_candidates: int = 16,
                      map_network_candidates: int = 4, map_max_frequency: float | None = None,
                      use_half: int | None = None, threads: int | None = None,
                      device="cpu") -> Generator[Progress | Partial, None, PosePrediction]:
    """Predict poses (and in-plane shifts) of particles with a trained :class:`~.train.PoseModel`.

    Parameters
    ----------
    model : PoseModel
    data : ParticleData (images, CTFs, half sets; poses are not used)
    batch_size : images per forward pass
    local_refine : evaluate the band-limited output around the grid argmax (module docstring, step 3)
    shift_search_enabled : FFT shift search against the training-half map (step 4)
    max_shift_angstrom : largest shift searched (default 15 % of the box)
    projection_refine : local projection matching (step 5; slower)
    refine_range_deg, refine_step_deg : its search range and step (default: the grid spacing and a third of it)
    map_search : add the log-likelihood under the training-half map, searched over the SO(3)
        grid (:mod:`.matching`), to the network's log-probabilities; confidence = the posterior
        probability of the chosen rotation among the candidates scored. None (default): on when
        every network used has its training-half map and a grid of level >= 1; False: the network
        alone (CESPED's setting)
    map_candidates : coarse rotations (one grid level below the network's) kept per image by the map search
    map_network_candidates : the network's most probable rotations whose coarse parents are added
    map_max_frequency : the map search's resolution limit, cycles per box (default ``0.35 S``)
    use_half : force the network of this training half for every particle (default: gold standard)
    device : torch device

    Yields ``Progress`` per batch and ``Partial("poses", (done, rotations so far))``.
    """
    if data.box < model.config.image_size:
        raise InputError(f"particles of at least {model.config.image_size} px (the model's image size)",
                         path=data.path, field="image_size", got=data.box)
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    cfg = model.config
    s = cfg.image_size
    px = data.pixel_size_angstrom * data.box / s
    spacing = grid_spacing_deg(cfg.grid_level)
    offsets = local_offsets(max_angle_deg=0.75 * spacing, step_deg=spacing / 6.0)
    d_off = wigner_d(offsets, cfg.lmax).to(device)
    off_t = torch.as_tensor(offsets, dtype=torch.float32, device=device)
    ref_range = refine_range_deg or spacing / 2.0
    ref_step = refine_step_deg or max(0.5, ref_range / 3.0)
    match_offsets = torch.as_tensor(local_offsets(max_angle_deg=ref_range, step_deg=ref_step), dtype=torch.float32,
                                    device=device)
    max_shift = (0.15 * data.box * data.pixel_size_angstrom if max_shift_angstrom is None
                 else float(max_shift_angstrom)) / px
    which = _network_for(model, data.half, use_half)
    if map_search is None:
        map_search = cfg.grid_level >= 1 and set(which.tolist()) <= set(model.references)
    projectors = {h: prepare_projector(model.references[h], device=device) for h in set(which.tolist())
                  if h in model.references} if (shift_search_enabled or projection_refine or map_search) else {}
    searches = {}
    if map_search:
        if cfg.grid_level < 1:
            raise InputError("a model with an SO(3) grid of level >= 1 for the map search", field="grid_level",
                             got=cfg.grid_level)
        missing = sorted(set(which.tolist()) - set(projectors))
        if missing:
            raise InputError("the training-half reconstruction stored with each network", field="references",
                             got=f"none for network(s) {missing}")
        map_off = matching.refinement_offsets(cfg.grid_level, device=device) if local_refine else ()
        for h, p in projectors.items():
            key = ("map_search", h, cfg.grid_level - 1, map_max_frequency, str(device))
            if key not in model.cache:
                model.cache[key] = matching.prepare_map_search(p, level=cfg.grid_level - 1,
                                                               max_frequency=map_max_frequency)
            searches[h] = model.cache[key]
    n = data.n
    rot_out = np.zeros((n, 3, 3))
    grid_out = np.zeros((n, 3, 3))
    disp_out = np.zeros((n, 2))
    conf_out = np.zeros(n)
    ll_out = np.full(n, np.nan)
    batches = [(h, idx[i:i + batch_size]) for h in sorted(set(which.tolist()))
               for idx in [np.flatnonzero(which == h)] for i in range(0, idx.size, batch_size)]
    done = 0
    try:
        yield Progress(0, len(batches), "predicting poses")
        for b, (h, idx) in enumerate(batches):
            net = model.nets[h]
            net.eval()
            with torch.no_grad():
                x = preprocess_images(data, idx, image_size=s, device=device)
                coef = net(x)
                logits = net.grid_logits(coef)
                t = transfer_function(data.ctf, idx, (s, s), pixel_size_angstrom=px, rfft=False, device=device) \
                    if h in projectors else None
                weight = None if t is None else t.abs()
                if map_search:
                    found = matching.search_poses(searches[h], projectors[h], x, weight, max_shift=max_shift,
                                                  candidates=map_candidates, log_prior=torch.log_softmax(logits, 1),
                                                  prior_candidates=map_network_candidates, refine_offsets=map_off)
                    conf, best = found.confidence, found.index
                    ll_out[idx] = found.log_likelihood.double().cpu().numpy()
                else:
                    conf, best = torch.softmax(logits, dim=1).max(dim=1)
                grid_rot = torch.as_tensor(euler_to_matrix(net.grid()[1][best.cpu().numpy()]), dtype=torch.float32,
                                           device=device)
                rot = grid_rot
                if map_search:
                    rot = found.rotations
                elif local_refine:
                    _, j = net.refine_on_offsets(coef, best, d_off)
                    rot = grid_rot @ off_t[j]
                disp = torch.zeros((len(idx), 2), device=device)
                if h in projectors:
                    if projection_refine:
                        rot, disp = _match(projectors[h], x, rot, match_offsets, weight, max_shift)
                    elif shift_search_enabled:
                        pft = project_fourier(projectors[h], rot)
                        if weight is not None:
                            pft = pft * weight
                        disp, _ = shift_search(x, pft, max_shift=max_shift)
            rot_out[idx] = rot.double().cpu().numpy()
            grid_out[idx] = grid_rot.double().cpu().numpy()
            disp_out[idx] = disp.double().cpu().numpy()
            conf_out[idx] = conf.double().cpu().numpy()
            done += len(idx)
            yield Progress(b + 1, len(batches), f"{done}/{n} particles")
    finally:
        if threads:
            torch.set_num_threads(old_threads)
    # re-orthonormalise (float32 products) and report
    u, _, vt = np.linalg.svd(rot_out)
    rot_out = u @ vt
    yield Partial("poses", rot_out)
    return PosePrediction(rotations=rot_out, euler_deg=matrix_to_euler(rot_out), origins_angstrom=-disp_out * px,
                          confidence=conf_out, grid_rotations=grid_out, network_half=which,
                          refined=bool(projection_refine), seconds=time.perf_counter() - t0,
                          map_search=bool(map_search), log_likelihood=ll_out if map_search else None)


def _match(projector, images, rot, offsets, weight, max_shift):
    """Local projection matching: best ``A Δ`` and displacement per image by normalised cross-correlation."""
    b = images.shape[0]
    img_ft = torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1)))
    best_score = torch.full((b,), -torch.inf, device=images.device)
    best_rot = rot.clone()
    best_disp = torch.zeros((b, 2), device=images.device)
    for j in range(offsets.shape[0]):
        cand = rot @ offsets[j]
        pft = project_fourier(projector, cand)
        if weight is not None:
            pft = pft * weight
        d, val = find_peak(_cc_maps(img_ft, pft), max_shift=max_shift)
        score = val / pft.abs().pow(2).sum(dim=(1, 2)).sqrt().clamp(min=1e-12)
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_rot[better] = cand[better]
        best_disp[better] = d[better]
    return best_rot, best_disp


def predict_poses(model: PoseModel, data: ParticleData, **kwargs) -> PosePrediction:
    """Plain-function version of :func:`predict_poses_job`."""
    return run_job(predict_poses_job(model, data, **kwargs), progress=False)


@dataclass(frozen=True, eq=False)
class PoseRun:
    """What :func:`pose_pipeline_job` produced: the model (trained or given), the predictions and the
    reconstruction from the predicted poses (with half maps and their FSC)."""

    model: PoseModel
    prediction: PosePrediction
    reconstruction: object


def pose_pipeline_job(data: ParticleData, *, model: PoseModel | None = None, train: dict | None = None,
                      predict: dict | None = None, symmetry: str | None = None,
                      device="cpu") -> Generator[Progress | Partial, None, PoseRun]:
    """Train (when no ``model`` is given; ``train`` = keyword arguments of :func:`.train.train_pose_model_job`),
    predict (``predict`` = keyword arguments of :func:`predict_poses_job`) and reconstruct from the
    predicted poses (half maps, FSC). One job for the widget; yields what the three jobs yield."""
    from .reconstruct import reconstruct_half_maps_job
    from .train import train_pose_model_job

    if model is None:
        model = yield from train_pose_model_job(data, device=device, **(train or {}))
        yield Partial("model", model)
    pred = yield from predict_poses_job(model, data, device=device, **(predict or {}))
    yield Partial("prediction", pred)
    sym = symmetry or model.symmetry
    two = set(np.unique(data.half).tolist()) == {1, 2}
    rec = yield from reconstruct_half_maps_job(data, pred.rotations, origins_angstrom=pred.origins_angstrom,
                                               symmetry=sym, half_maps=two, device=device)
    return PoseRun(model=model, prediction=pred, reconstruction=rec)
