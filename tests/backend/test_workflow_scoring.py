"""The workflow's pose score: errors up to the reference-free average's own frame."""

import numpy as np

from napari_cryoalign.backend.geometry import euler_to_matrix, random_rotations
from napari_cryoalign.backend.workflow import pose_errors_deg


def test_pose_errors_are_measured_in_the_average_frame():
    true = random_rotations(40, seed=0)
    frame = euler_to_matrix(np.array([70.0, 40.0, -120.0]))
    rng = np.random.default_rng(1)
    jitter = np.array([euler_to_matrix(np.array([a, 3.0, -a])) for a in rng.uniform(0, 360, 40)])  # ~3 deg
    est = true @ jitter @ frame
    est[:5] = random_rotations(5, seed=2)  # five lost particles
    err = pose_errors_deg(est, true)
    assert err.shape == (40,)
    assert np.all(err[5:] < 5.0) and np.median(err[5:]) > 1.0
    assert np.sum(err[:5] > 20.0) >= 4


def test_random_poses_score_as_random():
    err = pose_errors_deg(random_rotations(40, seed=3), random_rotations(40, seed=4))
    assert np.median(err) > 60.0


def test_reference_to_box_resamples_and_centres():
    from napari_cryoalign.backend.workflow import reference_to_box

    vol = np.zeros((20, 20, 20), np.float32)
    vol[10, 10, 10] = 1.0
    big = reference_to_box(vol, voxel_size=10.0, box=32)  # padded, the centre stays at box // 2
    assert big.shape == (32,) * 3 and np.unravel_index(np.argmax(big), big.shape) == (16, 16, 16)
    half = reference_to_box(vol, voxel_size=10.0, box=8, map_voxel_size=5.0)  # 20 voxels of 5 Å -> 10 of 10 Å
    assert half.shape == (8,) * 3 and np.unravel_index(np.argmax(half), half.shape) == (4, 4, 4)


def test_class_references_go_to_their_class_and_seed_its_poses():
    """Two species as two classes whose poses are lost (random): each map finds its class, the sign of a
    protein-dark copy is found, and the seeded class's poses come out right."""
    from napari_cryoalign.backend.align.types import AlignmentResult
    from napari_cryoalign.backend.cluster.common import ClusterResult
    from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms
    from napari_cryoalign.backend.cluster.refine import refine_classes

    s = simulate_subtomograms(["ribosome", "cct"], n_per_class=12, box=24, voxel_size_angstrom=14.0, snr=0.5,
                              defocus_um=None, max_shift_voxels=1.0, seed=3)
    n = len(s.volumes)
    lost = AlignmentResult(random_rotations(n, seed=5), np.zeros((n, 3)), np.zeros(n), "random")
    classes = s.classes - 1
    blobs = np.stack([s.volumes[classes == c].mean(0) for c in (0, 1)]).astype(np.float32)
    clu = ClusterResult(classes, np.ones(n), np.zeros((n, 2)), lost, blobs, "joint", np.zeros((n, 1)))
    refs = [-s.references[1], s.references[0]]  # CCT protein-dark first, then the ribosome
    got = refine_classes(s.volumes, clu, particle_masks=s.mask, rounds=0, voxel_size_angstrom=14.0,
                         references=refs, ab_initio_below=0)
    out, assigned = got.clusters, got.references
    assert got.initial_models == {}  # ab_initio_below=0: never
    assert assigned == {0: 1, 1: 0}
    rib = classes == 0
    err = pose_errors_deg(out.alignment.rotations[rib], s.rotations[rib])
    assert np.median(err) < 10.0
