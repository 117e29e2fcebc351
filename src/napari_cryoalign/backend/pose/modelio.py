"""Saving and loading pose models.

A model file is a ``torch.save`` of a plain dict, read back with
``torch.load(weights_only=True)`` (:func:`napari_cryoalign.io.modelfile.read_model_file`)::

    {"format": "napari-cryoalign-pose", "version": 1,
     "header": {config, symmetry, pixel_size_angstrom, box, halves, training, created},
     "state_dict": {"net1.<param>": tensor, ..., "reference1": (S, S, S) tensor, ...}}

``netH`` / ``referenceH`` are the network trained on half set H (0 = all particles) and the
reconstruction of its training particles (used by the shift search and refinement).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ...io.modelfile import read_model_file, write_model_file
from .model import PoseNet, PoseNetConfig
from .train import PoseModel

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "load_pose_model", "save_pose_model"]

FORMAT_NAME = "napari-cryoalign-pose"
FORMAT_VERSION = 1


def save_pose_model(path: str | os.PathLike, model: PoseModel, *, overwrite: bool = False) -> Path:
    """Write ``model`` atomically (temporary file + rename); refuses to replace a file unless ``overwrite``."""
    state = {}
    for h, net in model.nets.items():
        for k, v in net.state_dict().items():
            state[f"net{h}.{k}"] = v
        state[f"reference{h}"] = torch.as_tensor(np.asarray(model.references[h], dtype=np.float32))
    header = {"config": model.config.to_dict(), "symmetry": model.symmetry,
              "pixel_size_angstrom": float(model.pixel_size_angstrom), "box": int(model.box),
              "halves": [int(h) for h in model.halves], "training": model.training}
    return write_model_file(path, format_name=FORMAT_NAME, version=FORMAT_VERSION, header=header, state_dict=state,
                            overwrite=overwrite)


def load_pose_model(path: str | os.PathLike, *, device="cpu") -> PoseModel:
    """Read a model written by :func:`save_pose_model`.

    Raises :class:`InputError` naming the file: missing, unreadable, another format, a newer
    version, or weights that do not fit the network the header describes (``field="state_dict"``).
    """
    p = Path(path)
    obj = read_model_file(p, format_name=FORMAT_NAME, max_version=FORMAT_VERSION, what="pose model")
    header, state = obj["header"], obj["state_dict"]
    try:
        cfg = PoseNetConfig.from_dict(header["config"])
        nets, refs = {}, {}
        for h in header["halves"]:
            net = PoseNet(cfg)
            prefix = f"net{int(h)}."
            net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            net.eval()
            nets[int(h)] = net.to(device)
            refs[int(h)] = state[f"reference{int(h)}"].numpy()
        model = PoseModel(nets=nets, references=refs, config=cfg, symmetry=str(header["symmetry"]),
                          pixel_size_angstrom=float(header["pixel_size_angstrom"]), box=int(header["box"]),
                          training=dict(header.get("training") or {}))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        msg = " ".join(str(err).split())[:200]
        raise InputError("weights matching the network described in the header", path=p, field="state_dict",
                         got=f"{type(err).__name__}: {msg}") from None
    return model
