"""Jim-Net (Zeng, Howe & Xu, ICCV 2021): joint unsupervised alignment and clustering, a slim 3-D PyTorch
version written from the paper (the authors published only 2-D code).

Parts, as in the paper's Supplementary S2.4 (figures S4-S8):

* :class:`SDC` -- a *stacked dilated convolution* layer: several ``3x3x3`` convolutions with
  different dilation rates in parallel ('same' padding), concatenated, ELU, batch norm.
* :class:`JimFeatureExtractor` -- SDC layers alternating with DCT spectral pooling
  (:class:`..align._dct.SpectralPool3d`, the pooling Gum-Net uses) that shrinks the maps to
  75 % per layer (coarse stage, "feature extractor 1") or 85 % (fine stage, "feature
  extractor 3"). Shared by both volumes of a pair (Siamese) and, for the coarse stage, by the
  cluster predicting module.
* :class:`ClusterHead` -- the cluster predicting module ``M_CP``: after each SDC layer a
  ``1x1x1`` convolution and global max pooling; the vectors are concatenated and go through
  two fully connected layers; the output of the second-last is the feature vector the
  Gaussian mixture clusters (:func:`jimnet_features`), the last gives the cluster logits.
* Coarse-to-fine rigid alignment ``M_AL``: the coarse stage correlates the two feature maps
  globally (:func:`..align.gumnet.feature_correlation`), regresses a rotation (continuous 6-D
  representation, :func:`..align.gumnet.rotation_from_6d`) and a shift, and warps the moving
  volume with missing-wedge imputation (:func:`..align.gumnet.warp_and_impute`); the fine stage
  repeats this on the warped volume with a *local* correlation (radius 1) and small transforms.
* :func:`rigid_regularization_loss` -- the fine-transformation regulariser
  ``L_R = 4 pi / 3 (2/5 (3 - tr A) + s^T s)`` (Supplementary eq. 1), the integral of
  ``|A x + s - x|^2`` over the unit ball, applied to the fine stage's transform (shift in
  units of the half box, the spatial transformer's normalised coordinates);
  :func:`affine_regularization_loss` is eq. 2 for general matrices.
* :func:`train_jimnet_job` -- the paper's training loop per epoch: features of all particles
  -> Gaussian mixture (full covariance; PCA instead of the paper's t-SNE before it) -> labels
  Hungarian re-indexed onto the previous epoch's -> pairs drawn *within* clusters -> loss =
  alignment loss (1 - correlation of the imputed, aligned volume with its partner) + ``L_R`` +
  ``alpha`` CE(cluster logits, mixture labels).

Transform convention (``CONVENTIONS.md``): predicted ``(A, o)`` are a RELION matrix and origin
(voxels, (x, y, z)) with ``geometry.align_particle_to_reference(moving, A, o) ~ fixed``.
Composition of the stages: ``A = A1 A2``, ``o = o1 + A1 o2``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError
from ..align._dct import SpectralPool3d
from ..align.gumnet import (
    feature_correlation,
    pair_correlation,
    rotation_from_6d,
    standardize,
    warp_and_impute,
)
from ..jobs import Partial, Progress, run_job
from .features import reduce_features
from .gmm import fit_gmm, match_labels

__all__ = [
    "SDC",
    "ClusterHead",
    "JimFeatureExtractor",
    "JimNet",
    "JimNetConfig",
    "JimNetTraining",
    "affine_regularization_loss",
    "draw_pairs_within_clusters",
    "jimnet_features",
    "rigid_regularization_loss",
    "train_jimnet",
    "train_jimnet_job",
]


def rigid_regularization_loss(rotations: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Jim-Net's fine-transformation regulariser ``L_R = 4 pi/3 (2/5 (3 - tr A) + s^T s)`` per transform.

    ``rotations`` ``(..., 3, 3)`` (rotation matrices), ``shifts`` ``(..., 3)`` in units of the
    ball's radius. Equals ``int_{|x| <= 1} |A x + s - x|^2 dx`` for a rotation ``A``. Returns ``(...)``.
    """
    tr = torch.diagonal(rotations, dim1=-2, dim2=-1).sum(-1)
    return (4.0 * math.pi / 3.0) * (0.4 * (3.0 - tr) + (shifts ** 2).sum(-1))


def affine_regularization_loss(matrices: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Eq. 2 of the supplement for any matrix: ``4 pi/3 (1/5 (3 + tr(A^T A) - 2 tr A) + s^T s)``."""
    tr = torch.diagonal(matrices, dim1=-2, dim2=-1).sum(-1)
    tr_ata = (matrices ** 2).sum((-2, -1))
    return (4.0 * math.pi / 3.0) * (0.2 * (3.0 + tr_ata - 2.0 * tr) + (shifts ** 2).sum(-1))


@dataclass(frozen=True)
class JimNetConfig:
    """Architecture of :class:`JimNet`.

    Attributes
    ----------
    box : input edge, voxels
    channels : filters of each dilated convolution of an SDC layer
    dilations : dilation rates stacked in parallel in each SDC layer
    n_layers : SDC layers per feature extractor
    coarse_fraction, fine_fraction : spectral pooling factors (paper: 0.75 coarse, 0.85 fine)
    n_clusters : outputs of the cluster head
    feature_dim : width of the cluster head's second-last layer (the clustering features)
    hidden : units of the regressors' hidden layer
    max_shift : coarse stage shift bound, voxels (fine stage: a quarter of it)
    """

    box: int = 32
    channels: int = 8
    dilations: tuple = (1, 2, 3)
    n_layers: int = 3
    coarse_fraction: float = 0.75
    fine_fraction: float = 0.85
    n_clusters: int = 5
    feature_dim: int = 32
    hidden: int = 64
    max_shift: float = 4.0

    def sizes(self, fraction: float) -> list[int]:
        """Feature map edge after each SDC + pooling layer."""
        out, n = [], int(self.box)
        for _ in range(int(self.n_layers)):
            n = max(3, round(n * float(fraction)))
            out.append(n)
        return out


class SDC(nn.Module):
    """Stacked dilated convolution ('SDC same'): parallel 3x3x3 convs at several dilations, concat, ELU, BN.

    ``(B, cin, n, n, n)`` -> ``(B, channels * len(dilations), n, n, n)``.
    """

    def __init__(self, cin: int, channels: int, dilations=(1, 2, 3)):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv3d(cin, channels, 3, padding=d, dilation=d) for d in dilations)
        self.bn = nn.BatchNorm3d(channels * len(dilations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.elu(torch.cat([c(x) for c in self.convs], 1)))


class JimFeatureExtractor(nn.Module):
    """SDC layers alternating with spectral pooling to ``fraction`` of the size.

    ``forward(x)`` with ``x`` ``(B, 1, box, box, box)`` returns the list of the SDC outputs
    (before pooling, for the cluster head) and the final pooled, channel-L2-normalised map.
    """

    def __init__(self, cfg: JimNetConfig, fraction: float):
        super().__init__()
        self.layers = nn.ModuleList()
        self.pools = nn.ModuleList()
        cin, n = 1, int(cfg.box)
        width = cfg.channels * len(cfg.dilations)
        for out in cfg.sizes(fraction):
            self.layers.append(SDC(cin, cfg.channels, cfg.dilations))
            self.pools.append(SpectralPool3d(n, out, out))
            cin, n = width, out
        self.out_channels = width
        self.out_size = n

    def forward(self, x: torch.Tensor):
        taps = []
        for sdc, pool in zip(self.layers, self.pools):
            x = sdc(x)
            taps.append(x)
            x = pool(x)
        return taps, F.normalize(x, dim=1, eps=1e-6)


class ClusterHead(nn.Module):
    """Cluster predicting module: per-layer 1x1x1 conv + global max pool, concat, two FC layers."""

    def __init__(self, cfg: JimNetConfig, in_channels: int):
        super().__init__()
        self.reduce = nn.ModuleList(nn.Conv3d(in_channels, cfg.channels, 1) for _ in range(cfg.n_layers))
        self.fc1 = nn.Linear(cfg.channels * cfg.n_layers, cfg.feature_dim)
        self.fc2 = nn.Linear(cfg.feature_dim, cfg.n_clusters)

    def forward(self, taps) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.cat([torch.amax(conv(t), dim=(2, 3, 4)) for conv, t in zip(self.reduce, taps)], 1)
        feat = F.elu(self.fc1(pooled))
        return feat, self.fc2(feat)


def _local_correlation(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Local correlation (radius 1): ``(B, 27, s, s, s)``, channel ``j`` = <fa(r), fb(r + d_j)>."""
    pad = F.pad(fb, (1, 1, 1, 1, 1, 1))
    s = fa.shape[-1]
    out = []
    for dz in range(3):
        for dy in range(3):
            for dx in range(3):
                out.append((fa * pad[..., dz:dz + s, dy:dy + s, dx:dx + s]).sum(1))
    return torch.stack(out, 1)


class _Regressor(nn.Module):
    """Correlation volume -> rotation (6-D) and shift; starts at the identity and zero shift."""

    def __init__(self, cin: int, size: int, hidden: int, max_shift: float):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv3d(cin, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ELU(), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(16 * size ** 3, hidden), nn.ELU(), nn.Linear(hidden, 9))
        self.max_shift = float(max_shift)
        nn.init.normal_(self.fc[-1].weight, std=1e-3)
        with torch.no_grad():
            self.fc[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0, 0]))

    def forward(self, corr):
        raw = self.fc(self.conv(corr))
        return rotation_from_6d(raw[:, :6]), self.max_shift * torch.tanh(raw[:, 6:])


class JimNet(nn.Module):
    """Jim-Net: shared feature extractors, cluster predicting module, coarse-to-fine rigid alignment.

    * ``cluster(x)`` with ``x`` ``(B, box, box, box)`` (standardised) -> features ``(B, feature_dim)``,
      logits ``(B, n_clusters)``;
    * ``forward(moving, fixed, moving_mask=None)`` -> dict with ``rotation`` / ``origin`` (composed
      transform), ``fine_rotation`` / ``fine_origin``, ``aligned`` (imputed, warped moving),
      ``logits`` of ``moving``.
    """

    def __init__(self, config: JimNetConfig | None = None):
        super().__init__()
        cfg = config or JimNetConfig()
        self.config = cfg
        self.coarse = JimFeatureExtractor(cfg, cfg.coarse_fraction)
        self.fine = JimFeatureExtractor(cfg, cfg.fine_fraction)
        self.head = ClusterHead(cfg, self.coarse.out_channels)
        sc, sf = self.coarse.out_size, self.fine.out_size
        self.reg_coarse = _Regressor(sc ** 3, sc, cfg.hidden, cfg.max_shift)
        self.reg_fine = _Regressor(27, sf, cfg.hidden, cfg.max_shift / 4.0)

    def cluster(self, x: torch.Tensor):
        taps, _ = self.coarse(x.unsqueeze(1))
        return self.head(taps)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, moving_mask: torch.Tensor | None = None) -> dict:
        b = moving.shape[0]
        taps, both = self.coarse(torch.cat([moving, fixed], 0).unsqueeze(1))
        feat, logits = self.head([t[:b] for t in taps])
        a1, o1 = self.reg_coarse(feature_correlation(both[:b], both[b:]))
        warped1, _, _ = warp_and_impute(moving, fixed, a1, o1, moving_mask=moving_mask)
        _, fboth = self.fine(torch.cat([warped1, fixed], 0).unsqueeze(1))
        a2, o2 = self.reg_fine(_local_correlation(fboth[:b], fboth[b:]))
        rot = a1 @ a2
        origin = o1 + torch.einsum("bij,bj->bi", a1, o2)
        aligned, _, _ = warp_and_impute(moving, fixed, rot, origin, moving_mask=moving_mask)
        return {"rotation": rot, "origin": origin, "fine_rotation": a2, "fine_origin": o2, "aligned": aligned,
                "features": feat, "logits": logits}


def jimnet_features(model: JimNet, particles, *, batch_size: int = 32, device="cpu") -> np.ndarray:
    """The cluster head's second-last layer for each particle: ``(n, feature_dim)`` float64."""
    x = torch.as_tensor(np.asarray(particles, dtype=np.float32))
    if x.ndim != 4 or tuple(x.shape[1:]) != (model.config.box,) * 3:
        raise InputError(f"particles of shape (n, {model.config.box}, {model.config.box}, {model.config.box})",
                         field="particles", got=f"shape {tuple(x.shape)}")
    model = model.to(device)
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            out.append(model.cluster(standardize(x[s:s + batch_size].to(device)))[0].double().cpu())
    model.train(was)
    return torch.cat(out).numpy()


def draw_pairs_within_clusters(labels, *, rng: np.random.Generator) -> np.ndarray:
    """Partner of each particle: another particle of its own cluster (itself if alone), ``(n,)`` indices.

    A random permutation of each cluster paired with a cyclic shift of it, so every particle is
    used once as moving and once as fixed (Jim-Net pairs images of the same GMM cluster).
    """
    labels = np.asarray(labels, dtype=np.int64)
    partner = np.arange(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) > 1:
            perm = rng.permutation(idx)
            partner[perm] = np.roll(perm, -1)
    return partner


@dataclass(frozen=True, eq=False)
class JimNetTraining:
    """Outcome of :func:`train_jimnet`: the model, per-epoch mean losses and the last labels (0-based)."""

    model: JimNet
    losses: tuple
    labels: np.ndarray
    seconds: float


def train_jimnet_job(
    particles,
    *,
    n_classes: int,
    particle_masks=None,
    model: JimNet | None = None,
    epochs: int = 5,
    batch_size: int = 8,
    lr: float = 1e-3,
    alpha: float = 0.01,
    regularization_weight: float = 1.0,
    n_features: int = 4,
    seed: int = 0,
    device="cpu",
) -> Generator[Progress | Partial, None, JimNetTraining]:
    """Train Jim-Net unsupervised on a particle set (job version of :func:`train_jimnet`).

    Parameters
    ----------
    particles : ``(n, box, box, box)``
    n_classes : clusters of the Gaussian mixture and of the cluster head
    particle_masks : observed Fourier mask (fftshift-ed) ``(box, box, box)`` shared by all, or None
    model : a JimNet to continue from (default: a new one for this box)
    epochs, batch_size, lr : Adam training schedule
    alpha : weight of the cluster cross-entropy (paper: 0.01)
    regularization_weight : weight of ``L_R`` on the fine transform
    n_features : principal components of the features the mixture clusters

    Yields ``Partial("loss", float)`` per batch and ``Partial("classes", (n,))`` per epoch.
    """
    t0 = time.perf_counter()
    x = torch.as_tensor(np.asarray(particles, dtype=np.float32))
    if x.ndim != 4 or not (x.shape[1] == x.shape[2] == x.shape[3]):
        raise InputError("particles of shape (n, N, N, N)", field="particles", got=f"shape {tuple(x.shape)}")
    n, box = x.shape[0], x.shape[-1]
    if int(n_classes) != n_classes or not 1 <= n_classes <= n:
        raise InputError(f"a number of classes between 1 and {n}", field="n_classes", got=n_classes)
    torch.manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    if model is None:
        model = JimNet(JimNetConfig(box=box, n_clusters=int(n_classes)))
    if model.config.box != box:
        raise InputError(f"particles of the model's box {model.config.box}", field="particles", got=box)
    model = model.to(device)
    mask = None if particle_masks is None else torch.as_tensor(np.asarray(particle_masks, dtype=np.float32),
                                                              device=device)
    x = standardize(x).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=float(lr))
    labels_prev = None
    losses = []
    n_batches = math.ceil(n / batch_size)
    total = int(epochs) * n_batches
    for ep in range(int(epochs)):
        feats = reduce_features(jimnet_features(model, x.cpu().numpy(), device=device), n_features)
        labels = fit_gmm(feats, int(n_classes), seed=seed + ep).labels if n_classes > 1 else np.zeros(n, np.int64)
        if labels_prev is not None:
            labels, _ = match_labels(labels, labels_prev, n_classes=int(n_classes))
        labels_prev = labels
        yield Partial("classes", labels)
        partner = draw_pairs_within_clusters(labels, rng=rng)
        order = rng.permutation(n)
        target = torch.as_tensor(labels, device=device)
        ep_loss = []
        model.train()
        for bi in range(n_batches):
            idx = torch.as_tensor(order[bi * batch_size:(bi + 1) * batch_size], device=device)
            if len(idx) < 2:  # batch norm needs two samples
                continue
            out = model(x[idx], x[torch.as_tensor(partner, device=device)[idx]], mask)
            l_align = (1.0 - pair_correlation(out["aligned"], x[torch.as_tensor(partner, device=device)[idx]])).mean()
            l_reg = rigid_regularization_loss(out["fine_rotation"], out["fine_origin"] / (box / 2)).mean()
            l_ce = F.cross_entropy(out["logits"], target[idx])
            loss = l_align + regularization_weight * l_reg + float(alpha) * l_ce
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.item()
            ep_loss.append(value)
            yield Partial("loss", value)
            yield Progress(ep * n_batches + bi + 1, total, f"epoch {ep + 1}: loss {value:.4f}")
        losses.append(float(np.mean(ep_loss)) if ep_loss else float("nan"))
    model.eval()
    return JimNetTraining(model=model, losses=tuple(losses), labels=labels_prev, seconds=time.perf_counter() - t0)


def train_jimnet(particles, **kwargs) -> JimNetTraining:
    """Train Jim-Net on particles without labels (see :func:`train_jimnet_job` for the parameters)."""
    return run_job(train_jimnet_job(particles, **kwargs), progress=False)
