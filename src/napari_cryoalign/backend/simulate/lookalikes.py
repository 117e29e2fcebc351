"""A target with its variants and look-alikes, ready for a picking benchmark (issue 17).

:func:`lookalike_species` builds, from one packaged structure and the map operations of
:mod:`.variants`, what a simulated tomogram that makes picking hard needs
(:class:`LookalikeSet`): the maps to pass as ``simulate_tomogram(maps=...)`` (potential relative
to ice in volts, scaled like the packaged structures), which names count as the target (the full
map, its second conformation and its partial copies) and which are look-alikes (the sub-complex),
and the *mismatched templates* a user might really have (:meth:`LookalikeSet.mismatched_template`:
a low-resolution map, the other conformation, the sub-complex). ``maps`` are listed before
``structures`` in the simulation's truth classes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError
from ..fourier import lowpass, pad_or_crop
from .slab import PROTEIN_DENSITY_DA_PER_A3
from .structures import load_structure_map, structure_info
from .variants import partial_occupancy, second_conformation, split_domains, subcomplex

__all__ = ["TEMPLATE_KINDS", "LookalikeSet", "lookalike_species"]

#: the kinds of :meth:`LookalikeSet.mismatched_template`
TEMPLATE_KINDS = ("exact", "lowpass40", "conformation", "subcomplex")


@dataclass(frozen=True, eq=False)
class LookalikeSet:
    """A target's variants and look-alikes for a picking benchmark (:func:`lookalike_species`).

    Attributes
    ----------
    target : name of the packaged structure the variants come from
    voxel_size : voxel size of every map, Å
    maps : ``{name: (array (z, y, x) float32, voxel_size Å)}``, potential relative to ice in
        volts on the packaged structures' scale: pass as ``simulate_tomogram(maps=...)``
    target_names : names that count as the target (``target`` itself when included,
        ``"<target>_conf2"``, ``"<target>_partial1"``, ...)
    lookalike_names : names that are look-alikes, not the target (``"<target>_subcomplex"``)
    domain_labels : int32 ``(z, y, x)`` two-domain split of the full map (1 = the larger domain)
    domain_fractions : mass fraction of each domain, in label order
    """

    target: str
    voxel_size: float
    maps: dict
    target_names: tuple[str, ...]
    lookalike_names: tuple[str, ...]
    domain_labels: np.ndarray = field(repr=False)
    domain_fractions: tuple[float, ...]
    _full: np.ndarray = field(repr=False)
    _conformation: np.ndarray = field(repr=False)
    _subcomplex: np.ndarray = field(repr=False)

    def mismatched_template(self, kind: str) -> np.ndarray:
        """A template of the target as a user might really have it (a fresh float32 ``(z, y, x)`` copy).

        Parameters
        ----------
        kind : ``"exact"`` (the full map itself), ``"lowpass<Å>"`` e.g. ``"lowpass40"`` (the full
            map low-passed to that resolution with :func:`~napari_cryoalign.backend.fourier.lowpass`;
            near Nyquist, ``2 * voxel_size``, it changes little), ``"conformation"`` (the second
            conformation: the template of the other state) or ``"subcomplex"`` (a template of only
            part of the complex)

        Returns
        -------
        float32 ndarray, the box and units of :attr:`maps`
        """
        m = re.fullmatch(r"lowpass(\d+(?:\.\d+)?)", str(kind))
        if m:
            res = float(m.group(1))
            if res <= 0:
                raise InputError("a resolution > 0 Å", field="kind", got=kind)
            return np.asarray(lowpass(self._full, res, voxel_size_angstrom=self.voxel_size), dtype=np.float32).copy()
        fixed = {"exact": self._full, "conformation": self._conformation, "subcomplex": self._subcomplex}
        if kind not in fixed:
            raise InputError("'exact', 'lowpass<Å>' (e.g. 'lowpass40'), 'conformation' or 'subcomplex'",
                             field="kind", got=repr(kind))
        return np.array(fixed[kind], dtype=np.float32, copy=True)


def lookalike_species(voxel_size_angstrom: float, *, target: str = "ribosome", n_partial: int = 3,
                      partial_fraction: float = 0.15, angle_deg: float = 10.0, axis="hinge", seed: int = 0,
                      include_full: bool = True, soft_edge_angstrom: float = 10.0,
                      protein_potential_v: float = 6.5, ice_potential_v: float = 4.5) -> LookalikeSet:
    """A packaged structure's variants and sub-complex, ready for ``simulate_tomogram(maps=...)``.

    The full map (:func:`~.structures.load_structure_map` at ``voxel_size_angstrom``, centre-padded
    so a turned domain stays in the box) is scaled to the potential relative to ice exactly as
    the simulator scales packaged structures (integral ``(protein - ice) * mass / 0.813 Da/Å³``),
    split into two domains (:func:`split_domains`), and gives:

    * ``"<target>"`` (if ``include_full``): the full map - a target;
    * ``"<target>_conf2"``: :func:`second_conformation` by ``angle_deg`` - a target;
    * ``"<target>_partial1"`` ... ``"<target>_partial<n_partial>"``: :func:`partial_occupancy`
      with ``partial_fraction``, each its own seed - targets;
    * ``"<target>_subcomplex"``: :func:`subcomplex`, the larger domain alone - a look-alike.

    Other species of similar size (``cct``, ``mtor`` for the ribosome) come as
    ``structures=(...)`` of the simulation; do not pass ``target`` there as well when
    ``include_full`` (the names would clash).

    Parameters
    ----------
    voxel_size_angstrom : voxel size of the tomogram, Å (the packaged map is resampled; the actual
        voxel size, within ~1 %, is :attr:`LookalikeSet.voxel_size` and goes with each map)
    target : a packaged structure (:func:`~.structures.list_structures`)
    n_partial : number of partial-occupancy copies (>= 0)
    partial_fraction : share of the density each partial copy lacks
    angle_deg, axis : the second conformation (:func:`second_conformation`)
    seed : seed of the split and of the partial copies' regions
    include_full : include the full map as ``"<target>"``
    soft_edge_angstrom : Gaussian edge of every mask, Å
    protein_potential_v, ice_potential_v : mean inner potentials (V), as in the simulator

    Returns
    -------
    :class:`LookalikeSet`
    """
    if voxel_size_angstrom is None or not voxel_size_angstrom > 0:
        raise InputError("a voxel size > 0 Å", field="voxel_size_angstrom", got=voxel_size_angstrom)
    if int(n_partial) != n_partial or n_partial < 0:
        raise InputError("a number of partial copies >= 0", field="n_partial", got=n_partial)
    info = structure_info(target)
    full, vox = load_structure_map(target, voxel_size_angstrom=voxel_size_angstrom)
    box = full.shape[0]
    pad = 2 + math.ceil(0.5 * box * abs(math.sin(math.radians(min(abs(angle_deg), 90.0)))))
    full = np.asarray(pad_or_crop(full, (box + 2 * pad,) * 3), dtype=np.float64)
    integral = float(full.sum()) * vox**3
    full *= (protein_potential_v - ice_potential_v) * (float(info["mass_da"]) / PROTEIN_DENSITY_DA_PER_A3) / integral
    edge = soft_edge_angstrom / vox
    labels = split_domains(full, n=2, seed=seed)
    total = float(full[labels > 0].sum())
    fractions = tuple(float(full[labels == k].sum()) / total for k in (1, 2))
    conf = second_conformation(full, angle_deg=angle_deg, axis=axis, labels=labels, soft_edge=edge)
    sub = subcomplex(full, keep=1, labels=labels, soft_edge=edge)
    maps: dict[str, tuple[np.ndarray, float]] = {}
    names: list[str] = []
    if include_full:
        maps[target] = (full.astype(np.float32), vox)
        names.append(target)
    maps[f"{target}_conf2"] = (conf, vox)
    names.append(f"{target}_conf2")
    child_seeds = np.random.default_rng(seed).integers(0, 2**31, size=int(n_partial))
    for i, s in enumerate(child_seeds, start=1):
        maps[f"{target}_partial{i}"] = (partial_occupancy(full, fraction=partial_fraction, seed=int(s),
                                                          soft_edge=edge), vox)
        names.append(f"{target}_partial{i}")
    maps[f"{target}_subcomplex"] = (sub, vox)
    return LookalikeSet(target=target, voxel_size=float(vox), maps=maps, target_names=tuple(names),
                        lookalike_names=(f"{target}_subcomplex",), domain_labels=labels,
                        domain_fractions=fractions, _full=full.astype(np.float32), _conformation=conf,
                        _subcomplex=sub)
