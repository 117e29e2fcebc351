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
          refinement around the previous pose afterwards) -> a score matrix ``S (n, K)``;
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
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import InputError
from ..align.average import (
    _prepare,
    average_particles,
    iterative_average_job,
    wedge_compensated_average,
)
from ..align.exhaustive import align_exhaustive_job, refine_alignment_job
from ..align.types import AlignmentResult
from ..fourier import lowpass
from ..jobs import Partial, Progress, run_job, subjob
from .features import (
    invariant_features,
    principal_components,
    reduce_features,
    wedge_masked_pca,
)
from .gmm import fit_gmm, kmeans, match_labels, select_n_classes

__all__ = ["METHODS", "ClusterResult", "cluster_subtomograms", "cluster_subtomograms_job"]

METHODS = ("joint", "classical")


@dataclass(frozen=True, eq=False)
class ClusterResult:
    """Classes, confidences, within-class poses and class averages of a particle set.

    Attributes
    ----------
    classes : ``(n,)`` int64, 0-based class of each particle (``rlnClassNumber - 1``)
    confidence : ``(n,)`` posterior probability of the assigned class, in [0, 1]
    embedding : ``(n, 2)`` a 2-D map of the particles for plotting (first two principal
        components of the features the last clustering used)
    alignment : AlignmentResult, each particle's pose against *its class's* average
        (``rotations`` reference -> particle, ``origins_voxels`` (x, y, z), ``scores``)
    averages : ``(K, N, N, N)`` float32 wedge-compensated class averages (``(z, y, x)``)
    method : "joint" or "classical"
    features : ``(n, d)`` the features of the last clustering
    scores : ``(n, K)`` or None, constrained correlation of each particle with each class
        average (joint method)
    bic : ``{K: BIC}`` when the number of classes was estimated, else empty
    history : per iteration: changed fraction, class sizes, seconds
    seconds : wall-clock time
    """

    classes: np.ndarray
    confidence: np.ndarray
    embedding: np.ndarray
    alignment: AlignmentResult
    averages: np.ndarray
    method: str
    features: np.ndarray
    scores: np.ndarray | None = None
    bic: dict = field(default_factory=dict)
    history: tuple = ()
    seconds: float = float("nan")

    @property
    def n_classes(self) -> int:
        return len(self.averages)

    @property
    def class_sizes(self) -> np.ndarray:
        """Particles per class, ``(K,)``."""
        return np.bincount(self.classes, minlength=self.n_classes)


#: default of ``min_class_fraction``: a joint-method class with fewer than
#: ``min_class_fraction * n / K`` particles after a round is re-seeded. 0.5 measured on the
#: benchmark's five structures, 20 each (docs/cluster.md): at SNR 0.05 a first k-means cluster
#: that mixed two structures left a class of 5-6 particles holding nothing; 0.2 did not catch it
#: (76 %), 0.5 re-seeded it and reached 99 %.
MIN_CLASS_FRACTION = 0.5


def _embedding(features: np.ndarray) -> np.ndarray:
    x = torch.as_tensor(np.asarray(features, dtype=np.float64))
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2))
    s = principal_components(x, 2).scores
    if s.shape[1] < 2:
        s = np.concatenate([s, np.zeros((len(s), 2 - s.shape[1]))], 1)
    return s


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


def _masks_for(m, idx):
    if m is None:
        return None
    m = np.asarray(m, dtype=np.float32)
    return m if m.ndim == 3 or m.shape[0] == 1 else m[idx]


def _gmm_labels(features, k, *, init_labels=None, seed):
    if k == 1:
        n = len(features)
        return np.zeros(n, np.int64), np.ones(n)
    g = fit_gmm(features, k, init_labels=init_labels, seed=seed)
    return g.labels, g.posteriors


def _kmeans_labels(features, k, *, seed):
    """k-means labels and soft assignments ``softmax(-d^2 / 2 sigma^2)`` (sigma^2: mean within-cluster
    variance per dimension), i.e. the E-step of a mixture of equal spherical Gaussians."""
    labels, centres = kmeans(features, k, seed=seed)
    d2 = ((features[:, None, :] - centres[None]) ** 2).sum(-1)
    var = max(float(d2[np.arange(len(labels)), labels].mean()) / features.shape[1], 1e-12)
    logp = -0.5 * d2 / var
    post = np.exp(logp - logp.max(1, keepdims=True))
    return labels, post / post.sum(1, keepdims=True)


def _class_averages(p, m, classes, alignment, k, *, vox, device):
    """Wedge-compensated average per class under ``alignment`` (K, N, N, N) and its FSC-0.143 resolution (Å)."""
    box = p.shape[-1]
    avgs = np.zeros((k, box, box, box), np.float32)
    res = np.full(k, np.nan)
    for c in range(k):
        idx = np.flatnonzero(classes == c)
        if len(idx) == 0:
            continue
        sub = AlignmentResult(alignment.rotations[idx], alignment.origins_voxels[idx], alignment.scores[idx],
                              alignment.method)
        if len(idx) >= 4:
            r = average_particles(p[idx], sub, particle_masks=_masks_for(m, idx), half_maps=True,
                                  voxel_size_angstrom=vox, device=device)
            avgs[c], res[c] = r.average, r.fsc.resolution_0143
        else:
            avgs[c] = wedge_compensated_average(p[idx], sub, particle_masks=_masks_for(m, idx), device=device)
    return avgs, res


def _filtered(avgs, res, *, vox, box):
    """Class averages low-passed to their resolution (at most 2 voxels), and the search's max frequency."""
    out = np.empty_like(avgs)
    fmax = []
    for c in range(len(avgs)):
        r = res[c] if np.isfinite(res[c]) else 4.0 * vox
        r = max(float(r), 2.0 * vox)
        out[c] = lowpass(avgs[c], r, voxel_size_angstrom=vox) if r > 2.0 * vox else avgs[c]
        fmax.append(min(0.5, vox / r + 2.0 / box))
    return out, float(max(fmax))


def _subset(ali: AlignmentResult, idx) -> AlignmentResult:
    return AlignmentResult(ali.rotations[idx], ali.origins_voxels[idx], ali.scores[idx], ali.method, ali.seconds)


def _gather(per_class: list[AlignmentResult], classes: np.ndarray, method: str) -> AlignmentResult:
    rot = np.stack([per_class[c].rotations[i] for i, c in enumerate(classes)])
    ori = np.stack([per_class[c].origins_voxels[i] for i, c in enumerate(classes)])
    sc = np.array([per_class[c].scores[i] for i, c in enumerate(classes)])
    return AlignmentResult(rot, ori, sc, method)


# ----------------------------------------------------------------------------- classical
def _classical(p, m, *, n_classes, init_iterations, angular_step_deg, refine_levels, max_shift_voxels, vox,
               n_components, max_frequency, max_classes, seed, device, total, offset):
    """Steps 1-3 of the classical method: (labels, posteriors, features, global AverageResult, bic, K, embedding)."""
    job = iterative_average_job(p, particle_masks=m, iterations=init_iterations, angular_step_deg=angular_step_deg,
                                refine_levels=refine_levels, max_shift_voxels=max_shift_voxels,
                                voxel_size_angstrom=vox, device=device)
    glob = yield from subjob(job, at=(offset, total), prefix="global average", partials=False)
    yield Partial("alignment", glob.alignment)
    q_max = 8 if n_components is None else int(n_components)
    pca = wedge_masked_pca(p, glob.alignment, glob.average, particle_masks=m, n_components=q_max,
                           max_frequency=max_frequency, device=device)
    bic = {}
    if n_classes == "estimate":
        q = min(q_max, 4) if n_components is None else q_max
        k, bic = select_n_classes(pca.scores[:, :q], max_classes=max_classes, seed=seed)
    else:
        k = int(n_classes)
    q = min(q_max, max(1, k - 1)) if n_components is None else q_max
    feats = pca.scores[:, :q]
    labels, post = _gmm_labels(feats, k, seed=seed)
    emb = pca.scores[:, :2] if pca.scores.shape[1] >= 2 else _embedding(pca.scores)
    return labels, post, feats, glob, bic, k, emb


def _classical_job(p, m, *, n_classes, iterations, init_iterations, angular_step_deg, refine_levels,
                   max_shift_voxels, vox, n_components, max_frequency, max_classes, seed, device, t0):
    total = init_iterations * 3 + 3
    yield Progress(0, total, "classical: global average")
    labels, post, feats, glob, bic, k, emb = yield from _classical(
        p, m, n_classes=n_classes, init_iterations=init_iterations, angular_step_deg=angular_step_deg,
        refine_levels=refine_levels, max_shift_voxels=max_shift_voxels, vox=vox, n_components=n_components,
        max_frequency=max_frequency, max_classes=max_classes, seed=seed, device=device, total=total, offset=0)
    conf = post[np.arange(len(labels)), labels]
    yield Progress(total - 2, total, f"classical: {k} classes, sizes {np.bincount(labels, minlength=k).tolist()}")
    yield Partial("classes", labels)
    yield Partial("confidence", conf)
    yield Partial("embedding", emb)
    avgs, res = _class_averages(p, m, labels, glob.alignment, k, vox=vox, device=device)
    yield Partial("averages", avgs)
    # each class re-aligned locally to its own average (the global poses start it)
    refs, fmax = _filtered(avgs, res, vox=vox, box=p.shape[-1])
    rot = np.asarray(glob.alignment.rotations).copy()
    ori = np.asarray(glob.alignment.origins_voxels).copy()
    sc = np.asarray(glob.alignment.scores).copy()
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        job = refine_alignment_job(p[idx], refs[c], _subset(glob.alignment, idx), particle_masks=_masks_for(m, idx),
                                   max_angle_deg=angular_step_deg / 3.0, levels=1, max_shift_voxels=max_shift_voxels,
                                   max_frequency=fmax, device=device)
        ali = yield from subjob(job, at=(total - 1, total), prefix=f"class {c + 1}: local refinement", partials=False)
        rot[idx], ori[idx], sc[idx] = ali.rotations, ali.origins_voxels, ali.scores
    alignment = AlignmentResult(rot, ori, sc, "exhaustive", seconds=time.perf_counter() - t0)
    avgs, _ = _class_averages(p, m, labels, alignment, k, vox=vox, device=device)
    yield Partial("alignment", alignment)
    yield Partial("averages", avgs)
    yield Progress(total, total, "done")
    sizes = np.bincount(labels, minlength=k).tolist()
    return ClusterResult(classes=labels, confidence=conf, embedding=emb, alignment=alignment, averages=avgs,
                         method="classical", features=feats, bic=bic,
                         history=({"iteration": 0, "class_sizes": sizes, "seconds": time.perf_counter() - t0},),
                         seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- joint
def _score_features(scores: np.ndarray) -> np.ndarray:
    """Rows of the score matrix centred on their mean, in units of the overall spread (GMM input)."""
    s = scores - scores.mean(1, keepdims=True)
    return s / max(float(s.std()), 1e-12)


def _set_poses(poses: list, c: int, idx, ali: AlignmentResult) -> None:
    """Overwrite the poses (and scores) of particles ``idx`` against class ``c`` with ``ali``'s rows."""
    rot, ori, sc = (np.array(poses[c].rotations), np.array(poses[c].origins_voxels), np.array(poses[c].scores))
    rot[idx], ori[idx], sc[idx] = ali.rotations, ali.origins_voxels, ali.scores
    poses[c] = AlignmentResult(rot, ori, sc, "exhaustive")


def _split_class(p, m, labels, poses, big, c, *, step, total, label, sub):
    """Bisect class ``big`` (with the few particles left in class ``c``) by a 2-class joint
    clustering (``sub``: its settings); the half whose members fit the old average of ``big``
    worse becomes class ``c``. ``labels`` and ``poses`` are updated in place (each half's poses
    against its own half's average). Returns the indices of the particles moved to ``c``, or None
    when the sub-clustering left a half empty."""
    idx = np.flatnonzero((labels == big) | (labels == c))
    r = yield from subjob(_joint_job(p[idx], _masks_for(m, idx), n_classes=2, **sub), at=(step, total), prefix=label,
                          partials=False)
    halves = [np.flatnonzero(r.classes == h) for h in (0, 1)]
    if min(len(h) for h in halves) == 0:
        return None
    move = int(np.argmin([poses[big].scores[idx[h]].mean() for h in halves]))
    for h, sel in enumerate(halves):
        cls = c if h == move else big
        labels[idx[sel]] = cls
        _set_poses(poses, cls, idx[sel], _subset(r.alignment, sel))
    return idx[halves[move]]


def _joint_job(p, m, *, n_classes, iterations, init, init_iterations, angular_step_deg, refine_levels, min_class_fraction,
               global_rounds, max_shift_voxels, vox, n_components, max_frequency, max_classes, model, seed, device, t0,
               reseed="split"):
    n, box = p.shape[0], p.shape[-1]
    total = 3 * init_iterations + 2 + 2 * int(iterations)
    yield Progress(0, total, f"joint: first clustering ({'Jim-Net features' if model is not None else init})")
    bic = {}
    glob = None
    if model is not None or init == "invariant":
        if model is not None:
            from .jimnet import jimnet_features

            raw = jimnet_features(model, p, device=device)
        else:
            raw = invariant_features(p, particle_masks=m, device=device)
        feats = reduce_features(raw, 8 if n_components is None else int(n_components))
        if n_classes == "estimate":
            k, bic = select_n_classes(feats[:, :2], max_classes=max_classes, seed=seed)
        else:
            k = int(n_classes)
        labels, post = _kmeans_labels(feats, k, seed=seed)
    elif init == "classical":
        labels, post, feats, glob, bic, k, _ = yield from _classical(
            p, m, n_classes=n_classes, init_iterations=init_iterations, angular_step_deg=angular_step_deg,
            refine_levels=refine_levels, max_shift_voxels=max_shift_voxels, vox=vox, n_components=n_components,
            max_frequency=max_frequency, max_classes=max_classes, seed=seed, device=device, total=total, offset=0)
    else:
        raise InputError("init 'classical' or 'invariant'", field="init", got=init)
    conf = post[np.arange(n), labels]
    yield Partial("classes", labels)
    yield Partial("confidence", conf)
    yield Partial("embedding", _embedding(feats))
    step = 3 * init_iterations

    # one average per class
    if glob is not None:
        avgs, res = _class_averages(p, m, labels, glob.alignment, k, vox=vox, device=device)
    else:
        avgs = np.zeros((k, box, box, box), np.float32)
        res = np.full(k, np.nan)
        for c in range(k):
            idx = np.flatnonzero(labels == c)
            if len(idx) < 2:  # a (nearly) empty class starts from the least confident particles
                idx = np.argsort(conf)[:2]
            job = iterative_average_job(p[idx], particle_masks=_masks_for(m, idx), iterations=init_iterations,
                                        angular_step_deg=angular_step_deg, refine_levels=refine_levels,
                                        max_shift_voxels=max_shift_voxels, voxel_size_angstrom=vox, device=device)
            r = yield from subjob(job, at=(step, total), prefix=f"class {c + 1}: reference-free average",
                                  partials=False)
            avgs[c], res[c] = r.average, r.fsc.resolution_0143
    yield Partial("averages", avgs)
    step += 1

    history = []
    # the bisection: this method on the two classes' particles alone, re-seeding by the worst-fitting
    # rule (with two classes those are the minority of a merged one; 2 rounds without it collapsed to
    # 78 + 2 on mtor + dengue_e_fab at SNR 0.03, 4 rounds with it split them 85 % right)
    sub_kwargs = {"iterations": 4, "init": "invariant", "init_iterations": init_iterations,
                  "angular_step_deg": angular_step_deg, "refine_levels": refine_levels,
                  "min_class_fraction": min_class_fraction, "reseed": "worst", "global_rounds": 1,
                  "max_shift_voxels": max_shift_voxels, "vox": vox, "n_components": n_components,
                  "max_frequency": max_frequency, "max_classes": max_classes, "model": None, "seed": seed,
                  "device": device, "t0": t0}
    poses: list[AlignmentResult | None] = [None] * k
    fresh: set = set()  # classes re-seeded in the last round: searched globally again
    scores = np.zeros((n, k))
    feats_s = None
    for it in range(int(iterations)):
        t_it = time.perf_counter()
        refs, fmax = _filtered(avgs, res, vox=vox, box=box)
        for c in range(k):
            if poses[c] is None or c in fresh or it < global_rounds:
                job = align_exhaustive_job(p, refs[c], particle_masks=m, angular_step_deg=angular_step_deg,
                                           refine_levels=refine_levels, max_shift_voxels=max_shift_voxels,
                                           max_frequency=fmax, candidates=1, device=device)
            else:
                job = refine_alignment_job(p, refs[c], poses[c], particle_masks=m, max_angle_deg=angular_step_deg / 3,
                                           levels=1, max_shift_voxels=max_shift_voxels, max_frequency=fmax,
                                           device=device)
            poses[c] = yield from subjob(job, at=(step, total), prefix=f"iteration {it + 1}: particles vs class {c + 1}",
                                         partials=False)
            scores[:, c] = poses[c].scores
        fresh = set()
        step += 1
        argmax = scores.argmax(1)
        feats_s = _score_features(scores)
        if k > 1:
            g = fit_gmm(feats_s, k, covariance="spherical", init_labels=argmax, seed=seed)
            new, mapping = match_labels(g.labels, argmax, n_classes=k)
            post = np.empty_like(g.posteriors)
            post[:, mapping] = g.posteriors
        else:
            new, post = np.zeros(n, np.int64), np.ones((n, 1))
        changed = float(np.mean(new != labels))
        labels = new
        conf = post[np.arange(n), labels]
        # a class that (nearly) emptied holds no structure of its own (its average came from a mixed
        # first cluster, and another class holds two structures): re-seed it and search it globally in
        # the next round. "split" (default): bisect the largest class by a 2-class joint clustering of
        # its members and give the half that fits the old average worse to the emptied class (a
        # split-and-merge move); "worst": the n / K particles that fit their own class worst (k-means'
        # empty-cluster rule, for class averages)
        reseeded, splits = [], []
        if it < int(iterations) - 1:
            min_size = max(2, int(min_class_fraction * n / k))
            for c in range(k):
                sizes = np.bincount(labels, minlength=k)
                if sizes[c] >= min_size:
                    continue
                if reseed == "split":
                    big = [j for j in np.argsort(-sizes, kind="stable") if j != c and j not in fresh]
                    if not big or sizes[big[0]] < 4:
                        continue
                    big = int(big[0])
                    moved = yield from _split_class(p, m, labels, poses, big, c, step=step, total=total,
                                                    label=f"iteration {it + 1}: splitting class {big + 1}",
                                                    sub=sub_kwargs)
                    if moved is None:
                        continue
                    conf[moved] = 0.0
                    fresh.update((c, big))
                    splits.append([big + 1, c + 1])
                    continue
                best = scores[np.arange(n), labels]
                donors = [i for i in np.argsort(best) if sizes[labels[i]] > min_size and labels[i] != c]
                take = np.asarray(donors[:max(min_size, n // k)], dtype=np.int64)
                if len(take) < 2:
                    continue
                labels[take] = c
                conf[take] = 0.0
                job = iterative_average_job(p[take], particle_masks=_masks_for(m, take), iterations=1,
                                            angular_step_deg=angular_step_deg, refine_levels=refine_levels,
                                            max_shift_voxels=max_shift_voxels, voxel_size_angstrom=vox,
                                            device=device)
                r = yield from subjob(job, at=(step, total), prefix=f"iteration {it + 1}: re-seeding class {c + 1}",
                                      partials=False)
                avgs[c], res[c] = r.average, r.fsc.resolution_0143
                _set_poses(poses, c, take, r.alignment)
                fresh.add(c)
                reseeded.append(c)
        alignment = _gather(poses, labels, "exhaustive")
        new_avgs, res_new = _class_averages(p, m, labels, alignment, k, vox=vox, device=device)
        for c in range(k):  # an emptied class keeps its last average; a re-seeded one its fresh one
            if np.any(labels == c) and c not in reseeded:
                avgs[c], res[c] = new_avgs[c], res_new[c]
        sizes = np.bincount(labels, minlength=k).tolist()
        history.append({"iteration": it + 1, "changed_fraction": changed, "class_sizes": sizes,
                        "reseeded": [c + 1 for c in reseeded], "split": splits,
                        "seconds": time.perf_counter() - t_it})
        yield Progress(step, total, f"iteration {it + 1}: {100 * changed:.1f} % changed class, sizes {sizes}")
        step += 1
        yield Partial("classes", labels)
        yield Partial("confidence", conf)
        yield Partial("embedding", _embedding(feats_s))
        yield Partial("averages", avgs.copy())
        yield Partial("alignment", alignment)
        if changed == 0.0 and it > 0 and not reseeded and not splits:
            break
    yield Progress(total, total, "done")
    alignment = AlignmentResult(alignment.rotations, alignment.origins_voxels, alignment.scores, "exhaustive",
                                seconds=time.perf_counter() - t0)
    return ClusterResult(classes=labels, confidence=conf, embedding=_embedding(feats_s), alignment=alignment,
                         averages=avgs, method="joint", features=feats_s, scores=scores.copy(), bic=bic,
                         history=tuple(history), seconds=time.perf_counter() - t0)


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
    model=None,
    seed: int = 0,
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
    with torch.no_grad():
        p, m = _prepare(particles, particle_masks, device)
    m_np = None if m is None else m.cpu().numpy()
    p_np = p.cpu().numpy() if p.device.type != "cpu" else p.numpy()
    common = {"n_classes": n_classes, "iterations": int(iterations), "init_iterations": max(1, int(init_iterations)),
              "angular_step_deg": angular_step_deg, "refine_levels": refine_levels,
              "max_shift_voxels": max_shift_voxels, "vox": float(voxel_size_angstrom), "n_components": n_components,
              "max_frequency": max_frequency, "max_classes": max_classes, "seed": seed, "device": device, "t0": t0}
    if method == "classical":
        return (yield from _classical_job(p_np, m_np, **common))
    return (yield from _joint_job(p_np, m_np, init=init, model=model, min_class_fraction=float(min_class_fraction),
                                  global_rounds=int(global_rounds), reseed=reseed, **common))


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
    model : a trained :class:`.jimnet.JimNet` supplying the first features (joint), or None
    seed : random seed of the mixture starts
    device : torch device

    Returns
    -------
    ClusterResult (0-based ``classes``, ``confidence``, ``embedding`` (n, 2), within-class
    ``alignment``, ``averages`` (K, N, N, N)).
    """
    return run_job(cluster_subtomograms_job(particles, **kwargs), progress=False)
