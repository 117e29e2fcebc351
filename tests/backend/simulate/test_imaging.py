"""Shared image formation: shot noise on expected counts."""

import pytest
import torch

from napari_cryoalign.backend.simulate.imaging import apply_dose_noise
from napari_cryoalign.errors import InputError


def test_dose_noise_models():
    e = torch.full((200, 200), 100.0)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    none = apply_dose_noise(e, noise="none")
    assert torch.equal(none, e) and none.data_ptr() != e.data_ptr()
    p = apply_dose_noise(e, noise="poisson", generator=gen())
    assert float(p.mean()) == pytest.approx(100.0, rel=0.01) and float(p.var()) == pytest.approx(100.0, rel=0.05)
    assert torch.equal(p, p.round())
    g = apply_dose_noise(e, noise="gaussian", generator=gen())  # variance = expected counts
    assert float(g.std()) == pytest.approx(10.0, rel=0.03)
    g25 = apply_dose_noise(e, noise="gaussian", variance=25.0, generator=gen())  # fixed variance
    assert float(g25.std()) == pytest.approx(5.0, rel=0.03)
    torch.testing.assert_close(g25 - e, (g - e) / 2)  # same draws, scaled
    with pytest.raises(InputError, match="noise"):
        apply_dose_noise(e, noise="uniform")
