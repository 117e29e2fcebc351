"""Simulated tomograms: truth coordinates and angles mean what CONVENTIONS.md says; noise and wedge are real."""

import json

import numpy as np
import pytest

from napari_cryoalign.backend.geometry import euler_to_matrix, random_rotations, transform_reference_to_particle
from napari_cryoalign.backend.simulate import tomogram as S
from napari_cryoalign.errors import InputError


def _asymmetric_map(n=17):
    """Three blobs of different sizes at asymmetric positions (no rotational symmetry), volts."""
    g = np.arange(n) - n // 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    m = np.zeros((n, n, n), np.float32)
    for (x, y, z), s, a in (((3.5, 0, 0), 1.6, 2.0), ((-2, 3, 0), 1.3, 1.6), ((-1, -2, 3), 1.1, 1.3)):
        m += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / (2 * s * s))
    return m


MAP = _asymmetric_map()


@pytest.fixture(scope="module")
def clean():
    """Noiseless, CTF-free tomogram of 12 asymmetric particles (ideal imaging)."""
    return S.simulate_tomogram(shape=(40, 96, 96), structures=None, maps={"blob": MAP}, n_particles=12,
                               dose=None, ctf=False, tilt_step_deg=2.0, radial_cutoff=0.5, radial_falloff=0.0,
                               seed=11)


def _crop(vol, xyz, n):
    i = np.floor(np.asarray(xyz) + 0.5).astype(int)
    lo = i[::-1] - n // 2
    return vol[lo[0]: lo[0] + n, lo[1]: lo[1] + n, lo[2]: lo[2] + n], np.asarray(xyz) - i


def _ncc(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_truth_centres_are_density_peaks(clean):
    t = clean.truth
    assert len(t) == 12 and t.class_names == ("blob",) and np.all(t.classes == 1)
    tomo = clean.tomogram
    rng = np.random.default_rng(0)
    at_truth = [_crop(tomo, c, 5)[0].mean() for c in t.coordinates_xyz]
    rand = rng.uniform([8, 8, 8], [87, 87, 31], size=(200, 3))
    at_random = [_crop(tomo, c, 5)[0].mean() for c in rand]
    assert np.min(at_truth) > np.percentile(at_random, 90)
    assert np.mean(at_truth) > 5 * abs(np.mean(at_random))


def test_euler_angles_reproduce_the_orientation(clean):
    """Rotating the species map by A (truth angles) reproduces the particle; other rotations do not."""
    t = clean.truth
    others = random_rotations(24, seed=1)
    for c, eul in zip(t.coordinates_xyz, t.euler_deg):
        a = euler_to_matrix(eul)
        crop_pot, frac = _crop(clean.potential, c, 17)
        model = transform_reference_to_particle(MAP, a, -frac)
        assert _ncc(crop_pot, model) > 0.98  # the noiseless sample itself
        crop_tomo, _ = _crop(clean.tomogram, c, 17)
        good = _ncc(crop_tomo, model)
        bad = [_ncc(crop_tomo, transform_reference_to_particle(MAP, r, -frac)) for r in others]
        assert good > 0.8
        assert good > max(bad) + 0.05


def test_noiseless_reconstruction_matches_the_potential_in_the_measured_region(clean):
    from napari_cryoalign.backend.wedge import missing_wedge_mask

    m = missing_wedge_mask(clean.potential.shape, tilt_min_deg=-60.0, tilt_max_deg=60.0).numpy()
    measured = np.fft.ifftn(np.fft.fftn(clean.potential) * m).real
    assert np.corrcoef(clean.tomogram.ravel(), measured.ravel())[0, 1] > 0.9
    # units: volts relative to ice (ideal imaging, no CTF): same scale
    assert (clean.tomogram * measured).sum() / (measured * measured).sum() == pytest.approx(1.0, abs=0.15)


def test_missing_wedge_in_a_noisy_tomogram():
    sim = S.simulate_tomogram(shape=(48, 64, 64), structures=None, maps={"blob": MAP}, n_particles=10, dose=60.0,
                              keep_potential=False, seed=2)
    power = np.abs(np.fft.fftn(sim.tomogram)) ** 2
    kz, ky, kx = np.meshgrid(*[np.fft.fftfreq(n) for n in sim.tomogram.shape], indexing="ij")
    ang = np.degrees(np.arctan2(np.abs(kz), np.abs(kx)))
    r = np.sqrt(kx**2 + kz**2)
    ring = (r > 0.06) & (r < 0.3)
    assert power[ring & (ang > 70)].mean() < 0.05 * power[ring & (ang < 50)].mean()
    assert sim.potential is None


def test_dose_changes_the_noise_as_poisson_statistics_predict():
    kw = dict(shape=(24, 48, 48), structures=None, maps={"blob": MAP}, n_particles=4, tilt_step_deg=10.0,
              keep_potential=False, seed=7)
    ideal = S.simulate_tomogram(dose=None, **kw)  # expected counts at 100 e/A^2
    rel = {}
    for dose in (20.0, 180.0):
        sim = S.simulate_tomogram(dose=dose, **kw)
        expected = ideal.tilt_series * (dose / 100.0)
        resid = sim.tilt_series - expected
        # Poisson: variance equals the mean, pixel by pixel
        assert (resid**2).mean() / expected.mean() == pytest.approx(1.0, abs=0.05)
        rel[dose] = (resid / expected).std()
        assert sim.params["electrons_per_pixel_per_tilt"] == pytest.approx(dose / 13 * 100.0)
    assert rel[20.0] / rel[180.0] == pytest.approx(3.0, rel=0.05)  # sqrt(180 / 20)


def test_same_seed_same_data():
    kw = dict(shape=(24, 64, 64), structures=None, maps={"blob": MAP}, n_particles=5, tilt_step_deg=10.0,
              keep_potential=False)
    a = S.simulate_tomogram(seed=3, **kw)
    b = S.simulate_tomogram(seed=3, **kw)
    c = S.simulate_tomogram(seed=4, **kw)
    np.testing.assert_array_equal(a.tomogram, b.tomogram)
    np.testing.assert_array_equal(a.truth.coordinates_xyz, b.truth.coordinates_xyz)
    np.testing.assert_array_equal(a.truth.euler_deg, b.truth.euler_deg)
    assert not np.array_equal(a.truth.coordinates_xyz, c.truth.coordinates_xyz)


def test_particles_do_not_overlap_and_stay_in_the_ice():
    with pytest.warns(UserWarning, match="slab is full"):  # 30 do not fit: as many as possible, with a warning
        sim = S.simulate_tomogram(shape=(40, 96, 96), structures=None, maps={"a": MAP, "b": MAP[::-1].copy()},
                                  n_particles=30, ice_thickness_nm=30.0, n_vesicles=1, vesicle_radius_nm=(8.0, 10.0),
                                  n_gold=2, tilt_step_deg=10.0, keep_potential=False, seed=5)
    assert 10 <= sim.params["n_placed"] < 30
    t = sim.truth
    assert set(t.classes) <= {1, 2} and t.class_names == ("a", "b")
    d = np.linalg.norm(t.coordinates_xyz[:, None] - t.coordinates_xyz[None], axis=-1)
    rsum = t.radii_voxels[:, None] + t.radii_voxels[None]
    np.fill_diagonal(d, np.inf)
    assert np.all(d >= rsum)
    z_lo, z_hi = sim.params["ice_z_range_voxels"]
    assert z_hi - z_lo == pytest.approx(30.0)
    assert np.all(t.coordinates_xyz[:, 2] - t.radii_voxels >= z_lo - 1e-9)
    assert np.all(t.coordinates_xyz[:, 2] + t.radii_voxels <= z_hi + 1e-9)
    for g in sim.params["gold_xyz_voxels"]:  # gold at the ice surfaces, bright in the tomogram
        x, y, z = np.round(g).astype(int)
        assert sim.tomogram[z - 1: z + 2, y - 1: y + 2, x - 1: x + 2].mean() > 3 * sim.tomogram.std()


def test_packaged_structures_sample_tomogram():
    import time

    t0 = time.perf_counter()
    sim = S.sample_tomogram(seed=0)
    assert time.perf_counter() - t0 < 5.0
    assert sim.tomogram.shape == (48, 128, 128) and sim.tilt_series.shape == (41, 128, 128)
    assert sim.truth.class_names == ("ribosome", "cct", "ruvab")
    assert len(sim.truth) == 14
    # ribosomes (largest) are the densest objects: mean tomogram value at their centres is high
    tomo = sim.tomogram
    vals = np.array([_crop(tomo, c, 5)[0].mean() for c in sim.truth.coordinates_xyz])
    assert np.median(vals) > 3 * abs(tomo.mean())


def test_writer_round_trip(tmp_path, clean):
    from napari_cryoalign.io.mrc import read_mrc
    from napari_cryoalign.io.star import read_particles
    from napari_cryoalign.io.star_columns import coordinates_xyz, euler_deg
    from napari_cryoalign.io.tilt import read_acquisition_order, read_tlt

    paths = S.write_tomogram_simulation(clean, tmp_path / "out", tomo_name="t1")
    table = read_particles(paths["truth"])
    np.testing.assert_allclose(coordinates_xyz(table), clean.truth.coordinates_xyz, atol=1e-4)
    np.testing.assert_allclose(euler_deg(table), clean.truth.euler_deg, atol=1e-4)
    np.testing.assert_allclose(read_tlt(paths["tlt"]), clean.tilt_angles_deg, atol=1e-3)
    np.testing.assert_array_equal(read_acquisition_order(paths["order"], n_tilts=len(clean.tilt_angles_deg)),
                                  clean.acquisition_order)
    tomo = read_mrc(paths["tomogram"])
    np.testing.assert_allclose(np.asarray(tomo.data), clean.tomogram)
    np.testing.assert_allclose(tomo.voxel_size, (10.0, 10.0, 10.0))
    assert read_mrc(paths["tilt_series"]).data.shape == clean.tilt_series.shape
    params = json.loads(paths["params"].read_text())
    assert params["class_names"] == {"1": "blob"} and params["voxel_size_angstrom"] == 10.0
    with pytest.raises(InputError, match="exist"):
        S.write_tomogram_simulation(clean, tmp_path / "out")


def test_bad_input_is_reported():
    with pytest.raises(InputError, match="shape"):
        S.simulate_tomogram(shape=(4, 64, 64), maps={"blob": MAP}, structures=None)
    with pytest.raises(InputError, match="dose"):
        S.simulate_tomogram(shape=(16, 32, 32), maps={"blob": MAP}, structures=None, dose=-1.0)
    with pytest.raises(InputError, match="cubic"):
        S.simulate_tomogram(shape=(16, 32, 32), maps={"blob": np.zeros((4, 5, 6))}, structures=None)
    with pytest.raises(InputError, match="structure"):
        S.simulate_tomogram(shape=(16, 32, 32), structures=["no_such_protein"])
