"""Tiled inference and non-maximum suppression.

* :func:`predict_heatmap_job` runs the network over the tomogram in overlapping tiles along
  z, y and x; each tile is read (from a numpy array or a read-only memmap) with a halo,
  normalised with whole-tomogram statistics, and only its interior is kept, so memory is
  bounded by the tile size and the result equals the untiled one when the halo covers the
  network's receptive field (about 60 input voxels in y/x and 3 slices in z).
* :func:`find_peaks` keeps local maxima of the heatmap by 3D max-pooling (a window of about
  the minimum distance), thresholds them, and then enforces the minimum distance exactly
  (greedy by score, a k-d tree).
* :func:`pick_job` / :func:`pick` do both and return :class:`Picks` in input voxels.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Generator

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from .._tensor import resolve_device
from ..jobs import Event, Partial, Progress, run_job
from .picker import Picker, check_tomogram, normalise_block, tomogram_stats
from .targets import output_to_input_xyz

__all__ = [
    "Picks",
    "Heatmap",
    "predict_heatmap_job",
    "predict_heatmap",
    "find_peaks",
    "pick_job",
    "pick",
    "heatmap_to_input_grid",
]


@dataclass(frozen=True)
class Picks:
    """Picked particles, sorted by decreasing score.

    Attributes
    ----------
    coordinates_xyz : ``(n, 3)`` float64, 0-based voxel coordinates (x, y, z) of the tomogram
    scores : ``(n,)`` float64 (heatmap value, or normalised cross-correlation)
    euler_deg : ``(n, 3)`` RELION (rot, tilt, psi) in degrees, or None (picker: no orientations)
    """

    coordinates_xyz: np.ndarray
    scores: np.ndarray
    euler_deg: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def above(self, threshold: float) -> "Picks":
        """The picks with ``score >= threshold``."""
        keep = self.scores >= threshold
        return Picks(self.coordinates_xyz[keep], self.scores[keep],
                     None if self.euler_deg is None else self.euler_deg[keep])


@dataclass(frozen=True)
class Heatmap:
    """A heatmap on the network's output grid.

    ``data`` is ``(z, ceil(y/s), ceil(x/s))`` float32 in [0, 1]; ``stride`` ``(1, s, s)``.
    In napari: ``scale = stride * voxel_size`` and ``translate = (stride - 1) / 2 * voxel_size``
    put it over the tomogram.
    """

    data: np.ndarray
    stride: tuple[int, int, int]


def predict_heatmap_job(
    picker: Picker,
    tomogram,
    *,
    tile: tuple[int, int, int] = (32, 512, 512),
    halo: tuple[int, int, int] = (4, 64, 64),
    slice_chunk: int = 2,
    stats: tuple[float, float] | None = None,
    device=None,
) -> Generator[Event, None, Heatmap]:
    """Heatmap of a tomogram by tiled inference (a job: yields ``Progress`` per tile).

    Parameters
    ----------
    picker : a trained :class:`~.picker.Picker`
    tomogram : ``(z, y, x)`` array or memmap (any real dtype), not modified
    tile : interior tile size ``(z, y, x)`` in input voxels (y, x rounded down to a multiple
        of the network's pooling size so that tiling does not change the result)
    halo : context read around each tile ``(z, y, x)`` (y, x rounded up likewise)
    slice_chunk : 2D slices processed at once (memory; small chunks keep activations under glibc's
        32 MB mmap threshold, which saves the page-fault cost of fresh large buffers)
    stats : ``(centre, scale)`` normalisation; default :func:`~.picker.tomogram_stats`
    device : torch device (default: the picker's)

    Returns
    -------
    :class:`Heatmap` (float32 probabilities on the output grid, stride ``(1, 2, 2)``)
    """
    shape = tuple(int(s) for s in np.shape(tomogram))
    if len(shape) != 3:
        raise ValueError(f"tomogram must be (z, y, x), got shape {shape}")
    dev = resolve_device(device) if device is not None else picker.device
    net = picker.net
    was_training = net.training
    net.eval()
    orig_dev = picker.device
    if dev != orig_dev:
        net.to(dev)
    st = picker.stride
    align = net.multiple
    centre, scale = stats if stats is not None else tomogram_stats(tomogram)
    hz = int(halo[0])
    hy = int(math.ceil(halo[1] / align) * align)
    hx = int(math.ceil(halo[2] / align) * align)
    tz = max(1, int(tile[0]))
    ty = max(align, (int(tile[1]) // align) * align)
    tx = max(align, (int(tile[2]) // align) * align)
    oshape = (shape[0], -(-shape[1] // st[1]), -(-shape[2] // st[2]))
    out = np.zeros(oshape, dtype=np.float32)
    zs, ys, xs = range(0, shape[0], tz), range(0, shape[1], ty), range(0, shape[2], tx)
    total = len(zs) * len(ys) * len(xs)
    done = 0
    try:
        with torch.inference_mode():
            for z0 in zs:
                z1 = min(z0 + tz, shape[0])
                za, zb = max(0, z0 - hz), min(shape[0], z1 + hz)
                for y0 in ys:
                    y1 = min(y0 + ty, shape[1])
                    ya, yb = max(0, y0 - hy), min(shape[1], y1 + hy)
                    for x0 in xs:
                        x1 = min(x0 + tx, shape[2])
                        xa, xb = max(0, x0 - hx), min(shape[2], x1 + hx)
                        blk = normalise_block(tomogram[za:zb, ya:yb, xa:xb], centre, scale)
                        x_t = torch.from_numpy(blk).to(dev)[None]
                        logits, _ = net(x_t, slice_chunk=slice_chunk, features=False)
                        prob = torch.sigmoid(logits[0]).float().cpu().numpy()
                        # interior of the tile on the output grid
                        oz0, oz1 = z0 - za, z1 - za
                        oy0, oy1 = (y0 - ya) // st[1], -(-(y1 - ya) // st[1])
                        ox0, ox1 = (x0 - xa) // st[2], -(-(x1 - xa) // st[2])
                        out[z0:z1, y0 // st[1] : y0 // st[1] + (oy1 - oy0), x0 // st[2] : x0 // st[2] + (ox1 - ox0)] = \
                            prob[oz0:oz1, oy0:oy1, ox0:ox1]
                        done += 1
                        yield Progress(done, total, f"tile {done}/{total}")
    finally:
        if dev != orig_dev:
            net.to(orig_dev)
        net.train(was_training)
    return Heatmap(out, tuple(st))


def predict_heatmap(picker: Picker, tomogram, **kwargs) -> Heatmap:
    """Plain-function form of :func:`predict_heatmap_job`."""
    return run_job(predict_heatmap_job(picker, tomogram, **kwargs), progress=False)


def find_peaks(
    heatmap: np.ndarray | Heatmap,
    *,
    min_distance: float,
    threshold: float = 0.0,
    stride: tuple[int, int, int] = (1, 1, 1),
    max_picks: int | None = None,
    exclude_border: int = 0,
    chunk_z: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a heatmap, at least ``min_distance`` input voxels apart.

    Parameters
    ----------
    heatmap : ``(z, y, x)`` array on a grid of ``stride`` input voxels (or a :class:`Heatmap`)
    min_distance : minimum distance between picks in input voxels (Euclidean)
    threshold : keep peaks with ``value >= threshold``
    stride : ``(z, y, x)`` stride of the heatmap grid in input voxels
    max_picks : keep at most this many (highest first)
    exclude_border : drop peaks closer than this (input voxels) to the volume's faces
    chunk_z : z-slices max-pooled at once (memory)

    Returns
    -------
    coordinates_xyz : ``(n, 3)`` float64 input-voxel coordinates (x, y, z)
    scores : ``(n,)`` float64, sorted decreasing
    """
    if isinstance(heatmap, Heatmap):
        stride = heatmap.stride
        heatmap = heatmap.data
    hm = np.asarray(heatmap)
    st = np.asarray(stride, dtype=np.float64)
    # max-pool window: odd, about the min distance, at least 3
    k = [max(3, 2 * int(round(min_distance / 2.0 / s)) + 1) for s in st]
    k = [min(kk, 2 * (n // 2) + 1) for kk, n in zip(k, hm.shape)]
    pz = k[0] // 2
    cand_idx, cand_val = [], []
    for z0 in range(0, hm.shape[0], chunk_z):
        z1 = min(hm.shape[0], z0 + chunk_z)
        za, zb = max(0, z0 - pz), min(hm.shape[0], z1 + pz)
        t = torch.from_numpy(np.ascontiguousarray(hm[za:zb], dtype=np.float32))[None, None]
        mp = F.max_pool3d(t, kernel_size=k, stride=1, padding=[kk // 2 for kk in k])
        peak = (t == mp) & (t >= threshold)
        peak = peak[0, 0, z0 - za : z0 - za + (z1 - z0)]
        idx = torch.nonzero(peak).numpy()
        if idx.size:
            idx[:, 0] += z0
            cand_idx.append(idx)
            cand_val.append(hm[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64))
    if not cand_idx:
        return np.zeros((0, 3)), np.zeros(0)
    idx = np.concatenate(cand_idx)
    val = np.concatenate(cand_val)
    order = np.argsort(-val, kind="stable")
    idx, val = idx[order], val[order]
    xyz = output_to_input_xyz(idx, tuple(int(s) for s in st))
    if exclude_border > 0:
        size_xyz = np.asarray(hm.shape[::-1]) * st[::-1]
        ok = np.all((xyz >= exclude_border) & (xyz <= size_xyz - 1 - exclude_border), axis=1)
        xyz, val = xyz[ok], val[ok]
    keep = _greedy_min_distance(xyz, min_distance, max_picks)
    return xyz[keep], val[keep]


def _greedy_min_distance(xyz: np.ndarray, min_distance: float, max_picks: int | None) -> np.ndarray:
    """Indices (in order) of points kept greedily so that no two are closer than ``min_distance``."""
    n = xyz.shape[0]
    if n == 0 or min_distance <= 0:
        return np.arange(n if max_picks is None else min(n, max_picks))
    tree = cKDTree(xyz)
    pairs = tree.query_pairs(r=min_distance * (1 - 1e-9), output_type="ndarray")
    if pairs.size == 0:
        return np.arange(n if max_picks is None else min(n, max_picks))
    neigh: list[list[int]] = [[] for _ in range(n)]
    for a, b in pairs:
        neigh[a].append(b)
        neigh[b].append(a)
    removed = np.zeros(n, dtype=bool)
    kept = []
    for i in range(n):  # points are sorted by score
        if removed[i]:
            continue
        kept.append(i)
        if max_picks is not None and len(kept) >= max_picks:
            break
        for j in neigh[i]:
            removed[j] = True
    return np.asarray(kept, dtype=np.int64)


def pick_job(
    picker: Picker,
    tomogram,
    *,
    threshold: float = 0.5,
    min_distance_angstrom: float | None = None,
    max_picks: int | None = None,
    tile: tuple[int, int, int] = (32, 512, 512),
    halo: tuple[int, int, int] = (4, 64, 64),
    voxel_size: float | None = None,
    path=None,
    device=None,
    shape_check: bool = True,
) -> Generator[Event, None, tuple[Picks, Heatmap]]:
    """Predict the heatmap and pick particles (a job: ``Progress`` per tile, then ``Partial("picks")``).

    A picker with a shape reference (the default recipe's, :mod:`.shape_check`) has each pick that
    could reach 0.5 fitted to the labels' average and its score moved by the fit; ``shape_check=False``
    gives the network's heatmap values.

    Parameters
    ----------
    picker : trained :class:`~.picker.Picker`
    tomogram : ``(z, y, x)`` array or memmap (checked for NaNs in chunks)
    threshold : minimum heatmap value of a pick (0..1)
    min_distance_angstrom : minimum distance between picks in Å (default: the particle radius,
        i.e. half the trained diameter)
    max_picks : keep at most this many
    tile, halo : see :func:`predict_heatmap_job`
    voxel_size : the tomogram's voxel size in Å (default the picker's); a mismatch of more
        than 10 % with the training voxel size warns, since the network is size-specific
    path : tomogram file name for error messages
    shape_check : check the picks' shapes when the picker has a reference (the heatmap is the network's)

    Returns
    -------
    ``(Picks, Heatmap)``
    """
    check_tomogram(tomogram, path=path)
    vs = float(voxel_size) if voxel_size is not None else picker.voxel_size
    if abs(vs / picker.voxel_size - 1.0) > 0.1:
        warnings.warn(f"tomogram voxel size {vs:g} Å differs from the model's {picker.voxel_size:g} Å: "
                      "particles will appear at a different size than in training", stacklevel=2)
    md = (0.5 * picker.diameter_angstrom if min_distance_angstrom is None else float(min_distance_angstrom)) / vs
    t0 = time.perf_counter()
    heat = yield from predict_heatmap_job(picker, tomogram, tile=tile, halo=halo, device=device)
    ref = picker.shape_reference if shape_check else None
    if ref is None:
        xyz, sc = find_peaks(heat, min_distance=md, threshold=threshold, max_picks=max_picks)
        picks = Picks(xyz, sc)
    else:
        from .shape_check import shape_check_job

        xyz, sc = find_peaks(heat, min_distance=md, threshold=min(threshold, ref.floor))
        picks, _ = yield from shape_check_job(Picks(xyz, sc), tomogram, ref, threshold=picker.default_threshold,
                                              voxel_size=vs,
                                              device=picker.device if device is None else device)
        picks = picks.above(threshold)
        if max_picks is not None:
            picks = Picks(picks.coordinates_xyz[:max_picks], picks.scores[:max_picks])
    yield Partial("picks", picks)
    yield Progress(1, 1, f"{len(picks)} picks in {time.perf_counter() - t0:.1f} s")
    return picks, heat


def pick(picker: Picker, tomogram, **kwargs) -> tuple[Picks, Heatmap]:
    """Plain-function form of :func:`pick_job`."""
    return run_job(pick_job(picker, tomogram, **kwargs), progress=False)


def heatmap_to_input_grid(heatmap: Heatmap, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Heatmap resampled (nearest) onto the tomogram's voxel grid ``shape_zyx``, float32 (for MRC output)."""
    st = heatmap.stride
    d = heatmap.data
    for ax, s in enumerate(st):
        if s > 1:
            d = np.repeat(d, s, axis=ax)
    return np.ascontiguousarray(d[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]], dtype=np.float32)
