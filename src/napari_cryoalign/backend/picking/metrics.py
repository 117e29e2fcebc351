"""Picking metrics (CONVENTIONS.md "Metrics").

A pick matches at most one true particle and a true particle at most one pick; picks are
matched greedily in order of decreasing score, each to the nearest still unmatched true
particle within the match radius. From the matching:

* precision, recall, F1 of the picks (at a score threshold);
* average precision: picks in score order, ``AP = sum_k precision@k * [pick k is a match] / n_true``
  (non-interpolated; a missed particle lowers it). mAP at radius r is this AP averaged over
  tomograms; "radii 2 and 5 voxels of the output grid" are radii measured after dividing the
  coordinates by the grid's stride (``scale_zyx``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["MatchResult", "PRF", "match_picks", "precision_recall_f1", "average_precision", "best_f1"]


@dataclass(frozen=True)
class MatchResult:
    """Greedy matching of picks to truth.

    Attributes
    ----------
    order : ``(n_picks,)`` indices of the picks in decreasing score order
    matched_truth : ``(n_picks,)`` for each pick *in that order*, the index of its true
        particle or -1
    n_true : number of true particles
    """

    order: np.ndarray
    matched_truth: np.ndarray
    n_true: int

    @property
    def is_match(self) -> np.ndarray:
        return self.matched_truth >= 0


@dataclass(frozen=True)
class PRF:
    """Precision, recall, F1 (fractions in [0, 1]) and the counts behind them."""

    precision: float
    recall: float
    f1: float
    n_true_positive: int
    n_picks: int
    n_true: int


def _scaled(xyz, scale_zyx) -> np.ndarray:
    a = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    s = np.asarray(scale_zyx, dtype=np.float64)[::-1]  # to (x, y, z)
    return a / s


def match_picks(
    picks_xyz,
    scores,
    truth_xyz,
    *,
    radius: float,
    scale_zyx: Sequence[float] = (1.0, 1.0, 1.0),
) -> MatchResult:
    """Greedy matching by score (see module docstring).

    Parameters
    ----------
    picks_xyz : ``(n, 3)`` pick coordinates (x, y, z) in voxels
    scores : ``(n,)`` scores (higher first); ties keep the input order
    truth_xyz : ``(m, 3)`` true coordinates (x, y, z) in voxels
    radius : match radius (inclusive), in units of the scaled grid
    scale_zyx : divide coordinates by this per axis before measuring (e.g. ``(1, 2, 2)`` for
        radii in voxels of a stride-2 output grid)
    """
    p = _scaled(picks_xyz, scale_zyx)
    t = _scaled(truth_xyz, scale_zyx)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    if sc.shape[0] != p.shape[0]:
        raise ValueError(f"{p.shape[0]} picks but {sc.shape[0]} scores")
    order = np.argsort(-sc, kind="stable")
    matched = np.full(p.shape[0], -1, dtype=np.int64)
    if t.shape[0] == 0 or p.shape[0] == 0:
        return MatchResult(order, matched, int(t.shape[0]))
    tree = cKDTree(t)
    cand = tree.query_ball_point(p[order], r=radius + 1e-9)
    used = np.zeros(t.shape[0], dtype=bool)
    for k, js in enumerate(cand):
        if not js:
            continue
        js = np.asarray(js)
        js = js[~used[js]]
        if js.size == 0:
            continue
        d = np.linalg.norm(t[js] - p[order[k]], axis=1)
        j = int(js[np.argmin(d)])
        used[j] = True
        matched[k] = j
    return MatchResult(order, matched, int(t.shape[0]))


def precision_recall_f1(picks_xyz, scores, truth_xyz, *, radius: float, threshold: float | None = None,
                        scale_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> PRF:
    """Precision, recall and F1 of the picks with ``score >= threshold`` (all picks if None)."""
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    p = np.asarray(picks_xyz, dtype=np.float64).reshape(-1, 3)
    if threshold is not None:
        keep = sc >= threshold
        p, sc = p[keep], sc[keep]
    m = match_picks(p, sc, truth_xyz, radius=radius, scale_zyx=scale_zyx)
    tp = int(m.is_match.sum())
    n = int(p.shape[0])
    prec = tp / n if n else 0.0
    rec = tp / m.n_true if m.n_true else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return PRF(prec, rec, f1, tp, n, m.n_true)


def average_precision(picks_xyz, scores, truth_xyz, *, radius: float,
                      scale_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Non-interpolated average precision of the ranked picks (see module docstring), in [0, 1]."""
    m = match_picks(picks_xyz, scores, truth_xyz, radius=radius, scale_zyx=scale_zyx)
    if m.n_true == 0:
        return float("nan")
    hit = m.is_match.astype(np.float64)
    if hit.size == 0:
        return 0.0
    prec_at_k = np.cumsum(hit) / np.arange(1, hit.size + 1)
    return float((prec_at_k * hit).sum() / m.n_true)


def best_f1(picks_xyz, scores, truth_xyz, *, radius: float,
            scale_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[PRF, float]:
    """The score threshold with the highest F1 (an oracle, for reporting): ``(PRF, threshold)``.

    Matching is done once over all picks; because greedy matching by score is prefix-stable,
    the matches of the top-k picks are exactly the first k of the full matching.
    """
    m = match_picks(picks_xyz, scores, truth_xyz, radius=radius, scale_zyx=scale_zyx)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)[m.order]
    if sc.size == 0 or m.n_true == 0:
        return PRF(0.0, 0.0, 0.0, 0, int(sc.size), m.n_true), float("inf")
    tp = np.cumsum(m.is_match)
    k = np.arange(1, sc.size + 1)
    prec = tp / k
    rec = tp / m.n_true
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    # only cut where the next score differs (a threshold keeps all ties)
    valid = np.r_[sc[1:] < sc[:-1], True]
    f1v = np.where(valid, f1, -1.0)
    i = int(np.argmax(f1v))
    return PRF(float(prec[i]), float(rec[i]), float(f1[i]), int(tp[i]), int(i + 1), m.n_true), float(sc[i])
