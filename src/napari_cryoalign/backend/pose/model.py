"""Image2Sphere-style pose network: image -> probability over a HEALPix grid on SO(3).

Architecture (Klee et al. 2023, "Image to Sphere"; CESPED's baseline), built on the real
spherical harmonics and Wigner matrices of :mod:`.harmonics`:

1. **Encoder**: a small CNN (a strided 5x5 then 3x3 convolutions, batch norm, ReLU) maps the
   preprocessed ``(S, S)`` image to a feature map ``(C, S/4, S/4)``. Small on purpose: it
   runs at hundreds of particles per second on two CPU cores.
2. **Orthographic projection** onto the upper hemisphere: every HEALPix point ``x`` with
   ``z >= 0`` (level ``projector_level``) takes the feature at image position ``(x, y)``
   (bilinear; the hemisphere covers ``coverage`` of the box). An in-plane rotation of the
   image by ``Q`` rotates this spherical signal by ``Q`` about z.
3. A 1x1 linear map to ``sphere_features`` channels and the spherical-harmonic transform up
   to degree ``lmax``: coefficients ``c`` ``(B, F, (lmax+1)²)``.
4. **S² convolution** with learned filters ``ψ`` (given by their harmonic coefficients):
   ``F_l^o = Σ_c c_l^c (ψ_l^{c,o})ᵀ``, a band-limited function on SO(3),
   ``f^o(R) = Σ_l <F_l^o, D_l(R)>``.
5. **SO(3) nonlinearity**: ``f`` evaluated on an SO(3) grid, ReLU, projected back onto the
   band-limited functions (least squares).
6. **SO(3) convolution** (``F_l -> Σ_i F_l^i K_l^i``, learned ``K``) to one output function,
   whose values on the HEALPix SO(3) grid (:func:`.grid.so3_healpix_grid`, ``grid_level``)
   are the logits of the pose distribution.

Equivariance: rotating the image in-plane by ``Q`` turns ``c`` into ``D(Q) c``, every
``F_l`` into ``D_l(Q) F_l`` and the output ``f(R)`` into ``f(Qᵀ R)``: the predicted pose
``A`` becomes ``Q A``, exactly what the pose of the rotated image is (up to the sampling of
the grids). Steps 4-6 are exact in the harmonic domain; only the encoder and the
nonlinearity's grid are approximate, as in I2S.

Because the output is a band-limited function of the rotation, it can be evaluated at any
rotation, which :func:`PoseNet.refine_on_offsets` uses to refine the grid argmax locally.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError
from .grid import healpix_vectors, so3_grid_euler
from .harmonics import (
    degree_slices,
    n_coefficients,
    spherical_harmonics,
    wigner_d,
    wigner_d_euler,
    wigner_slices,
)

__all__ = ["PoseNet", "PoseNetConfig", "grid_wigner"]


@dataclass(frozen=True)
class PoseNetConfig:
    """Hyper-parameters of :class:`PoseNet` (stored in model files).

    image_size : input images are ``(image_size, image_size)`` (preprocessed, Fourier-resized)
    channels : encoder channels per stage (the first two stages halve the size)
    lmax : highest harmonic degree
    sphere_features : channels of the hemisphere signal
    so3_channels : channels of the S² convolution output / SO(3) nonlinearity
    projector_level : HEALPix level of the hemisphere points (3: 384 points)
    activation_level, activation_psi : SO(3) grid of the nonlinearity (HEALPix level x in-plane angles)
    grid_level : HEALPix level of the output SO(3) grid (``72 * 8**level`` rotations)
    coverage : fraction of the box radius the hemisphere covers
    """

    image_size: int = 64
    channels: tuple = (16, 32, 64)
    lmax: int = 6
    sphere_features: int = 32
    so3_channels: int = 4
    projector_level: int = 3
    activation_level: int = 2
    activation_psi: int = 8
    grid_level: int = 3
    coverage: float = 0.9

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PoseNetConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "channels" in kw:
            kw["channels"] = tuple(int(c) for c in kw["channels"])
        return cls(**kw)

    def check(self) -> PoseNetConfig:
        if self.image_size < 16 or self.image_size % 4:
            raise InputError("an image size >= 16 divisible by 4", field="image_size", got=self.image_size)
        if not 1 <= self.lmax <= 12:
            raise InputError("lmax between 1 and 12", field="lmax", got=self.lmax)
        if not 0 <= self.grid_level <= 4:
            raise InputError("an SO(3) grid level between 0 and 4", field="grid_level", got=self.grid_level)
        return self


@lru_cache(maxsize=6)
def grid_wigner(level: int, lmax: int) -> tuple[torch.Tensor, np.ndarray]:
    """``(D_flat (n_grid, W), euler (n_grid, 3))`` of the HEALPix SO(3) grid at ``level`` (cached)."""
    eul = so3_grid_euler(level)
    return wigner_d_euler(eul, lmax), eul


@lru_cache(maxsize=6)
def _activation_wigner(level: int, n_psi: int, lmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .grid import healpix_nest_angles

    theta, phi = healpix_nest_angles(level)
    psi = np.arange(n_psi) * (360.0 / n_psi)
    eul = np.column_stack([np.tile(np.degrees(phi), n_psi), np.tile(np.degrees(theta), n_psi),
                           np.repeat(psi, theta.size)])
    d = wigner_d_euler(eul, lmax, dtype=torch.float64)  # (M, W)
    return d.float(), torch.linalg.pinv(d).float()  # evaluate: x @ d.T ; back: y @ pinv.T


class PoseNet(nn.Module):
    """The network of the module docstring. ``forward(images (B, S, S)) -> coefficients (B, W)``;
    :meth:`grid_logits` turns coefficients into logits on the output grid."""

    def __init__(self, config: PoseNetConfig):
        super().__init__()
        cfg = config.check()
        self.config = cfg
        layers, c_in = [], 1
        last = len(cfg.channels) - 1
        for k, c in enumerate(cfg.channels):
            # the first two stages halve the size (S -> S/4); the last stage has one convolution
            stride = 2 if k < 2 else 1
            ks = 5 if k == 0 else 3
            layers += [nn.Conv2d(c_in, c, ks, stride=stride, padding=ks // 2, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            if k < last:
                layers += [nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.encoder = nn.Sequential(*layers)
        pts = healpix_vectors(cfg.projector_level)
        n_sphere = len(pts)
        pts = pts[pts[:, 2] >= -1e-9]
        # grid_sample coordinates: x -> columns, y -> rows, in [-1, 1]
        self.register_buffer("proj_grid", torch.as_tensor(pts[:, :2] * cfg.coverage, dtype=torch.float32)[None, None])
        y = spherical_harmonics(torch.as_tensor(pts), cfg.lmax) * (4 * np.pi / n_sphere)
        self.register_buffer("sh_weights", y.float())  # (P, K)
        self.to_sphere = nn.Conv1d(c_in, cfg.sphere_features, 1)
        k = n_coefficients(cfg.lmax)
        self.psi = nn.Parameter(torch.randn(cfg.sphere_features, cfg.so3_channels, k) / np.sqrt(cfg.sphere_features))
        self.so3_kernel = nn.ParameterList([
            nn.Parameter(torch.randn(cfg.so3_channels, 2 * l + 1, 2 * l + 1) / np.sqrt(cfg.so3_channels * (2 * l + 1)))
            for l in range(cfg.lmax + 1)])
        d_act, d_act_pinv = _activation_wigner(cfg.activation_level, cfg.activation_psi, cfg.lmax)
        self.register_buffer("act_eval", d_act.T.contiguous())  # (W, M)
        self.register_buffer("act_back", d_act_pinv.T.contiguous())  # (M, W)
        self._grid_cache = None

    # -- pieces ------------------------------------------------------------------------------
    def sphere_coefficients(self, images: torch.Tensor) -> torch.Tensor:
        """Harmonic coefficients of the hemisphere signal, ``(B, sphere_features, (lmax+1)²)``."""
        x = images[:, None] if images.ndim == 3 else images
        feat = self.encoder(x)
        g = self.proj_grid.expand(feat.shape[0], -1, -1, -1)
        s = F.grid_sample(feat, g, mode="bilinear", padding_mode="zeros", align_corners=False)[:, :, 0]  # (B, C, P)
        s = F.relu(self.to_sphere(s))
        return s @ self.sh_weights

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, S, S)`` preprocessed images -> SO(3) Fourier coefficients ``(B, W)`` of the output function."""
        c = self.sphere_coefficients(images)
        lmax = self.config.lmax
        blocks = []
        for l, sl in enumerate(degree_slices(lmax)):
            # F_l^o = sum_c c_l^c (psi_l^{c,o})^T  -> (B, O, 2l+1, 2l+1)
            blocks.append(torch.einsum("bcm,con->bomn", c[:, :, sl], self.psi[:, :, sl]).flatten(2))
        f = torch.cat(blocks, dim=2)  # (B, O, W)
        scale = 1.0 / np.sqrt(f.shape[-1])
        h = F.relu(f @ self.act_eval * scale) @ self.act_back  # SO(3) nonlinearity
        out = []
        for l, sl in enumerate(wigner_slices(lmax)):
            d = 2 * l + 1
            blk = h[:, :, sl].reshape(h.shape[0], h.shape[1], d, d)
            out.append(torch.einsum("bimn,ink->bmk", blk, self.so3_kernel[l]).reshape(h.shape[0], -1))
        return torch.cat(out, dim=1)

    def grid(self) -> tuple[torch.Tensor, np.ndarray]:
        """``(D_flat^T (W, n_grid) on the module's device, euler (n_grid, 3))`` of the output grid."""
        dev = self.psi.device
        if self._grid_cache is None or self._grid_cache[0].device != dev:
            d, eul = grid_wigner(self.config.grid_level, self.config.lmax)
            self._grid_cache = (d.T.contiguous().to(dev), eul)
        return self._grid_cache

    def grid_logits(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_grid)`` on the output SO(3) grid."""
        return coefficients @ self.grid()[0]

    def values_at(self, coefficients: torch.Tensor, rotations) -> torch.Tensor:
        """The output function at arbitrary rotations ``(K, 3, 3)`` (same for every image): ``(B, K)``."""
        d = wigner_d(rotations, self.config.lmax).to(coefficients.device)
        return coefficients @ d.T

    def refine_on_offsets(self, coefficients: torch.Tensor, best_index: torch.Tensor,
                          offsets_wigner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate the output at ``A_k Δ_j`` for each image's grid argmax ``A_k`` and offsets ``Δ_j``.

        ``offsets_wigner``: ``(J, W)`` flattened ``D(Δ_j)``. Since ``D(A Δ) = D(A) D(Δ)``,
        ``f(A Δ) = <D(A)ᵀ F, D(Δ)>``. Returns ``(values (B, J), best offset index (B,))``.
        """
        dgrid = self.grid()[0].T[best_index]  # (B, W): D(A_k)
        lmax = self.config.lmax
        parts = []
        for l, sl in enumerate(wigner_slices(lmax)):
            d = 2 * l + 1
            a = dgrid[:, sl].reshape(-1, d, d)
            fl = coefficients[:, sl].reshape(-1, d, d)
            parts.append((a.transpose(1, 2) @ fl).reshape(-1, d * d))
        vals = torch.cat(parts, dim=1) @ offsets_wigner.T
        return vals, vals.argmax(dim=1)
