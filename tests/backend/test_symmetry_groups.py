"""Point groups in RELION's axis conventions and symmetry-aware angular errors (CONVENTIONS.md: Symmetry)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_cryoalign.backend.geometry import euler_to_matrix, random_rotations
from napari_cryoalign.backend.symmetry import (
    closest_equivalent,
    equivalent_rotations,
    group_order,
    normalize_symmetry,
    point_group,
    symmetric_angle_deg,
    symmetrize_volume,
)
from napari_cryoalign.errors import InputError


def _has(group, axis, fold):
    r = Rotation.from_rotvec(np.asarray(axis, float) / np.linalg.norm(axis) * 2 * np.pi / fold).as_matrix()
    return np.abs(group - r).reshape(len(group), -1).max(axis=1).min() < 1e-5


@pytest.mark.parametrize("name,order", [("C1", 1), ("C5", 5), ("D2", 4), ("D7", 14), ("T", 12), ("O", 24),
                                        ("I", 60), ("I1", 60), ("I3", 60), ("I4", 60)])
def test_groups_are_closed_proper_and_of_the_right_order(name, order):
    g = point_group(name)
    assert g.shape == (order, 3, 3) and group_order(name) == order
    assert np.allclose(g[0], np.eye(3))
    assert np.allclose(np.einsum("gij,gkj->gik", g, g), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(g), 1.0)
    for a in g:  # closed under products
        prods = np.einsum("ij,gjk->gik", a, g)
        assert all(np.abs(g - p).reshape(order, -1).max(axis=1).min() < 1e-5 for p in prods)
    # same abstract group as scipy's (conjugate up to axes): compare the sorted rotation angles
    ref = Rotation.create_group(name[0] if name[0] in "TOI" else name)
    ours = np.sort(np.degrees(Rotation.from_matrix(g).magnitude()))
    assert np.allclose(ours, np.sort(np.degrees(ref.magnitude())), atol=1e-4)


def test_relion_axes():
    assert _has(point_group("C4"), (0, 0, 1), 4)
    d2 = point_group("D2")
    assert _has(d2, (1, 0, 0), 2) and _has(d2, (0, 1, 0), 2) and _has(d2, (0, 0, 1), 2)
    d3 = point_group("D3")
    assert _has(d3, (1, 0, 0), 2) and not _has(d3, (0, 1, 0), 2)  # RELION: the 2-fold on x
    t = point_group("T")
    assert _has(t, (0, 0, 1), 3) and _has(t, (0, 0.816496, 0.577350), 2)
    o = point_group("O")
    assert _has(o, (0, 0, 1), 4) and _has(o, (1, 1, 1), 3)
    i2 = point_group("I")
    assert _has(i2, (0, 0, 1), 2) and _has(i2, (0.525731, 0, 0.850651), 5) and _has(i2, (0, 0.356822, 0.934172), 3)
    assert _has(point_group("I3"), (0, 0, 1), 5) and _has(point_group("I1"), (1, 0, 0), 2)


def test_names_and_bad_names():
    assert normalize_symmetry("c1") == "C1" and normalize_symmetry(" d2 ") == "D2"
    assert normalize_symmetry("I") == "I2" and normalize_symmetry("t") == "T"
    for bad in ("X3", "C0", "D", "I5", "", "C-2"):
        with pytest.raises(InputError, match="symmetry"):
            point_group(bad)


def test_symmetric_errors_on_hand_made_cases():
    a = euler_to_matrix(np.array([[30.0, 60.0, -20.0]]))[0]
    rz = lambda deg: Rotation.from_euler("z", deg, degrees=True).as_matrix()  # noqa: E731
    # C1: a 10 degree turn about the particle's own z axis is a 10 degree error
    assert symmetric_angle_deg(a @ rz(10), a, "C1") == pytest.approx(10.0, abs=1e-6)
    # C4: 95 degrees about the symmetry axis is 5 degrees from a mate
    assert symmetric_angle_deg(a @ rz(95), a, "C4") == pytest.approx(5.0, abs=1e-6)
    assert symmetric_angle_deg(a @ rz(95), a, "C1") == pytest.approx(95.0, abs=1e-6)
    # every mate A g has zero error; a rotation about x by 180 deg only for D groups
    rx180 = Rotation.from_euler("x", 180, degrees=True).as_matrix()
    assert symmetric_angle_deg(a @ rx180, a, "D2") == pytest.approx(0.0, abs=1e-5)
    assert symmetric_angle_deg(a @ rx180, a, "C2") == pytest.approx(180.0, abs=1e-5)
    rots = random_rotations(50, seed=1)
    for sym in ("D2", "T", "O", "I"):
        eq = equivalent_rotations(rots, sym)
        pick = eq[np.arange(50), np.random.default_rng(0).integers(0, group_order(sym), 50)]
        assert np.abs(symmetric_angle_deg(pick, rots, sym)).max() < 1e-4
        assert np.allclose(closest_equivalent(pick, rots, sym), rots, atol=1e-6)
    # left multiplication is NOT a symmetry of the poses (it rotates the view): errors stay
    g = point_group("C4")[1]
    assert symmetric_angle_deg(np.einsum("ij,njk->nik", g, rots), rots, "C4").mean() > 30
    # the mean error of random poses shrinks with the group (C1 ~ 126 deg)
    other = random_rotations(2000, seed=2)
    big = random_rotations(2000, seed=3)
    e1 = symmetric_angle_deg(other, big, "C1").mean()
    e4 = symmetric_angle_deg(other, big, "D2").mean()
    assert 120 < e1 < 132 and e4 < e1 - 20


def test_symmetrized_volume_is_invariant():
    from napari_cryoalign.backend.geometry import rotate_volume

    rng = np.random.default_rng(0)
    z, y, x = np.indices((24, 24, 24)) - 12
    vol = np.zeros((24, 24, 24), np.float32)
    for _ in range(6):  # smooth asymmetric blobs
        c = rng.uniform(-6, 6, 3)
        vol += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 8.0).astype(np.float32)
    for sym in ("C3", "D2", "O"):
        s = symmetrize_volume(vol, sym)
        for g in point_group(sym)[1:4]:
            r = rotate_volume(s, g)
            assert np.abs(r - s).max() < 0.08 * np.abs(s).max(), sym
        assert np.abs(rotate_volume(vol, point_group(sym)[1]) - vol).max() > 0.3 * np.abs(vol).max()
