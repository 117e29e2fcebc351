"""npe2 sample data: one simulated data set per capability, made on the fly (seconds, offline).

The structures are real protein maps shipped with the package (see docs/simulate.md); the
ground truth rides along as points layers and layer metadata.
"""

from __future__ import annotations

from . import _layers


def sample_tomogram() -> list[tuple]:
    """A small crowded tomogram (picking) with its true particles."""
    from .backend.simulate.tomogram import sample_tomogram as make

    return _layers.tomogram_layers(make(seed=0), name="sample tomogram")


def sample_subtomograms() -> list[tuple]:
    """Subtomograms of five structures in random poses with a missing wedge (alignment, clustering)."""
    from .backend.simulate.subtomograms import sample_subtomograms as make

    return _layers.subtomogram_layers(make(seed=0), name="sample subtomograms")


def sample_tiltseries() -> list[tuple]:
    """A tilt series with gold markers and beam-induced deformation (markers, deformation)."""
    from .backend.simulate.markers import sample_marker_tiltseries as make

    return _layers.marker_tiltseries_layers(make(seed=0), name="sample marker tilt series")


def sample_particles() -> list[tuple]:
    """Particle images of a ribosome at random poses with CTF and noise (pose inference)."""
    from .backend.simulate.particles import sample_particles as make

    return _layers.particle_image_layers(make(seed=0), name="sample particle images")
