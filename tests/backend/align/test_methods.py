"""One job for the alignment methods (backend/align/methods.py): the settings, the errors, cancelling."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from napari_cryoalign.backend.align.exhaustive import align_exhaustive, refine_alignment
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
    first = align_learned(s.volumes, s.references[0], particle_masks=s.mask, model=default_model, candidates=2)
    refined = refine_alignment(s.volumes, s.references[0], first, max_angle_deg=30.0 * 0.67, levels=1, **kw)
    # ... then the second opinion of the global grid: where it disagrees by > one step, the particle gets the
    # full exhaustive search and the higher correlation wins
    grid = align_exhaustive(s.volumes, s.references[0], angular_step_deg=30.0, refine_levels=0, **kw)
    off = np.flatnonzero(geodesic_angle_deg(grid.rotations, refined.rotations) > 30.0)
    want_rot, want_score = refined.rotations.copy(), np.array(refined.scores)
    if len(off):
        other = align_exhaustive(s.volumes[off], s.references[0], angular_step_deg=30.0, refine_levels=0, **kw)
        better = other.scores > want_score[off]
        want_rot[off[better]] = other.rotations[better]
        want_score[off[better]] = other.scores[better]
    assert both.method == "learned+refine" == refined.method
    np.testing.assert_allclose(both.rotations, want_rot, atol=1e-6)
    np.testing.assert_allclose(both.scores, want_score, atol=1e-5)


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
