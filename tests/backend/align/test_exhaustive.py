"""Exhaustive alignment: known rotations and shifts come back; constrained correlation; bad input."""

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.align import AlignmentResult
from napari_cryoalign.backend.align.exhaustive import (
    _rotate_cubes,
    align_exhaustive,
    band_box,
    refine_alignment,
)
from napari_cryoalign.backend.align.scoring import constrained_correlation
from napari_cryoalign.backend.geometry import (
    align_particle_to_reference,
    euler_to_matrix,
    geodesic_angle_deg,
    random_rotations,
    rotate_volume,
)
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms
from napari_cryoalign.errors import InputError


@pytest.fixture(scope="module")
def sset():
    # 24^3 keeps the test fast; wedge +-60, CTF, noise at SNR 1, shifts up to 2.5 voxels
    return simulate_subtomograms(["ribosome"], n_per_class=4, box=24, snr=1.0, max_shift_voxels=2.5, seed=4)


def test_fast_rotation_matches_geometry():
    vol = torch.rand(3, 16, 16, 16)
    rot = torch.as_tensor(random_rotations(3, seed=1), dtype=torch.float32)
    ref = rotate_volume(vol, rot)
    fast = _rotate_cubes(vol, rot)
    assert torch.allclose(fast, ref, atol=1e-5)


def test_known_rotations_and_shifts_recovered(sset):
    res = align_exhaustive(sset.volumes, sset.references[0], particle_masks=sset.mask, angular_step_deg=30)
    assert isinstance(res, AlignmentResult) and res.method == "exhaustive"
    ang = geodesic_angle_deg(res.rotations, sset.rotations)
    err = np.linalg.norm(res.origins_voxels - sset.origins_voxels, axis=1)
    assert ang.max() < 6.0, ang
    assert err.max() < 0.5, err
    assert np.all(res.scores > 0.2) and np.all(res.scores <= 1.0)
    # the RELION convention: aligning with the result brings particles onto the reference
    back = align_particle_to_reference(sset.volumes, res.rotations, res.origins_voxels)
    cc_good = constrained_correlation(back, sset.references[0])
    wrong = align_particle_to_reference(sset.volumes, random_rotations(4, seed=3), res.origins_voxels)
    assert np.all(cc_good > constrained_correlation(wrong, sset.references[0]) + 0.1)
    # Euler angles and origins in Å follow from the matrices
    assert np.allclose(euler_to_matrix(res.euler_deg), res.rotations, atol=1e-9)
    assert np.allclose(res.origins_angstrom(12.0), res.origins_voxels * 12.0)


def test_refine_from_perturbed_start(sset):
    # start 12 degrees away from the truth (a learned aligner's typical error) and a bad shift
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(4, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    from scipy.spatial.transform import Rotation

    start = sset.rotations @ Rotation.from_rotvec(axes * np.radians(12)).as_matrix()
    init = AlignmentResult(start, np.zeros((4, 3)), np.zeros(4), "learned", seconds=1.0)
    res = refine_alignment(sset.volumes, sset.references[0], init, particle_masks=sset.mask, max_angle_deg=15)
    assert res.method == "learned+refine" and res.seconds >= 1.0
    assert geodesic_angle_deg(res.rotations, sset.rotations).max() < 5.0
    assert np.linalg.norm(res.origins_voxels - sset.origins_voxels, axis=1).max() < 0.5


def test_crop_to_band_finds_the_poses_of_the_full_box():
    """The search on volumes Fourier-cropped to the compared band (0.25 cycles/voxel: a 16^3 box for 32^3) finds the
    poses the full-box search finds at the same band; shifts and scores are re-measured at full size."""
    s = simulate_subtomograms(["ribosome"], n_per_class=6, box=32, snr=0.5, max_shift_voxels=3.0, seed=7)
    assert (band_box(32, 0.25), band_box(40, 0.25), band_box(32, 0.5), band_box(32, 0.05), band_box(24, 0.3)) == \
        (16, 20, 32, 8, 16)
    kw = {"particle_masks": s.mask, "max_frequency": 0.25, "refine_levels": 2, "candidates": 1}
    full = align_exhaustive(s.volumes, s.references[0], **kw)
    crop = align_exhaustive(s.volumes, s.references[0], crop_to_band=True, **kw)
    assert geodesic_angle_deg(crop.rotations, full.rotations).max() < 6.0
    assert geodesic_angle_deg(crop.rotations, s.rotations).max() < 6.0
    assert np.linalg.norm(crop.origins_voxels - full.origins_voxels, axis=1).max() < 0.5
    assert np.linalg.norm(crop.origins_voxels - s.origins_voxels, axis=1).max() < 0.5
    assert np.abs(crop.scores - full.scores).max() < 0.02  # the same band's correlation, measured at full size
    # the local refinement likewise, from 10 degrees off
    from scipy.spatial.transform import Rotation

    axes = np.random.default_rng(1).normal(size=(6, 3))
    start = s.rotations @ Rotation.from_rotvec(axes / np.linalg.norm(axes, axis=1, keepdims=True)
                                               * np.radians(10)).as_matrix()
    init = AlignmentResult(start, np.zeros((6, 3)), np.zeros(6), "exhaustive", seconds=1.0)
    ref_full = refine_alignment(s.volumes, s.references[0], init, particle_masks=s.mask, max_angle_deg=15, levels=2,
                                max_frequency=0.25)
    ref_crop = refine_alignment(s.volumes, s.references[0], init, particle_masks=s.mask, max_angle_deg=15, levels=2,
                                max_frequency=0.25, crop_to_band=True)
    assert ref_crop.method == "exhaustive+refine" and ref_crop.seconds >= 1.0
    assert geodesic_angle_deg(ref_crop.rotations, ref_full.rotations).max() < 6.0
    assert geodesic_angle_deg(ref_crop.rotations, s.rotations).max() < 6.0
    assert np.linalg.norm(ref_crop.origins_voxels - s.origins_voxels, axis=1).max() < 0.5
    assert np.abs(ref_crop.scores - ref_full.scores).max() < 0.02


def test_constrained_correlation_ignores_unobserved_region(sset):
    ref = sset.references[0]
    wedge = sset.mask
    seen = np.fft.ifftn(np.fft.fftn(ref) * np.fft.ifftshift(wedge)).real
    # constrained to the observed region, the wedge-filtered copy is the reference
    assert constrained_correlation(seen, ref, mask_a=wedge) == pytest.approx(1.0, abs=1e-5)
    # plain correlation is lower: the missing wedge counts against it
    assert constrained_correlation(seen, ref) < 0.97
    noise = np.random.default_rng(1).normal(size=ref.shape)
    assert abs(constrained_correlation(noise, ref)) < 0.1


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"particles": np.zeros((2, 15, 15, 15)), "reference": np.zeros((15, 15, 15))}, "box"),
        ({"particles": np.zeros((2, 16, 16, 16)), "reference": np.zeros((20, 20, 20))}, "reference"),
        ({"particles": np.zeros((2, 16, 16, 12)), "reference": np.zeros((16, 16, 12))}, "particles"),
        ({"particles": np.full((2, 16, 16, 16), np.nan), "reference": np.zeros((16, 16, 16))}, "particles"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(InputError) as err:
        align_exhaustive(kwargs.pop("particles"), kwargs.pop("reference"))
    assert err.value.field == field


def test_bad_options():
    p = np.random.default_rng(0).normal(size=(1, 16, 16, 16))
    with pytest.raises(InputError, match="angular"):
        align_exhaustive(p, p[0], angular_step_deg=0)
    with pytest.raises(InputError, match="shift"):
        align_exhaustive(p, p[0], max_shift_voxels=20)
