"""Gaussian mixtures, k-means, Hungarian label matching and clustering accuracy (torch + scipy).

* :func:`fit_gmm` -- a Gaussian mixture with full covariances fitted by expectation
  maximisation (Jim-Net's clustering step, Supplementary S2.3), k-means++ starts, several
  restarts, the best log-likelihood kept; :func:`select_n_classes` picks the number of
  components by the Bayesian information criterion.
* :func:`kmeans` -- Lloyd's algorithm with k-means++ seeding (the GMM's start).
* :func:`match_labels` -- Hungarian re-indexing of a new labelling onto an old one
  (``scipy.optimize.linear_sum_assignment`` on the contingency table), so that cluster ``k``
  keeps its index from one iteration to the next (Jim-Net's ``align_cluster_index``).
* :func:`clustering_accuracy` -- accuracy after the best one-to-one matching of predicted to
  true labels, overall and per true class; :func:`v_measure`.

Labels are 0-based integers internally. Features are ``(n, d)`` arrays (rows = particles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ...errors import InputError

__all__ = [
    "ClusteringAccuracy",
    "GaussianMixture",
    "clustering_accuracy",
    "fit_gmm",
    "kmeans",
    "match_labels",
    "select_n_classes",
    "v_measure",
]


def _features(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    t = np.asarray(x, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] == 0:
        raise InputError("features of shape (n, d)", field="features", got=f"shape {t.shape}")
    if not np.isfinite(t).all():
        raise InputError("finite feature values", field="features", got="NaN or inf")
    return t


def _check_k(k, n) -> int:
    if int(k) != k or not 1 <= k <= n:
        raise InputError(f"a number of clusters between 1 and the number of samples ({n})", field="n_classes", got=k)
    return int(k)


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (x ** 2).sum(1)[:, None] - 2.0 * x @ c.T + (c ** 2).sum(1)[None]


# ----------------------------------------------------------------------------- k-means
def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    centers = [x[rng.integers(n)]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        i = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return np.stack(centers)


def kmeans(features, n_clusters: int, *, n_init: int = 10, max_iter: int = 100,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means (Lloyd, k-means++ seeding, best of ``n_init`` by inertia).

    Parameters
    ----------
    features : ``(n, d)``
    n_clusters : K

    Returns
    -------
    labels : ``(n,)`` int64 in ``[0, K)``
    centers : ``(K, d)`` float64
    """
    x = _features(features)
    k = _check_k(n_clusters, x.shape[0])
    rng = np.random.default_rng(int(seed))
    best = (math.inf, None, None)
    for _ in range(max(1, int(n_init))):
        c = _kmeanspp(x, k, rng)
        for _ in range(int(max_iter)):
            lab = _sq_dist(x, c).argmin(1)
            cnt = np.bincount(lab, minlength=k)
            sums = np.zeros_like(c)
            np.add.at(sums, lab, x)
            new = np.where(cnt[:, None] > 0, sums / np.maximum(cnt, 1)[:, None], c)
            if np.allclose(new, c):
                break
            c = new
        lab = _sq_dist(x, c).argmin(1)
        inertia = float(((x - c[lab]) ** 2).sum())
        if inertia < best[0]:
            best = (inertia, lab, c)
    return best[1].astype(np.int64), best[2]


# ----------------------------------------------------------------------------- GMM
@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A fitted Gaussian mixture (full covariances).

    Attributes
    ----------
    weights : ``(K,)`` mixing weights, summing to 1
    means : ``(K, d)``
    covariances : ``(K, d, d)``
    labels : ``(n,)`` int64, most probable component of each training sample
    posteriors : ``(n, K)`` responsibilities ``p(k | x_i)``
    log_likelihood : total log-likelihood of the training samples
    bic : Bayesian information criterion ``-2 log L + p log n`` (lower is better)
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    labels: np.ndarray
    posteriors: np.ndarray
    log_likelihood: float
    bic: float

    @property
    def n_components(self) -> int:
        return len(self.weights)

    def predict_proba(self, features) -> np.ndarray:
        """Posteriors ``(m, K)`` of new samples ``(m, d)``."""
        logp = _log_joint(_features(features), self.weights, self.means, self.covariances)
        return np.exp(logp - _logsumexp(logp)[:, None])


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(1)
    return m + np.log(np.exp(a - m[:, None]).sum(1))


def _log_joint(x, w, mu, cov) -> np.ndarray:
    """``log w_k + log N(x_i | mu_k, cov_k)``, shape ``(n, K)``."""
    d = x.shape[1]
    chol = np.linalg.cholesky(cov)  # (K, d, d)
    diff = (x[None] - mu[:, None]).transpose(0, 2, 1)  # (K, d, n)
    sol = np.linalg.solve(chol, diff)  # (K, d, n), lower-triangular solve
    maha = (sol ** 2).sum(1)  # (K, n)
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)  # (K,)
    return (np.log(np.maximum(w, 1e-300))[:, None] - 0.5 * (maha + logdet[:, None] + d * math.log(2 * math.pi))).T


def _m_step(x, resp, reg, covariance):
    nk = resp.sum(0) + 1e-12  # (K,)
    mu = resp.T @ x / nk[:, None]
    diff = x[None] - mu[:, None]  # (K, n, d)
    d = x.shape[1]
    if covariance == "spherical":
        var = np.einsum("nk,kni->k", resp, diff ** 2) / (nk * d)
        cov = var[:, None, None] * np.eye(d)[None]
    else:
        cov = np.einsum("nk,kni,knj->kij", resp, diff, diff) / nk[:, None, None]
    cov = cov + reg * np.eye(d)
    return nk / x.shape[0], mu, cov


def fit_gmm(features, n_components: int, *, covariance: str = "full", n_init: int = 3, max_iter: int = 300,
            tol: float = 1e-5, reg_covar: float = 1e-6, init_labels=None, seed: int = 0) -> GaussianMixture:
    """Fit a Gaussian mixture with full covariance matrices by EM.

    Parameters
    ----------
    features : ``(n, d)`` samples
    n_components : K
    covariance : ``"full"`` (a covariance matrix per component, as Jim-Net) or ``"spherical"``
        (``sigma_k^2 I``: a soft k-means, for many dimensions and few samples per component)
    n_init : restarts from k-means starts (k-means++ seeded); the best log-likelihood wins
    max_iter, tol : EM stops after ``max_iter`` steps or when the mean log-likelihood per sample
        changes by less than ``tol``
    reg_covar : added to the covariance diagonals, relative to the mean feature variance
        (keeps them positive definite)
    init_labels : ``(n,)`` optional starting labels (e.g. the previous iteration's); used as
        one extra start
    seed : random seed of the starts

    Returns
    -------
    GaussianMixture (labels, posteriors, parameters, log-likelihood, BIC)
    """
    x = _features(features)
    n, d = x.shape
    k = _check_k(n_components, n)
    if covariance not in ("full", "spherical"):
        raise InputError("covariance 'full' or 'spherical'", field="covariance", got=covariance)
    reg = float(reg_covar) * max(float(x.var(0).mean()), 1e-12)
    starts = []
    if init_labels is not None:
        lab = np.asarray(init_labels, dtype=np.int64).reshape(-1)
        if lab.shape != (n,) or lab.min() < 0:
            raise InputError(f"{n} labels >= 0", field="init_labels", got=f"shape {lab.shape}")
        starts.append(lab % k)
    for i in range(max(1, int(n_init))):
        starts.append(kmeans(x, k, n_init=1, seed=int(seed) * 1000 + i)[0])
    best = None
    for lab in starts:
        resp = np.eye(k)[lab]
        resp = 0.98 * resp + 0.02 / k  # soft start: no empty component
        ll_old = -math.inf
        for _ in range(int(max_iter)):
            w, mu, cov = _m_step(x, resp, reg, covariance)
            logp = _log_joint(x, w, mu, cov)
            ll = _logsumexp(logp)
            resp = np.exp(logp - ll[:, None])
            mean_ll = float(ll.mean())
            if abs(mean_ll - ll_old) < tol:
                break
            ll_old = mean_ll
        total = float(ll.sum())
        if best is None or total > best[0]:
            best = (total, w, mu, cov, resp)
    total, w, mu, cov, resp = best
    p = (k - 1) + k * d + (k if covariance == "spherical" else k * d * (d + 1) // 2)
    bic = -2.0 * total + p * math.log(n)
    return GaussianMixture(weights=w, means=mu, covariances=cov, labels=resp.argmax(1).astype(np.int64),
                           posteriors=resp, log_likelihood=total, bic=bic)


def select_n_classes(features, *, max_classes: int = 8, min_classes: int = 1, covariance: str = "full",
                     seed: int = 0) -> tuple[int, dict]:
    """Number of mixture components by the lowest BIC over ``K = min_classes .. max_classes``.

    Returns ``(K, {K: bic})``. ``max_classes`` is capped so that every component has at least
    ``d + 2`` samples on average (a full covariance needs them; 3 for spherical ones).
    """
    x = _features(features)
    n, d = x.shape
    cap = max(1, min(int(max_classes), n // ((d + 2) if covariance == "full" else 3)))
    lo = max(1, min(int(min_classes), cap))
    bics = {k: fit_gmm(x, k, covariance=covariance, seed=seed).bic for k in range(lo, cap + 1)}
    return min(bics, key=bics.get), bics


# ----------------------------------------------------------------------------- labels
def _contingency(a: np.ndarray, b: np.ndarray, ka: int, kb: int) -> np.ndarray:
    c = np.zeros((ka, kb), dtype=np.int64)
    np.add.at(c, (a, b), 1)
    return c


def match_labels(new, previous, *, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-index ``new`` labels so they agree as much as possible with ``previous`` (Hungarian method).

    Parameters
    ----------
    new, previous : ``(n,)`` 0-based integer labels of the same samples
    n_classes : number of classes (default: largest label + 1 of either)

    Returns
    -------
    relabelled : ``(n,)`` ``mapping[new]``
    mapping : ``(K,)`` new index -> index in ``previous``'s numbering (a permutation)
    """
    new = np.asarray(new, dtype=np.int64).reshape(-1)
    previous = np.asarray(previous, dtype=np.int64).reshape(-1)
    if new.shape != previous.shape:
        raise InputError(f"two labellings of the same {len(previous)} samples", field="labels",
                         got=f"{len(new)} and {len(previous)}")
    k = int(n_classes) if n_classes is not None else int(max(new.max(initial=0), previous.max(initial=0)) + 1)
    c = _contingency(new, previous, k, k)
    rows, cols = linear_sum_assignment(-c)
    mapping = np.empty(k, dtype=np.int64)
    mapping[rows] = cols
    return mapping[new], mapping


@dataclass(frozen=True)
class ClusteringAccuracy:
    """Accuracy of a clustering after the best one-to-one matching of predicted to true labels.

    Attributes
    ----------
    accuracy : fraction of samples whose matched predicted label is their true label
    per_class : ``{true label: fraction of that class recovered}``
    mapping : ``{predicted label: true label}`` (Hungarian)
    """

    accuracy: float
    per_class: dict
    mapping: dict


def clustering_accuracy(true, pred) -> ClusteringAccuracy:
    """Clustering accuracy with Hungarian matching (Jim-Net's metric), overall and per true class.

    ``true`` and ``pred`` are ``(n,)`` integer labels (any numbering, e.g. 1-based classes and
    0-based clusters); the number of predicted and true clusters may differ (unmatched
    predicted clusters count as wrong).
    """
    t = np.asarray(true).reshape(-1)
    p = np.asarray(pred).reshape(-1)
    if t.shape != p.shape or t.size == 0:
        raise InputError("true and predicted labels of the same, non-zero length", field="labels",
                         got=f"{t.size} and {p.size}")
    tv, ti = np.unique(t, return_inverse=True)
    pv, pi = np.unique(p, return_inverse=True)
    c = _contingency(pi, ti, len(pv), len(tv))
    rows, cols = linear_sum_assignment(-c)
    mapping = {pv[r].item(): tv[c_].item() for r, c_ in zip(rows, cols)}
    hit = np.array([mapping.get(q.item()) == s.item() for q, s in zip(p, t)])
    per = {v.item(): float(hit[t == v].mean()) for v in tv}
    return ClusteringAccuracy(accuracy=float(hit.mean()), per_class=per, mapping=mapping)


def v_measure(true, pred) -> float:
    """V-measure (harmonic mean of homogeneity and completeness, Rosenberg & Hirschberg 2007), in [0, 1]."""
    t = np.unique(np.asarray(true).reshape(-1), return_inverse=True)[1]
    p = np.unique(np.asarray(pred).reshape(-1), return_inverse=True)[1]
    n = len(t)
    c = _contingency(t, p, t.max() + 1, p.max() + 1).astype(np.float64) / n

    def _h(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    ht, hp = _h(c.sum(1)), _h(c.sum(0))
    nz = c > 0
    outer = np.outer(c.sum(1), c.sum(0))
    mi = float((c[nz] * np.log(c[nz] / outer[nz])).sum())
    hom = 1.0 if ht == 0 else mi / ht
    com = 1.0 if hp == 0 else mi / hp
    return 0.0 if hom + com == 0 else 2 * hom * com / (hom + com)
