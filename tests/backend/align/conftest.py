"""Fixtures shared by the alignment tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def default_model():
    """The shipped default Gum-Net (loaded once; tests that change it use their own copy)."""
    from napari_cryoalign.backend.align.learned import load_default_model

    return load_default_model()
