"""Sharded averaging (issue 21): the partial sums of particle shards on Dask workers, reduced, give the same
average, half maps and FSC as one process, and no task holds more than its shard."""

import numpy as np
import pytest

from napari_cryoalign.backend.align.average import average_particles
from napari_cryoalign.backend.align.extract import load_particle_set, particle_ctf
from napari_cryoalign.backend.align.types import AlignmentResult
from napari_cryoalign.backend.batch.average import row_halves, sharded_average_job
from napari_cryoalign.backend.geometry import euler_to_matrix, random_rotations, transform_reference_to_particle
from napari_cryoalign.backend.jobs import run_job
from napari_cryoalign.backend.wedge import particle_fourier_mask
from napari_cryoalign.cli import main
from napari_cryoalign.errors import InputError
from napari_cryoalign.io import read_mrc, write_mrc, write_subtomograms

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

N, BOX, VOXEL = 45, 16, 12.0


@pytest.fixture(scope="module")
def subtomograms(tmp_path_factory):
    from napari_cryoalign.backend.geometry import matrix_to_euler
    from napari_cryoalign.backend.simulate.structures import load_structure_map

    d = tmp_path_factory.mktemp("avg")
    ref, _ = load_structure_map("enolase", voxel_size_angstrom=VOXEL, box=BOX)
    rng = np.random.default_rng(3)
    rots = random_rotations(N, seed=4)
    vols = np.stack([transform_reference_to_particle(ref, r) for r in rots]).astype(np.float32)
    vols += rng.normal(0, vols.std(), vols.shape).astype(np.float32)
    vols[7] = 0.0  # an empty box: skipped, in both runs
    star = write_subtomograms(d / "particles.star", vols, voxel_size=VOXEL, euler_deg=matrix_to_euler(rots),
                              origins_angstrom=rng.uniform(-VOXEL, VOXEL, (N, 3)),
                              extra_columns={"rlnDefocusU": rng.uniform(2e4, 4e4, N)})
    return star


def test_sharded_average_equals_one_process(subtomograms, client):
    res = run_job(sharded_average_job(str(subtomograms), shard_size=7, client=client), progress=False)
    assert len(res.shards) == 7 and res.max_shard_particles == 7
    assert res.n_particles == N - 1 and [r for r, _ in res.skipped] == [7]
    # the same particles, poses, wedge, CTF and halves in one process
    pset = load_particle_set(subtomograms)
    poses = AlignmentResult(euler_to_matrix(pset.euler_deg), pset.origins_angstrom / pset.voxel_size,
                            np.full(len(pset.rows), np.nan), "star")
    one = average_particles(pset.volumes, poses, particle_masks=particle_fourier_mask(BOX), voxel_size_angstrom=VOXEL,
                            half=row_halves(pset.table.data, pset.rows), ctf=particle_ctf(pset))
    scale = np.abs(one.average).max()
    for a, b in ((res.average.average, one.average), (res.average.half1, one.half1), (res.average.half2, one.half2)):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale)
    np.testing.assert_allclose(res.average.fsc.curve.fsc, one.fsc.curve.fsc, atol=1e-4)
    assert res.average.fsc.resolution_0143 == pytest.approx(one.fsc.resolution_0143, rel=1e-4)


def test_batch_average_cli(subtomograms, tmp_path, capsys):
    out = tmp_path / "avg.mrc"
    assert main(["-q", "batch", "average", "--particles", str(subtomograms), "--out", str(out), "--half-maps",
                 "--shard-size", "20", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "44 particles" in text and "3 shards" in text and "1 skipped" in text
    m = read_mrc(out)
    assert m.data.shape == (BOX,) * 3 and np.isclose(float(np.mean(m.voxel_size)), VOXEL)
    assert (tmp_path / "avg_half1.mrc").is_file() and (tmp_path / "avg_fsc.csv").is_file()
    assert main(["-q", "batch", "average", "--particles", str(subtomograms), "--out", str(out)]) == 2  # exists
    with pytest.raises(InputError):
        run_job(sharded_average_job(str(subtomograms), shard_size=0), progress=False)


def test_sharded_alignment_equals_one_process(subtomograms, client, tmp_path, capsys):
    from napari_cryoalign.backend.align.methods import align_job
    from napari_cryoalign.backend.batch.align import sharded_align_job
    from napari_cryoalign.backend.simulate.structures import load_structure_map
    from napari_cryoalign.io import read_star

    ref, _ = load_structure_map("enolase", voxel_size_angstrom=VOXEL, box=BOX)
    res = run_job(sharded_align_job(str(subtomograms), ref, shard_size=20, angular_step_deg=45.0, refine_levels=1,
                                    client=client), progress=False)
    assert len(res.shards) == 3 and list(res.rows) == [r for r in range(N) if r != 7]
    pset = load_particle_set(subtomograms)
    masks = particle_fourier_mask(BOX)
    ctf = particle_ctf(pset)
    one = run_job(align_job(pset.volumes, ref, particle_masks=masks, angular_step_deg=45.0, refine_levels=1, ctf=ctf),
                  progress=False)
    np.testing.assert_allclose(res.alignment.rotations, one.rotations, atol=1e-4)
    np.testing.assert_allclose(res.alignment.origins_voxels, one.origins_voxels, atol=1e-4)
    avg = average_particles(pset.volumes, one, particle_masks=masks, voxel_size_angstrom=VOXEL,
                            half=row_halves(pset.table.data, pset.rows), ctf=ctf)
    scale = np.abs(avg.average).max()
    np.testing.assert_allclose(res.average.average, avg.average, atol=1e-4 * scale)
    np.testing.assert_allclose(res.average.half1, avg.half1, atol=1e-4 * scale)
    # the command: aligned STAR (every kept row, the poses) and the average
    out = tmp_path / "aligned.star"
    write_mrc(tmp_path / "ref.mrc", ref, voxel_size=VOXEL)
    assert main(["-q", "batch", "align", "--particles", str(subtomograms), "--reference", str(tmp_path / "ref.mrc"),
                 "--out", str(out), "--average", str(tmp_path / "avg.mrc"), "--angular-step", "45",
                 "--refine-levels", "1", "--shard-size", "20", "--workers", "2"]) == 0
    assert "aligned 44 particles (1 skipped)" in capsys.readouterr().out
    table = read_star(out)["particles"]
    assert len(table) == 44 and "cryoalignCorrelation" in table
    got = euler_to_matrix(table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    np.testing.assert_allclose(got, one.rotations, atol=1e-3)
    assert read_mrc(tmp_path / "avg.mrc").data.shape == (BOX,) * 3
