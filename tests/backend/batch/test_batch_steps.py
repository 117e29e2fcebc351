"""`batch pick template` and `batch extract` (issue 21): each tomogram's output equals the single command's,
the merged subtomogram set reads back with the same boxes and centres, and `batch average` takes it."""

import numpy as np
import pandas as pd
import pytest

from napari_cryoalign.backend.align.extract import extract_subtomograms, load_particle_set
from napari_cryoalign.backend.batch.average import sharded_average_job
from napari_cryoalign.backend.jobs import run_job
from napari_cryoalign.cli import main
from napari_cryoalign.io import read_star, write_mrc, write_star

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_batch_pick_template_equals_single(project, tmp_path, capsys):
    from napari_cryoalign.backend.picking.template import template_match_job
    from napari_cryoalign.backend.simulate.structures import load_structure_map

    d = project.d
    ref, _ = load_structure_map("enolase", voxel_size_angstrom=project.voxel, box=12)
    write_mrc(tmp_path / "ref.mrc", ref, voxel_size=project.voxel)
    out = tmp_path / "tm"
    assert main(["-q", "batch", "pick", "template", "--tomogram-list", str(d / "list.txt"), "--template",
                 str(tmp_path / "ref.mrc"), "--angular-step", "45", "--max-picks", "10", "--out", str(out)]) == 0
    assert "3 done" in capsys.readouterr().out
    for name in project.runs[:2]:
        single = run_job(template_match_job(project.vols[name], ref, voxel_size=project.voxel,
                                            template_voxel_size=project.voxel, angular_step_deg=45, max_picks=10),
                         progress=False).picks
        got = read_star(out / name / "picks.star")["particles"]
        np.testing.assert_allclose(got[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(),
                                   single.coordinates_xyz, atol=1e-4)
        np.testing.assert_allclose(got[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), single.euler_deg,
                                   atol=1e-3)
    assert len(read_star(out / "particles.star")["particles"]) == 30


def _particles(project, path):
    """5 particles per run (coordinates, poses, a class) and one of a tomogram not in the batch."""
    rng = np.random.default_rng(5)
    rows = []
    for name in project.runs:
        xyz = np.column_stack([rng.uniform(2, 62, 5), rng.uniform(2, 62, 5), rng.uniform(3, 13, 5)])
        for c, ang in zip(xyz, rng.uniform(0, 180, (5, 3))):
            rows.append({"rlnTomoName": name, "rlnCoordinateX": c[0], "rlnCoordinateY": c[1], "rlnCoordinateZ": c[2],
                         "rlnAngleRot": ang[0], "rlnAngleTilt": ang[1], "rlnAnglePsi": ang[2], "rlnOriginXAngst": 5.0,
                         "rlnOriginYAngst": -3.0, "rlnOriginZAngst": 0.0, "rlnClassNumber": 2})
    rows.append({**rows[0], "rlnTomoName": "TS_elsewhere"})  # a tomogram not in the batch: not extracted
    table = pd.DataFrame(rows)
    write_star(path, {"particles": table})
    return rows, table


def test_batch_extract_then_average(project, tmp_path, capsys):
    d, box = project.d, 16
    rows, table = _particles(project, tmp_path / "in.star")
    out = tmp_path / "ext"
    assert main(["-q", "batch", "extract", "--tomograms", str(d / "tomograms.star"), "--particles",
                 str(tmp_path / "in.star"), "--box", str(box), "--out", str(out)]) == 1  # TS_missing fails
    assert "3 done" in capsys.readouterr().out
    merged = load_particle_set(out / "particles.star")
    assert len(merged.rows) == 15 and merged.volumes.shape[1:] == (box,) * 3
    data = merged.table.data
    assert list(data["rlnTomoName"]) == [r["rlnTomoName"] for r in rows[:15]]
    assert (data["rlnClassNumber"] == 2).all() and np.allclose(data["rlnAngleTilt"], table["rlnAngleTilt"][:15])
    # the same boxes as cutting them here, and coordinate - origin / voxel is the input's centre
    for name in project.runs:
        mine = table[table["rlnTomoName"] == name]
        xyz = mine[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
        ext = extract_subtomograms(project.vols[name], xyz, box)
        sel = np.flatnonzero(data["rlnTomoName"] == name)
        np.testing.assert_allclose(merged.volumes[sel], ext.volumes, atol=1e-6)
        coord = data.loc[sel, ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
        origin = data.loc[sel, ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy()
        np.testing.assert_allclose(coord - origin / project.voxel, xyz - np.array([5.0, -3.0, 0.0]) / project.voxel,
                                   atol=1e-4)
    res = run_job(sharded_average_job(str(out / "particles.star"), shard_size=4, workers=2), progress=False)
    assert res.n_particles == 15 and len(res.shards) == 4
    assert np.isfinite(res.average.average).all()


def test_batch_average_and_align_cut_from_tomograms(project, client, tmp_path, capsys):
    """`batch average` / `batch align` on coordinates: shards of one tomogram each, cut on the workers, give the
    maps of one process cutting the same boxes (padded boxes' coverage included), and the poses of the same
    particles extracted first; the row of a tomogram not in the batch is skipped with its reason."""
    from napari_cryoalign.backend.align.average import average_particles
    from napari_cryoalign.backend.align.types import AlignmentResult
    from napari_cryoalign.backend.batch import tomograms_from_copick, tomograms_from_list
    from napari_cryoalign.backend.batch.average import row_halves
    from napari_cryoalign.backend.geometry import euler_to_matrix
    from napari_cryoalign.backend.simulate.structures import load_structure_map
    from napari_cryoalign.backend.wedge import particle_fourier_mask

    d, box = project.d, 16
    _, table = _particles(project, tmp_path / "in.star")
    cut = run_job(sharded_average_job(str(tmp_path / "in.star"), tomograms=tomograms_from_list(d / "list.txt"),
                                      box=box, shard_size=4, client=client), progress=False)
    assert cut.n_particles == 15
    assert len(cut.shards) == 6 and {sh.source.name for sh in cut.shards} == set(project.runs)
    assert all(len(sh) <= 4 for sh in cut.shards)
    assert cut.skipped == [(15, "tomogram 'TS_elsewhere' is not among the inputs")]
    # one process: each tomogram's rows cut from its file, then averaged together
    sets = [load_particle_set(tmp_path / "in.star", tomogram=d / f"{n}.mrc", box=box,
                              rows=np.flatnonzero(table["rlnTomoName"] == n)) for n in project.runs]
    rows = np.concatenate([s.rows for s in sets])
    poses = AlignmentResult(euler_to_matrix(np.concatenate([s.euler_deg for s in sets])),
                            np.concatenate([s.origins_angstrom / s.voxel_size + s.extraction_origins_voxels
                                            for s in sets]), np.full(len(rows), np.nan), "star")
    inside = np.concatenate([s.inside_masks() if s.inside_bounds is not None else np.ones_like(s.volumes)
                             for s in sets])
    one = average_particles(np.concatenate([s.volumes for s in sets]), poses, particle_masks=particle_fourier_mask(box),
                            voxel_size_angstrom=project.voxel, half=row_halves(table, rows), inside_masks=inside)
    scale = np.abs(one.average).max()
    for a, b in ((cut.average.average, one.average), (cut.average.half1, one.half1), (cut.average.half2, one.half2)):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale)
    with pytest.raises(Exception, match="--box"):
        run_job(sharded_average_job(str(tmp_path / "in.star"), tomograms=tomograms_from_list(d / "list.txt")),
                progress=False)

    # align: from the copick project (runs cut on the workers) and from the extracted set, the same centres
    ref, _ = load_structure_map("enolase", voxel_size_angstrom=project.voxel, box=box)
    write_mrc(tmp_path / "ref.mrc", ref, voxel_size=project.voxel)
    common = ["--reference", str(tmp_path / "ref.mrc"), "--angular-step", "45", "--refine-levels", "1",
              "--scheduler", client.scheduler.address, "--shard-size", "4"]
    assert main(["-q", "batch", "align", "--particles", str(tmp_path / "in.star"), "--copick", str(d / "config.json"),
                 "--box", str(box), "--out", str(tmp_path / "cut.star"), *common]) == 0
    assert "skipped 1 particle: tomogram 'TS_elsewhere' is not among the inputs" in capsys.readouterr().err
    assert main(["-q", "batch", "extract", "--tomogram-list", str(d / "list.txt"), "--particles",
                 str(tmp_path / "in.star"), "--box", str(box), "--out", str(tmp_path / "ext")]) == 0
    assert main(["-q", "batch", "align", "--particles", str(tmp_path / "ext" / "particles.star"),
                 "--out", str(tmp_path / "ext.star"), *common]) == 0
    a, b = (read_star(tmp_path / f)["particles"] for f in ("cut.star", "ext.star"))
    assert len(a) == len(b) == 15 and list(a["rlnTomoName"]) == list(b["rlnTomoName"])
    xyz = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]
    ori = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]
    centres = [t[xyz].to_numpy() - t[ori].to_numpy() / project.voxel for t in (a, b)]
    np.testing.assert_allclose(centres[0], centres[1], atol=1e-3)
    np.testing.assert_allclose(a[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(),
                               b[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), atol=1e-3)
    assert tomograms_from_copick(d / "config.json", runs=["TS_001"]).sources[0].kind == "copick"
    assert main(["-q", "batch", "align", "--particles", str(tmp_path / "in.star"), "--tomogram-list",
                 str(d / "list.txt"), "--out", str(tmp_path / "nobox.star"), *common]) == 2  # --box is needed
