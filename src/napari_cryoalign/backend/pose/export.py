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
    import starfile

    from ...io import atomic_path, check_output_path, ensure_not_input
    from ...io.star import read_star
    from ...io.star_images import format_image_name

    out = check_output_path(path, overwrite=overwrite)
    if data.path is not None:
        ensure_not_input(out, data.path)
    n = data.n
    if prediction.rotations.shape[0] != n:
        raise InputError(f"{n} predicted poses", path=out, field="rotations", got=prediction.rotations.shape[0])
    blocks = {}
    if data.path is not None and data.table is not None:
        raw = read_star(data.path)
        for name, block in raw.items():
            blocks[name] = block
        pname = next(k for k in ("particles", "images", "") if k in blocks and isinstance(blocks[k], pd.DataFrame))
        df = data.table.data.copy().reset_index(drop=True)
        # image names relative to the new file's folder
        from ...io.star_images import parse_image_name

        names = []
        for i, s in enumerate(df["rlnImageName"].astype(str)):
            idx, fname = parse_image_name(s, path=data.path, row=i)
            p = Path(fname) if Path(fname).is_absolute() else data.path.parent / fname
            rel = os.path.relpath(p, out.parent).replace(os.sep, "/")
            names.append(rel if idx is None else format_image_name(idx, rel))
        df["rlnImageName"] = names
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
    with atomic_path(out, overwrite=overwrite) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
    return out
