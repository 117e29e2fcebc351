from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def easy_set():
    """600 noiseless ribosome projections, 32 px at 12 Å, CTF, small shifts (about 3 s)."""
    from napari_cryoalign.backend.simulate.particles import simulate_particles

    return simulate_particles("ribosome", n=600, box=32, pixel_size_angstrom=12.0, snr=None, defocus_um=(1.0, 2.5),
                              max_shift_pixels=2.0, seed=5)
