"""Losses of the sparse-label picker.

* :func:`pu_focal_loss` - the non-negative positive-unlabeled risk with focal terms
  (Huang et al. 2022, Eq. 4-7; Kiryo et al. 2017 for the non-negative correction);
* :func:`focal_loss` - the plain CenterNet focal loss treating unlabelled voxels as negatives
  (the "no PU" ablation, and a validation loss);
* :func:`debiased_contrastive_loss` - the voxel-level debiased contrastive loss (Eq. 8-13,
  after Chuang et al. 2020) on a random subsample of voxels;
* :func:`consistency_loss` - MSE between the heatmaps of two augmented views (Eq. 14).

Target convention (:mod:`.targets`): ``y == 1`` true positives (label centres), ``0 < y < 1``
soft positives (the Gaussian around a centre), ``y == -1`` unlabelled, ``y == -2`` known
negatives (places the user marked as not a particle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pu_focal_loss", "focal_loss", "debiased_contrastive_loss", "consistency_loss"]

_EPS = 1e-6


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    if n == 0:
        return x.new_zeros(())
    return (x * mask).sum() / n


def pu_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    prior: float,
    alpha: float = 2.0,
    beta: float = 4.0,
    negative_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Non-negative PU risk with focal terms, plus a known-negative term when there are any.

    ``R = prior * R_p+ + max(0, R_u- - prior * R_p-)`` with (``p = sigmoid(logits)``,
    ``y = target``; each term a mean over its voxel set, all as positive losses)::

        R_p+ = mean_tp[-(1-p)^a log p]      + mean_sp[-(1-y)^b p^a log(1-p)]
        R_p- = mean_tp[-p^a log(1-p)]       + mean_sp[-y^b (1-p)^a log p]
        R_u- = mean_u [-p^a log(1-p)]

    The true-positive and soft-positive means are summed with equal weight (as the reference
    code does; the paper's ``pi_tp, pi_sp`` weighting would give the few centre voxels almost
    no weight). When ``R_u- - prior * R_p-`` is negative the negative part is dropped (its
    gradient is zero; the reference code's choice, rather than nnPU's gradient ascent).

    Known negatives (``y == -2``, not in the paper: removed picks, see docs/picking.md) add
    ``negative_weight * R_n-`` with ``R_n- = mean_n[-p^a log(1-p)]``: the negative-class risk
    measured on certain negatives instead of estimated from unlabelled data (PNU learning,
    Sakai et al. 2017). They are not part of the unlabelled mean.

    Parameters
    ----------
    logits : any shape, pre-sigmoid heatmap
    target : same shape, values in ``{-1} U [0, 1]``
    prior : class prior ``pi_p`` in (0, 1)
    alpha, beta : focal exponents (2, 4)
    negative_weight : weight of the known-negative risk

    Returns
    -------
    loss : scalar tensor
    parts : floats ``r_p_plus, r_p_minus, r_u_minus, negative_risk, r_n_minus`` for logging and tests
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    logp = F.logsigmoid(logits)
    log1mp = F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    tp = (target >= 1.0 - _EPS).to(logits.dtype)
    sp = ((target > 0.0) & (target < 1.0 - _EPS)).to(logits.dtype)
    kn_mask = target < -1.5
    un = ((target < 0.0) & ~kn_mask).to(logits.dtype)
    kn = kn_mask.to(logits.dtype)
    y = target.clamp(0.0, 1.0)
    r_p_plus = _masked_mean(-((1 - p) ** alpha) * logp, tp) + _masked_mean(-((1 - y) ** beta) * p**alpha * log1mp, sp)
    r_p_minus = _masked_mean(-(p**alpha) * log1mp, tp) + _masked_mean(-(y**beta) * (1 - p) ** alpha * logp, sp)
    r_u_minus = _masked_mean(-(p**alpha) * log1mp, un)
    neg = r_u_minus - prior * r_p_minus
    loss = prior * r_p_plus + torch.clamp(neg, min=0.0)
    r_n_minus = _masked_mean(-(p**alpha) * log1mp, kn)  # 0 when there are no known negatives
    loss = loss + float(negative_weight) * r_n_minus
    parts = {
        "r_n_minus": float(r_n_minus.detach()),
        "r_p_plus": float(r_p_plus.detach()),
        "r_p_minus": float(r_p_minus.detach()),
        "r_u_minus": float(r_u_minus.detach()),
        "negative_risk": float(neg.detach()),
    }
    return loss, parts


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet focal loss with every voxel that is not a centre a negative (``y < 0`` read as 0).

    ``-(sum_tp (1-p)^a log p + sum_rest (1-y)^b p^a log(1-p)) / max(1, n_tp)``.
    """
    logp = F.logsigmoid(logits)
    log1mp = F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    tp = (target >= 1.0 - _EPS).to(logits.dtype)
    y = target.clamp(0.0, 1.0)
    pos = (-((1 - p) ** alpha) * logp * tp).sum()
    negl = (-((1 - y) ** beta) * p**alpha * log1mp * (1 - tp)).sum()
    return (pos + negl) / tp.sum().clamp(min=1.0)


def consistency_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """``MSE(sigmoid(a), sigmoid(b))`` of two views brought back into the same frame."""
    return F.mse_loss(torch.sigmoid(logits_a), torch.sigmoid(logits_b))


def debiased_contrastive_loss(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    target: torch.Tensor,
    probability: torch.Tensor,
    *,
    prior: float,
    temperature: float = 0.07,
    n_anchors: int = 256,
    max_positives: int = 64,
    unsup_weight: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Voxel-level debiased contrastive loss on a subsample of voxels.

    The reference code compares every voxel with every voxel (a ``2N x 2N`` matrix, 2.4 GB for
    its crop size). Here ``n_anchors`` voxels are drawn per call: every true-positive voxel
    (``y == 1``, at most ``max_positives``) plus random other voxels; both views of each drawn
    voxel enter the similarity matrix (``2K x 2K``, K = ``n_anchors``).

    * positive anchors (Eq. 8-9): the other ``2 n_p - 1`` positive features are its positives,
      the ``2 n_n`` others its (biased) negatives, debiased as
      ``g = max((mean_neg - pi * mean_pos) / (1 - pi), e^{-1/t})``;
    * unlabelled anchors (Eq. 10-13): the positive is the same voxel in the other view;
      the rest are negatives debiased with the predicted probability ``q`` of being a
      particle: ``q * L(pi) + (1 - q) * L(1 - pi)`` where ``L(tau)`` uses
      ``g = max((mean_rest - tau * e^{pos}) / (1 - tau), e^{-1/t})``. (Chuang et al.'s
      estimator; the paper's Eq. 12-13 print the priors the other way round, the reference
      code uses this form.)

    Parameters
    ----------
    features_a, features_b : ``(B, C, z, y, x)`` unit-norm features of the two views, already
        in the same frame
    target : ``(B, z, y, x)`` targets
    probability : ``(B, z, y, x)`` predicted heatmap (detached inside)
    prior : class prior ``pi_p``
    temperature : ``t``
    n_anchors, max_positives : subsample sizes
    unsup_weight : weight ``lambda_2`` of the unlabelled term

    Returns
    -------
    loss : ``L_sup + unsup_weight * L_unsup`` (scalar)
    parts : floats ``sup``, ``unsup``
    """
    b, c = features_a.shape[:2]
    fa = features_a.permute(0, 2, 3, 4, 1).reshape(-1, c)
    fb = features_b.permute(0, 2, 3, 4, 1).reshape(-1, c)
    y = target.reshape(-1)
    q = probability.detach().reshape(-1).clamp(0.0, 1.0)
    dev = fa.device
    pos_idx = torch.nonzero(y >= 1.0 - _EPS).reshape(-1)
    if pos_idx.numel() > max_positives:
        perm = torch.randperm(pos_idx.numel(), generator=generator)[:max_positives].to(dev)
        pos_idx = pos_idx[perm]
    n_rest = max(0, int(n_anchors) - pos_idx.numel())
    others = torch.nonzero(y < 1.0 - _EPS).reshape(-1)
    if others.numel() > n_rest:
        perm = torch.randperm(others.numel(), generator=generator)[:n_rest].to(dev)
        others = others[perm]
    idx = torch.cat([pos_idx, others])
    k = idx.numel()
    if k < 2:
        zero = fa.sum() * 0.0
        return zero, {"sup": 0.0, "unsup": 0.0}
    z = torch.cat([fa[idx], fb[idx]], dim=0)  # (2K, C)
    is_pos = torch.zeros(2 * k, dtype=torch.bool, device=dev)
    is_pos[: pos_idx.numel()] = True
    is_pos[k : k + pos_idx.numel()] = True
    sim = z @ z.t() / temperature
    m = sim.max(dim=1, keepdim=True).values.detach()
    e = torch.exp(sim - m)  # scaled by e^{-m} per row: ratios unchanged
    floor = torch.exp(-1.0 / temperature - m.squeeze(1))
    eye = torch.eye(2 * k, dtype=torch.bool, device=dev)
    e = e.masked_fill(eye, 0.0)

    # positive anchors
    n_p = int(is_pos.sum())
    sup = z.new_zeros(())
    if n_p >= 2:
        posm = is_pos[None, :].expand(2 * k, -1) & ~eye
        negm = ~is_pos[None, :].expand(2 * k, -1)
        rows = is_pos
        mean_pos = (e * posm).sum(1)[rows] / (n_p - 1)
        n_neg = int((~is_pos).sum())
        if n_neg > 0:
            mean_neg = (e * negm).sum(1)[rows] / n_neg
            g = torch.maximum((mean_neg - prior * mean_pos) / (1.0 - prior), floor[rows])
            sup = -torch.log(mean_pos / (mean_pos + g) + 1e-12).mean()

    # unlabelled anchors: positive = the same voxel in the other view
    unsup = z.new_zeros(())
    un_rows = ~is_pos
    if int(un_rows.sum()) > 0 and 2 * k > 2:
        partner = torch.cat([torch.arange(k, 2 * k), torch.arange(0, k)]).to(dev)
        e_pos = e[torch.arange(2 * k, device=dev), partner]
        rest = (e.sum(1) - e_pos) / (2 * k - 2)
        qq = torch.cat([q[idx], q[idx]])
        losses = []
        for tau, w in ((prior, qq), (1.0 - prior, 1.0 - qq)):
            g = torch.maximum((rest - tau * e_pos) / (1.0 - tau), floor)
            losses.append(w * -torch.log(e_pos / (e_pos + g) + 1e-12))
        unsup = (losses[0] + losses[1])[un_rows].mean()
    total = sup + unsup_weight * unsup
    return total, {"sup": float(sup.detach()), "unsup": float(unsup.detach())}
