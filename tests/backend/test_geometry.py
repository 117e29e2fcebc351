"""Rotations and rigid transforms: the conventions of shared/CONVENTIONS.md, pinned."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_cryoalign.backend import geometry as g


def _peak_xyz(vol):
    """Sub-voxel centre of mass of the brightest blob, as (x, y, z) indices."""
    v = np.asarray(vol, dtype=np.float64)
    v = np.where(v > 0.3 * v.max(), v, 0)
    idx = np.indices(v.shape).reshape(3, -1)
    w = v.reshape(-1)
    zyx = (idx * w).sum(1) / w.sum()
    return zyx[::-1]


def _blob(n, centre_xyz, sigma=1.2):
    zz, yy, xx = np.indices((n, n, n), dtype=np.float64)
    x, y, z = centre_xyz
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_euler_matrix_is_relion_convention():
    # CONVENTIONS.md: A = Rotation.from_euler("ZYZ", [rot, tilt, psi]).inv().as_matrix()
    ang = np.array([12.0, 34.0, -56.0])
    expected = Rotation.from_euler("ZYZ", ang, degrees=True).inv().as_matrix()
    np.testing.assert_allclose(g.euler_to_matrix(ang), expected, atol=1e-12)
    # RELION's Euler_angles2matrix written out (Heymann et al. 2005, RELION source comments)
    a, b, c = np.radians(ang)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    relion = np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )
    np.testing.assert_allclose(g.euler_to_matrix(ang), relion, atol=1e-12)


def test_worked_example_from_conventions():
    # rot = 30: A = Rz(-30); reference feature at (+8, 0, 0) appears at (6.93, -4.00, 0)
    a = g.euler_to_matrix([30, 0, 0])
    np.testing.assert_allclose(a @ [8, 0, 0], [8 * np.cos(np.pi / 6), -4.0, 0.0], atol=1e-9)
    n = 32
    c = n // 2
    ref = _blob(n, (c + 8, c, c))
    particle = g.rotate_volume(ref, a)
    np.testing.assert_allclose(_peak_xyz(particle), [c + 6.93, c - 4.0, c], atol=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_euler_round_trip(seed):
    rng = np.random.default_rng(seed)
    mats = g.random_rotations(50, seed=rng)
    back = g.euler_to_matrix(g.matrix_to_euler(mats))
    np.testing.assert_allclose(back, mats, atol=1e-9)
    eul = g.matrix_to_euler(mats)
    assert np.all(eul[:, 1] >= 0) and np.all(eul[:, 1] <= 180)


def test_random_rotations_uniform_and_seeded():
    r = g.random_rotations(4000, seed=3)
    assert np.allclose(np.einsum("nij,nkj->nik", r, r), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(r), 1)
    # Haar measure: the z axis image is uniform on the sphere -> mean ~ 0, <z^2> = 1/3
    z = r[:, :, 2]
    assert np.abs(z.mean(0)).max() < 0.05
    assert abs((z[:, 2] ** 2).mean() - 1 / 3) < 0.03
    np.testing.assert_array_equal(g.random_rotations(5, seed=7), g.random_rotations(5, seed=7))


def test_rotation_grid_covers_so3():
    grid = g.rotation_grid(20.0)
    probe = g.random_rotations(300, seed=0)
    # every random rotation has a grid neighbour within about the step
    d = g.geodesic_angle_deg(probe[:, None], grid[None])
    assert d.min(1).max() < 20.0
    assert len(grid) < 3000
    np.testing.assert_allclose(grid[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(g.euler_to_matrix(g.rotation_grid(20.0, as_euler=True)), grid, atol=1e-9)


def test_local_grid():
    centre = g.euler_to_matrix([10, 20, 30])
    loc = g.local_rotation_grid(centre, max_angle_deg=6, step_deg=2)
    np.testing.assert_allclose(loc[0], centre, atol=1e-12)
    ang = g.geodesic_angle_deg(loc, centre)
    assert ang.max() <= 6.0 + 1e-6 and len(loc) > 50


def test_metrics():
    a = g.euler_to_matrix([0, 0, 0])
    b = g.euler_to_matrix([0, 90, 0])
    assert g.geodesic_angle_deg(a, b) == pytest.approx(90)
    assert g.geodesic_angle_deg(a, g.euler_to_matrix([180, 0, 0])) == pytest.approx(180)
    assert g.matrix_distance(a, g.euler_to_matrix([180, 0, 0])) == pytest.approx(2 * np.sqrt(2))


def test_geodesic_angle_is_precise_near_zero_and_matches_the_arccos_form():
    """float32 rotations compared with themselves: 0 (the arccos form gave up to 0.07°); small and large
    angles as the definition gives them."""
    r = g.random_rotations(200, seed=5).astype(np.float32)
    assert g.geodesic_angle_deg(r, r).max() < 1e-4
    for deg in (1e-3, 0.5, 37.0, 120.0, 179.9):
        b = g.euler_to_matrix([0.0, deg, 0.0])
        assert g.geodesic_angle_deg(np.eye(3), b) == pytest.approx(deg, abs=1e-6)
    q = g.random_rotations(50, seed=6)
    tr = np.einsum("nij,nij->n", r[:50].astype(np.float64), q)
    want = np.degrees(np.arccos(np.clip((tr - 1) / 2, -1, 1)))
    np.testing.assert_allclose(g.geodesic_angle_deg(r[:50], q), want, atol=0.1)


def test_shift_volume_sign_and_subvoxel():
    n = 24
    c = n // 2
    vol = _blob(n, (c, c, c))
    out = g.shift_volume(vol, [2.5, -1.0, 3.0])
    np.testing.assert_allclose(_peak_xyz(out), [c + 2.5, c - 1.0, c + 3.0], atol=0.05)


def test_rotate_then_align_recovers_volume_with_origin():
    """A particle made with transform_reference_to_particle is brought back by the Euler angles and origin."""
    n = 32
    c = n // 2
    ref = _blob(n, (c + 6, c + 1, c - 2)) + 0.7 * _blob(n, (c - 3, c + 5, c + 4))
    a = g.euler_to_matrix([40, 70, -20])
    origin = np.array([1.5, -2.0, 0.5])  # voxels; particle centre at N//2 - origin
    particle = g.transform_reference_to_particle(ref, a, origin)
    # the reference feature at r (relative to centre) appears at A r - origin
    expected = a @ np.array([6, 1, -2]) - origin + c
    sub = g.transform_reference_to_particle(_blob(n, (c + 6, c + 1, c - 2)), a, origin)
    np.testing.assert_allclose(_peak_xyz(sub), expected, atol=0.15)
    back = g.align_particle_to_reference(particle, a, origin)
    inner = (slice(4, -4),) * 3
    cc = np.corrcoef(back[inner].ravel(), ref[inner].ravel())[0, 1]
    assert cc > 0.97


def test_batched_matches_single_and_torch_in_torch_out():
    n = 16
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(3, n, n, n)).astype(np.float32)
    rots = g.random_rotations(3, seed=1)
    batched = g.rotate_volume(torch.from_numpy(vols), torch.from_numpy(rots))
    assert isinstance(batched, torch.Tensor) and batched.shape == (3, n, n, n)
    for i in range(3):
        single = g.rotate_volume(vols[i], rots[i])
        assert isinstance(single, np.ndarray)
        np.testing.assert_allclose(batched[i].numpy(), single, atol=1e-5)


def test_identity_rotation_is_exact():
    vol = np.random.default_rng(1).normal(size=(10, 12, 14)).astype(np.float32)
    np.testing.assert_allclose(g.rotate_volume(vol, np.eye(3)), vol, atol=1e-5)


def test_image_rotation_and_shift():
    n = 32
    c = n // 2
    yy, xx = np.indices((n, n))
    img = np.exp(-((xx - (c + 8)) ** 2 + (yy - c) ** 2) / 2.0).astype(np.float32)
    out = g.rotate_image(img, 90.0)  # counter-clockwise on (x, y): (8, 0) -> (0, 8)
    iy, ix = np.unravel_index(np.argmax(out), out.shape)
    assert (ix, iy) == (c, c + 8)
    sh = g.shift_image(img, [-3.0, 2.0])
    iy, ix = np.unravel_index(np.argmax(sh), sh.shape)
    assert (ix, iy) == (c + 5, c + 2)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="rotation"):
        g.rotate_volume(np.zeros((8, 8, 8), np.float32), np.eye(2))
    with pytest.raises(ValueError, match="Euler"):
        g.euler_to_matrix([1, 2])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))])
def test_device_argument_respected(device):
    vol = torch.zeros(8, 8, 8, device=device)
    out = g.rotate_volume(vol, torch.eye(3))
    assert out.device.type == device


def test_batched_shifts_match_single():
    rng = np.random.default_rng(4)
    vols = rng.normal(size=(3, 12, 14, 16)).astype(np.float32)
    shifts = rng.uniform(-3, 3, size=(3, 3))
    out = g.shift_volume(vols, shifts)
    imgs = rng.normal(size=(4, 20, 18)).astype(np.float32)
    ishifts = rng.uniform(-3, 3, size=(4, 2))
    iout = g.shift_image(imgs, ishifts)
    for i in range(3):
        np.testing.assert_allclose(out[i], g.shift_volume(vols[i], shifts[i]), atol=1e-4)
    for i in range(4):
        np.testing.assert_allclose(iout[i], g.shift_image(imgs[i], ishifts[i]), atol=1e-4)
    # integer shifts are exact periodic rolls
    rolled = g.shift_volume(vols[0], [2.0, -1.0, 3.0])
    np.testing.assert_allclose(rolled, np.roll(vols[0], (3, -1, 2), axis=(0, 1, 2)), atol=1e-4)


def test_nearest_rotation_projects_float32_matrices_onto_so3():
    r = g.random_rotations(6, seed=3)
    noisy = (r + np.random.default_rng(0).normal(scale=1e-3, size=r.shape)).astype(np.float32)
    q = g.nearest_rotation(noisy)
    assert np.allclose(q @ q.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(q), 1.0)
    assert g.geodesic_angle_deg(q, r).max() < 0.2
    reflected = r.copy()
    reflected[:, :, 2] *= -1  # det -1: the nearest proper rotation, not the reflection
    assert np.allclose(np.linalg.det(g.nearest_rotation(reflected)), 1.0)


def test_transforms_compose_right_to_left():
    """Turning a reference by G, then by A G^T, is turning it by A (quarter turns: exact on the lattice).

    The Gum-Net training pairs with turned references (scripts/train_gumnet_default.py
    --rotate-references) rely on this order."""
    rng = np.random.default_rng(3)
    ref = np.zeros((16, 16, 16), np.float32)
    ref[1:, 1:, 1:] = rng.random((15, 15, 15))  # offsets -7..7 about the centre 8: closed under quarter turns
    a = np.rint(Rotation.from_euler("zyx", [90, 0, 90], degrees=True).as_matrix())
    t = np.rint(Rotation.from_euler("zyx", [0, 90, 180], degrees=True).as_matrix())
    turned = g.transform_reference_to_particle(ref, t)
    np.testing.assert_allclose(g.transform_reference_to_particle(turned, a @ t.T),
                               g.transform_reference_to_particle(ref, a), atol=1e-4)
    wrong_order = g.transform_reference_to_particle(turned, t.T @ a)
    assert np.abs(wrong_order - g.transform_reference_to_particle(ref, a)).max() > 0.1
