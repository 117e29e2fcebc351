"""The stages that build a simulated tomogram's sample: species, slab, particle placement, potential."""

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.simulate.slab import (
    ParticleTruth,
    Slab,
    bilayer_profile,
    place_particles,
    place_slab,
    sample_potential,
    species_maps,
    species_probabilities,
)
from napari_cryoalign.errors import InputError


def _blob(n=9, sigma=1.5):
    g = np.arange(n) - n // 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    return np.exp(-(xx**2 + yy**2 + zz**2) / (2 * sigma**2)).astype(np.float32)


def test_species_maps_are_boxed_to_their_bounding_sphere():
    (sp,) = species_maps(None, maps={"blob": _blob(21)}, voxel_size_angstrom=10.0, protein_potential_v=6.5,
                         ice_potential_v=4.5)
    b = sp.map.shape[0]
    assert sp.name == "blob" and sp.map.shape == (b, b, b) and b == 2 * int(np.ceil(sp.radius)) + 3
    g = np.arange(b) - b // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    assert np.all(sp.map[r > sp.radius + 1.0] == 0)  # zero outside the sphere: rotation never cuts corners
    with pytest.raises(InputError, match="cubic"):
        species_maps(None, maps={"bad": np.zeros((4, 5, 6))}, voxel_size_angstrom=10.0, protein_potential_v=6.5,
                     ice_potential_v=4.5)
    with pytest.raises(InputError, match="structure"):
        species_maps(None, voxel_size_angstrom=10.0, protein_potential_v=6.5, ice_potential_v=4.5)


def test_species_probabilities():
    np.testing.assert_allclose(species_probabilities(4), [0.25] * 4)
    np.testing.assert_allclose(species_probabilities(2, [1, 3]), [0.25, 0.75])
    with pytest.raises(InputError, match="abundances"):
        species_probabilities(2, [1, -1])
    with pytest.raises(InputError, match="abundances"):
        species_probabilities(3, [1, 1])


def test_slab_puts_gold_on_the_ice_surfaces_and_vesicles_inside():
    rng = np.random.default_rng(0)
    slab = place_slab((40, 96, 96), voxel_size_angstrom=10.0, rng=rng, ice_thickness_nm=30.0, n_vesicles=2,
                      vesicle_radius_nm=(6.0, 8.0), n_membranes=1, n_gold=3, gold_diameter_nm=6.0)
    z_lo, z_hi = slab.z_range
    assert (z_lo, z_hi) == (5.0, 35.0) and slab.ice_thickness_nm == 30.0
    assert len(slab.vesicles) == 2 and len(slab.membranes) == 1 and len(slab.gold) == 3
    assert slab.gold_radius == 3.0 and slab.shell == 4.0
    for g in slab.gold:
        assert g[2] in (z_hi - 3.5, z_lo + 3.5)
    for c, r in slab.vesicles:
        assert 6.0 <= r <= 8.0 and z_lo + r <= c[2] <= z_hi - r
    p0, nrm = slab.membranes[0]
    assert np.linalg.norm(nrm) == pytest.approx(1.0) and nrm[2] == 0.0


def test_particles_do_not_overlap_each_other_or_the_membranes():
    (sp,) = species_maps(None, maps={"blob": _blob()}, voxel_size_angstrom=10.0, protein_potential_v=6.5,
                         ice_potential_v=4.5)
    rng = np.random.default_rng(1)
    slab = place_slab((32, 64, 64), voxel_size_angstrom=10.0, rng=rng, n_membranes=1, n_gold=2)
    truth = place_particles([sp], slab, n=12, shape=(32, 64, 64), rng=rng, min_gap_nm=1.0, voxel_size_angstrom=10.0)
    assert isinstance(truth, ParticleTruth) and 0 < len(truth) <= 12
    assert set(truth.classes) == {1} and truth.class_names == ("blob",)
    xyz, r = truth.coordinates_xyz, truth.radii_voxels
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert np.all(d >= r[:, None] + r[None] + 1.0)  # 1 nm = 1 voxel gap
    p0, nrm = slab.membranes[0]
    assert np.all(np.abs((xyz - p0) @ nrm) >= r + slab.shell)
    for g in slab.gold:
        assert np.all(np.linalg.norm(xyz - g, axis=1) >= r + slab.gold_radius + 1.0)
    rot = truth.matrices
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9)


def test_sample_potential_holds_each_particle_at_its_truth_position():
    (sp,) = species_maps(None, maps={"blob": _blob()}, voxel_size_angstrom=10.0, protein_potential_v=6.5,
                         ice_potential_v=4.5)
    truth = ParticleTruth(coordinates_xyz=np.array([[20.0, 12.0, 9.0]]), euler_deg=np.zeros((1, 3)),
                          classes=np.array([1]), class_names=("blob",), radii_voxels=np.array([sp.radius]))
    slab = Slab(ice_thickness_nm=20.0, z_range=(0.0, 20.0))
    vol = sample_potential([sp], truth, slab, shape=(20, 24, 32), voxel_size_angstrom=10.0)
    assert vol.shape == (20, 24, 32) and vol.dtype == torch.float32
    b = sp.map.shape[0]
    crop = vol[9 - b // 2: 9 - b // 2 + b, 12 - b // 2: 12 - b // 2 + b, 20 - b // 2: 20 - b // 2 + b].numpy()
    np.testing.assert_allclose(crop, sp.map, atol=1e-5)  # identity pose, integer centre: the map itself
    assert float(vol.sum()) == pytest.approx(float(sp.map.sum()), rel=1e-5)


def test_membranes_add_a_bilayer_inside_the_ice_only():
    slab = Slab(ice_thickness_nm=10.0, z_range=(5.0, 15.0), membranes=((np.array([8.0, 8.0, 10.0]),
                                                                       np.array([1.0, 0.0, 0.0])),))
    empty = ParticleTruth(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int64), (), np.zeros(0))
    vol = sample_potential([], empty, slab, shape=(20, 16, 16), voxel_size_angstrom=10.0)
    expected = bilayer_profile(torch.arange(16, dtype=torch.float32) - 8.0)
    torch.testing.assert_close(vol[10, 3], expected)
    assert float(vol[2].abs().max()) == 0.0 and float(vol[17].abs().max()) == 0.0
