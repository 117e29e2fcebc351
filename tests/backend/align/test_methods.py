"""One job for the alignment methods (backend/align/methods.py): the settings, the errors, cancelling."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from napari_cryoalign.backend.align.exhaustive import DEFAULT_CANDIDATES, align_exhaustive
from napari_cryoalign.backend.align.learned import align_learned
from napari_cryoalign.backend.align.methods import METHODS, align_job, learned_aligner
from napari_cryoalign.backend.geometry import geodesic_angle_deg
from napari_cryoalign.backend.jobs import Progress, run_job
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms
from napari_cryoalign.errors import InputError


@pytest.fixture(scope="module")
def sset():
    return simulate_subtomograms(["ribosome"], n_per_class=4, box=32, snr=100.0, seed=4)


def test_each_method_is_the_documented_composition(sset, default_model):
    s = sset
    kw = {"particle_masks": s.mask, "max_frequency": 0.4, "max_shift_voxels": 4.0}
    ex = run_job(align_job(s.volumes, s.references[0], method="exhaustive", refine_levels=1, **kw), progress=False)
    direct = align_exhaustive(s.volumes, s.references[0], refine_levels=1, **kw)
    assert ex.method == "exhaustive"
    np.testing.assert_allclose(ex.rotations, direct.rotations, atol=1e-9)
    np.testing.assert_allclose(ex.origins_voxels, direct.origins_voxels, atol=1e-6)
    job = align_job(s.volumes, s.references[0], method="learned+refine", angular_step_deg=30.0, refine_levels=0,
                    model=default_model, candidates=2, **kw)
    both = run_job(job, progress=False)
    # the network's pose takes the place of the grid's last candidate start where it scores better there
    # (refine_levels 0 counts as 1)
    first = align_learned(s.volumes, s.references[0], particle_masks=s.mask, model=default_model, candidates=2)
    want = align_exhaustive(s.volumes, s.references[0], angular_step_deg=30.0, refine_levels=1,
                            candidates=DEFAULT_CANDIDATES, extra_candidates=first.rotations, extra_replaces_last=True,
                            **kw)
    assert both.method == "learned+refine"
    np.testing.assert_allclose(both.rotations, want.rotations, atol=1e-6)
    np.testing.assert_allclose(both.scores, want.scores, atol=1e-5)
    np.testing.assert_allclose(both.origins_voxels, want.origins_voxels, atol=1e-5)


def test_an_extra_start_wins_only_where_it_scores_better(sset):
    """``extra_candidates``: the true pose as a start rescues a grid too coarse to find it; random starts
    change nothing where the grid is right; a wrong shape is refused."""
    s = sset
    kw = {"particle_masks": s.mask, "max_shift_voxels": 4.0, "candidates": 1}
    coarse = align_exhaustive(s.volumes, s.references[0], angular_step_deg=90.0, refine_levels=1, **kw)
    helped = align_exhaustive(s.volumes, s.references[0], angular_step_deg=90.0, refine_levels=1,
                              extra_candidates=s.rotations, **kw)
    assert np.median(geodesic_angle_deg(coarse.rotations, s.rotations)) > 20.0  # a 90 degree grid misses
    assert geodesic_angle_deg(helped.rotations, s.rotations).max() < 15.0
    assert np.all(helped.scores >= coarse.scores - 1e-6)
    plain = align_exhaustive(s.volumes, s.references[0], refine_levels=2, **kw)
    rng = np.random.default_rng(1)
    from scipy.spatial.transform import Rotation

    noisy = align_exhaustive(s.volumes, s.references[0], refine_levels=2,
                             extra_candidates=Rotation.random(len(s.volumes), random_state=rng).as_matrix(), **kw)
    assert geodesic_angle_deg(plain.rotations, s.rotations).max() < 5.0
    assert geodesic_angle_deg(noisy.rotations, s.rotations).max() < 5.0
    with pytest.raises(InputError) as err:
        align_exhaustive(s.volumes, s.references[0], extra_candidates=np.eye(3)[None])
    assert err.value.field == "extra_candidates"


def test_an_extra_start_replaces_the_last_grid_candidate_only_where_it_scores_better(sset):
    """``extra_replaces_last`` (what learned+refine uses): the true pose rescues a grid too coarse to find it
    at the cost of the plain search; random poses (an unsure network) leave the plain search's answer."""
    s = sset
    kw = {"particle_masks": s.mask, "max_shift_voxels": 4.0}
    helped = align_exhaustive(s.volumes, s.references[0], angular_step_deg=90.0, refine_levels=1, candidates=1,
                              extra_candidates=s.rotations, extra_replaces_last=True, **kw)
    assert geodesic_angle_deg(helped.rotations, s.rotations).max() < 15.0
    from scipy.spatial.transform import Rotation

    plain = align_exhaustive(s.volumes, s.references[0], refine_levels=1, **kw)
    unsure = align_exhaustive(s.volumes, s.references[0], refine_levels=1, extra_replaces_last=True,
                              extra_candidates=Rotation.random(len(s.volumes), random_state=3).as_matrix(), **kw)
    np.testing.assert_allclose(unsure.rotations, plain.rotations, atol=1e-9)
    np.testing.assert_allclose(unsure.scores, plain.scores, atol=1e-6)


def test_closing_the_job_stops_the_learned_aligner_between_batches(sset, default_model):
    calls = []
    hook = default_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        job = align_job(sset.volumes, sset.references[0], method="learned+refine", model=default_model)
        event = next(job)
        assert isinstance(event, Progress) and event.message.startswith("learned: ")
        job.close()
    finally:
        hook.remove()
    assert calls == []


def test_unknown_method_and_missing_learned_aligner(sset, monkeypatch):
    assert METHODS == ("exhaustive", "learned", "learned+refine")
    with pytest.raises(InputError) as err:
        next(align_job(sset.volumes, sset.references[0], method="gumnet"))
    assert err.value.field == "method"
    monkeypatch.setitem(sys.modules, "napari_cryoalign.backend.align.learned", None)  # as if not installed
    monkeypatch.delattr("napari_cryoalign.backend.align.learned", raising=False)
    with pytest.raises(InputError, match="not installed") as err:
        learned_aligner()
    assert err.value.field == "method"
    with pytest.raises(InputError, match="not installed"):
        next(align_job(sset.volumes, sset.references[0], method="learned"))
