"""Issue 18: CTF-aware scores and averages, symmetry in the search, and alignment of structures never seen."""

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.align import AlignmentResult
from napari_cryoalign.backend.align.average import average_particles, wedge_compensated_average
from napari_cryoalign.backend.align.exhaustive import align_exhaustive
from napari_cryoalign.backend.align.methods import align_job
from napari_cryoalign.backend.align.scoring import constrained_correlation
from napari_cryoalign.backend.ctf import ParticleCTF, ctf_premultiply, ctf_weights
from napari_cryoalign.backend.geometry import (
    geodesic_angle_deg,
    matrix_distance,
    random_rotations,
    rotation_grid,
    transform_reference_to_particle,
)
from napari_cryoalign.backend.jobs import run_job
from napari_cryoalign.backend.simulate.procedural import procedural_structure
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms
from napari_cryoalign.backend.symmetry import reduce_rotation_grid, symmetric_angle_deg, symmetrize_volume
from napari_cryoalign.backend.wedge import observed_fourier_mask


@pytest.fixture(scope="module")
def unseen():
    """Six particles of a held-out procedural structure (seed >= 10000), 32³ at 6 Å, SNR 0.1, CTF 5 µm, ±60°."""
    return simulate_subtomograms(["procedural:10011"], n_per_class=6, box=32, voxel_size_angstrom=6.0, snr=0.1,
                                 seed=3)


def test_ctf_weights_first_lobe_positive_and_premultiplication():
    ctf = ParticleCTF([2.0, 5.0], voxel_size_angstrom=6.0)
    w = ctf_weights(ctf, (16, 16, 16))
    assert w.shape == (2, 16, 16, 9)
    assert torch.all(w[:, 0, 0, 1] > 0)  # the first lobe keeps the data's contrast
    assert torch.any(w < -0.5)  # later lobes are flipped
    flipped = ctf_weights(ParticleCTF([5.0], voxel_size_angstrom=6.0, phase_flipped=True), (16, 16, 16))
    assert torch.all(flipped >= 0)
    vol = np.random.default_rng(0).normal(size=(2, 16, 16, 16)).astype(np.float32)
    pre = ctf_premultiply(vol, ctf)
    f = torch.fft.rfftn(torch.from_numpy(vol), dim=(1, 2, 3)) * w
    assert np.allclose(pre, torch.fft.irfftn(f, s=(16, 16, 16), dim=(1, 2, 3)).numpy(), atol=1e-5)
    same = ctf_premultiply(vol, ParticleCTF([2.0, 5.0], voxel_size_angstrom=6.0, premultiplied=True))
    assert np.array_equal(same, vol)
    assert np.array_equal(ctf.subset([1]).defocus_um, [5.0])


def test_exhaustive_alignment_of_an_unseen_structure_within_a_few_degrees(unseen):
    """The structure was generated from a held-out seed: no setting was tuned on it."""
    s = unseen
    ctf = ParticleCTF(s.defocus_um, voxel_size_angstrom=s.voxel_size_angstrom)
    with_ctf = run_job(align_job(s.volumes, s.references[0], particle_masks=s.mask, ctf=ctf))
    ang = geodesic_angle_deg(with_ctf.rotations, s.rotations)
    assert ang.max() < 8.0, ang
    assert matrix_distance(with_ctf.rotations, s.rotations).mean() < 0.15
    shift = np.linalg.norm(with_ctf.origins_voxels - s.origins_voxels, axis=1)
    assert shift.max() < 1.0
    # the CTF is what makes it precise: the same search on the raw particles is worse
    raw = run_job(align_job(s.volumes, s.references[0], particle_masks=s.mask))
    assert geodesic_angle_deg(raw.rotations, s.rotations).mean() > ang.mean()


def test_ctf_corrected_average_is_closer_to_the_map(unseen):
    s = unseen
    truth = AlignmentResult(s.rotations, s.origins_voxels, np.ones(s.n), "truth")
    ctf = ParticleCTF(s.defocus_um, voxel_size_angstrom=s.voxel_size_angstrom)
    plain = wedge_compensated_average(s.volumes, truth, particle_masks=s.mask)
    corrected = wedge_compensated_average(s.volumes, truth, particle_masks=s.mask, ctf=ctf)
    ref = s.references[0]
    assert constrained_correlation(corrected, ref) > constrained_correlation(plain, ref) + 0.1


def test_reduced_grid_covers_the_asymmetric_unit():
    grid = rotation_grid(30.0)
    assert len(reduce_rotation_grid(grid, "C1")) == len(grid)
    for sym, order in (("C2", 2), ("D8", 16), ("O", 24)):
        keep = reduce_rotation_grid(grid, sym)
        assert len(grid) / order <= len(keep) <= 2 * len(grid) / order + 5  # greedy: not a perfect tiling
        # every grid rotation has a mate within ~0.7 of the spacing of a kept one
        rng = np.random.default_rng(1)
        probe = random_rotations(50, seed=rng)
        near_full = np.array([geodesic_angle_deg(grid, p).min() for p in probe])
        near_kept = np.array([symmetric_angle_deg(np.broadcast_to(p, (len(keep), 3, 3)), grid[keep], sym).min()
                              for p in probe])
        assert near_kept.max() <= near_full.max() + 0.75 * 30.0


def test_symmetric_reference_pose_recovered_up_to_the_group():
    """``symmetry="C4"``: a quarter of the global grid, the pose right up to a mate."""
    ref, _ = procedural_structure(12, voxel_size_angstrom=8.0, box=24)
    ref = symmetrize_volume(ref, "C4").astype(np.float32)
    rng = np.random.default_rng(5)
    rots = random_rotations(4, seed=rng)
    shifts = rng.uniform(-2, 2, size=(4, 3))
    part = transform_reference_to_particle(torch.from_numpy(np.repeat(ref[None], 4, 0)),
                                           torch.from_numpy(rots).float(), torch.from_numpy(-shifts).float())
    mask = torch.fft.fftshift(observed_fourier_mask((24, 24, 24), tilt_range_deg=(-60, 60), rfft=False)).numpy()
    f = torch.fft.fftn(part, dim=(1, 2, 3)) * torch.fft.ifftshift(torch.from_numpy(mask))
    part = torch.fft.ifftn(f, dim=(1, 2, 3)).real.numpy()
    part += rng.normal(scale=float(part.std()), size=part.shape).astype(np.float32)  # SNR 1
    res = align_exhaustive(part, ref, particle_masks=mask, symmetry="C4")
    err = symmetric_angle_deg(res.rotations, rots, "C4")
    assert err.max() < 6.0, err
    # the averages carry the symmetry
    avg = average_particles(part, res, particle_masks=mask, half_maps=False, symmetry="C4").average
    assert constrained_correlation(avg, symmetrize_volume(avg, "C4")) > 0.99


def test_procedural_structures_are_deterministic_and_distinct():
    a, vox = procedural_structure(10000, voxel_size_angstrom=6.0, box=32)
    b, _ = procedural_structure(10000, voxel_size_angstrom=6.0, box=32)
    c, _ = procedural_structure(10001, voxel_size_angstrom=6.0, box=32)
    assert vox == 6.0 and a.shape == (32, 32, 32)
    assert np.array_equal(a, b)
    assert constrained_correlation(a, c) < 0.5
    full, _ = procedural_structure(10001, voxel_size_angstrom=6.0)  # the default box holds all of it
    mass_da = full.sum() * 6.0 ** 3 / 0.0028
    assert 100e3 * 0.95 <= mass_da <= 450e3 * 1.05
    with pytest.raises(ValueError):
        procedural_structure(-1)


def test_learned_refine_falls_back_where_the_network_has_not_seen_the_structure(unseen):
    """The shipped network is at chance on a new structure; its start never pulls a particle off the grid's answer."""
    s = unseen
    ctf = ParticleCTF(s.defocus_um, voxel_size_angstrom=s.voxel_size_angstrom)
    net = run_job(align_job(s.volumes, s.references[0], particle_masks=s.mask, method="learned"))
    assert np.median(geodesic_angle_deg(net.rotations, s.rotations)) > 30.0  # the network alone is lost here
    safe = run_job(align_job(s.volumes, s.references[0], particle_masks=s.mask, method="learned+refine", ctf=ctf))
    assert safe.method == "learned+refine"
    assert geodesic_angle_deg(safe.rotations, s.rotations).max() < 8.0
