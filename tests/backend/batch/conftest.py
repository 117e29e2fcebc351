"""Fixtures of the batch tests: a copick project of 3 runs (and a corrupt one) in tmp, the same tomograms as
MRC files with a tomograms.star and a list, a briefly trained picker, and a 2-worker LocalCluster."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from napari_cryoalign.io import write_mrc, write_star
from napari_cryoalign.io.copick_project import new_copick_project

VOXEL = 10.0
SHAPE = (16, 64, 64)
RUNS = ("TS_001", "TS_002", "TS_003")
THRESHOLD = 0.2  # the picker is trained for a few steps only


def _tomogram(seed):
    """A small tomogram with 6 planted copies of a small structure."""
    from napari_cryoalign.backend.geometry import random_rotations, transform_reference_to_particle
    from napari_cryoalign.backend.simulate.structures import load_structure_map

    ref, _ = load_structure_map("enolase", voxel_size_angstrom=VOXEL, box=12)
    rng = np.random.default_rng(seed)
    vol = np.zeros(SHAPE, np.float32)
    pos = np.column_stack([rng.integers(8, 56, 6), rng.integers(8, 56, 6), rng.integers(6, 10, 6)])
    for (x, y, z), r in zip(pos, random_rotations(len(pos), seed=seed)):
        vol[z - 6: z + 6, y - 6: y + 6, x - 6: x + 6] += transform_reference_to_particle(ref, r)
    vol += rng.normal(0, 0.3 * vol.std(), SHAPE).astype(np.float32)
    return vol, pos


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copick project (3 runs + a corrupt one), the same tomograms as MRC files with a tomograms.star
    and a list, and a briefly trained picker."""
    from napari_cryoalign.backend.picking import save_picker, train_picker

    d = tmp_path_factory.mktemp("batch")
    root = new_copick_project(d / "config.json", d / "overlay",
                              objects=[{"name": "enolase", "radius": 40.0}])
    vols = {}
    for i, name in enumerate(RUNS):
        vol, pos = _tomogram(i)
        vols[name] = vol
        root.new_run(name).new_voxel_spacing(VOXEL).new_tomogram("wbp").from_numpy(vol)
        write_mrc(d / f"{name}.mrc", vol, voxel_size=VOXEL)
        if i == 0:
            labels = pos.astype(float)
    # a corrupt run: the tomogram's full-resolution level is missing
    root.new_run("TS_bad").new_voxel_spacing(VOXEL).new_tomogram("wbp").from_numpy(vols[RUNS[0]])
    bad = next((d / "overlay").rglob("TS_bad/**/wbp.zarr"))
    for p in sorted((bad / "0").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (bad / "0").rmdir()
    res = train_picker(vols[RUNS[0]], labels, diameter_angstrom=80.0, voxel_size=VOXEL, iterations=30, seed=1)
    save_picker(d / "model.pt", res.picker)
    write_star(d / "tomograms.star", {"global": pd.DataFrame({
        "rlnTomoName": [*RUNS, "TS_missing"],
        "rlnTomoReconstructedTomogram": [f"{n}.mrc" for n in RUNS] + ["nowhere/TS_missing.mrc"]})}, overwrite=True)
    (d / "list.txt").write_text("# tomograms\n" + "".join(f"{n}.mrc\n" for n in RUNS))
    return SimpleNamespace(d=d, vols=vols, runs=RUNS, shape=SHAPE, voxel=VOXEL, threshold=THRESHOLD)


@pytest.fixture(scope="module")
def client():
    from napari_cryoalign.backend.batch import dask_client

    c, _ = dask_client(workers=2, threads_per_worker=1)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


