"""Predicted poses as a RELION particle STAR file, keeping every column of the input file.

Written columns: ``rlnAngleRot/Tilt/Psi`` (degrees, RELION ZYZ), ``rlnOriginXAngst/YAngst``
(Å, RELION sign; pixel-unit ``rlnOriginX/Y`` of old files are dropped so the two cannot
disagree), the confidence in ``rlnParticleFigureOfMerit`` (CESPED's choice) and, with the map
search, its log-likelihood in ``rlnLogLikeliContribution`` (RELION's per-particle column). The optics
and general blocks are copied. The file is written atomically and never over the input.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import InputError
from .data import ParticleData
from .predict import PosePrediction

__all__ = ["CONFIDENCE_OUT_COLUMN", "write_predicted_star"]

CONFIDENCE_OUT_COLUMN = "rlnParticleFigureOfMerit"


def write_predicted_star(path: str | os.PathLike, data: ParticleData, prediction: PosePrediction, *,
                         overwrite: bool = False) -> Path:
    """Write ``prediction`` for the particles of ``data`` (read from a STAR file) to ``path``."""
    from ...io import check_output_path, ensure_not_input, particle_block, read_star, relocate_image_names, write_star

    out = check_output_path(path, overwrite=overwrite)
    if data.path is not None:
        ensure_not_input(out, data.path)
    n = data.n
    if prediction.rotations.shape[0] != n:
        raise InputError(f"{n} predicted poses", path=out, field="rotations", got=prediction.rotations.shape[0])
    blocks = {}
    if data.path is not None and data.table is not None:
        blocks = read_star(data.path)
        pname, _ = particle_block(blocks, path=data.path)
        df = data.table.data.copy().reset_index(drop=True)
        df["rlnImageName"] = relocate_image_names(df["rlnImageName"].astype(str), star_path=data.path, out_path=out)
        drop = [c for c in ("rlnOriginX", "rlnOriginY") if c in df.columns]
        df = df.drop(columns=drop)
    else:
        pname = "particles"
        df = pd.DataFrame(index=range(n))
    eul = prediction.euler_deg
    df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"] = eul[:, 0], eul[:, 1], eul[:, 2]
    df["rlnOriginXAngst"] = prediction.origins_angstrom[:, 0]
    df["rlnOriginYAngst"] = prediction.origins_angstrom[:, 1]
    df[CONFIDENCE_OUT_COLUMN] = np.asarray(prediction.confidence, dtype=np.float64)
    if prediction.log_likelihood is not None:
        df["rlnLogLikeliContribution"] = np.asarray(prediction.log_likelihood, dtype=np.float64)
    blocks[pname] = df
    return write_star(out, blocks, overwrite=overwrite)
