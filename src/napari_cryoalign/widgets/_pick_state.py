"""State of the "Pick particles" widget that is not Qt: the label history and the pick candidates.

* :class:`LabelHistory` - undo/redo snapshots of the labels points layer (napari 0.9's points
  layer has no undo of its own).
* :class:`PickSet` - every candidate peak (down to a low score floor) with the user's verdict
  on it, so that moving the threshold filters without rerunning inference, and verdicts
  survive a new set of candidates (a new heatmap or another minimum distance).
* :class:`ReviewQueue` - the order in which the review loop shows the uncertain picks.

Plain numpy; the widget owns one of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..io._kinds import file_stem

__all__ = ["ACCEPTED", "AUTO", "REJECTED", "LabelHistory", "PickSet", "ReviewQueue", "labels_path_for",
           "negatives_path_for"]

AUTO, ACCEPTED, REJECTED = 0, 1, -1


def labels_path_for(tomogram_path) -> Path:
    """``<folder>/<tomogram stem>_labels.star`` for a tomogram file (``.mrc``, ``.rec.gz``, ...)."""
    p = Path(tomogram_path)
    return p.with_name(f"{file_stem(p)}_labels.star")


def negatives_path_for(tomogram_path) -> Path:
    """``<folder>/<tomogram stem>_negatives.star``: the removed picks, autosaved next to the labels."""
    lab = labels_path_for(tomogram_path)
    return lab.with_name(lab.name[: -len("_labels.star")] + "_negatives.star")


class LabelHistory:
    """Undo/redo of a sequence of ``(n, d)`` coordinate snapshots.

    ``record(data)`` stores ``data`` if it differs from the current snapshot (dropping any
    redo states); ``undo()`` / ``redo()`` return the snapshot to restore, or None when there
    is nothing to undo/redo. ``limit`` snapshots are kept.
    """

    def __init__(self, data=None, *, ndim: int = 3, limit: int = 200):
        self.ndim = int(ndim)
        self.limit = int(limit)
        first = np.zeros((0, self.ndim)) if data is None else np.array(data, dtype=np.float64).reshape(-1, self.ndim)
        self._snaps: list[np.ndarray] = [first]
        self._pos = 0

    @property
    def current(self) -> np.ndarray:
        return self._snaps[self._pos].copy()

    @property
    def can_undo(self) -> bool:
        return self._pos > 0

    @property
    def can_redo(self) -> bool:
        return self._pos < len(self._snaps) - 1

    def reset(self, data) -> None:
        self._snaps = [np.array(data, dtype=np.float64).reshape(-1, self.ndim)]
        self._pos = 0

    def record(self, data) -> bool:
        arr = np.array(data, dtype=np.float64).reshape(-1, self.ndim)
        cur = self._snaps[self._pos]
        if arr.shape == cur.shape and np.array_equal(arr, cur):
            return False
        del self._snaps[self._pos + 1 :]
        self._snaps.append(arr)
        if len(self._snaps) > self.limit:
            del self._snaps[0]
        self._pos = len(self._snaps) - 1
        return True

    def undo(self) -> np.ndarray | None:
        if not self.can_undo:
            return None
        self._pos -= 1
        return self.current

    def redo(self) -> np.ndarray | None:
        if not self.can_redo:
            return None
        self._pos += 1
        return self.current


@dataclass
class PickSet:
    """Candidate picks with a verdict each.

    Attributes
    ----------
    coordinates_xyz : ``(n, 3)`` float64, 0-based voxels (x, y, z)
    scores : ``(n,)`` float64
    euler_deg : ``(n, 3)`` RELION (rot, tilt, psi) or None
    status : ``(n,)`` int8: ``AUTO`` (shown when ``score >= threshold``), ``ACCEPTED`` (always
        shown), ``REJECTED`` (never shown)
    """

    coordinates_xyz: np.ndarray
    scores: np.ndarray
    euler_deg: np.ndarray | None
    status: np.ndarray

    @classmethod
    def empty(cls) -> PickSet:
        return cls(np.zeros((0, 3)), np.zeros(0), None, np.zeros(0, dtype=np.int8))

    @classmethod
    def from_picks(cls, picks) -> PickSet:
        xyz = np.asarray(picks.coordinates_xyz, dtype=np.float64).reshape(-1, 3)
        sc = np.asarray(picks.scores, dtype=np.float64).reshape(-1)
        eul = None if getattr(picks, "euler_deg", None) is None else np.asarray(picks.euler_deg, np.float64).reshape(-1, 3)
        return cls(xyz, sc, eul, np.zeros(len(sc), dtype=np.int8))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def replaced_by(self, picks, *, match_radius: float) -> PickSet:
        """New candidates ``picks``, keeping verdicts: each accepted/rejected old candidate passes its
        verdict to the nearest new one within ``match_radius`` voxels; judged ones with no match
        are kept as they were (accepted: the user wants them; rejected: never shown, but they
        stay known negatives for the next training)."""
        new = PickSet.from_picks(picks)
        judged = np.nonzero(self.status != AUTO)[0]
        if judged.size == 0:
            return new
        keep_extra = []
        if len(new):
            tree = cKDTree(new.coordinates_xyz)
            dist, idx = tree.query(self.coordinates_xyz[judged], k=1)
        else:
            dist, idx = np.full(judged.size, np.inf), np.zeros(judged.size, dtype=int)
        for j, d, i in zip(judged, dist, idx):
            if d <= match_radius:
                new.status[i] = self.status[j]
            else:
                keep_extra.append(j)
        if keep_extra:
            ke = np.asarray(keep_extra)
            eul = None
            if new.euler_deg is not None or self.euler_deg is not None:
                a = new.euler_deg if new.euler_deg is not None else np.zeros((len(new), 3))
                b = self.euler_deg[ke] if self.euler_deg is not None else np.zeros((ke.size, 3))
                eul = np.concatenate([a, b])
            new = PickSet(np.concatenate([new.coordinates_xyz, self.coordinates_xyz[ke]]),
                          np.concatenate([new.scores, self.scores[ke]]), eul,
                          np.concatenate([new.status, self.status[ke]]))
        return new

    def shown(self, threshold: float) -> np.ndarray:
        """Indices of the picks shown at ``threshold``, by decreasing score."""
        ok = (self.status == ACCEPTED) | ((self.status == AUTO) & (self.scores >= threshold))
        idx = np.nonzero(ok)[0]
        return idx[np.argsort(-self.scores[idx], kind="stable")]

    def set_status(self, indices, value: int) -> None:
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size:
            self.status[idx] = value

    def rejected_xyz(self) -> np.ndarray:
        """``(m, 3)`` coordinates (x, y, z) of the removed picks: the known negatives of the next training."""
        return self.coordinates_xyz[self.status == REJECTED].copy()

    def add(self, coordinates_xyz, score: float, *, status: int = ACCEPTED) -> None:
        """Append picks placed by hand (accepted by default)."""
        xyz = np.asarray(coordinates_xyz, dtype=np.float64).reshape(-1, 3)
        n = xyz.shape[0]
        self.coordinates_xyz = np.concatenate([self.coordinates_xyz, xyz])
        self.scores = np.concatenate([self.scores, np.full(n, float(score))])
        if self.euler_deg is not None:
            self.euler_deg = np.concatenate([self.euler_deg, np.zeros((n, 3))])
        self.status = np.concatenate([self.status, np.full(n, status, dtype=np.int8)])


class ReviewQueue:
    """The uncertain picks to review, the highest-scoring first, and where the review stands.

    Uncertain: not yet judged (``AUTO``) and scoring within ``band`` of the threshold, on either
    side: the picks a threshold can get wrong. Sure picks far above the threshold and clear
    rejects far below are not shown; the highest-scoring uncertain ones come first, since a
    wrong pick there costs the most precision. At most ``limit`` picks (a minute's work).
    """

    def __init__(self, picks: PickSet, threshold: float, *, band: float, limit: int = 30):
        lo, hi = float(threshold) - float(band), float(threshold) + float(band)
        idx = np.flatnonzero((picks.status == AUTO) & (picks.scores >= lo) & (picks.scores <= hi))
        self.order = idx[np.argsort(-picks.scores[idx], kind="stable")][: int(limit)]
        self.position = 0

    def __len__(self) -> int:
        return int(self.order.size)

    @property
    def current(self) -> int | None:
        """Index into the :class:`PickSet` of the pick under review, or None when the review is over."""
        return int(self.order[self.position]) if self.position < len(self) else None

    def advance(self) -> int | None:
        """Move to the next pick; returns it (None at the end)."""
        self.position = min(self.position + 1, len(self))
        return self.current
