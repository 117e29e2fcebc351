"""DCT spectral pooling (Gum-Net's down-sampling layer), written from the definition.

Spectral pooling of an ``n``-sample axis to ``out`` samples keeping ``trunc`` coefficients:
take the orthonormal DCT-II of the axis, keep its first ``trunc`` coefficients (the lowest
frequencies), zero-pad them to ``out`` coefficients and apply the orthonormal inverse DCT of
length ``out``. It is linear and separable, so along one axis it is the ``(out, n)`` matrix
``P = C_out.T[:, :trunc] @ C_n[:trunc, :]`` with ``C_m`` the orthonormal DCT-II matrix; a
3-D volume is pooled by applying ``P`` along z, y and x (three small matrix products, no
FFT needed at these sizes).
"""

from __future__ import annotations

import math

import torch

__all__ = ["SpectralPool3d", "dct_matrix", "spectral_pool_matrix"]


def dct_matrix(n: int, *, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``C`` of size ``(n, n)``: ``X = C @ x``, ``x = C.T @ X``."""
    k = torch.arange(n, dtype=dtype)[:, None]
    i = torch.arange(n, dtype=dtype)[None, :]
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] = c[0] / math.sqrt(2.0)
    return c


def spectral_pool_matrix(n: int, out: int, trunc: int, *, dtype=torch.float32) -> torch.Tensor:
    """The ``(out, n)`` matrix of 1-D DCT spectral pooling (``trunc <= min(n, out)``)."""
    if not 1 <= trunc <= min(n, out):
        raise ValueError(f"need 1 <= trunc <= min(n, out), got n={n}, out={out}, trunc={trunc}")
    p = dct_matrix(out).T[:, :trunc] @ dct_matrix(n)[:trunc, :]
    return p.to(dtype)


class SpectralPool3d(torch.nn.Module):
    """DCT spectral pooling of ``(B, C, n, n, n)`` feature maps to ``(B, C, out, out, out)``.

    Keeps the ``trunc ** 3`` lowest DCT coefficients (a low-pass filter and a resampling in
    one step), as in Gum-Net (Zeng & Xu, CVPR 2020).
    """

    def __init__(self, n: int, out: int, trunc: int):
        super().__init__()
        self.n, self.out, self.trunc = int(n), int(out), int(trunc)
        p = spectral_pool_matrix(self.n, self.out, self.trunc)
        self.register_buffer("matrix", p, persistent=False)
        self.register_buffer("matrix_t", p.T.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # three matrix products along x, y, z, none of which needs a permuted copy
        b, c, n, o = x.shape[0], x.shape[1], self.n, self.out
        p, pt = self.matrix.to(x.dtype), self.matrix_t.to(x.dtype)
        y = x.reshape(-1, n) @ pt  # x axis: (b c z y, o)
        y = p @ y.reshape(-1, n, o)  # y axis: (b c z, o, o)
        y = p @ y.reshape(b * c, n, o * o)  # z axis: (b c, o, o o)
        return y.reshape(b, c, o, o, o)

    def extra_repr(self) -> str:
        return f"n={self.n}, out={self.out}, trunc={self.trunc}"
