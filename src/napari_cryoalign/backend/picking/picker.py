"""The trained picker object, input normalisation and input checks shared by training and inference."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import InputError
from .._tensor import resolve_device
from .model import OUTPUT_STRIDE, NetConfig, PickerNet

__all__ = [
    "Picker",
    "tomogram_stats",
    "normalise_block",
    "check_tomogram",
    "check_labels",
    "diameter_voxels",
]


@dataclass
class Picker:
    """A picker model: the network plus what is needed to apply it.

    Attributes
    ----------
    net : :class:`~.model.PickerNet` (kept in eval mode outside training)
    diameter_angstrom : particle diameter (Å) it was trained for
    voxel_size : voxel size (Å) of the training tomogram
    class_prior : PU class prior used in training
    training : parameters and counters of training (JSON-like; ``iterations_done`` etc.)
    optimizer_state : Adam state, so that training can continue smoothly (or None)
    shape_reference : the labels' average and the spread of the labels' fits to it, for the shape
        check at inference (:class:`~.shape_check.ShapeReference`; made by the default recipe), or None
    """

    net: PickerNet
    diameter_angstrom: float
    voxel_size: float
    class_prior: float = 0.02
    training: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict | None = None
    shape_reference: Any = None

    @property
    def net_config(self) -> NetConfig:
        return self.net.config

    @property
    def diameter_voxels(self) -> float:
        return self.diameter_angstrom / self.voxel_size

    @property
    def stride(self) -> tuple[int, int, int]:
        return OUTPUT_STRIDE

    @property
    def default_threshold(self) -> float:
        """Score threshold calibrated on the labels at the end of training
        (:func:`~.train.calibrated_threshold`), 0.5 for a model without one."""
        value = self.training.get("suggested_threshold")
        return float(value) if isinstance(value, (int, float)) and 0.0 < value < 1.0 else 0.5

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> "Picker":
        self.net.to(resolve_device(device))
        return self

    @classmethod
    def new(cls, *, diameter_angstrom: float, voxel_size: float, class_prior: float = 0.02,
            net_config: NetConfig | None = None, seed: int | None = 0, device="cpu") -> "Picker":
        """A freshly initialised picker (weights from ``seed``)."""
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                net = PickerNet(net_config)
        else:
            net = PickerNet(net_config)
        net.eval()
        return cls(net=net.to(resolve_device(device)), diameter_angstrom=float(diameter_angstrom),
                   voxel_size=float(voxel_size), class_prior=float(class_prior))


def diameter_voxels(diameter_angstrom: float, voxel_size: float, *, shape=None, path=None) -> float:
    """Particle diameter in voxels; InputError unless positive and smaller than the volume."""
    if not (isinstance(diameter_angstrom, (int, float, np.floating)) and math.isfinite(diameter_angstrom)
            and diameter_angstrom > 0):
        raise InputError("a particle diameter > 0 Å", path=path, field="diameter", got=diameter_angstrom)
    if not (voxel_size > 0 and math.isfinite(voxel_size)):
        raise InputError("a voxel size > 0 Å", path=path, field="voxel_size", got=voxel_size)
    d = float(diameter_angstrom) / float(voxel_size)
    if shape is not None and d >= min(shape):
        raise InputError(
            f"a particle diameter smaller than the tomogram ({min(shape)} voxels = "
            f"{min(shape) * voxel_size:g} Å along its smallest axis)", path=path, field="diameter",
            got=f"{diameter_angstrom:g} Å = {d:.1f} voxels")
    if d < 2.0:
        raise InputError("a particle diameter of at least 2 voxels", path=path, field="diameter",
                         got=f"{diameter_angstrom:g} Å = {d:.2f} voxels of {voxel_size:g} Å")
    return d


def check_tomogram(tomogram, *, path: str | os.PathLike | None = None, chunk_voxels: int = 1 << 24) -> tuple[int, int, int]:
    """Check a ``(z, y, x)`` tomogram (array or memmap): 3D, at least 4 voxels per axis, finite.

    Finiteness is checked in chunks of whole z-slices (bounded memory for memmaps).
    Returns the shape. Raises :class:`InputError` naming ``path`` and the field.
    """
    shape = tuple(int(s) for s in np.shape(tomogram))
    if len(shape) != 3:
        raise InputError("a 3D (z, y, x) tomogram", path=path, field="data", got=f"shape {shape}")
    if min(shape) < 4:
        raise InputError("a tomogram with at least 4 voxels along every axis", path=path, field="data",
                         got=f"shape {shape}")
    per = max(1, chunk_voxels // max(1, shape[1] * shape[2]))
    for z0 in range(0, shape[0], per):
        blk = np.asarray(tomogram[z0 : z0 + per])
        if not np.isfinite(blk).all():
            bad = int((~np.isfinite(blk)).sum())
            zs = np.nonzero(~np.isfinite(blk).all(axis=(1, 2)))[0] + z0
            raise InputError("finite voxel values (no NaN or inf)", path=path, field="data",
                             got=f"{bad}+ non-finite voxels, first in z-slice {int(zs[0])}")
    return shape  # type: ignore[return-value]


def check_labels(labels_xyz, shape_zyx, *, path=None, min_labels: int = 3) -> np.ndarray:
    """Labels as ``(n, 3)`` float64 (x, y, z) voxels: at least ``min_labels``, finite, inside the volume."""
    arr = np.asarray(labels_xyz, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError("particle coordinates as an (n, 3) array of (x, y, z) voxels", path=path,
                         field="labels", got=f"shape {arr.shape}")
    if arr.shape[0] < min_labels:
        raise InputError(f"at least {min_labels} labelled particles", path=path, field="labels",
                         got=f"{arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise InputError("finite coordinates", path=path, field="labels", got="NaN or inf")
    size_xyz = np.asarray(shape_zyx[::-1], dtype=np.float64)
    outside = np.nonzero(((arr < -0.5) | (arr > size_xyz - 0.5)).any(axis=1))[0]
    if outside.size:
        rows = ", ".join(str(int(r)) for r in outside[:5]) + (" ..." if outside.size > 5 else "")
        raise InputError(
            f"coordinates inside the tomogram (0 <= x < {shape_zyx[2]}, 0 <= y < {shape_zyx[1]}, "
            f"0 <= z < {shape_zyx[0]} voxels)", path=path, field="rlnCoordinateX/Y/Z",
            got=f"{outside.size} outside, rows {rows} (first {tuple(np.round(arr[outside[0]], 1))})")
    return arr


def tomogram_stats(tomogram, *, max_samples: int = 2_000_000, seed: int = 0) -> tuple[float, float]:
    """Robust ``(centre, scale)`` of a tomogram from a subsample of whole z-slices (memmap friendly).

    ``centre`` is the median, ``scale`` the standard deviation of the voxels within the
    0.1-99.9 percentiles (so gold beads do not inflate it).
    """
    nz = int(np.shape(tomogram)[0])
    per_slice = int(np.prod(np.shape(tomogram)[1:]))
    n_sl = max(1, min(nz, max_samples // max(1, per_slice)))
    zs = np.unique(np.linspace(0, nz - 1, n_sl).round().astype(int))
    vals = np.concatenate([np.asarray(tomogram[int(z)], dtype=np.float32).ravel() for z in zs])
    if vals.size > max_samples:
        rng = np.random.default_rng(seed)
        vals = rng.choice(vals, max_samples, replace=False)
    lo, med, hi = np.percentile(vals, [0.1, 50.0, 99.9])
    core = vals[(vals >= lo) & (vals <= hi)]
    scale = float(core.std()) if core.size > 1 else 1.0
    if not scale > 0:
        scale = 1.0
    return float(med), scale


def normalise_block(block, centre: float, scale: float, *, clip: float = 5.0) -> np.ndarray:
    """``clip((block - centre) / scale, -clip, clip)`` as float32 (a copy)."""
    out = (np.asarray(block, dtype=np.float32) - np.float32(centre)) / np.float32(scale)
    np.clip(out, -clip, clip, out=out)
    return out
