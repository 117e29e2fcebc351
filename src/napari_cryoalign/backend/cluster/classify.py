"""Sort subtomograms into classes and align them within each class.

Two methods, both generators in the job protocol (``backend/jobs.py``), both returning a
:class:`ClusterResult`:

``method="classical"`` (the baseline users know; Förster et al. 2008, Heumann et al. 2011)
    1. reference-free iterative alignment of *all* particles to one global average
       (:func:`..align.average.iterative_average_job`, exhaustive search, wedge-compensated);
    2. principal components of the wedge-masked differences of the aligned particles to that
       average (:func:`.features.wedge_masked_pca`);
    3. a Gaussian mixture (full covariances) on the leading components (:func:`.gmm.fit_gmm`);
    4. class averages from the global poses, then each class's particles re-aligned locally to
       their own class average (:func:`..align.exhaustive.refine_alignment_job`) and re-averaged.

``method="joint"`` (alternating joint alignment and clustering; how it relates to Jim-Net is
explained in ``docs/cluster.md``)
    1. a first clustering: k-means on the leading principal components of rotation-invariant
       descriptors (shell power spectra inside each particle's observed Fourier region,
       :func:`.features.invariant_features`; ``init="invariant"``, the default), or the
       classical method's (``init="classical"``), or k-means on the learned Jim-Net features
       (``model=`` a trained :class:`.jimnet.JimNet`);
    2. one average per class (reference-free iterative averaging of its members, or the
       classical class averages);
    3. repeat until no particle changes class (or ``iterations``):
       a. **multi-reference alignment**: every particle aligned to every class average with the
          missing-wedge-aware constrained correlation (exhaustive search the first time, local
          refinement around the previous pose afterwards) -> a score matrix ``S (n, K)``; the searches
          compare frequencies up to ``search_frequency`` (default 0.25 cycles/voxel) on Fourier-cropped
          particles and averages, shifts and scores re-measured at full size;
       b. **clustering**: a Gaussian mixture (spherical components) on the rows of ``S`` (each
          centred on its mean), started from ``argmax_k S``; its labels are Hungarian re-indexed
          onto the class averages' indices (:func:`.gmm.match_labels`), so class ``k`` stays
          class ``k``; its posteriors are the confidences. A class left with fewer than
          ``max(2, min_class_fraction n / K)`` particles holds no structure of its own while another
          class holds two: the largest class (with it) is bisected by a 2-class joint clustering
          and the half that fits the largest class's old average worse becomes the emptied class
          (``reseed="split"``; ``"worst"``: it takes the ``n / K`` particles that fit their own class
          worst); both are searched globally next round;
       c. class averages re-computed (wedge-compensated) from each class's particles under
          their poses against that class's average, low-passed to the class's half-map FSC 0.143.

Partial results (for live display): ``Partial("classes", (n,) int)``,
``Partial("confidence", (n,))``, ``Partial("embedding", (n, 2))``,
``Partial("averages", (K, N, N, N))`` after every clustering, ``Partial("alignment",
AlignmentResult)`` after every alignment round.

Labels are 0-based here; files use 1-based ``rlnClassNumber``.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, replace

import numpy as np
import torch

from ...errors import InputError
from ..align.average import _prepare, iterative_average_job
from ..align.exhaustive import align_exhaustive_job, refine_alignment_job
from ..align.types import AlignmentResult
from ..jobs import Partial, Progress, run_job, subjob
from .classical import _classical, _classical_job
from .common import ClusterResult, _class_averages, _embedding, _filtered, _masks_for, _subset
from .features import invariant_features, reduce_features
from .gmm import fit_gmm, kmeans, match_labels, select_n_classes

__all__ = ["METHODS", "cluster_subtomograms", "cluster_subtomograms_job"]

METHODS = ("joint", "classical")


#: default of ``min_class_fraction``: a joint-method class with fewer than
#: ``min_class_fraction * n / K`` particles after a round is re-seeded. 0.5 measured on the
#: benchmark's five structures, 20 each (docs/cluster.md): at SNR 0.05 a first k-means cluster
#: that mixed two structures left a class of 5-6 particles holding nothing; 0.2 did not catch it
#: (76 %), 0.5 re-seeded it and reached 99 %.
MIN_CLASS_FRACTION = 0.5

#: default of ``search_frequency``: the joint method's searches (multi-reference alignment, reference-free
#: class averages, re-seeding) compare frequencies up to the class averages' resolution and at most this
#: (cycles/voxel), on particles and averages Fourier-cropped to the smallest box that holds it (16 for a
#: 32³ box); shifts and scores are re-measured at full size. 0.5 (Nyquist) = no limit, full box (the
#: behaviour before 2026-12-05). Measured in docs/cluster.md ("Defaults and speed").
SEARCH_FREQUENCY = 0.25
#: the smallest box the joint method's cropped searches run on (``search_frequency`` is raised to ``8 / box``
#: where it would give less)
SEARCH_BOX_MIN = 16


def _check(particles, n_classes, method, iterations, voxel_size_angstrom, device):
    with torch.no_grad():
        p, _ = _prepare(particles, None, device)
    n = p.shape[0]
    if method not in METHODS:
        raise InputError("method 'joint' or 'classical'", field="method", got=method)
    if n_classes != "estimate" and (isinstance(n_classes, (bool, str)) or int(n_classes) != n_classes
                                    or not 1 <= int(n_classes) <= max(1, n // 2)):
        raise InputError(f"a number of classes between 1 and n/2 = {n // 2}, or 'estimate'", field="n_classes",
                         got=n_classes)
    if int(iterations) != iterations or iterations < 1:
        raise InputError("an integer >= 1", field="iterations", got=iterations)
    if not voxel_size_angstrom > 0:
        raise InputError("a voxel size > 0 Å", field="voxel_size_angstrom", got=voxel_size_angstrom)
    if n < 4:
        raise InputError("at least 4 particles to cluster", field="particles", got=n)
    return n, p.shape[-1]


def _kmeans_labels(features, k, *, seed):
    """k-means labels and soft assignments ``softmax(-d^2 / 2 sigma^2)`` (sigma^2: mean within-cluster
    variance per dimension), i.e. the E-step of a mixture of equal spherical Gaussians."""
    labels, centres = kmeans(features, k, seed=seed)
    d2 = ((features[:, None, :] - centres[None]) ** 2).sum(-1)
    var = max(float(d2[np.arange(len(labels)), labels].mean()) / features.shape[1], 1e-12)
    logp = -0.5 * d2 / var
    post = np.exp(logp - logp.max(1, keepdims=True))
    return labels, post / post.sum(1, keepdims=True)


def _gather(per_class: list[AlignmentResult], classes: np.ndarray, method: str) -> AlignmentResult:
    rot = np.stack([per_class[c].rotations[i] for i, c in enumerate(classes)])
    ori = np.stack([per_class[c].origins_voxels[i] for i, c in enumerate(classes)])
    sc = np.array([per_class[c].scores[i] for i, c in enumerate(classes)])
    return AlignmentResult(rot, ori, sc, method)


# ----------------------------------------------------------------------------- joint
@dataclass(frozen=True)
class _JointSettings:
    """The joint method's settings: the keywords of :func:`cluster_subtomograms_job`, resolved
    (``vox``: voxel size in Å; ``t0``: start time of the run, ``time.perf_counter()``)."""

    n_classes: int | str
    iterations: int
    init: str
    init_iterations: int
    angular_step_deg: float
    refine_levels: int
    min_class_fraction: float
    global_rounds: int
    reseed: str
    search_frequency: float
    max_shift_voxels: float | None
    vox: float
    n_components: int | None
    max_frequency: float
    max_classes: int
    model: object
    seed: int
    device: object
    t0: float

    @property
    def total(self) -> int:
        """Progress steps: the first averages, then two per round."""
        return 3 * self.init_iterations + 2 + 2 * self.iterations

    def bisection(self) -> _JointSettings:
        """Settings of the 2-class joint clustering that splits a class (``reseed="split"``): invariant start,
        4 rounds, re-seeding by the worst-fitting rule (with two classes those are the minority of a merged
        one; 2 rounds without it collapsed to 78 + 2 on mtor + dengue_e_fab at SNR 0.03, 4 rounds with it
        split them 85 % right)."""
        return replace(self, n_classes=2, iterations=4, init="invariant", reseed="worst", global_rounds=1, model=None)

    @property
    def cropped(self) -> bool:
        """Whether the searches run on Fourier-cropped volumes (``search_frequency`` below Nyquist)."""
        return self.search_frequency < 0.5

    def limit(self, box: int) -> float:
        """The highest frequency any search compares (cycles/voxel) for particles of ``box``: ``search_frequency``,
        but at least what a 16³ box holds (``8 / box``: a smaller box rotates the references too coarsely; at
        24³ and 0.25 (a 12³ box) a forced merged-class case oscillated and ended at 92 %, at 16³ it split
        and reached 100 %)."""
        return min(0.5, max(self.search_frequency, SEARCH_BOX_MIN / (2.0 * box)))

    def band(self, fmax: float, box: int) -> float:
        """The highest frequency a search compares (cycles/voxel): ``fmax``, at most :meth:`limit`."""
        return min(float(fmax), self.limit(box))

    def search(self, box: int) -> dict:
        """The keywords of the reference-free averages (:func:`..align.average.iterative_average_job`) of
        particles of ``box``."""
        return {"angular_step_deg": self.angular_step_deg, "refine_levels": self.refine_levels,
                "max_shift_voxels": self.max_shift_voxels, "voxel_size_angstrom": self.vox, "device": self.device,
                "max_search_frequency": self.limit(box), "crop_to_band": self.cropped}


@dataclass(eq=False)
class _JointState:
    """Where the joint method stands; its rounds change it in place.

    labels : ``(n,)`` int64 0-based class of each particle; conf : ``(n,)`` its confidence
    avgs : ``(K, N, N, N)`` float32 class averages; res : ``(K,)`` their FSC-0.143 resolution (Å, NaN unknown)
    poses : per class, every particle's pose against its average (:class:`AlignmentResult` of ``n``), or None
    scores : ``(n, K)`` constrained correlation of each particle with each class average
    fresh : classes re-seeded in the last round (searched globally in the next)
    step : the job's progress step
    features, alignment : the last clustering's features ``(n, K)`` and within-class poses
    """

    labels: np.ndarray
    conf: np.ndarray
    avgs: np.ndarray
    res: np.ndarray
    poses: list
    scores: np.ndarray
    fresh: set
    step: int
    features: np.ndarray | None = None
    alignment: AlignmentResult | None = None


def _score_features(scores: np.ndarray) -> np.ndarray:
    """Rows of the score matrix centred on their mean, in units of the overall spread (GMM input)."""
    s = scores - scores.mean(1, keepdims=True)
    return s / max(float(s.std()), 1e-12)


def _set_poses(poses: list, c: int, idx, ali: AlignmentResult) -> None:
    """Overwrite the poses (and scores) of particles ``idx`` against class ``c`` with ``ali``'s rows."""
    rot, ori, sc = (np.array(poses[c].rotations), np.array(poses[c].origins_voxels), np.array(poses[c].scores))
    rot[idx], ori[idx], sc[idx] = ali.rotations, ali.origins_voxels, ali.scores
    poses[c] = AlignmentResult(rot, ori, sc, "exhaustive")


def _first_clustering(p, m, cfg: _JointSettings, *, total: int):
    """Step 1 of the joint method: the first labels (k-means on invariant or Jim-Net features, or the classical
    method's Gaussian mixture). Yields the ``classes``, ``confidence`` and ``embedding`` partials.

    Returns labels ``(n,)`` 0-based, confidences ``(n,)``, the classical global average (or None), the BIC
    per K tried (``{}`` unless K is estimated) and K.
    """
    bic, glob = {}, None
    if cfg.model is not None or cfg.init == "invariant":
        if cfg.model is not None:
            from .jimnet import jimnet_features

            raw = jimnet_features(cfg.model, p, device=cfg.device)
        else:
            raw = invariant_features(p, particle_masks=m, device=cfg.device)
        feats = reduce_features(raw, 8 if cfg.n_components is None else int(cfg.n_components))
        if cfg.n_classes == "estimate":
            k, bic = select_n_classes(feats[:, :2], max_classes=cfg.max_classes, seed=cfg.seed)
        else:
            k = int(cfg.n_classes)
        labels, post = _kmeans_labels(feats, k, seed=cfg.seed)
    elif cfg.init == "classical":
        labels, post, feats, glob, bic, k, _ = yield from _classical(
            p, m, n_classes=cfg.n_classes, init_iterations=cfg.init_iterations, angular_step_deg=cfg.angular_step_deg,
            refine_levels=cfg.refine_levels, max_shift_voxels=cfg.max_shift_voxels, vox=cfg.vox,
            n_components=cfg.n_components, max_frequency=cfg.max_frequency, max_classes=cfg.max_classes,
            seed=cfg.seed, device=cfg.device, total=total, offset=0)
    else:
        raise InputError("init 'classical' or 'invariant'", field="init", got=cfg.init)
    conf = post[np.arange(len(labels)), labels]
    yield Partial("classes", labels)
    yield Partial("confidence", conf)
    yield Partial("embedding", _embedding(feats))
    return labels, conf, glob, bic, k


def _first_averages(p, m, labels, conf, glob, k: int, cfg: _JointSettings, *, step: int, total: int):
    """Step 2: one average per class, ``(K, N, N, N)`` and its resolution ``(K,)`` (Å): the classical class
    averages under the global poses (``glob``), else each class's reference-free average (a class of fewer
    than 2 particles starts from the 2 least confident). Yields the ``averages`` partial."""
    if glob is not None:
        avgs, res = _class_averages(p, m, labels, glob.alignment, k, vox=cfg.vox, device=cfg.device)
    else:
        box = p.shape[-1]
        avgs = np.zeros((k, box, box, box), np.float32)
        res = np.full(k, np.nan)
        for c in range(k):
            idx = np.flatnonzero(labels == c)
            if len(idx) < 2:  # a (nearly) empty class starts from the least confident particles
                idx = np.argsort(conf)[:2]
            job = iterative_average_job(p[idx], particle_masks=_masks_for(m, idx), iterations=cfg.init_iterations,
                                        **cfg.search(p.shape[-1]))
            r = yield from subjob(job, at=(step, total), prefix=f"class {c + 1}: reference-free average",
                                  partials=False)
            avgs[c], res[c] = r.average, r.fsc.resolution_0143
    yield Partial("averages", avgs)
    return avgs, res


def _align_to_classes(p, m, state: _JointState, cfg: _JointSettings, *, it: int, total: int):
    """Step 3a: every particle aligned to every class average (low-passed to its resolution); a full grid
    search in the first ``global_rounds`` rounds and for a class without poses or just re-seeded, else a
    local refinement around the previous pose; frequencies up to the averages' resolution, at most
    ``search_frequency``, searched on cropped volumes (shift and score at full size). Sets ``state.poses``
    and ``state.scores`` ``(n, K)``."""
    refs, fmax = _filtered(state.avgs, state.res, vox=cfg.vox, box=p.shape[-1])
    fmax = cfg.band(fmax, p.shape[-1])
    for c in range(len(refs)):
        if state.poses[c] is None or c in state.fresh or it < cfg.global_rounds:
            job = align_exhaustive_job(p, refs[c], particle_masks=m, angular_step_deg=cfg.angular_step_deg,
                                       refine_levels=cfg.refine_levels, max_shift_voxels=cfg.max_shift_voxels,
                                       max_frequency=fmax, candidates=1, crop_to_band=cfg.cropped, device=cfg.device)
        else:
            job = refine_alignment_job(p, refs[c], state.poses[c], particle_masks=m,
                                       max_angle_deg=cfg.angular_step_deg / 3, levels=1,
                                       max_shift_voxels=cfg.max_shift_voxels, max_frequency=fmax,
                                       crop_to_band=cfg.cropped, device=cfg.device)
        state.poses[c] = yield from subjob(job, at=(state.step, total), partials=False,
                                           prefix=f"iteration {it + 1}: particles vs class {c + 1}")
        state.scores[:, c] = state.poses[c].scores
    state.fresh = set()
    state.step += 1


def _relabel(scores: np.ndarray, labels: np.ndarray, *, seed: int):
    """Step 3b: a Gaussian mixture (spherical) on the centred rows of ``scores`` ``(n, K)``, started from
    ``argmax_k``, its labels Hungarian re-indexed onto the class averages' indices.

    Returns the new labels ``(n,)``, their posteriors ``(n, K)``, the fraction of particles that changed
    class (against ``labels``) and the mixture's features ``(n, K)``.
    """
    n, k = scores.shape
    argmax = scores.argmax(1)
    feats = _score_features(scores)
    if k > 1:
        g = fit_gmm(feats, k, covariance="spherical", init_labels=argmax, seed=seed)
        new, mapping = match_labels(g.labels, argmax, n_classes=k)
        post = np.empty_like(g.posteriors)
        post[:, mapping] = g.posteriors
    else:
        new, post = np.zeros(n, np.int64), np.ones((n, 1))
    return new, post, float(np.mean(new != labels)), feats


def _split_class(p, m, labels, poses, big, c, *, step, total, label, sub: _JointSettings):
    """Bisect class ``big`` (with the few particles left in class ``c``) by a 2-class joint
    clustering (``sub``: its settings); the half whose members fit the old average of ``big``
    worse becomes class ``c``. ``labels`` and ``poses`` are updated in place (each half's poses
    against its own half's average). Returns the indices of the particles moved to ``c``, or None
    when the sub-clustering left a half empty."""
    idx = np.flatnonzero((labels == big) | (labels == c))
    r = yield from subjob(_joint_job(p[idx], _masks_for(m, idx), sub), at=(step, total), prefix=label, partials=False)
    halves = [np.flatnonzero(r.classes == h) for h in (0, 1)]
    if min(len(h) for h in halves) == 0:
        return None
    move = int(np.argmin([poses[big].scores[idx[h]].mean() for h in halves]))
    for h, sel in enumerate(halves):
        cls = c if h == move else big
        labels[idx[sel]] = cls
        _set_poses(poses, cls, idx[sel], _subset(r.alignment, sel))
    return idx[halves[move]]


def _reseed_by_split(p, m, state: _JointState, c: int, sizes, cfg: _JointSettings, *, it: int, total: int):
    """Re-seed emptied class ``c`` with the worse-fitting half of the largest class not re-seeded this round
    (:func:`_split_class`; a split-and-merge move). Returns ``[largest + 1, c + 1]``, or None if it did not."""
    big = [j for j in np.argsort(-sizes, kind="stable") if j != c and j not in state.fresh]
    if not big or sizes[big[0]] < 4:
        return None
    big = int(big[0])
    moved = yield from _split_class(p, m, state.labels, state.poses, big, c, step=state.step, total=total,
                                    label=f"iteration {it + 1}: splitting class {big + 1}", sub=cfg.bisection())
    if moved is None:
        return None
    state.conf[moved] = 0.0
    state.fresh.update((c, big))
    return [big + 1, c + 1]


def _reseed_by_worst(p, m, state: _JointState, c: int, sizes, min_size: int, cfg: _JointSettings, *, it: int,
                     total: int):
    """Re-seed emptied class ``c`` with the ``n / K`` particles that fit their own class worst (k-means'
    empty-cluster rule, for class averages) and a fresh average of them. Returns whether it did."""
    n, k = state.scores.shape
    best = state.scores[np.arange(n), state.labels]
    donors = [i for i in np.argsort(best) if sizes[state.labels[i]] > min_size and state.labels[i] != c]
    take = np.asarray(donors[:max(min_size, n // k)], dtype=np.int64)
    if len(take) < 2:
        return False
    state.labels[take] = c
    state.conf[take] = 0.0
    job = iterative_average_job(p[take], particle_masks=_masks_for(m, take), iterations=1, **cfg.search(p.shape[-1]))
    r = yield from subjob(job, at=(state.step, total), prefix=f"iteration {it + 1}: re-seeding class {c + 1}",
                          partials=False)
    state.avgs[c], state.res[c] = r.average, r.fsc.resolution_0143
    _set_poses(state.poses, c, take, r.alignment)
    state.fresh.add(c)
    return True


def _reseed_emptied(p, m, state: _JointState, cfg: _JointSettings, *, it: int, total: int):
    """Step 3b': a class left with fewer than ``max(2, min_class_fraction n / K)`` particles holds no structure
    of its own (its average came from a mixed first cluster, and another class holds two): re-seed it
    (``cfg.reseed``: ``"split"`` or ``"worst"``) and search it globally next round.

    Returns the classes re-seeded by the worst-fitting rule and the ``[split, emptied]`` pairs (1-based).
    """
    n, k = state.scores.shape
    min_size = max(2, int(cfg.min_class_fraction * n / k))
    reseeded, splits = [], []
    for c in range(k):
        sizes = np.bincount(state.labels, minlength=k)
        if sizes[c] >= min_size:
            continue
        if cfg.reseed == "split":
            pair = yield from _reseed_by_split(p, m, state, c, sizes, cfg, it=it, total=total)
            splits += [pair] if pair else []
        elif (yield from _reseed_by_worst(p, m, state, c, sizes, min_size, cfg, it=it, total=total)):
            reseeded.append(c)
    return reseeded, splits


def _update_averages(p, m, state: _JointState, cfg: _JointSettings, *, keep) -> None:
    """Step 3c: each class's average re-computed (wedge-compensated) from its particles under their poses against
    it; an emptied class keeps its last average, a class in ``keep`` (re-seeded) its fresh one. Sets
    ``state.alignment`` (each particle's pose against its own class)."""
    k = len(state.avgs)
    state.alignment = _gather(state.poses, state.labels, "exhaustive")
    new_avgs, res_new = _class_averages(p, m, state.labels, state.alignment, k, vox=cfg.vox, device=cfg.device)
    for c in range(k):
        if np.any(state.labels == c) and c not in keep:
            state.avgs[c], state.res[c] = new_avgs[c], res_new[c]


def _joint_round(p, m, state: _JointState, cfg: _JointSettings, *, it: int, total: int):
    """Step 3, round ``it``: alignment to every class, re-labelling, re-seeding (but in the last round), new
    averages. Yields its progress and partials; returns its history record."""
    t_it = time.perf_counter()
    n = len(state.labels)
    yield from _align_to_classes(p, m, state, cfg, it=it, total=total)
    state.labels, post, changed, state.features = _relabel(state.scores, state.labels, seed=cfg.seed)
    state.conf = post[np.arange(n), state.labels]
    reseeded, splits = [], []
    if it < cfg.iterations - 1:
        reseeded, splits = yield from _reseed_emptied(p, m, state, cfg, it=it, total=total)
    _update_averages(p, m, state, cfg, keep=reseeded)
    sizes = np.bincount(state.labels, minlength=len(state.avgs)).tolist()
    yield Progress(state.step, total, f"iteration {it + 1}: {100 * changed:.1f} % changed class, sizes {sizes}")
    state.step += 1
    yield Partial("classes", state.labels)
    yield Partial("confidence", state.conf)
    yield Partial("embedding", _embedding(state.features))
    yield Partial("averages", state.avgs.copy())
    yield Partial("alignment", state.alignment)
    return {"iteration": it + 1, "changed_fraction": changed, "class_sizes": sizes,
            "reseeded": [c + 1 for c in reseeded], "split": splits, "seconds": time.perf_counter() - t_it}


def _converged(record: dict) -> bool:
    """After a round (its history ``record``): no particle changed class, nothing was re-seeded, not the first."""
    return (record["changed_fraction"] == 0.0 and record["iteration"] > 1 and not record["reseeded"]
            and not record["split"])


def _joint_job(p, m, cfg: _JointSettings):
    """The joint method (module docstring): particles ``(n, N, N, N)``, masks or None -> :class:`ClusterResult`."""
    n, total = p.shape[0], cfg.total
    yield Progress(0, total, f"joint: first clustering ({'Jim-Net features' if cfg.model is not None else cfg.init})")
    labels, conf, glob, bic, k = yield from _first_clustering(p, m, cfg, total=total)
    step = 3 * cfg.init_iterations
    avgs, res = yield from _first_averages(p, m, labels, conf, glob, k, cfg, step=step, total=total)
    state = _JointState(labels=labels, conf=conf, avgs=avgs, res=res, poses=[None] * k, scores=np.zeros((n, k)),
                        fresh=set(), step=step + 1)
    history = []
    for it in range(cfg.iterations):
        history.append((yield from _joint_round(p, m, state, cfg, it=it, total=total)))
        if _converged(history[-1]):
            break
    yield Progress(total, total, "done")
    ali = state.alignment
    alignment = AlignmentResult(ali.rotations, ali.origins_voxels, ali.scores, "exhaustive",
                                seconds=time.perf_counter() - cfg.t0)
    return ClusterResult(classes=state.labels, confidence=state.conf, embedding=_embedding(state.features),
                         alignment=alignment, averages=state.avgs, method="joint", features=state.features,
                         scores=state.scores.copy(), bic=bic, history=tuple(history),
                         seconds=time.perf_counter() - cfg.t0)


def cluster_subtomograms_job(
    particles,
    *,
    n_classes: int | str = 2,
    method: str = "joint",
    particle_masks=None,
    iterations: int = 4,
    init: str = "invariant",
    init_iterations: int = 2,
    angular_step_deg: float = 30.0,
    refine_levels: int = 2,
    max_shift_voxels: float | None = None,
    voxel_size_angstrom: float = 1.0,
    n_components: int | None = None,
    max_frequency: float = 0.15,
    max_classes: int = 8,
    min_class_fraction: float = MIN_CLASS_FRACTION,
    global_rounds: int = 1,
    reseed: str = "split",
    search_frequency: float = SEARCH_FREQUENCY,
    model=None,
    seed: int = 0,
    inside_masks=None,
    device="cpu",
) -> Generator[Progress | Partial, None, ClusterResult]:
    """Job version of :func:`cluster_subtomograms` (yields Progress and the Partials of the module docstring)."""
    t0 = time.perf_counter()
    _check(particles, n_classes, method, iterations, voxel_size_angstrom, device)
    if method == "joint" and model is None and init not in ("invariant", "classical"):
        raise InputError("init 'invariant' or 'classical'", field="init", got=init)
    if not 0.0 <= float(min_class_fraction) < 1.0:
        raise InputError("a fraction in [0, 1) of the mean class size", field="min_class_fraction",
                         got=min_class_fraction)
    if int(global_rounds) != global_rounds or global_rounds < 1:
        raise InputError("an integer >= 1 (rounds searched globally)", field="global_rounds", got=global_rounds)
    if reseed not in ("split", "worst"):
        raise InputError("'split' or 'worst'", field="reseed", got=reseed)
    if not 0.0 < float(search_frequency) <= 0.5:
        raise InputError("a frequency in (0, 0.5] cycles/voxel (0.5: no limit)", field="search_frequency",
                         got=search_frequency)
    with torch.no_grad():
        p, m = _prepare(particles, particle_masks, device)
    m_np = None if m is None else m.cpu().numpy()
    p_np = p.cpu().numpy() if p.device.type != "cpu" else p.numpy()
    common = {"n_classes": n_classes, "iterations": int(iterations), "init_iterations": max(1, int(init_iterations)),
              "angular_step_deg": angular_step_deg, "refine_levels": refine_levels,
              "max_shift_voxels": max_shift_voxels, "vox": float(voxel_size_angstrom), "n_components": n_components,
              "max_frequency": max_frequency, "max_classes": max_classes, "seed": seed, "device": device, "t0": t0}
    if inside_masks is not None and np.shape(inside_masks) != p_np.shape:
        raise InputError(f"inside masks of the particles' shape {p_np.shape}", field="inside_masks",
                         got=f"{np.shape(inside_masks)}")
    if method == "classical":
        result = yield from _classical_job(p_np, m_np, **common)
    else:
        cfg = _JointSettings(init=init, model=model, min_class_fraction=float(min_class_fraction),
                             global_rounds=int(global_rounds), reseed=reseed,
                             search_frequency=float(search_frequency), **common)
        result = yield from _joint_job(p_np, m_np, cfg)
    if inside_masks is None:
        return result
    # boxes padded at the tomogram's faces: the final class averages divide by each voxel's coverage
    avgs, _ = _class_averages(p_np, m_np, result.classes, result.alignment, result.averages.shape[0],
                              vox=float(voxel_size_angstrom), device=device, inside=np.asarray(inside_masks))
    return replace(result, averages=avgs)


def cluster_subtomograms(particles, **kwargs) -> ClusterResult:
    """Sort subtomograms into classes and align them within each class.

    Parameters
    ----------
    particles : ``(n, N, N, N)`` (z, y, x), N even
    n_classes : K, or ``"estimate"`` (lowest BIC of a Gaussian mixture over K = 1 .. ``max_classes``
        on the first clustering's features)
    method : ``"joint"`` (default) or ``"classical"`` (module docstring)
    particle_masks : observed Fourier masks, fftshift-ed (DC at ``N // 2``), ``(N, N, N)`` or
        ``(n, N, N, N)``; None = fully observed
    iterations : joint: at most this many alignment/clustering rounds (stops earlier when no
        particle changes class); classical: unused
    init : joint: first clustering, ``"invariant"`` (default) or ``"classical"`` (ignored with ``model``)
    init_iterations : rounds of the reference-free averages (global or per class)
    angular_step_deg, refine_levels, max_shift_voxels : exhaustive search (``align_exhaustive``)
    voxel_size_angstrom : Å (resolutions of the class averages)
    n_components : classical: principal components the mixture clusters (default K - 1, the
        dimension between-class differences span; 4 for estimating K); joint with
        ``init="invariant"``: components of the invariant descriptors (default 8)
    max_frequency : band limit of the wedge-masked PCA, cycles/voxel (default 0.15: particles of
        other structures are aligned only coarsely to the global average)
    max_classes : largest K tried by ``"estimate"``
    min_class_fraction : joint: after each round but the last, a class with fewer than
        ``min_class_fraction * n / K`` particles is re-seeded (``reseed``; default 0.5; 0 turns
        re-seeding off, e.g. when one class is expected to be much rarer than the others)
    reseed : joint: how, ``"split"`` (default): the largest class and the emptied one are
        bisected by a 2-class joint clustering (invariant start, 4 rounds, re-seeding by the
        ``"worst"`` rule) and the half that fits the largest class's old average worse becomes
        the emptied class; ``"worst"``: the emptied class takes the ``n / K`` particles that fit
        their own class worst
    global_rounds : joint: the first ``global_rounds`` rounds align every particle to every class
        average by a full grid search (later rounds refine locally around the previous pose, a
        third of ``angular_step_deg`` at most); a re-seeded class is always searched globally.
        Default 1 (fast); more rounds let poses found against a poor first average recover
    search_frequency : joint: the highest frequency its searches compare, cycles/voxel (default 0.25,
        ``SEARCH_FREQUENCY``; raised to ``8 / N`` for boxes under 32, so that the searches keep a 16³ box):
        the multi-reference alignments, the class averages' reference-free alignments and re-seeding
        compare frequencies up to the class averages' resolution and at most this, on particles and
        averages Fourier-cropped to the smallest box that holds it (16 for a 32³ box; 8x fewer voxels),
        with each particle's shift and score re-measured at full size at the rotation found. 0.5 = no
        limit, full box (the behaviour before 2026-12-05)
    model : a trained :class:`.jimnet.JimNet` supplying the first features (joint), or None
    seed : random seed of the mixture starts
    inside_masks : ``(n, N, N, N)`` masks of the voxels inside the tomogram (boxes padded at its faces,
        :meth:`.align.extract.Extraction.inside_masks`) or None: the returned class averages are then
        coverage-compensated (:func:`.align.average.wedge_compensated_average`); the searches need
        nothing (the padded voxels hold the particle's mean, which no score sees)
    device : torch device

    Returns
    -------
    ClusterResult (0-based ``classes``, ``confidence``, ``embedding`` (n, 2), within-class
    ``alignment``, ``averages`` (K, N, N, N)).
    """
    return run_job(cluster_subtomograms_job(particles, **kwargs), progress=False)
