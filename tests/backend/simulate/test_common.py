"""What the simulators share: settings checks, random draws, noise at an SNR, batches, output folders."""

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.jobs import Progress
from napari_cryoalign.backend.simulate.common import (
    _at_snr,
    _check_noise_shift_defocus,
    _check_outputs,
    _draw_defocus,
    _noise_generator,
    _optics,
    _output_folder,
    _simulate_batches,
)
from napari_cryoalign.errors import InputError


def test_noise_at_the_requested_snr_per_item():
    scale = torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    signal = torch.randn((3, 16, 16), generator=torch.Generator().manual_seed(0)) * scale
    unit = torch.randn((3, 16, 16), generator=torch.Generator().manual_seed(1))
    unit = (unit - unit.mean((1, 2), keepdim=True)) / unit.var((1, 2), unbiased=False, keepdim=True).sqrt()
    out, vs, nv = _at_snr(signal, 0.5, lambda: unit)
    torch.testing.assert_close(vs / nv, torch.full((3,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(vs, signal.double().var((1, 2), unbiased=False))
    calls = []
    clean, vs0, nv0 = _at_snr(signal, None, lambda: calls.append(1))
    assert clean is signal and not calls and torch.all(nv0 == 0)  # no noise, no draws


def test_random_draws():
    rng = np.random.default_rng(0)
    assert np.all(np.isnan(_draw_defocus(rng, None, 4)))
    np.testing.assert_array_equal(_draw_defocus(rng, 2.0, 3), [2.0, 2.0, 2.0])
    d = _draw_defocus(rng, (1.0, 3.0), 100)
    assert d.min() >= 1.0 and d.max() <= 3.0 and d.std() > 0.3
    seed, gen = _noise_generator(rng, 7)
    assert seed == 7
    assert torch.equal(torch.randn(3, generator=gen), torch.randn(3, generator=torch.Generator().manual_seed(7)))
    a, _ = _noise_generator(np.random.default_rng(1), None)
    b, _ = _noise_generator(np.random.default_rng(1), None)
    assert a == b  # drawn from the simulation's generator


def test_settings_checks():
    _check_noise_shift_defocus(0.1, 3.0, 32, (1.0, 3.0), unit="pixels", shift_field="max_shift_pixels")
    with pytest.raises(InputError, match="snr"):
        _check_noise_shift_defocus(0.0, 3.0, 32, None, unit="pixels", shift_field="max_shift_pixels")
    with pytest.raises(InputError, match=r"max_shift_voxels: expected a shift between 0 and box/2 = 8.0 voxels"):
        _check_noise_shift_defocus(None, 9.0, 16, None, unit="voxels", shift_field="max_shift_voxels")
    with pytest.raises(InputError, match="defocus"):
        _check_noise_shift_defocus(None, 1.0, 16, (3.0, 1.0), unit="voxels", shift_field="max_shift_voxels")


def test_batches_fill_every_item_and_report_progress():
    def simulate(sl):
        x = torch.arange(sl.start, sl.stop, dtype=torch.float32)[:, None].expand(-1, 2)
        return x, x[:, 0].double(), torch.zeros(sl.stop - sl.start, dtype=torch.float64)

    job = _simulate_batches(5, 2, (2,), simulate, message="go", unit="things")
    events = []
    while True:
        try:
            events.append(next(job))
        except StopIteration as stop:
            items, sv, nv = stop.value
            break
    assert [(e.step, e.total, e.message) for e in events] == [(0, 3, "go"), (1, 3, "2/5 things"), (2, 3, "4/5 things"),
                                                              (3, 3, "5/5 things")]
    assert all(isinstance(e, Progress) for e in events)
    np.testing.assert_array_equal(items[:, 0], np.arange(5))
    np.testing.assert_array_equal(sv, np.arange(5))
    assert items.dtype == np.float32 and nv.shape == (5,)


def test_output_folder_checks(tmp_path):
    (tmp_path / "a.mrc").write_text("x")
    _check_outputs(tmp_path / "new", ("a.mrc",))
    _check_outputs(tmp_path, ("a.mrc",), overwrite=True)
    with pytest.raises(InputError, match="does not exist yet"):
        _check_outputs(tmp_path, ("b.mrc", "a.mrc"))
    with pytest.raises(InputError, match="a folder for the outputs"):
        _output_folder(tmp_path / "a.mrc")
    assert _output_folder(str(tmp_path)) == tmp_path


def test_optics_columns_from_params():
    assert _optics({"voltage_kv": 200.0, "cs_mm": 0.01}) == {"rlnVoltage": 200.0, "rlnSphericalAberration": 0.01,
                                                            "rlnAmplitudeContrast": 0.07}
