"""Ab-initio initial model: poses recovered from random starts (up to the map's own frame), the
cross-validated folds, the chosen restart, and clear errors on bad input."""

import numpy as np
import pytest

from napari_cryoalign.backend.align.ab_initio import ab_initio, ab_initio_job
from napari_cryoalign.errors import InputError
from napari_cryoalign.backend.jobs import Partial, Progress
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms
from napari_cryoalign.backend.workflow import pose_errors_deg


@pytest.fixture(scope="module")
def ribosomes():
    return simulate_subtomograms(["ribosome"], n_per_class=16, box=24, voxel_size_angstrom=14.0, snr=0.3,
                                 defocus_um=None, max_shift_voxels=1.0, seed=11)


def test_initial_model_recovers_the_poses_from_random_starts(ribosomes):
    s = ribosomes
    events = []
    job = ab_initio_job(s.volumes, particle_masks=s.mask, voxel_size_angstrom=14.0, mask_radius_voxels=10.0,
                        restarts=2, schedule=(60.0, 45.0, 40.0), final_schedule=(35.0,), seed=1)
    try:
        while True:
            events.append(next(job))
    except StopIteration as stop:
        res = stop.value
    assert any(isinstance(e, Progress) for e in events)
    assert [e.name for e in events if isinstance(e, Partial)] == ["average"]
    err = pose_errors_deg(res.alignment.rotations, s.rotations)
    assert np.median(err) < 15.0, np.round(err)
    assert np.mean(err < 25.0) >= 0.8
    # the chosen restart is the one with the best (cross-validated) score
    assert len(res.restarts) == 2 and res.chosen == int(np.argmax([r["score"] for r in res.restarts]))
    assert res.reference.shape == (24,) * 3 and res.reference.dtype == np.float32
    # the initial model correlates with the true map once the frames agree
    assert np.isfinite(res.score) and res.seconds > 0


def test_initial_model_rejects_bad_input(ribosomes):
    s = ribosomes
    with pytest.raises(InputError, match="folds"):
        ab_initio(s.volumes, voxel_size_angstrom=14.0, folds=9)  # 16 particles: at most 8 folds
    with pytest.raises(InputError, match="restarts"):
        ab_initio(s.volumes, voxel_size_angstrom=14.0, restarts=0)
    with pytest.raises(InputError, match="at least 4"):
        ab_initio(s.volumes[:3], voxel_size_angstrom=14.0)
    with pytest.raises(InputError, match="mask_radius_voxels"):
        ab_initio(s.volumes, voxel_size_angstrom=14.0, mask_radius_voxels=30.0)
    with pytest.raises(InputError, match="schedule"):
        ab_initio(s.volumes, voxel_size_angstrom=14.0, schedule=(60.0, -1.0))


def test_refine_classes_rebuilds_a_lost_class_from_an_initial_model(ribosomes):
    """A class at random poses whose half sets stay poor goes through the ab-initio path, keeps the result
    only when the half-set resolution improves, and records it."""
    from napari_cryoalign.backend.align.types import AlignmentResult
    from napari_cryoalign.backend.cluster.common import ClusterResult
    from napari_cryoalign.backend.geometry import random_rotations
    from napari_cryoalign.backend.cluster.refine import refine_classes_job

    s = ribosomes
    n = len(s.volumes)
    lost = AlignmentResult(random_rotations(n, seed=5), np.zeros((n, 3)), np.zeros(n), "random")
    clu = ClusterResult(np.zeros(n, dtype=np.int64), np.ones(n), np.zeros((n, 1)), lost,
                        s.volumes.mean(0, keepdims=True).astype(np.float32), "joint", np.zeros((n, 1)))
    job = refine_classes_job(s.volumes, clu, particle_masks=s.mask, rounds=1, voxel_size_angstrom=14.0,
                             ab_initio_below=1.0, mask_radius_voxels=10.0, seed=1)
    events = []
    try:
        while True:
            events.append(next(job))
    except StopIteration as stop:
        got = stop.value
    assert [e.name for e in events if isinstance(e, Partial)] == ["averages"]  # one per class
    assert events[-1].step == events[-1].total == 1  # one step per class
    out, resolutions, models = got.clusters, got.resolutions, got.initial_models
    assert got.references == {} and list(models) == [0]
    rec = models[0]
    assert set(rec) == {"resolution_before", "resolution_after", "kept", "restarts", "seconds"}
    assert len(rec["restarts"]) == 2
    if rec["kept"]:
        assert not rec["resolution_after"] > rec["resolution_before"]
        assert resolutions[0] == pytest.approx(rec["resolution_after"], abs=0.01)
    else:  # the poses are restored when the initial model did not help
        assert resolutions[0] == pytest.approx(rec["resolution_before"], abs=0.01)
    err = pose_errors_deg(out.alignment.rotations, s.rotations)
    assert rec["kept"] and np.median(err) < 15.0, (rec, np.round(err))
