"""The picker network: a per-slice 2D encoder-decoder with 3D fusion layers.

Architecture (after Huang et al., ECCV 2022, "Accurate detection of proteins in cryo-electron
tomograms from sparse labels", and the layout of its reference code, read but not copied):

* every z-slice goes through the same 2D network: a strided stem convolution (output stride 2
  in y and x), a small U-Net (``levels`` poolings, two 3x3 conv + BatchNorm + ReLU per block,
  transposed-convolution upsampling, concatenated skips) and a 1x1 convolution to
  ``feature_channels`` features;
* the per-slice features are stacked into a volume ``(B, C, z, y/2, x/2)`` and fused by two
  3D convolutions (3x3x3, dilated ``(1, d, d)`` in y, x) - the only place where z is mixed;
* two heads: ``heatmap`` (a 3x1x1 convolution to one logit per voxel of the output grid) and
  ``projection`` (a 1x1x1 convolution to ``proj_channels``, L2-normalised: the features of the
  voxel-level contrastive loss).

The output grid is ``(z, ceil(y / 2), ceil(x / 2))``: voxel ``(k, j, i)`` of the output covers
input voxels ``(k, 2j..2j+1, 2i..2i+1)``; its centre is at input coordinates
``(x, y, z) = (2i + 0.5, 2j + 0.5, k)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["NetConfig", "PickerNet", "OUTPUT_STRIDE"]

#: output stride (z, y, x) of the network
OUTPUT_STRIDE = (1, 2, 2)


@dataclass(frozen=True)
class NetConfig:
    """Hyper-parameters of :class:`PickerNet` (stored in model files).

    Attributes
    ----------
    width : channels of the first U-Net level (doubled at each level)
    levels : number of 2x poolings in the U-Net (after the stride-2 stem)
    feature_channels : channels of the per-slice features and of the 3D fusion layers
    proj_channels : dimension of the contrastive projection
    fusion_dilation : in-plane dilation of the 3D fusion convolutions
    """

    width: int = 16
    levels: int = 2
    feature_channels: int = 16
    proj_channels: int = 16
    fusion_dilation: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PickerNet(nn.Module):
    """Per-slice 2D U-Net + 3D fusion + heatmap and projection heads.

    Call with ``x`` of shape ``(B, z, y, x)`` (normalised tomogram crops, float32); returns
    ``(logits, features)`` with ``logits`` ``(B, z, ceil(y/2), ceil(x/2))`` (pre-sigmoid
    heatmap) and ``features`` ``(B, proj_channels, z, ceil(y/2), ceil(x/2))`` (unit L2 norm
    over channels; None with ``features=False``, as at inference). ``slice_chunk`` bounds how
    many 2D slices run at once (memory).
    """

    def __init__(self, config: NetConfig | None = None):
        super().__init__()
        cfg = config or NetConfig()
        self.config = cfg
        w = cfg.width
        self.stem = nn.Sequential(
            nn.Conv2d(1, w, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
        )
        chans = [w * 2**i for i in range(cfg.levels + 1)]
        self.down = nn.ModuleList()
        cin = w
        for c in chans:
            self.down.append(_block(cin, c))
            cin = c
        self.upconv = nn.ModuleList()
        self.upblock = nn.ModuleList()
        for lvl in range(cfg.levels, 0, -1):
            self.upconv.append(nn.ConvTranspose2d(chans[lvl], chans[lvl - 1], 2, stride=2))
            self.upblock.append(_block(2 * chans[lvl - 1], chans[lvl - 1]))
        self.to_features = nn.Conv2d(chans[0], cfg.feature_channels, 1)
        d = cfg.fusion_dilation
        fc = cfg.feature_channels
        self.fusion = nn.Sequential(
            nn.Conv3d(fc, fc, 3, padding=(1, d, d), dilation=(1, d, d)),
            nn.ReLU(inplace=True),
            nn.Conv3d(fc, fc, 3, padding=(1, d, d), dilation=(1, d, d)),
            nn.ReLU(inplace=True),
        )
        self.heatmap = nn.Conv3d(fc, 1, (3, 1, 1), padding=(1, 0, 0))
        self.projection = nn.Conv3d(fc, cfg.proj_channels, 1)
        # focal-loss prior: start with p ~ 0.1 everywhere (CenterNet); stabilises early training
        nn.init.constant_(self.heatmap.bias, -2.19)

    @property
    def multiple(self) -> int:
        """Input y/x sizes are padded to a multiple of this (stem stride x pooling)."""
        return 2 ** (self.config.levels + 1)

    def _slices(self, x2d: torch.Tensor) -> torch.Tensor:
        h = self.stem(x2d)
        skips = []
        for i, blk in enumerate(self.down):
            if i > 0:
                h = F.max_pool2d(h, 2)
            h = blk(h)
            skips.append(h)
        for up, blk, skip in zip(self.upconv, self.upblock, reversed(skips[:-1])):
            h = up(h)
            h = blk(torch.cat([h, skip], dim=1))
        return self.to_features(h)

    def forward(
        self, x: torch.Tensor, *, slice_chunk: int | None = None, features: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.ndim != 4:
            raise ValueError(f"PickerNet expects (B, z, y, x), got shape {tuple(x.shape)}")
        b, d, hgt, wid = x.shape
        m = self.multiple
        ph = (-hgt) % m
        pw = (-wid) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x2d = x.reshape(b * d, 1, x.shape[-2], x.shape[-1])
        if slice_chunk is None or slice_chunk >= x2d.shape[0]:
            f = self._slices(x2d)
        else:
            f = torch.cat([self._slices(x2d[i : i + slice_chunk]) for i in range(0, x2d.shape[0], slice_chunk)])
        oh, ow = (hgt + 1) // 2, (wid + 1) // 2
        f = f[..., :oh, :ow]
        f = f.reshape(b, d, f.shape[1], oh, ow).permute(0, 2, 1, 3, 4)  # (B, C, z, y, x)
        f = self.fusion(f)
        logits = self.heatmap(f)[:, 0]
        if not features:
            return logits, None
        proj = F.normalize(self.projection(f), dim=1)
        return logits, proj
