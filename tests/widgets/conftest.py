"""Shared pieces of the widget tests: files on disk opened as a user opens them.

``open_files`` goes through napari's File > Open with this plugin's reader (npe2), so a
widget gets the layers (scale, metadata) a user gets. ``planted_files`` writes a tomogram
with randomly rotated copies of packaged structures, the particles' STAR file (naming the
tomogram, so the reader puts the points on it) and the reference map, as MRC/STAR files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


def open_files(viewer, *paths) -> list:
    """Open files with napari-cryoalign's reader, as File > Open does; returns the new layers."""
    layers = []
    for p in paths:
        layers.extend(viewer.open(str(p), plugin="napari-cryoalign"))
    return layers


@dataclass
class PlantedFiles:
    tomogram: Path
    particles: Path
    references: list[Path]
    rotations: np.ndarray  #: (n, 3, 3) true particle rotations
    classes: np.ndarray  #: (n,) 1-based true class of each particle
    zyx: np.ndarray  #: (n, 3) particle centres in voxels
    voxel: float


def write_planted(folder: Path, *, structures=("ribosome",), per_class: int = 4, box: int = 24, voxel: float = 12.0,
                  noise: float = 0.5, junk: int = 0, seed: int = 0) -> PlantedFiles:
    """A noisy tomogram with ``per_class`` rotated copies of each structure, written with the project's writers.

    ``junk`` picks on empty ice are appended to the STAR file after the real particles.
    """
    from napari_cryoalign.backend.geometry import random_rotations, transform_reference_to_particle
    from napari_cryoalign.backend.simulate.structures import load_structure_map
    from napari_cryoalign.io import write_mrc, write_particles

    maps = [load_structure_map(name, voxel_size_angstrom=voxel, box=box)[0] for name in structures]
    maps = [m / m.std() for m in maps]
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.repeat(np.arange(1, len(maps) + 1), per_class))
    n = len(classes)
    rots = random_rotations(n, seed=seed + 3)
    step, cols = box + 4, 3
    rows = (n + junk + cols - 1) // cols
    tomo = np.zeros((box + 8, rows * step + 4, cols * step + 4), np.float32)
    zyx = np.array([[tomo.shape[0] // 2, step // 2 + 2 + step * (i // cols), step // 2 + 2 + step * (i % cols)]
                    for i in range(n + junk)])
    h = box // 2
    for (z, y, x), r, c in zip(zyx[:n], rots, classes):
        tomo[z - h:z + h, y - h:y + h, x - h:x + h] += transform_reference_to_particle(maps[c - 1], r)
    tomo += rng.normal(0, noise, tomo.shape).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    tomo_path = write_mrc(folder / "planted.mrc", tomo, voxel_size=voxel)
    star_path = write_particles(folder / "particles.star", coordinates_xyz=zyx[:, ::-1].astype(float),
                                tomo_name="planted", tomogram_shape=tomo.shape, voxel_size=voxel)
    refs = [write_mrc(folder / f"{name}_ref.mrc", m.astype(np.float32), voxel_size=voxel)
            for name, m in zip(structures, maps)]
    return PlantedFiles(Path(tomo_path), Path(star_path), [Path(r) for r in refs], rots, classes, zyx, voxel)


@pytest.fixture
def planted_files(tmp_path) -> PlantedFiles:
    """Four ribosomes and one pick on empty ice, as files (``planted.mrc``, ``particles.star``, ``ribosome_ref.mrc``)."""
    return write_planted(tmp_path / "data", junk=1)
