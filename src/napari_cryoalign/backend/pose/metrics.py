"""CESPED's evaluation: MAnE, wMAnE, and the map-quality differences ΔPCC and ΔFSCR.

* per-particle error: ``min_g angle(A_pred g, A_true)`` (:func:`..symmetry.symmetric_angle_deg`);
* **MAnE**: its mean; **wMAnE**: its mean weighted by the *ground-truth* confidence
  (``rlnMaxValueProbDistribution``), not the predicted one, as CESPED does;
* maps (:func:`evaluate_reconstructions_job`): ``GT0``, ``GT1`` = half maps from the true
  poses, ``GT`` their combination, ``V`` = the map from the predicted poses (all particles);
  **ΔPCC** = ``PCC(GT0, GT1) − PCC(GT, V)`` and **ΔFSCR** = ``FSCR(GT, V) − FSCR(GT0, GT1)``
  in Å at 0.5 and 0.143 (how much worse the predicted map is than the data allow). Both
  maps are multiplied by a soft spherical mask first (CESPED uses its ground-truth masks).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ..jobs import Partial, Progress, run_job
from ..symmetry import symmetric_angle_deg
from .data import ParticleData
from .reconstruct import pearson_correlation, reconstruct_half_maps_job

__all__ = [
    "AngularErrors",
    "MapEvaluation",
    "angular_errors",
    "evaluate_reconstructions",
    "evaluate_reconstructions_job",
    "mane",
]


@dataclass(frozen=True)
class AngularErrors:
    """Per-particle symmetric angular errors (degrees) and their summaries."""

    errors: np.ndarray
    mane: float
    wmane: float
    median: float

    def as_dict(self) -> dict:
        return {"MAnE_deg": self.mane, "wMAnE_deg": self.wmane, "median_deg": self.median}


def mane(predicted, true, symmetry: str = "C1", *, weights=None) -> float:
    """Mean angular error in degrees (weighted mean with ``weights``), minimised over the group."""
    err = np.atleast_1d(symmetric_angle_deg(predicted, true, symmetry))
    if weights is None:
        return float(err.mean())
    w = np.asarray(weights, dtype=np.float64)
    return float((err * w).sum() / max(w.sum(), 1e-12))


def angular_errors(predicted, true, symmetry: str = "C1", *, confidence=None) -> AngularErrors:
    """:class:`AngularErrors` of predicted vs true poses; ``confidence`` = the ground truth's (wMAnE weights)."""
    err = np.atleast_1d(symmetric_angle_deg(predicted, true, symmetry))
    w = np.ones_like(err) if confidence is None else np.asarray(confidence, dtype=np.float64)
    return AngularErrors(errors=err, mane=float(err.mean()), wmane=float((err * w).sum() / max(w.sum(), 1e-12)),
                         median=float(np.median(err)))


@dataclass(frozen=True, eq=False)
class MapEvaluation:
    """Maps and CESPED's map metrics.

    gt_half1, gt_half2, gt, predicted : ``(N, N, N)`` maps; fsc_gt_halves, fsc_gt_predicted :
    FSCReports; pcc_gt_halves, pcc_gt_predicted : masked Pearson correlations; delta_pcc,
    delta_fscr_05, delta_fscr_0143 : as in the module docstring (Å for the FSCRs).
    """

    gt_half1: np.ndarray
    gt_half2: np.ndarray
    gt: np.ndarray
    predicted: np.ndarray
    fsc_gt_halves: object
    fsc_gt_predicted: object
    pcc_gt_halves: float
    pcc_gt_predicted: float

    @property
    def delta_pcc(self) -> float:
        return self.pcc_gt_halves - self.pcc_gt_predicted

    @property
    def delta_fscr_05(self) -> float:
        return self.fsc_gt_predicted.resolution_05 - self.fsc_gt_halves.resolution_05

    @property
    def delta_fscr_0143(self) -> float:
        return self.fsc_gt_predicted.resolution_0143 - self.fsc_gt_halves.resolution_0143

    def as_dict(self) -> dict:
        return {"PCC_GT0_GT1": self.pcc_gt_halves, "PCC_GT_V": self.pcc_gt_predicted, "dPCC": self.delta_pcc,
                "FSCR05_GT0_GT1_A": self.fsc_gt_halves.resolution_05,
                "FSCR0143_GT0_GT1_A": self.fsc_gt_halves.resolution_0143,
                "FSCR05_GT_V_A": self.fsc_gt_predicted.resolution_05,
                "FSCR0143_GT_V_A": self.fsc_gt_predicted.resolution_0143,
                "dFSCR05_A": self.delta_fscr_05, "dFSCR0143_A": self.delta_fscr_0143}


def evaluate_reconstructions_job(data: ParticleData, predicted_rotations, *, predicted_origins_angstrom=None,
                                 symmetry: str = "C1", mask=None,
                                 device="cpu") -> Generator[Progress | Partial, None, MapEvaluation]:
    """Reconstruct from the true poses (half maps) and from the predicted ones; CESPED's ΔPCC and ΔFSCR."""
    from ..align.average import default_fsc_mask, fsc_report

    m = default_fsc_mask(data.box) if mask is None else mask
    gt = yield from reconstruct_half_maps_job(data, symmetry=symmetry, half_maps=True, mask=m, device=device)
    pred = yield from reconstruct_half_maps_job(data, predicted_rotations, origins_angstrom=predicted_origins_angstrom,
                                                symmetry=symmetry, half_maps=False, device=device)
    px = data.pixel_size_angstrom
    return MapEvaluation(gt_half1=gt.half1, gt_half2=gt.half2, gt=gt.volume, predicted=pred.volume,
                         fsc_gt_halves=gt.fsc, fsc_gt_predicted=fsc_report(gt.volume, pred.volume, voxel_size_angstrom=px,
                                                                           mask=m),
                         pcc_gt_halves=pearson_correlation(gt.half1, gt.half2, mask=m),
                         pcc_gt_predicted=pearson_correlation(gt.volume, pred.volume, mask=m))


def evaluate_reconstructions(data: ParticleData, predicted_rotations, **kwargs) -> MapEvaluation:
    """Plain-function version of :func:`evaluate_reconstructions_job`."""
    return run_job(evaluate_reconstructions_job(data, predicted_rotations, **kwargs), progress=False)
