"""numpy <-> torch at the edges of the backend's public functions, and the one device resolver.

Public backend functions accept numpy arrays or torch tensors and return the kind they
were given: ``t, was_numpy = as_tensor(x)`` on the way in, ``to_caller(result, was_numpy)``
on the way out.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError

__all__ = ["as_tensor", "resolve_device", "to_caller"]


def as_tensor(x, *, device=None, dtype=None, float64_to_float32: bool = False) -> tuple[torch.Tensor, bool]:
    """``x`` as a floating-point tensor, and whether it came as numpy.

    Integer input becomes float32; ``dtype`` forces a type; with ``float64_to_float32``
    numpy float64 input becomes float32 (tensors keep their type). Read-only numpy arrays
    (memory-mapped files) are copied, since torch cannot wrap them.
    """
    if isinstance(x, torch.Tensor):
        t = x
        if dtype is not None:
            t = t.to(dtype)
        elif not t.is_floating_point():
            t = t.to(torch.float32)
        return (t if device is None else t.to(device)), False
    arr = np.ascontiguousarray(np.asarray(x))
    if not arr.flags.writeable:
        arr = arr.copy()
    t = torch.from_numpy(arr)
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point() or (float64_to_float32 and t.dtype == torch.float64):
        t = t.to(torch.float32)
    return (t if device is None else t.to(device)), True


def to_caller(t: torch.Tensor, was_numpy: bool):
    """Back to numpy (on the CPU) if the caller gave numpy, else the tensor as it is."""
    return t.detach().cpu().numpy() if was_numpy else t


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given (None = CPU)."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("a device this machine has ('cpu', or 'cuda' with a GPU, or 'auto')", field="device",
                         got=str(device))
    return dev
