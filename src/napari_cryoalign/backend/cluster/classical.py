"""The classical clustering method (Förster et al. 2008, Heumann et al. 2011; ``method="classical"``).

1. reference-free iterative alignment of *all* particles to one global average;
2. principal components of the wedge-masked differences of the aligned particles to that average;
3. a Gaussian mixture (full covariances) on the leading components;
4. class averages from the global poses, then each class's particles re-aligned locally to
   their own class average and re-averaged.

Steps 1-3 (:func:`_classical`) also start the joint method with ``init="classical"``
(:mod:`.classify`, whose docstring describes both methods).
"""

from __future__ import annotations

import time

import numpy as np

from ..align.average import iterative_average_job
from ..align.exhaustive import refine_alignment_job
from ..align.types import AlignmentResult
from ..jobs import Partial, Progress, subjob
from .common import ClusterResult, _class_averages, _embedding, _filtered, _masks_for, _subset
from .features import wedge_masked_pca
from .gmm import fit_gmm, select_n_classes

__all__: list[str] = []


def _gmm_labels(features, k, *, init_labels=None, seed):
    if k == 1:
        n = len(features)
        return np.zeros(n, np.int64), np.ones(n)
    g = fit_gmm(features, k, init_labels=init_labels, seed=seed)
    return g.labels, g.posteriors


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
