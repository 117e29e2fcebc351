"""Averaging: wedge compensation, half maps and FSC, the iterative job's live partial results."""

import numpy as np
import pytest

from napari_cryoalign.backend.align import AlignmentResult
from napari_cryoalign.backend.align.average import (
    average_particles,
    fsc_report,
    iterative_average_job,
    wedge_compensated_average,
)
from napari_cryoalign.backend.align.scoring import constrained_correlation
from napari_cryoalign.backend.fourier import FSCResult
from napari_cryoalign.backend.jobs import run_job
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms
from napari_cryoalign.errors import InputError


@pytest.fixture(scope="module")
def clean():
    return simulate_subtomograms(["mtor"], n_per_class=12, box=24, snr=None, defocus_um=None, max_shift_voxels=2,
                                 seed=7)


def test_fsc_of_map_with_itself_is_one_and_falls_with_noise(clean):
    ref = clean.references[0]
    same = fsc_report(ref, ref, voxel_size_angstrom=12.0)
    assert np.allclose(same.curve.fsc[1:], 1.0, atol=1e-6)
    assert same.resolution_0143 == pytest.approx(24.0)  # never drops: Nyquist
    rng = np.random.default_rng(0)
    scale = ref.std()
    res = []
    for sigma in (0.3, 1.0, 3.0):
        a = ref + sigma * scale * rng.normal(size=ref.shape)
        b = ref + sigma * scale * rng.normal(size=ref.shape)
        r = fsc_report(a, b, voxel_size_angstrom=12.0)
        assert r.curve.fsc[1] > 0.5 and r.resolution_05 >= r.resolution_0143
        res.append(r.resolution_0143)
    assert res[0] < res[1] < res[2]  # more noise -> worse (larger) resolution
    # white noise: FSC of independent copies is 0 on average, so high shells sit near 0
    noise = fsc_report(rng.normal(size=ref.shape), rng.normal(size=ref.shape), voxel_size_angstrom=12.0)
    assert np.abs(noise.curve.fsc[4:]).mean() < 0.1


def test_wedge_compensated_average_with_true_poses_recovers_reference(clean):
    truth = AlignmentResult(clean.rotations, clean.origins_voxels, np.ones(clean.n), "truth")
    comp = wedge_compensated_average(clean.volumes, truth, particle_masks=clean.mask)
    plain = wedge_compensated_average(clean.volumes, truth)  # no wedge compensation
    ref = clean.references[0]
    assert constrained_correlation(comp, ref) > 0.95
    assert constrained_correlation(comp, ref) > constrained_correlation(plain, ref)
    res = average_particles(clean.volumes, truth, particle_masks=clean.mask, voxel_size_angstrom=12.0)
    assert res.half1 is not None and res.fsc.resolution_0143 < 30.0
    assert set(res.half) == {1, 2}


def test_iterative_job_yields_live_updates_and_converges():
    s = simulate_subtomograms(["ribosome"], n_per_class=8, box=24, snr=2.0, max_shift_voxels=2, seed=3)
    events = []
    job = iterative_average_job(s.volumes, particle_masks=s.mask, reference=s.references[0], iterations=2,
                                angular_step_deg=30, refine_levels=1, voxel_size_angstrom=12.0,
                                start_resolution_angstrom=40.0)
    result = run_job(job, progress=False, on_partial=events.append)
    names = [e.name for e in events]
    assert names.count("average") == 2 and names.count("fsc") == 2 and names.count("alignment") == 2
    fsc_ev = [e.value for e in events if e.name == "fsc"][-1]
    assert isinstance(fsc_ev.curve, FSCResult)
    assert len(result.history) == 2
    # the refined poses agree with the truth (10 degree final step)
    from napari_cryoalign.backend.geometry import geodesic_angle_deg

    ang = geodesic_angle_deg(result.alignment.rotations, s.rotations)
    assert np.median(ang) < 8.0
    assert constrained_correlation(result.average, s.references[0]) > 0.6


def test_iterative_bad_input():
    with pytest.raises(InputError):
        run_job(iterative_average_job(np.zeros((1, 16, 16, 16))), progress=False)
    with pytest.raises(InputError):
        run_job(iterative_average_job(np.zeros((4, 16, 16, 16)), iterations=0), progress=False)
