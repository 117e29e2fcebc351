"""Saving and loading picker models.

A model file is a ``torch.save`` of a plain dict (loaded back with
``torch.load(weights_only=True)``, which runs no code)::

    {"format": "napari-cryoalign-picker", "version": 1,
     "header": {diameter_angstrom, voxel_size, class_prior, net_config, training, created},
     "state_dict": {...}, "optimizer_state": {...} or None,
     "shape_reference": {map, voxel_size, centre, scale, ...} or absent}

Anything else - another tool's checkpoint, a truncated or corrupted file, a newer version -
raises :class:`~napari_cryoalign.errors.InputError` naming the file and what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import InputError
from ...io.modelfile import model_file_bytes, read_model_file, write_model_file
from .._tensor import resolve_device
from .model import NetConfig, PickerNet
from .picker import Picker

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "save_picker", "load_picker", "picker_to_bytes"]

FORMAT_NAME = "napari-cryoalign-picker"
FORMAT_VERSION = 1


def _model_file(picker: Picker) -> dict:
    header = {
        "diameter_angstrom": float(picker.diameter_angstrom),
        "voxel_size": float(picker.voxel_size),
        "class_prior": float(picker.class_prior),
        "net_config": picker.net_config.to_dict(),
        "training": picker.training,
    }
    extra = {"optimizer_state": picker.optimizer_state}
    if picker.shape_reference is not None:
        extra["shape_reference"] = picker.shape_reference.to_dict()
    return {"format_name": FORMAT_NAME, "version": FORMAT_VERSION, "header": header,
            "state_dict": picker.net.state_dict(), "extra": extra}


def picker_to_bytes(picker: Picker) -> bytes:
    """The model file's bytes (for tests and in-memory copies)."""
    return model_file_bytes(**_model_file(picker))


def save_picker(path: str | os.PathLike, picker: Picker, *, overwrite: bool = False) -> Path:
    """Write ``picker`` to ``path`` atomically (temporary file + rename). Returns the path."""
    return write_model_file(path, **_model_file(picker), overwrite=overwrite)


def load_picker(path: str | os.PathLike, *, device="cpu") -> Picker:
    """Read a model file written by :func:`save_picker`.

    Raises
    ------
    InputError
        ``field="path"`` missing file; ``"file"`` not a readable torch file (corrupted,
        truncated, or pickled code that ``weights_only`` refuses); ``"format"`` a file from
        another tool; ``"version"`` a newer format; ``"state_dict"`` weights that do not fit
        the network described by the header; ``"shape_reference"`` a malformed shape reference.
    """
    from .shape_check import ShapeReference

    p = Path(path)
    obj = read_model_file(p, format_name=FORMAT_NAME, max_version=FORMAT_VERSION, what="picker model")
    header, state = obj["header"], obj["state_dict"]
    try:
        cfg = NetConfig(**header["net_config"])
        net = PickerNet(cfg)
        net.load_state_dict(state)
        picker = Picker(net=net, diameter_angstrom=float(header["diameter_angstrom"]),
                        voxel_size=float(header["voxel_size"]), class_prior=float(header["class_prior"]),
                        training=dict(header.get("training") or {}),
                        optimizer_state=obj.get("optimizer_state"))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        msg = " ".join(str(err).split())[:200]
        raise InputError("weights matching the network described in the header", path=p,
                         field="state_dict", got=f"{type(err).__name__}: {msg}") from None
    if obj.get("shape_reference") is not None:
        picker.shape_reference = ShapeReference.from_dict(obj["shape_reference"], path=p)
    net.eval()
    return picker.to(resolve_device(device))
