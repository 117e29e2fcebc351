"""Variants of a structure map for a hard picking benchmark: domains, sub-complex, conformation, occupancy."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from napari_cryoalign.backend.fourier import lowpass, pad_or_crop
from napari_cryoalign.backend.simulate import lookalikes as LK
from napari_cryoalign.backend.simulate import variants as V
from napari_cryoalign.backend.simulate.slab import species_maps
from napari_cryoalign.backend.simulate.structures import load_structure_map
from napari_cryoalign.backend.simulate.tomogram import simulate_tomogram
from napari_cryoalign.errors import InputError


def _ncc(a, b):
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _ncc40(a, b, vox):
    """Normalised cross-correlation (box Pearson) of two maps low-passed to 40 Å."""
    return _ncc(lowpass(np.asarray(a, np.float64), 40.0, voxel_size_angstrom=vox),
                lowpass(np.asarray(b, np.float64), 40.0, voxel_size_angstrom=vox))


def _centroid_xyz(v):
    """Centroid ``(x, y, z)`` (voxel indices) of the positive density."""
    w = np.clip(v, 0, None)
    idx = np.indices(v.shape).reshape(3, -1)
    return (idx * w.ravel()).sum(1)[::-1] / w.sum()


def _rg(v, centre=None):
    """Radius of gyration (voxels) of the positive density about ``centre`` (default its centroid)."""
    w = np.clip(v, 0, None)
    c = _centroid_xyz(v) if centre is None else centre
    r2 = ((np.indices(v.shape).reshape(3, -1).T[:, ::-1] - c) ** 2).sum(1)
    return float(np.sqrt((w.ravel() * r2).sum() / w.sum()))


@pytest.fixture(scope="module")
def ribo10():
    """The ribosome at 10 Å in a box with room for a turned domain, and its two-domain split."""
    d, vox = load_structure_map("ribosome", voxel_size_angstrom=10.0)
    d = np.asarray(pad_or_crop(d, (44,) * 3))
    return d, vox, V.split_domains(d)


@pytest.fixture(scope="module")
def ribo20():
    d, vox = load_structure_map("ribosome", voxel_size_angstrom=20.0)
    d = np.asarray(pad_or_crop(d, (26,) * 3))
    return d, vox, V.split_domains(d)


def _two_blobs(n=40):
    """A big and a small Gaussian blob (masses 2:1, centres at x = 14 and 27) joined by a density valley;
    returns the map and the mask where the big blob dominates."""
    g = np.arange(n, dtype=np.float64) - n // 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    big = np.exp(-((xx + 6) ** 2 + yy**2 + zz**2) / (2 * 3.5**2))
    small = 0.5 * np.exp(-((xx - 7) ** 2 + yy**2 + zz**2) / (2 * 3.5**2))  # half the mass of ``big``
    return (big + small).astype(np.float32), big > small


# ----------------------------------------------------------------------------------------
# split_domains
# ----------------------------------------------------------------------------------------
def test_split_recovers_two_blobs_of_known_mass():
    vol, big = _two_blobs()
    lab = V.split_domains(vol)
    inside = vol > 0.1 * vol.max()
    assert set(np.unique(lab).tolist()) == {0, 1, 2}
    assert np.array_equal(lab > 0, inside)  # 0 exactly outside the default threshold
    frac = vol[lab == 1].sum() / vol[inside].sum()
    true_frac = vol[big & inside].sum() / vol[inside].sum()  # 0.71: the small blob is fainter at its rim
    assert frac == pytest.approx(true_frac, abs=0.02)  # label 1 is the more massive blob
    agree = np.mean((lab == 1)[inside] == big[inside])
    assert agree > 0.97  # the cut runs along the density valley between the blobs


def test_split_ribosome_into_its_subunits(ribo10, ribo20):
    for d, _, lab in (ribo10, ribo20):
        assert lab.dtype == np.int32 and lab.shape == d.shape
        assert set(np.unique(lab).tolist()) == {0, 1, 2}
        fr = np.array([d[lab == k].sum() for k in (1, 2)]) / d[lab > 0].sum()
        assert 0.55 <= fr[0] <= 0.70 and fr[0] > fr[1]  # the large subunit about 60 % of the mass
        for k in (1, 2):
            assert ndi.label(lab == k)[1] == 1  # each domain is one connected piece
        c1, c2 = _centroid_xyz(np.where(lab == 1, d, 0)), _centroid_xyz(np.where(lab == 2, d, 0))
        assert np.linalg.norm(c1 - c2) * (10.0 if d is ribo10[0] else 20.0) > 60.0  # Å apart: two lobes
    # nearly the same domains at 10 and 20 Å voxels (compare on the 20 Å grid)
    lab10_on20 = ribo10[2][::2, ::2, ::2]  # 44 voxels of 10 Å -> 22 of 20 Å, the centre at index 11
    lab20 = ribo20[2][2:-2, 2:-2, 2:-2]  # 26 -> 22 voxels, the centre from 13 to 11
    both = (lab10_on20 > 0) & (lab20 > 0)
    assert np.mean(lab10_on20[both] == lab20[both]) > 0.85


def test_split_is_deterministic_and_takes_options(ribo20):
    d, _, lab = ribo20
    assert np.array_equal(V.split_domains(d, seed=0), lab)
    assert np.array_equal(V.split_domains(d, seed=7), lab)  # the seed only starts the solver
    assert np.array_equal(V.split_domains(d, n=1), (d > 0.1 * d.max()).astype(np.int32))
    lab3 = V.split_domains(d, n=3)
    masses = [d[lab3 == k].sum() for k in (1, 2, 3)]
    assert masses == sorted(masses, reverse=True) and all(ndi.label(lab3 == k)[1] == 1 for k in (1, 2, 3))
    high = V.split_domains(d, threshold=0.3 * d.max())
    assert np.array_equal(high > 0, d > 0.3 * d.max())
    with pytest.raises(InputError, match="threshold"):
        V.split_domains(d, threshold=2 * d.max())
    with pytest.raises(InputError, match="domains"):
        V.split_domains(d, n=0)
    with pytest.raises(InputError, match="volume"):
        V.split_domains(d[0])


# ----------------------------------------------------------------------------------------
# subcomplex
# ----------------------------------------------------------------------------------------
def test_subcomplex_is_the_large_subunit_softly_masked(ribo10):
    d, vox, lab = ribo10
    sub = V.subcomplex(d, labels=lab)
    assert sub.dtype == np.float32 and sub.shape == d.shape
    assert np.array_equal(sub, V.subcomplex(d))  # default labels: the same 2-way split
    frac = sub.sum() / d.sum()
    assert 0.55 <= frac <= 0.80
    assert 0.60 < _ncc40(d, sub, vox) < 0.90  # looks like the target, but is not it
    # the two sub-complexes add up to the map: the soft masks are complementary
    other = V.subcomplex(d, keep=2, labels=lab)
    assert np.allclose(sub + other, d, atol=1e-6 * d.max())
    assert np.allclose(V.subcomplex(d, keep=(1, 2), labels=lab), d, atol=1e-6 * d.max())
    # soft edge: the mask takes intermediate values, and the cut adds no power beyond the map's
    # resolution (25 Å, 0.4 cycles/voxel; tested beyond 0.5), where a hard cut adds much
    ratio = sub[d > 0.2 * d.max()] / d[d > 0.2 * d.max()]
    assert np.any((ratio > 0.2) & (ratio < 0.8))
    f = np.fft.fftfreq(d.shape[0])
    beyond = f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2 > 0.5**2

    def high(x):
        p = np.abs(np.fft.fftn(x)) ** 2
        return p[beyond].sum() / p.sum()

    assert high(sub) < 1.15 * high(d)
    assert high(V.subcomplex(d, labels=lab, soft_edge=0.0)) > 1.4 * high(d)
    with pytest.raises(InputError, match="keep"):
        V.subcomplex(d, keep=3, labels=lab)


# ----------------------------------------------------------------------------------------
# second_conformation
# ----------------------------------------------------------------------------------------
def test_second_conformation_keeps_mass_and_departs_with_the_angle(ribo20):
    d, vox, lab = ribo20
    zero = V.second_conformation(d, angle_deg=0.0, labels=lab)
    assert zero.dtype == np.float32 and zero.shape == d.shape
    assert np.allclose(zero, d, atol=1e-5 * d.max())  # 0 degrees gives the map back
    nccs = []
    for ang in (2.0, 5.0, 10.0, 20.0):
        c = V.second_conformation(d, angle_deg=ang, labels=lab)
        assert c.sum() / d.sum() == pytest.approx(1.0, abs=0.02)
        nccs.append(_ncc40(d, c, vox))
    assert all(a > b for a, b in zip(nccs, nccs[1:]))  # less alike the more it turns
    assert 0.99 < nccs[0] < 0.9999
    assert 0.93 < nccs[2] < 0.995  # 10 degrees
    assert 0.85 < nccs[3] < 0.98  # 20 degrees
    # only the small domain moves: the large subunit alone is as it was where the small one is not
    c10 = V.second_conformation(d, angle_deg=10.0, labels=lab)
    far = (ndi.distance_transform_edt(lab != 2) > 4) & (lab == 1)
    assert np.abs(c10[far] - d[far]).max() < 0.005 * d.max()
    assert np.abs(c10[lab == 2] - d[lab == 2]).max() > 0.2 * d.max()
    assert np.array_equal(V.second_conformation(d, angle_deg=10.0), c10)  # default labels: the same split


def test_second_conformation_turns_the_small_domain_about_the_interface():
    vol, _ = _two_blobs()
    lab = V.split_domains(vol)
    ter = V._territories(lab)
    fixed, small = np.where(ter == 1, vol, 0), np.where(ter == 2, vol, 0)
    c_small = _centroid_xyz(small)
    profile = vol[20, 20, :]
    valley = 14 + int(np.argmin(profile[14:28]))  # between the blob centres (x = 14 and 27)
    for axis, far in (((0.0, 0.0, 1.0), True), ("hinge", True), ("ratchet", False)):
        pivot, ax = V._hinge(vol.astype(np.float64), lab, 2, axis)
        assert pivot[0] == pytest.approx(valley, abs=1.5) and np.allclose(pivot[1:], 20, atol=1.5)
        if axis == "hinge":
            assert abs(ax[0]) < 1e-6  # perpendicular to the line through the centroids (x)
        turned = V.second_conformation(vol, angle_deg=30.0, axis=axis, labels=lab, soft_edge=0.0)
        assert np.allclose(turned - fixed >= -1e-6, True)  # the large blob stays, the small one is added
        rot = Rotation.from_rotvec(np.radians(30.0) * ax).as_matrix()
        expected = rot @ (c_small - pivot) + pivot
        moved = _centroid_xyz(turned - fixed)
        assert np.linalg.norm(moved - expected) < 0.5
        assert (np.linalg.norm(moved - c_small) > 2.0) == far  # turning about the centroid line: stays put
    # right-handed about +z: the small blob (at +x of the pivot) moves towards +y
    turned = V.second_conformation(vol, angle_deg=30.0, axis=(0, 0, 1), labels=lab, soft_edge=0.0)
    assert _centroid_xyz(turned - fixed)[1] - c_small[1] > 2.0
    with pytest.raises(InputError, match="axis"):
        V.second_conformation(vol, axis="sideways", labels=lab)


# ----------------------------------------------------------------------------------------
# partial_occupancy
# ----------------------------------------------------------------------------------------
def test_partial_occupancy_removes_one_compact_peripheral_region(ribo20, ribo10):
    for d, _, _ in (ribo20, ribo10):
        rg = _rg(d)
        for fraction, seed in ((0.15, 0), (0.15, 1), (0.3, 2)):
            p = V.partial_occupancy(d, fraction=fraction, seed=seed)
            assert p.dtype == np.float32 and p.shape == d.shape
            assert np.all(np.abs(p) <= np.abs(d) + 1e-7 * d.max())  # density only taken away
            assert 1 - p.sum() / d.sum() == pytest.approx(fraction, abs=0.02)
            cut = np.clip(d - p, 0, None)
            assert _rg(cut) < 0.75 * rg  # a compact region, not scattered density
            assert np.linalg.norm(_centroid_xyz(cut) - _centroid_xyz(d)) > 0.5 * rg  # at the periphery
            assert ndi.label(cut > 0.05 * cut.max())[1] == 1  # one region
    d = ribo20[0]
    a, b = V.partial_occupancy(d, seed=0), V.partial_occupancy(d, seed=1)
    assert np.array_equal(a, V.partial_occupancy(d, seed=0)) and not np.allclose(a, b)
    assert np.array_equal(V.partial_occupancy(d, fraction=0.0), d.astype(np.float32))
    rng = np.random.default_rng(3)
    assert np.array_equal(V.partial_occupancy(d, seed=rng), V.partial_occupancy(d, seed=np.random.default_rng(3)))
    with pytest.raises(InputError, match="fraction"):
        V.partial_occupancy(d, fraction=1.0)


# ----------------------------------------------------------------------------------------
# lookalike_species and the simulator
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lookalikes():
    return LK.lookalike_species(20.0, n_partial=2, seed=0)


def test_lookalike_species_names_shapes_and_scale(lookalikes):
    L = lookalikes
    names = ["ribosome", "ribosome_conf2", "ribosome_partial1", "ribosome_partial2", "ribosome_subcomplex"]
    assert list(L.maps) == names
    assert L.target == "ribosome" and L.target_names == tuple(names[:4])
    assert L.lookalike_names == ("ribosome_subcomplex",) and L.voxel_size == pytest.approx(20.0)
    shapes = {m.shape for m, _ in L.maps.values()}
    assert len(shapes) == 1 and len(set(shapes.pop())) == 1  # one cubic box for all
    assert all(v == L.voxel_size and m.dtype == np.float32 for m, v in L.maps.values())
    # volts relative to ice on the simulator's scale of packaged maps
    (packaged,) = species_maps(("ribosome",), voxel_size_angstrom=20.0, protein_potential_v=6.5, ice_potential_v=4.5)
    full = L.maps["ribosome"][0]
    assert full.sum() == pytest.approx(packaged.map.sum(), rel=0.01)
    assert L.domain_labels.shape == full.shape and sum(L.domain_fractions) == pytest.approx(1.0)
    assert 0.55 <= L.domain_fractions[0] <= 0.70
    sub, p1, p2 = (L.maps[k][0] for k in ("ribosome_subcomplex", "ribosome_partial1", "ribosome_partial2"))
    assert 0.55 <= sub.sum() / full.sum() <= 0.80
    assert p1.sum() / full.sum() == pytest.approx(0.85, abs=0.03) and not np.allclose(p1, p2)
    assert L.maps["ribosome_conf2"][0].sum() / full.sum() == pytest.approx(1.0, abs=0.02)
    # templates a user might have
    assert np.array_equal(L.mismatched_template("exact"), full)
    assert np.array_equal(L.mismatched_template("conformation"), L.maps["ribosome_conf2"][0])
    assert np.array_equal(L.mismatched_template("subcomplex"), sub)
    low = L.mismatched_template("lowpass40")
    assert low.shape == full.shape and 0.95 < _ncc(low, full) < 0.9999
    assert _ncc(L.mismatched_template("lowpass80"), full) < _ncc(low, full)
    with pytest.raises(InputError, match="kind"):
        L.mismatched_template("blurry")
    small = LK.lookalike_species(20.0, n_partial=0, include_full=False, target="enolase")
    assert list(small.maps) == ["enolase_conf2", "enolase_subcomplex"] and small.target_names == ("enolase_conf2",)


def test_simulated_tomogram_with_lookalikes_knows_each_particle(lookalikes):
    L = lookalikes
    sim = simulate_tomogram(shape=(30, 80, 80), voxel_size_angstrom=20.0, structures=("cct",), maps=L.maps,
                            n_particles=12, dose=None, ctf=False, tilt_step_deg=6.0, seed=1)
    t = sim.truth
    assert t.class_names == tuple(L.maps) + ("cct",)  # maps first, then structures
    assert len(t) >= 6 and set(np.unique(t.classes)) <= set(range(1, len(t.class_names) + 1))
    names = [t.class_names[k - 1] for k in t.classes]
    assert any(n in L.target_names for n in names)
    # each particle's potential integrates to its own species' map: the classes name the right maps
    species = {s.name: s for s in species_maps(("cct",), maps=L.maps, voxel_size_angstrom=20.0,
                                               protein_potential_v=6.5, ice_potential_v=4.5)}
    idx = np.indices(sim.potential.shape).reshape(3, -1).T[:, ::-1]
    for xyz, name, r in zip(t.coordinates_xyz, names, t.radii_voxels):
        near = (np.linalg.norm(idx - xyz, axis=1) <= r + 1.0).reshape(sim.potential.shape)
        assert sim.potential[near].sum() == pytest.approx(species[name].map.sum(), rel=0.05), name
