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


def test_batch_extract_then_average(project, tmp_path, capsys):
    d, box = project.d, 16
    rng = np.random.default_rng(5)
    rows = []
    for name in project.runs:
        xyz = np.column_stack([rng.uniform(2, 62, 5), rng.uniform(2, 62, 5), rng.uniform(3, 13, 5)])
        for c in xyz:
            rows.append({"rlnTomoName": name, "rlnCoordinateX": c[0], "rlnCoordinateY": c[1], "rlnCoordinateZ": c[2],
                         "rlnAngleRot": 10.0, "rlnAngleTilt": 20.0, "rlnAnglePsi": 30.0, "rlnOriginXAngst": 5.0,
                         "rlnOriginYAngst": -3.0, "rlnOriginZAngst": 0.0, "rlnClassNumber": 2})
    rows.append({**rows[0], "rlnTomoName": "TS_elsewhere"})  # a tomogram not in the batch: not extracted
    table = pd.DataFrame(rows)
    write_star(tmp_path / "in.star", {"particles": table})
    out = tmp_path / "ext"
    assert main(["-q", "batch", "extract", "--tomograms", str(d / "tomograms.star"), "--particles",
                 str(tmp_path / "in.star"), "--box", str(box), "--out", str(out)]) == 1  # TS_missing fails
    assert "3 done" in capsys.readouterr().out
    merged = load_particle_set(out / "particles.star")
    assert len(merged.rows) == 15 and merged.volumes.shape[1:] == (box,) * 3
    data = merged.table.data
    assert list(data["rlnTomoName"]) == [r["rlnTomoName"] for r in rows[:15]]
    assert (data["rlnClassNumber"] == 2).all() and np.allclose(data["rlnAngleTilt"], 20.0)
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
