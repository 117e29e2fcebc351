"""What the clustering methods share: the result type and class averages under per-class poses.

Arrays are numpy: particles ``(n, N, N, N)`` (z, y, x), observed Fourier masks ``(N, N, N)``
or ``(n, N, N, N)`` (fftshift-ed, DC at ``N // 2``) or None, labels ``(n,)`` 0-based.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..align.average import average_particles, wedge_compensated_average
from ..align.types import AlignmentResult
from ..fourier import lowpass
from .features import principal_components

__all__ = ["ClusterResult"]


@dataclass(frozen=True, eq=False)
class ClusterResult:
    """Classes, confidences, within-class poses and class averages of a particle set.

    Attributes
    ----------
    classes : ``(n,)`` int64, 0-based class of each particle (``rlnClassNumber - 1``)
    confidence : ``(n,)`` posterior probability of the assigned class, in [0, 1]
    embedding : ``(n, 2)`` a 2-D map of the particles for plotting (first two principal
        components of the features the last clustering used)
    alignment : AlignmentResult, each particle's pose against *its class's* average
        (``rotations`` reference -> particle, ``origins_voxels`` (x, y, z), ``scores``)
    averages : ``(K, N, N, N)`` float32 wedge-compensated class averages (``(z, y, x)``)
    method : "joint" or "classical"
    features : ``(n, d)`` the features of the last clustering
    scores : ``(n, K)`` or None, constrained correlation of each particle with each class
        average (joint method)
    bic : ``{K: BIC}`` when the number of classes was estimated, else empty
    history : per iteration: changed fraction, class sizes, seconds
    seconds : wall-clock time
    """

    classes: np.ndarray
    confidence: np.ndarray
    embedding: np.ndarray
    alignment: AlignmentResult
    averages: np.ndarray
    method: str
    features: np.ndarray
    scores: np.ndarray | None = None
    bic: dict = field(default_factory=dict)
    history: tuple = ()
    seconds: float = float("nan")

    @property
    def n_classes(self) -> int:
        return len(self.averages)

    @property
    def class_sizes(self) -> np.ndarray:
        """Particles per class, ``(K,)``."""
        return np.bincount(self.classes, minlength=self.n_classes)


def _embedding(features: np.ndarray) -> np.ndarray:
    x = torch.as_tensor(np.asarray(features, dtype=np.float64))
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2))
    s = principal_components(x, 2).scores
    if s.shape[1] < 2:
        s = np.concatenate([s, np.zeros((len(s), 2 - s.shape[1]))], 1)
    return s


def _masks_for(m, idx):
    if m is None:
        return None
    m = np.asarray(m, dtype=np.float32)
    return m if m.ndim == 3 or m.shape[0] == 1 else m[idx]


def _class_averages(p, m, classes, alignment, k, *, vox, device, inside=None):
    """Wedge-compensated average per class under ``alignment`` (K, N, N, N) and its FSC-0.143 resolution (Å);
    ``inside``: ``(n, N, N, N)`` masks of the voxels inside the tomogram (coverage-compensated) or None."""
    box = p.shape[-1]
    avgs = np.zeros((k, box, box, box), np.float32)
    res = np.full(k, np.nan)
    for c in range(k):
        idx = np.flatnonzero(classes == c)
        if len(idx) == 0:
            continue
        sub = AlignmentResult(alignment.rotations[idx], alignment.origins_voxels[idx], alignment.scores[idx],
                              alignment.method)
        ins = None if inside is None else inside[idx]
        if len(idx) >= 4:
            r = average_particles(p[idx], sub, particle_masks=_masks_for(m, idx), half_maps=True,
                                  voxel_size_angstrom=vox, inside_masks=ins, device=device)
            avgs[c], res[c] = r.average, r.fsc.resolution_0143
        else:
            avgs[c] = wedge_compensated_average(p[idx], sub, particle_masks=_masks_for(m, idx), inside_masks=ins,
                                                device=device)
    return avgs, res


def _filtered(avgs, res, *, vox, box):
    """Class averages low-passed to their resolution (at most 2 voxels), and the search's max frequency."""
    out = np.empty_like(avgs)
    fmax = []
    for c in range(len(avgs)):
        r = res[c] if np.isfinite(res[c]) else 4.0 * vox
        r = max(float(r), 2.0 * vox)
        out[c] = lowpass(avgs[c], r, voxel_size_angstrom=vox) if r > 2.0 * vox else avgs[c]
        fmax.append(min(0.5, vox / r + 2.0 / box))
    return out, float(max(fmax))


def _subset(ali: AlignmentResult, idx) -> AlignmentResult:
    return AlignmentResult(ali.rotations[idx], ali.origins_voxels[idx], ali.scores[idx], ali.method, ali.seconds)
