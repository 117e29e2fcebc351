"""SparseAlign: ADCG marker localisation with polynomial deformation estimation (a job).

The alternating descent conditional gradient method (Boyd et al.; SparseAlign section III,
Algorithm 1) on the measure ``mu = sum_j w_j delta_{r_j}`` of marker positions, with the
deformation parameters ``P`` estimated along the way:

1. **Linear minimisation oracle** (eq. 17-18): on a coarse 3D grid, with the *current*
   deformation, find the position whose forward projection correlates best with the
   residual ``data - Phi mu`` (all grid points at once: the residual is correlated with the
   marker Gaussian by FFT and sampled at every projected grid point, see
   :func:`~napari_cryoalign.backend.markers.forward.correlation_scores`). The marker is
   added unless its best weight ``<res, psi> / ||psi||^2`` is below ``min_weight`` (then
   the level is done: nothing marker-like is left).
2. **Coordinate descent** until the loss drops by less than ``tol`` (relative):
   (a) non-negative, bounded weights ``0 <= w <= max_weight`` (eq. 19; a box-constrained
   quadratic in the ``M x M`` normal equations, built from the separable profiles);
   (b) pruning of weights below ``prune_weight`` and merging of markers closer than
   ``merge_distance_nm``; (c) L-BFGS-B on the deformation coefficients (eq. 20) with
   positions and weights fixed; (d) L-BFGS-B on all marker positions with the
   deformation fixed. Gradients come from torch autograd through the forward model;
   everything is batched over tilts and markers.
3. **Coarse to fine** (section III-e): the whole procedure runs on anti-aliased,
   downsampled data first (``levels``), and each level starts from the previous result.

Like the paper, only the first ``min(M, n_terms)`` basis terms of each estimated
component are free while there are ``M`` markers (the constant term first), so the
deformation is never richer than the markers can support.

Units inside the optimiser: pixels (positions and coefficients divided by the pixel
size), so that every parameter is of order 1-100.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy.optimize import minimize

from ...errors import InputError
from ..deformation import PolynomialDeformation
from ..jobs import Job, Partial, Progress, run_job
from .forward import Level, MarkerGeometry, correlation_scores, forward_model, make_level, projected_positions_px

__all__ = [
    "MarkerSnapshot",
    "SparseAlignResult",
    "auto_levels",
    "parse_levels",
    "polish_markers",
    "sparse_align",
    "sparse_align_job",
]


@dataclass(frozen=True)
class MarkerSnapshot:
    """Markers found so far (a ``Partial("markers", ...)`` value).

    positions_nm : ``(M, 3)`` (x, y, z) nm from the volume centre (undeformed, t = 0)
    weights : ``(M,)``
    projected_px : ``(T, M, 2)`` deformed projected centres (u, v), full-resolution pixel indices
    level : downsampling factor of the current level
    iteration : ADCG iteration (over all levels)
    """

    positions_nm: np.ndarray
    weights: np.ndarray
    projected_px: np.ndarray
    level: int
    iteration: int


@dataclass(frozen=True)
class SparseAlignResult:
    """Markers and deformation estimated by SparseAlign.

    Attributes
    ----------
    positions_nm : ``(M, 3)`` marker positions (x, y, z), nm from the volume centre, at t = 0
    weights : ``(M,)`` marker weights (relative intensity, 1 = a normalised bead)
    deformation : estimated :class:`PolynomialDeformation` (coefficients in nm)
    projected_px : ``(T, M, 2)`` deformed projected centres (u, v), pixel indices
    reprojection : ``(T, ny, nx)`` float32, the forward model at full resolution
    geometry : the :class:`MarkerGeometry`
    loss_history : one dict per ADCG step: level, iteration, n_markers, loss (at that level)
    levels : downsampling factors used, coarse to fine
    runtime_s : wall time (s)
    params : the options of the run
    data : ``(T, ny, nx)`` float32, the (pre-processed) stack that was fitted
    marker_width : how the marker width was chosen (``find_markers``): ``sigma_nm``, ``source``
        (``"estimated"``, ``"given"`` or ``"nominal"``), ``nominal_sigma_nm``, ``estimate`` (see
        :class:`~.profile.WidthEstimate`); empty when :func:`sparse_align` was called directly
    warnings : messages for the user (e.g. far more markers than the data suggest beads)
    """

    positions_nm: np.ndarray
    weights: np.ndarray
    deformation: PolynomialDeformation
    projected_px: np.ndarray
    reprojection: np.ndarray
    geometry: MarkerGeometry
    loss_history: list = field(default_factory=list)
    levels: tuple = ()
    runtime_s: float = 0.0
    params: dict = field(default_factory=dict)
    data: np.ndarray | None = field(default=None, repr=False)
    marker_width: dict = field(default_factory=dict)
    warnings: tuple = ()

    @property
    def n_markers(self) -> int:
        return int(self.weights.size)

    def residual(self, data=None) -> np.ndarray:
        """``data - reprojection`` ``(T, ny, nx)`` (default data: the stack that was fitted)."""
        d = self.data if data is None else data
        if d is None:
            raise InputError("the fitted data", field="data", got=None)
        return np.asarray(d, dtype=np.float32) - self.reprojection

    def select(self, min_weight: float) -> SparseAlignResult:
        """The same result keeping only markers with ``weight >= min_weight``.

        ``reprojection`` (and ``data``) are kept as they are: the forward model of all markers.
        """
        keep = self.weights >= min_weight
        return replace(self, positions_nm=self.positions_nm[keep], weights=self.weights[keep],
                                   projected_px=self.projected_px[:, keep],
                                   params=dict(self.params, selected_min_weight=min_weight))


# ----------------------------------------------------------------------------------------
# levels
# ----------------------------------------------------------------------------------------
def auto_levels(detector_shape: Sequence[int], *, min_size: int = 32) -> tuple[int, ...]:
    """Downsampling factors ``(2^k, ..., 2, 1)`` with the coarsest image >= ``min_size`` pixels wide."""
    n = max(int(s) for s in detector_shape)
    k = max(0, int(math.floor(math.log2(max(n, 1) / min_size))))
    return tuple(2 ** i for i in range(k, -1, -1))


def parse_levels(levels, detector_shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """``"1/16,1/8,1/4,1/2"`` (the paper's eta), ``"auto"``, or factors ``[16, 8, 4, 2, 1]`` -> factors.

    A level ``1/f`` means keeping every ``f``-th pixel after anti-aliasing; ``1`` is full
    resolution. Factors must be positive integers, coarse first (non-increasing).
    """
    if levels is None or (isinstance(levels, str) and levels.strip().lower() == "auto"):
        if detector_shape is None:
            raise InputError("a detector shape for automatic levels", field="levels", got=None)
        return auto_levels(detector_shape)
    items = levels.split(",") if isinstance(levels, str) else list(levels)
    out = []
    for item in items:
        s = str(item).strip()
        try:
            if "/" in s:
                num, den = s.split("/")
                val = float(num) / float(den)
                f = 1.0 / val
            else:
                val = float(s)
                f = 1.0 / val if val <= 1.0 else val
        except (ValueError, ZeroDivisionError):
            raise InputError("levels like 1/16,1/8,1/4,1/2 (downsampling factors 1/f)", field="levels",
                             got=levels) from None
        if not (f >= 1.0 and abs(f - round(f)) < 1e-6):
            raise InputError("levels 1/f with integer f >= 1", field="levels", got=s)
        out.append(int(round(f)))
    if not out or any(b > a for a, b in zip(out, out[1:])):
        raise InputError("levels from coarse to fine (1/16 before 1/8)", field="levels", got=levels)
    return tuple(out)


# ----------------------------------------------------------------------------------------
# optimisation helpers
# ----------------------------------------------------------------------------------------
def _lbfgsb(fun, x0: np.ndarray, bounds, maxiter: int) -> tuple[np.ndarray, float]:
    """scipy L-BFGS-B with a torch objective (value and autograd gradient, float64)."""

    def f(x):
        t = torch.from_numpy(np.array(x, dtype=np.float64)).requires_grad_(True)
        val = fun(t)
        (g,) = torch.autograd.grad(val, t)
        return float(val.detach()), g.detach().cpu().numpy().astype(np.float64)

    if x0.size == 0:
        return x0, float("nan")
    res = minimize(f, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": int(maxiter), "ftol": 1e-10, "gtol": 1e-7})
    return np.asarray(res.x, dtype=np.float64), float(res.fun)


def _box_qp(g: np.ndarray, b: np.ndarray, upper: float, w0: np.ndarray) -> np.ndarray:
    """``argmin 0.5 w'Gw - b'w`` subject to ``0 <= w <= upper`` (small dense problem)."""
    m = b.size
    if m == 0:
        return b
    scale = max(float(np.max(np.abs(np.diag(g)))), 1e-12)
    gs, bs = g / scale, b / scale

    def f(w):
        gw = gs @ w
        return 0.5 * float(w @ gw) - float(bs @ w), gw - bs

    res = minimize(f, np.clip(w0, 0.0, upper), jac=True, method="L-BFGS-B", bounds=[(0.0, upper)] * m,
                   options={"maxiter": 500, "ftol": 1e-15, "gtol": 1e-12})
    return np.asarray(res.x)


class _State:
    """Current estimate: positions (M, 3) nm, weights (M,), coefficients (3, n_terms, d_t) nm."""

    def __init__(self, model: PolynomialDeformation):
        self.model = model
        self.positions = np.zeros((0, 3))
        self.weights = np.zeros(0)
        self.coef = np.array(model.coefficients, dtype=np.float64)

    @property
    def m(self) -> int:
        return int(self.weights.size)

    def deformation(self) -> PolynomialDeformation:
        return self.model.with_coefficients(self.coef)

    def keep(self, mask: np.ndarray) -> None:
        self.positions = self.positions[mask]
        self.weights = self.weights[mask]


class _Problem:
    def __init__(self, geometry: MarkerGeometry, model: PolynomialDeformation, components: str, *,
                 z_range_nm: float, max_weight: float, prune_weight: float, merge_distance_nm: float,
                 lbfgs_iterations: int, device):
        self.geometry = geometry
        self.model = model
        self.device = device
        self.p = float(geometry.pixel_size_nm)
        fx, fy = geometry.field_of_view_nm
        self.half = np.array([fx / 2, 0.0 if geometry.line_detector else fy / 2, float(z_range_nm)])
        self.max_weight = float(max_weight)
        self.prune_weight = float(prune_weight)
        self.merge_distance_nm = float(merge_distance_nm)
        self.lbfgs_iterations = int(lbfgs_iterations)
        self.comp_idx = [("x", "y", "z").index(c) for c in components]
        self.n_terms = len(model.terms)
        self.dt = model.time_degree
        self.coef_bound = 4.0 * max(fx, fy) / self.p  # pixels

    # -- forward -------------------------------------------------------------------------
    def projected(self, pos_nm: torch.Tensor, coef_nm: torch.Tensor) -> torch.Tensor:
        return projected_positions_px(pos_nm, self.geometry, self.model, coefficients=coef_nm)

    def loss(self, level: Level, pos_nm: torch.Tensor, w: torch.Tensor, coef_nm: torch.Tensor) -> torch.Tensor:
        q = self.projected(pos_nm, coef_nm)
        r = level.render(q, w) - level.data
        return (r * r).sum()

    def tensors(self, st: _State):
        f = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), device=self.device)
        return f(st.positions.reshape(-1, 3)), f(st.weights), f(st.coef)

    def loss_value(self, level: Level, st: _State) -> float:
        with torch.no_grad():
            return float(self.loss(level, *self.tensors(st)))

    # -- steps ---------------------------------------------------------------------------
    def free_mask(self, m: int) -> np.ndarray:
        mask = np.zeros((3, self.n_terms, self.dt), dtype=bool)
        n_free = min(self.n_terms, m)
        for k in self.comp_idx:
            mask[k, :n_free, :] = True
        return mask

    def fit_weights(self, level: Level, st: _State) -> None:
        if st.m == 0:
            return
        pos, _, coef = self.tensors(st)
        with torch.no_grad():
            q = self.projected(pos, coef)
            from .forward import gaussian_profiles

            gx = gaussian_profiles(q[..., 0], level.xs, level.sigma_px) * level.amplitude
            if level.ys is None:
                g = torch.einsum("tix,tjx->ij", gx, gx)
                b = torch.einsum("tix,tx->i", gx, level.data[:, 0])
            else:
                gy = gaussian_profiles(q[..., 1], level.ys, level.sigma_px)
                g = (torch.bmm(gy, gy.transpose(1, 2)) * torch.bmm(gx, gx.transpose(1, 2))).sum(0)
                b = (torch.bmm(gy, level.data) * gx).sum((0, 2))
        gn = g.cpu().numpy() + 1e-9 * np.eye(st.m) * max(1.0, float(g.diagonal().max()))
        st.weights = _box_qp(gn, b.cpu().numpy(), self.max_weight, st.weights)

    def prune_and_merge(self, st: _State) -> int:
        """Drop weak markers, merge near-duplicates; returns how many were removed."""
        m0 = st.m
        st.keep(st.weights >= self.prune_weight)
        if st.m > 1 and self.merge_distance_nm > 0:
            order = np.argsort(-st.weights)
            pos, w = st.positions[order], st.weights[order]
            alive = np.ones(st.m, dtype=bool)
            for i in range(st.m):
                if not alive[i]:
                    continue
                d = np.linalg.norm(pos - pos[i], axis=1)
                close = alive & (d < self.merge_distance_nm)
                close[i] = False
                if close.any():
                    idx = np.concatenate([[i], np.flatnonzero(close)])
                    pos[i] = np.average(pos[idx], axis=0, weights=w[idx])
                    w[i] = min(self.max_weight, float(w[idx].sum()))
                    alive[close] = False
            st.positions, st.weights = pos[alive], w[alive]
        return m0 - st.m

    def fit_deformation(self, level: Level, st: _State) -> None:
        if st.m == 0 or not self.comp_idx:
            return
        mask = self.free_mask(st.m)
        pos, w, coef = self.tensors(st)
        mask_t = torch.as_tensor(mask, device=self.device)
        base = coef.clone()

        def fun(x):
            c = base.masked_scatter(mask_t, x.to(self.device) * self.p)
            return self.loss(level, pos, w, c)

        x0 = st.coef[mask] / self.p
        x, _ = _lbfgsb(fun, x0, [(-self.coef_bound, self.coef_bound)] * x0.size, self.lbfgs_iterations)
        st.coef[mask] = x * self.p

    def fit_positions(self, level: Level, st: _State, *, with_deformation: bool = False) -> None:
        if st.m == 0:
            return
        pos, w, coef = self.tensors(st)
        m = st.m
        free_axes = [0, 2] if self.geometry.line_detector else [0, 1, 2]
        mask = self.free_mask(m) if with_deformation else np.zeros((3, self.n_terms, self.dt), dtype=bool)
        mask_t = torch.as_tensor(mask, device=self.device)
        n_pos = m * len(free_axes)

        def fun(x):
            x = x.to(self.device)
            p = pos.clone()
            p[:, free_axes] = x[:n_pos].reshape(m, len(free_axes)) * self.p
            c = coef.masked_scatter(mask_t, x[n_pos:] * self.p) if mask.any() else coef
            return self.loss(level, p, w, c)

        x0 = np.concatenate([st.positions[:, free_axes].ravel() / self.p, st.coef[mask] / self.p])
        bounds = [(-h / self.p, h / self.p) for h in self.half[free_axes]] * m
        bounds += [(-self.coef_bound, self.coef_bound)] * int(mask.sum())
        x, _ = _lbfgsb(fun, x0, bounds, self.lbfgs_iterations)
        st.positions[:, free_axes] = x[:n_pos].reshape(m, len(free_axes)) * self.p
        if mask.any():
            st.coef[mask] = x[n_pos:] * self.p

    def refine(self, level: Level, st: _State, *, iterations: int, tol: float, joint: bool = True) -> float:
        """Coordinate descent (Algorithm 1, step 4) until the loss stalls; returns the loss.

        ``joint``: one L-BFGS-B on positions and deformation together after the weights
        (converges in far fewer evaluations than alternating them, as the paper does with
        ``joint=False``).
        """
        loss = self.loss_value(level, st)
        for _ in range(iterations):
            self.fit_weights(level, st)
            st.keep(st.weights >= self.prune_weight)  # merging waits until the positions moved
            if joint:
                self.fit_positions(level, st, with_deformation=True)
            else:
                self.fit_deformation(level, st)
                self.fit_positions(level, st)
            new = self.loss_value(level, st)
            done = loss - new <= tol * max(loss, 1e-12)
            loss = new
            if done:
                break
        self.fit_weights(level, st)
        self.prune_and_merge(st)
        return self.loss_value(level, st)

    # -- oracle --------------------------------------------------------------------------
    def candidate_grid(self, level: Level) -> np.ndarray:
        step = max(level.factor * self.p, 0.5 * level.sigma_px * self.p)
        axes = []
        for h in self.half:
            n = int(math.floor(h / step))
            axes.append(np.arange(-n, n + 1) * step)
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        return grid

    def oracle(self, level: Level, st: _State) -> tuple[np.ndarray, float]:
        """Best new marker position and its least-squares weight (eq. 18)."""
        pos, w, coef = self.tensors(st)
        grid = self.candidate_grid(level)
        with torch.no_grad():
            res = level.data - level.render(self.projected(pos, coef), w)
            chunk = max(1, int(4e6 // max(1, self.geometry.n_tilts)))
            scores, norms = [], []
            for s in range(0, grid.shape[0], chunk):
                g = torch.as_tensor(grid[s:s + chunk], dtype=torch.float64, device=self.device)
                sc, nn = correlation_scores(res, level, self.projected(g, coef))
                scores.append(sc)
                norms.append(nn)
            score = torch.cat(scores)
            norm2 = torch.cat(norms)
        i = int(torch.argmax(score))
        best_w = float(score[i] / norm2[i]) if float(norm2[i]) > 0 else 0.0
        return grid[i], best_w


# ----------------------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------------------
def sparse_align_job(
    data,
    geometry: MarkerGeometry,
    *,
    degree: int = 2,
    time_degree: int = 1,
    variables: str | None = None,
    components: str = "z",
    levels="auto",
    max_markers: int = 100,
    min_weight: float = 0.3,
    max_weight: float = 1.0,
    prune_weight: float = 0.1,
    merge_distance_nm: float | None = None,
    z_range_nm: float | None = None,
    inner_iterations: int = 6,
    tol: float = 1e-4,
    lbfgs_iterations: int = 40,
    polish: bool = True,
    max_failures: int = 3,
    joint: bool = False,
    num_threads: int | None = None,
    device="cpu",
) -> Job[SparseAlignResult]:
    """SparseAlign on a pre-processed marker stack (beads bright, background 0, bead peak about 1).

    Parameters
    ----------
    data : ``(T, ny, nx)`` array or tensor (``(T, 1, nx)`` for the 2D line-detector geometry)
    geometry : :class:`MarkerGeometry` (angles, times, pixel size, marker width)
    degree, time_degree : polynomial degree in space and in time of the deformation (eq. 14)
    variables : coordinates of the basis (default ``"xy"`` in 3D, ``"xz"`` for a line detector)
    components : displacement components estimated (default ``"z"``, as in the paper; ``"xyz"`` for all)
    levels : ``"auto"``, ``"1/16,1/8,1/4,1/2,1"`` or factors ``(16, 8, 4, 2, 1)``, coarse first
    max_markers : upper bound on the number of markers
    min_weight : stop adding markers when the best candidate's weight is below this
    max_weight : upper bound of the weights
    prune_weight : markers with a smaller weight are removed
    merge_distance_nm : markers closer than this are merged (default ``0.2 * sigma_nm``: split
        copies of one marker converge onto each other; real beads are a diameter apart)
    z_range_nm : markers lie in ``|z| <= z_range_nm`` (default a quarter of the field of view)
    inner_iterations, tol : coordinate-descent rounds per added marker and the relative loss drop that stops them
    lbfgs_iterations : iterations of each L-BFGS-B call
    polish : end with a joint L-BFGS-B on positions and deformation at the finest level
    joint : refine positions and deformation in one L-BFGS-B rather than alternating them as
        the paper does (steps 4c, 4d; the default, more robust on the paper's 2D example)
    max_failures : a level ends after this many added markers in a row were pruned or merged away
    num_threads : torch (and, with ``threadpoolctl`` installed, BLAS) CPU threads while the job
        runs (restored afterwards); default 1 for stacks under 4 million pixels, where thread
        start-up costs more than it saves (many small L-BFGS evaluations; 5-50x faster on a
        busy 2-core machine), else unchanged
    device : torch device

    Yields
    ------
    ``Progress``; ``Partial("markers", MarkerSnapshot)``, ``Partial("loss", ndarray)`` (loss
    per ADCG step), ``Partial("deformation", PolynomialDeformation)`` after each step.

    Returns
    -------
    :class:`SparseAlignResult`
    """
    n_pix = int(np.prod(np.shape(data)))
    if num_threads is None and n_pix <= 4_000_000 and str(device).startswith("cpu"):
        num_threads = 1
    old_threads = torch.get_num_threads()
    limiter = None
    if num_threads:
        torch.set_num_threads(int(num_threads))
        try:  # scipy's L-BFGS-B calls BLAS on tiny vectors: pinned to one thread it is 5x faster on a busy machine
            from threadpoolctl import threadpool_limits

            limiter = threadpool_limits(limits=int(num_threads), user_api="blas")
        except ImportError:  # optional dependency
            limiter = None
    try:
        return (yield from _sparse_align(data, geometry, degree=degree, time_degree=time_degree, variables=variables,
                                         components=components, levels=levels, max_markers=max_markers,
                                         min_weight=min_weight, max_weight=max_weight, prune_weight=prune_weight,
                                         merge_distance_nm=merge_distance_nm, z_range_nm=z_range_nm,
                                         inner_iterations=inner_iterations, tol=tol,
                                         lbfgs_iterations=lbfgs_iterations, polish=polish, max_failures=max_failures,
                                         joint=joint, device=device))
    finally:
        torch.set_num_threads(old_threads)
        if limiter is not None:
            limiter.restore_original_limits()


def _sparse_align(data, geometry, *, degree, time_degree, variables, components, levels, max_markers, min_weight,
                  max_weight, prune_weight, merge_distance_nm, z_range_nm, inner_iterations, tol, lbfgs_iterations,
                  polish, max_failures, joint, device):
    t0 = time.perf_counter()
    d = torch.as_tensor(np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data,
                                   dtype=np.float64), device=device)
    if d.ndim != 3 or d.shape[0] != geometry.n_tilts or tuple(d.shape[1:]) != tuple(geometry.detector_shape):
        raise InputError(f"a stack of shape ({geometry.n_tilts}, {geometry.detector_shape[0]}, "
                         f"{geometry.detector_shape[1]})", field="data", got=f"shape {tuple(d.shape)}")
    if not torch.isfinite(d).all():
        raise InputError("finite pixel values", field="data", got="NaN or inf")
    if variables is None:
        variables = "xz" if geometry.line_detector else "xy"
    if any(c not in "xyz" for c in components):
        raise InputError("components among x, y, z", field="components", got=components)
    if not 0 < min_weight <= max_weight:
        raise InputError("0 < min_weight <= max_weight", field="min_weight", got=(min_weight, max_weight))
    factors = parse_levels(levels, geometry.detector_shape)
    fx = geometry.field_of_view_nm[0]
    model = PolynomialDeformation(degree=int(degree), time_degree=int(time_degree), variables=variables,
                                  length_scale_nm=float(fx))
    zr = float(z_range_nm) if z_range_nm is not None else 0.25 * fx
    prob = _Problem(geometry, model, components, z_range_nm=zr, max_weight=max_weight, prune_weight=prune_weight,
                    merge_distance_nm=0.2 * geometry.sigma_nm if merge_distance_nm is None else merge_distance_nm,
                    lbfgs_iterations=lbfgs_iterations, device=device)
    st = _State(model)
    history: list[dict] = []
    iteration = 0

    def events(level: Level, loss: float, message: str):
        history.append({"level": level.factor, "iteration": iteration, "n_markers": st.m, "loss": float(loss)})
        with torch.no_grad():
            q = prob.projected(*[prob.tensors(st)[i] for i in (0, 2)]).cpu().numpy()
        yield Progress(iteration, None, message)
        yield Partial("markers", MarkerSnapshot(st.positions.copy(), st.weights.copy(), q, level.factor, iteration))
        yield Partial("loss", np.array([h["loss"] for h in history]))
        yield Partial("deformation", st.deformation())

    for li, f in enumerate(factors):
        level = make_level(d, geometry, f)
        if st.m:
            loss = prob.refine(level, st, iterations=inner_iterations, tol=tol, joint=joint)
            yield from events(level, loss, f"level 1/{f}: refined {st.m} markers")
        failures = 0
        while st.m < max_markers and failures < max_failures:
            iteration += 1
            r, w_best = prob.oracle(level, st)
            if w_best < min_weight:
                break
            m_before = st.m
            st.positions = np.vstack([st.positions, r[None]])
            st.weights = np.append(st.weights, min(w_best, max_weight))
            loss = prob.refine(level, st, iterations=inner_iterations, tol=tol, joint=joint)
            yield from events(level, loss, f"level 1/{f}: {st.m} markers, loss {loss:.4g}")
            failures = failures + 1 if st.m <= m_before else 0  # the new marker was pruned or merged
        if polish and li == len(factors) - 1 and st.m:
            prob.fit_positions(level, st, with_deformation=True)
            loss = prob.refine(level, st, iterations=2, tol=tol)
            prob.fit_positions(level, st, with_deformation=True)
            prob.fit_weights(level, st)
            prob.prune_and_merge(st)
            loss = prob.loss_value(level, st)
            yield from events(level, loss, f"polished: {st.m} markers, loss {loss:.4g}")

    deformation = st.deformation()
    with torch.no_grad():
        pos, _, coef = prob.tensors(st)
        q = prob.projected(pos, coef).cpu().numpy()
        reproj = forward_model(st.positions, st.weights, geometry, deformation, device=device).cpu().numpy()
    params = dict(degree=int(degree), time_degree=int(time_degree), variables=variables, components=components,
                  levels=list(factors), max_markers=int(max_markers), min_weight=float(min_weight),
                  max_weight=float(max_weight), prune_weight=float(prune_weight), z_range_nm=zr,
                  merge_distance_nm=prob.merge_distance_nm, inner_iterations=int(inner_iterations), tol=float(tol),
                  lbfgs_iterations=int(lbfgs_iterations), polish=bool(polish), joint=bool(joint), sigma_nm=float(geometry.sigma_nm),
                  pixel_size_nm=float(geometry.pixel_size_nm))
    return SparseAlignResult(st.positions.copy(), st.weights.copy(), deformation, q, reproj.astype(np.float32),
                             geometry, history, tuple(factors), time.perf_counter() - t0, params,
                             d.to(torch.float32).cpu().numpy())


def polish_markers(result: SparseAlignResult, data, *, rounds: int = 2, lbfgs_iterations: int | None = None,
                   device="cpu") -> SparseAlignResult:
    """Re-fit the positions and the deformation of ``result``'s markers on another stack ``data``
    ``(T, ny, nx)`` of the same tilt series (same geometry), at full resolution; no marker is added,
    removed or merged.

    Used by :func:`~.find.find_markers_job` on the stack taken back to the Beer-Lambert domain
    (:func:`~.preprocess.linear_marker_image`, linear in the beads' projected density), where the
    forward model - a sum of Gaussians - is exact, unlike in the Anscombe domain where the markers
    were found: there, overlapping wide, strong beads are not a sum, which biased their centres by up
    to 0.3 px. The weights are fitted on ``data`` for the fit and then again on ``result.data`` with
    the new positions, so ``weights``, ``reprojection`` and ``data`` stay in the domain the markers
    were found in. ``params["polished_on_linear"]`` records the mean shift of the markers (nm).
    """
    if result.n_markers == 0:
        return result
    p = result.params
    g = result.geometry
    d = torch.as_tensor(np.asarray(data, dtype=np.float64), device=device)
    if tuple(d.shape) != (g.n_tilts, *g.detector_shape):
        raise InputError(f"a stack of shape ({g.n_tilts}, {g.detector_shape[0]}, {g.detector_shape[1]})",
                         field="data", got=f"shape {tuple(d.shape)}")
    model = result.deformation
    iters = int(p.get("lbfgs_iterations", 40) if lbfgs_iterations is None else lbfgs_iterations)
    z_range = float(p.get("z_range_nm", 0.25 * g.field_of_view_nm[0]))
    prob = _Problem(g, model, p.get("components", "z"), z_range_nm=z_range, max_weight=1e6, prune_weight=0.0,
                    merge_distance_nm=0.0, lbfgs_iterations=iters, device=device)
    st = _State(model)
    st.positions = np.array(result.positions_nm, dtype=np.float64).reshape(-1, 3)
    st.coef = np.array(model.coefficients, dtype=np.float64)
    st.weights = np.array(result.weights, dtype=np.float64)
    level = make_level(d, g, 1)
    before = st.positions.copy()
    for _ in range(int(rounds)):
        prob.fit_weights(level, st)
        prob.fit_positions(level, st, with_deformation=True)
    shift = float(np.linalg.norm(st.positions - before, axis=1).mean())
    # the weights (and the reprojection) back in the domain of result.data
    prob_a = _Problem(g, model, p.get("components", "z"), z_range_nm=z_range,
                      max_weight=float(p.get("max_weight", 1.0)), prune_weight=0.0, merge_distance_nm=0.0, lbfgs_iterations=iters, device=device)
    if result.data is not None:
        prob_a.fit_weights(make_level(torch.as_tensor(np.asarray(result.data, dtype=np.float64), device=device), g, 1),
                           st)
    deformation = st.deformation()
    with torch.no_grad():
        pos, _, coef = prob.tensors(st)
        q = prob.projected(pos, coef).cpu().numpy()
        reproj = forward_model(st.positions, st.weights, g, deformation, device=device).cpu().numpy()
    return replace(result, positions_nm=st.positions.copy(), weights=st.weights.copy(), deformation=deformation,
                   projected_px=q, reprojection=reproj.astype(np.float32),
                   params=dict(p, polished_on_linear={"rounds": int(rounds), "mean_shift_nm": shift}))


def sparse_align(data, geometry: MarkerGeometry, **kwargs) -> SparseAlignResult:
    """Run :func:`sparse_align_job` to completion (no progress bar)."""
    return run_job(sparse_align_job(data, geometry, **kwargs), progress=False)
