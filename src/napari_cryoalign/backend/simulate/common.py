"""Pieces the simulators share: checks of common settings, random draws, noise at an SNR, batches, outputs.

* :func:`_check_noise_shift_defocus` - SNR, shift and defocus settings of the particle simulators;
* :func:`_draw_defocus`, :func:`_noise_generator` - random draws in the order the simulators make them;
* :func:`_simulate_batches` - a job loop over batches of particles, each with noise at an SNR (:func:`_at_snr`);
* :func:`_output_folder`, :func:`_check_outputs`, :func:`_optics` - the outputs of a simulation's writer.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from ...errors import InputError
from ..jobs import Progress


def _check_noise_shift_defocus(snr, max_shift, box, defocus, *, unit: str, shift_field: str) -> None:
    """Raise :class:`InputError` unless ``snr`` is None or > 0, ``0 <= max_shift <= box / 2`` (``unit``:
    pixels or voxels) and ``defocus`` is None, one value > 0 or a range ``(min, max)`` in µm."""
    if snr is not None and not (snr > 0 and math.isfinite(snr)):
        raise InputError("SNR > 0 (or None for no noise)", field="snr", got=snr)
    if max_shift < 0 or max_shift > box / 2:
        raise InputError(f"a shift between 0 and box/2 = {box / 2} {unit}", field=shift_field, got=max_shift)
    if defocus is not None:
        d = np.atleast_1d(np.asarray(defocus, dtype=float))
        if d.size not in (1, 2) or np.any(d <= 0) or d[0] > d[-1]:
            raise InputError("a defocus > 0 µm or a range (min, max)", field="defocus_um", got=defocus)


def _draw_defocus(rng: np.random.Generator, defocus_um, n: int) -> np.ndarray:
    """``(n,)`` defocus per particle (µm): uniform in a ``(min, max)`` range, the one value, or NaN (no CTF)."""
    if defocus_um is None:
        return np.full(n, np.nan)
    d = np.atleast_1d(np.asarray(defocus_um, dtype=float))
    return rng.uniform(d[0], d[-1], size=n) if d.size == 2 and d[0] < d[-1] else np.full(n, d[0])


def _noise_generator(rng: np.random.Generator, noise_seed: int | None) -> tuple[int, torch.Generator]:
    """The noise seed (drawn from ``rng`` when None) and a CPU torch generator seeded with it."""
    if noise_seed is None:
        noise_seed = int(rng.integers(0, 2**62))
    return int(noise_seed), torch.Generator(device="cpu").manual_seed(int(noise_seed))


def _at_snr(signal: torch.Tensor, snr: float | None, unit_noise: Callable[[], torch.Tensor]):
    """Add noise to a batch of signals at ``snr`` = signal variance / noise variance, per item.

    Parameters
    ----------
    signal : ``(B, ...)`` batch of images or volumes
    snr : the ratio, or None for no noise (``unit_noise`` is then not called: no draws)
    unit_noise : returns noise of unit variance per item, the shape of ``signal``

    Returns
    -------
    ``(B, ...)`` noisy signals, ``(B,)`` float64 signal variances, ``(B,)`` float64 noise variances
    (both over each whole item)
    """
    dims = tuple(range(1, signal.ndim))
    vs = signal.double().var(dim=dims, unbiased=False)
    if snr is None:
        return signal, vs, torch.zeros_like(vs)
    e = unit_noise()
    noise = e * (vs / snr).sqrt().view(-1, *([1] * len(dims))).to(e.dtype)
    return signal + noise, vs, noise.double().var(dim=dims, unbiased=False)


def _simulate_batches(n: int, batch_size: int, item_shape: Sequence[int],
                      simulate: Callable[[slice], tuple[torch.Tensor, torch.Tensor, torch.Tensor]], *,
                      message: str, unit: str) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run ``simulate(batch slice) -> (items, signal variances, noise variances)`` (:func:`_at_snr`) over
    ``n`` items in batches; yields :class:`Progress` (``message`` first, then ``"k/n unit"``) per batch.

    Returns ``(n, *item_shape)`` float32 items, ``(n,)`` signal and ``(n,)`` noise variances.
    """
    items = np.empty((n, *item_shape), dtype=np.float32)
    sig_var = np.empty(n)
    noise_var = np.empty(n)
    n_batches = max(1, math.ceil(n / batch_size))
    yield Progress(0, n_batches, message)
    for b in range(n_batches):
        sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
        out, vs, nv = simulate(sl)
        items[sl] = out.detach().cpu().numpy()
        sig_var[sl] = vs.cpu().numpy()
        noise_var[sl] = nv.cpu().numpy()
        yield Progress(b + 1, n_batches, f"{sl.stop}/{n} {unit}")
    return items, sig_var, noise_var


def _optics(params: dict) -> dict:
    """The STAR optics columns (``rlnVoltage`` kV, ``rlnSphericalAberration`` mm, ``rlnAmplitudeContrast``)
    from a simulation's ``params`` (defaults 300 kV, 2.7 mm, 0.07)."""
    return {"rlnVoltage": params.get("voltage_kv", 300.0), "rlnSphericalAberration": params.get("cs_mm", 2.7),
            "rlnAmplitudeContrast": params.get("amplitude_contrast", 0.07)}


def _output_folder(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path; :class:`InputError` when it is a file."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("a folder for the outputs", path=out, field="out_dir", got="a file")
    return out


def _check_outputs(out_dir: str | os.PathLike, names: Sequence[str], *, overwrite: bool = False) -> None:
    """Raise :class:`InputError` now if writing files ``names`` into ``out_dir`` would fail (before a run):
    ``out_dir`` is a file, or one of the files exists and not ``overwrite``."""
    out = _output_folder(out_dir)
    if out.is_dir() and not overwrite:
        for n in names:
            if (out / n).exists():
                raise InputError("a file that does not exist yet (pass overwrite=True to replace it)",
                                 path=out / n, field="output", got="an existing file")
