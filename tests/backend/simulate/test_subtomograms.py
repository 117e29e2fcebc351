"""Simulated subtomograms: the truth in the set (and the STAR file) is the CONVENTIONS.md truth."""

import json

import numpy as np
import pytest

from napari_cryoalign.backend.fourier import lowpass
from napari_cryoalign.backend.geometry import (
    align_particle_to_reference,
    euler_to_matrix,
    random_rotations,
    transform_reference_to_particle,
)
from napari_cryoalign.backend.jobs import Progress
from napari_cryoalign.backend.simulate.subtomograms import (
    sample_subtomograms,
    simulate_subtomograms,
    simulate_subtomograms_job,
    write_subtomogram_set,
)
from napari_cryoalign.errors import InputError

FIVE = ["ribosome", "cct", "mtor", "ruvab", "dengue_e_fab"]


def _corr(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_requested_snr_is_met():
    """Two noise realisations of the same particles: corr = SNR / (1 + SNR) (independent estimate)."""
    for snr in (0.1, 0.03):
        a = simulate_subtomograms(FIVE, n_per_class=6, snr=snr, seed=3, noise_seed=10)
        b = simulate_subtomograms(FIVE, n_per_class=6, snr=snr, seed=3, noise_seed=11)
        assert np.array_equal(a.euler_deg, b.euler_deg)
        c = np.mean([_corr(x, y) for x, y in zip(a.volumes, b.volumes)])
        est = c / (1 - c)
        assert est == pytest.approx(snr, rel=0.10)
        assert np.allclose(a.signal_variance / a.noise_variance, snr, rtol=1e-4)


def test_angles_and_origins_align_back_to_reference():
    s = simulate_subtomograms(FIVE, n_per_class=3, snr=100.0, defocus_um=None, max_shift_voxels=3, seed=1)
    good, wrong = [], []
    wrong_rot = random_rotations(s.n, seed=99)
    for i in range(s.n):
        ref = s.references[s.classes[i] - 1]
        ref_lp = lowpass(ref, 30.0, voxel_size_angstrom=s.voxel_size_angstrom)
        back = align_particle_to_reference(s.volumes[i], s.rotations[i], s.origins_voxels[i])
        good.append(_corr(lowpass(back, 30.0, voxel_size_angstrom=12.0), ref_lp))
        bad = align_particle_to_reference(s.volumes[i], wrong_rot[i], s.origins_voxels[i])
        wrong.append(_corr(lowpass(bad, 30.0, voxel_size_angstrom=12.0), ref_lp))
        # the STAR angles give the same matrices
        assert np.allclose(euler_to_matrix(s.euler_deg[i]), s.rotations[i])
    good, wrong = np.array(good), np.array(wrong)
    # the wedge and two interpolations cost some correlation; a wrong pose costs much more
    assert good.min() > 0.65 and good.mean() > 0.75
    assert np.all(good > wrong) and good.mean() - wrong.mean() > 0.2
    # forward check in the particle frame: reference rotated by A, centre at N//2 - origin, wedge applied
    mask = np.fft.ifftshift(s.mask)
    for i in range(4):
        ref = s.references[s.classes[i] - 1]
        fwd = transform_reference_to_particle(ref, s.rotations[i], s.origins_voxels[i])
        fwd = np.fft.ifftn(np.fft.fftn(fwd) * mask).real
        assert _corr(fwd, s.volumes[i]) > 0.97
        fwd_w = transform_reference_to_particle(ref, wrong_rot[i], s.origins_voxels[i])
        assert _corr(np.fft.ifftn(np.fft.fftn(fwd_w) * mask).real, s.volumes[i]) < 0.85


def test_shift_sign_and_worked_example():
    # no CTF, no wedge, no noise: the centre of mass of the particle is at N//2 - origin/voxel
    s = simulate_subtomograms(["mtor"], n_per_class=4, snr=None, defocus_um=None, tilt_range_deg=None,
                              max_shift_voxels=4, seed=5, invert_contrast=False)
    for i in range(s.n):
        v = np.clip(s.volumes[i], 0, None)
        idx = np.indices(v.shape).reshape(3, -1)
        com_zyx = (idx * v.ravel()).sum(1) / v.sum()
        ref = np.clip(s.references[0], 0, None)
        ref_com = (idx * ref.ravel()).sum(1) / ref.sum()
        # reference centre of mass r (from the box centre 16) goes to 16 + A r - origin
        expected_xyz = 16 + euler_to_matrix(s.euler_deg[i]) @ (ref_com[::-1] - 16) - s.origins_voxels[i]
        assert np.allclose(com_zyx[::-1], expected_xyz, atol=0.35)
    assert np.abs(s.origins_voxels).max() > 1.0


def test_missing_wedge_in_fourier_transform():
    s = simulate_subtomograms(["ribosome", "cct"], n_per_class=2, snr=0.1, seed=2)
    p = np.fft.fftshift(np.abs(np.fft.fftn(s.volumes[0])) ** 2)
    c = 16
    k = np.arange(32) - c
    KZ, KY, KX = np.meshgrid(k, k, k, indexing="ij")
    ang = np.degrees(np.arctan2(np.abs(KZ), np.abs(KX)))
    r = np.sqrt(KX**2 + KY**2 + KZ**2)
    shell = (r > 3) & (r < 14)
    inside = shell & (ang < 55)
    missing = shell & (ang > 65)
    assert p[missing].mean() < 1e-6 * p[inside].mean()
    assert np.array_equal(s.mask[missing], np.zeros(missing.sum())) and s.mask[inside].min() == 1
    # without a wedge the same region has power
    s2 = simulate_subtomograms(["ribosome"], n_per_class=1, snr=0.1, seed=2, tilt_range_deg=None)
    p2 = np.fft.fftshift(np.abs(np.fft.fftn(s2.volumes[0])) ** 2)
    assert p2[missing].mean() > 0.3 * p2[inside].mean()


def test_seed_reproducible_and_different():
    a = simulate_subtomograms(["cct", "smc_hinge"], n_per_class=2, snr=0.5, seed=7)
    b = simulate_subtomograms(["cct", "smc_hinge"], n_per_class=2, snr=0.5, seed=7)
    c = simulate_subtomograms(["cct", "smc_hinge"], n_per_class=2, snr=0.5, seed=8)
    assert np.array_equal(a.volumes, b.volumes) and np.array_equal(a.euler_deg, b.euler_deg)
    assert not np.allclose(a.euler_deg, c.euler_deg)
    assert np.abs(a.volumes - c.volumes).max() > 0.1 * np.abs(a.volumes).max()
    assert sorted(np.bincount(a.classes)[1:]) == [2, 2]


def test_ctf_contrast_and_job_progress():
    job = simulate_subtomograms_job(["ribosome"], n_per_class=3, snr=None, batch_size=2, seed=0)
    events = []
    try:
        while True:
            events.append(next(job))
    except StopIteration as stop:
        s = stop.value
    assert [e.step for e in events if isinstance(e, Progress)] == [0, 1, 2]
    # protein bright by default: the particle correlates positively with the (shifted) reference
    back = align_particle_to_reference(s.volumes[0], s.rotations[0], s.origins_voxels[0])
    assert _corr(back, s.references[0]) > 0.3
    raw = simulate_subtomograms(["ribosome"], n_per_class=3, snr=None, seed=0, invert_contrast=False)
    assert np.allclose(raw.volumes, -s.volumes, atol=1e-5)


def test_bad_input():
    with pytest.raises(InputError, match="structures"):
        simulate_subtomograms(["nope"], n_per_class=1)
    with pytest.raises(InputError, match="snr"):
        simulate_subtomograms(["cct"], n_per_class=1, snr=-1)


def test_writer_roundtrip(tmp_path):
    import mrcfile
    import starfile

    s = simulate_subtomograms(["cct", "mtor"], n_per_class=2, snr=1.0, seed=4)
    paths = write_subtomogram_set(s, tmp_path / "out")
    star = starfile.read(paths["star"])
    df = star["particles"]
    assert len(df) == 4
    assert np.allclose(df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), s.euler_deg, atol=1e-5)
    assert np.allclose(df[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(), s.origins_angstrom, atol=1e-5)
    assert list(df["rlnClassNumber"]) == list(s.classes)
    with mrcfile.open(tmp_path / "out" / df["rlnImageName"][2]) as m:
        assert np.allclose(m.data, s.volumes[2])
        assert float(m.voxel_size.x) == pytest.approx(12.0)
    params = json.loads(paths["params"].read_text())
    assert params["snr"] == 1.0 and params["seed"] == 4 and params["class_numbers"] == {"cct": 1, "mtor": 2}
    with pytest.raises(InputError):
        write_subtomogram_set(s, tmp_path / "out")  # never overwrite silently


def test_sample_is_fast():
    import time

    t = time.perf_counter()
    s = sample_subtomograms(seed=0)
    assert time.perf_counter() - t < 3.0
    assert s.volumes.shape == (20, 32, 32, 32) and len(s.class_names) == 5
