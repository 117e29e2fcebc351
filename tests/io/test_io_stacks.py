"""Subtomogram sets and particle-image stacks referenced by rlnImageName."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryoalign.errors import InputError
from napari_cryoalign.io import (
    VoxelSizeWarning,
    classes,
    coordinates_xyz,
    euler_deg,
    format_image_name,
    origins_angstrom,
    parse_image_name,
    read_mrc,
    read_particle_images,
    read_subtomograms,
    relocate_image_names,
    write_mrc,
    write_particle_stack,
    write_particles,
    write_subtomograms,
)

RNG = np.random.default_rng(2)


def test_parse_and_format_image_name():
    assert parse_image_name("12@stack.mrcs") == (11, "stack.mrcs")
    assert parse_image_name("000001@Extract/job1/a b.mrcs") == (0, "Extract/job1/a b.mrcs")
    assert parse_image_name("sub/vol_3.mrc") == (None, "sub/vol_3.mrc")
    assert format_image_name(0, "s.mrcs") == "000001@s.mrcs"
    assert parse_image_name(format_image_name(41, "s.mrcs")) == (41, "s.mrcs")
    for bad in ("0@s.mrcs", "", "x@s.mrcs"):
        with pytest.raises(InputError) as e:
            parse_image_name(bad, path="p.star", row=7)
        assert e.value.field == "rlnImageName" and "p.star" in str(e.value)



def test_relocate_image_names(tmp_path):
    star, out = tmp_path / "a" / "in.star", tmp_path / "b" / "c" / "out.star"
    absolute = str(tmp_path / "abs" / "v.mrc")
    names = ["sub/vol_0.mrc", "3@stacks/s.mrcs", absolute]
    assert relocate_image_names(names, star_path=star, out_path=out) == [
        "../../a/sub/vol_0.mrc", "000003@../../a/stacks/s.mrcs", "../../abs/v.mrc"]
    assert relocate_image_names(names[:2], star_path=star, out_path=star) == ["sub/vol_0.mrc", "000003@stacks/s.mrcs"]
    with pytest.raises(InputError) as e:
        relocate_image_names(["ok.mrc", "x@s.mrcs"], star_path=star, out_path=out)
    assert e.value.field == "rlnImageName" and "row 1" in str(e.value)

def test_subtomogram_set_round_trip(tmp_path):
    n, box = 4, 10
    vols = RNG.normal(size=(n, box, box, box)).astype(np.float32)
    eul = RNG.uniform(-90, 90, size=(n, 3))
    ori = RNG.normal(size=(n, 3))
    xyz = RNG.uniform(0, 50, size=(n, 3))
    star = write_subtomograms(tmp_path / "set.star", vols, voxel_size=6.7, coordinates_xyz=xyz,
                              euler_deg=eul, origins_angstrom=ori, classes=[1, 2, 2, 1])
    df = starfile.read(star, always_dict=True)["particles"]
    assert df["rlnImageName"].iloc[0] == "set_subtomograms/subtomo_000000.mrc"  # relative
    out, t = read_subtomograms(star)
    assert out.shape == (n, box, box, box) and out.dtype == np.float32
    np.testing.assert_array_equal(out, vols)
    assert t.voxel_size == pytest.approx(6.7)
    np.testing.assert_allclose(euler_deg(t), eul, atol=1e-6)
    np.testing.assert_allclose(origins_angstrom(t), ori, atol=1e-6)
    np.testing.assert_allclose(coordinates_xyz(t), xyz, atol=1e-6)
    assert classes(t).tolist() == [1, 2, 2, 1]
    # names resolve against the STAR file's folder, not the working directory
    cwd = os.getcwd()
    try:
        os.chdir("/")
        np.testing.assert_array_equal(read_subtomograms(star)[0], vols)
    finally:
        os.chdir(cwd)


def test_particle_stack_round_trip(tmp_path):
    imgs = RNG.normal(size=(7, 12, 12)).astype(np.float32)
    star = write_particle_stack(tmp_path / "parts.star", imgs, voxel_size=1.35,
                                euler_deg=RNG.uniform(0, 90, size=(7, 3)))
    df = starfile.read(star, always_dict=True)["particles"]
    assert df["rlnImageName"].tolist()[:2] == ["000001@parts.mrcs", "000002@parts.mrcs"]
    st = read_mrc(tmp_path / "parts.mrcs")
    assert st.is_stack and st.voxel_size[0] == pytest.approx(1.35)
    out, t = read_particle_images(star)
    np.testing.assert_array_equal(out, imgs)
    assert t.voxel_size == pytest.approx(1.35)


def _stack_star(tmp_path, names, extra=None):
    df = pd.DataFrame({"rlnImageName": names, **(extra or {})})
    p = tmp_path / "s.star"
    starfile.write({"particles": df}, p)
    return p


def test_particle_images_any_order_several_stacks(tmp_path):
    a = RNG.normal(size=(5, 8, 8)).astype(np.float32)
    b = RNG.normal(size=(3, 8, 8)).astype(np.float32)
    write_mrc(tmp_path / "a.mrcs", a, voxel_size=2.0)
    (tmp_path / "sub").mkdir()
    write_mrc(tmp_path / "sub" / "b.mrcs", b, voxel_size=2.0)
    star = _stack_star(tmp_path, ["3@a.mrcs", "1@sub/b.mrcs", "5@a.mrcs", "3@sub/b.mrcs", "3@a.mrcs"])
    out, _ = read_particle_images(star)
    np.testing.assert_array_equal(out, np.stack([a[2], b[0], a[4], b[2], a[2]]))


def test_particle_image_errors(tmp_path):
    write_mrc(tmp_path / "a.mrcs", np.zeros((3, 8, 8), np.float32), voxel_size=2.0)
    write_mrc(tmp_path / "c.mrcs", np.zeros((3, 9, 9), np.float32), voxel_size=2.0)
    write_mrc(tmp_path / "d.mrcs", np.zeros((3, 8, 8), np.float32), voxel_size=3.0)
    cases = [
        (["1@a.mrcs", "4@a.mrcs"], "row 1", "between 1 and 3"),
        (["1@a.mrcs", "2@missing.mrcs"], "row 1", "missing.mrcs"),
        (["1@a.mrcs", "1@c.mrcs"], "row 1", "(9, 9)"),
        (["1@a.mrcs", "1@d.mrcs"], "d.mrcs", "3 Angstrom"),
    ]
    for names, where, what in cases:
        star = tmp_path / "e.star"
        star.unlink(missing_ok=True)
        starfile.write({"particles": pd.DataFrame({"rlnImageName": names})}, star)
        with pytest.raises(InputError) as e:
            read_particle_images(star)
        msg = str(e.value)
        assert "e.star" in msg and where in msg and what in msg, msg
    star.unlink()
    starfile.write({"particles": pd.DataFrame({"rlnCoordinateX": [1.0], "rlnCoordinateY": [1.0]})}, star)
    with pytest.raises(InputError) as e:
        read_particle_images(star)
    assert e.value.field == "image_names"


def test_star_pixel_size_vs_headers(tmp_path):
    imgs = np.zeros((2, 8, 8), np.float32)
    write_mrc(tmp_path / "one.mrcs", imgs, voxel_size=1.0)  # RELION's placeholder
    write_mrc(tmp_path / "two.mrcs", imgs, voxel_size=2.0)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.7]})
    for name, ok in (("one.mrcs", True), ("two.mrcs", False)):
        star = tmp_path / f"{name}.star"
        starfile.write({"optics": optics, "particles": pd.DataFrame(
            {"rlnImageName": [f"1@{name}"], "rlnOpticsGroup": [1]})}, star)
        if ok:
            with pytest.warns(VoxelSizeWarning, match="placeholder"):
                _, t = read_particle_images(star)
            assert t.voxel_size == pytest.approx(1.7)
        else:
            with pytest.raises(InputError) as e:
                read_particle_images(star)
            assert e.value.field == "voxel_size" and "1.7" in str(e.value) and "2" in str(e.value)


def test_subtomogram_errors(tmp_path):
    write_mrc(tmp_path / "v1.mrc", np.zeros((6, 6, 6), np.float32), voxel_size=4.0)
    write_mrc(tmp_path / "v2.mrc", np.zeros((8, 8, 8), np.float32), voxel_size=4.0)
    write_mrc(tmp_path / "v3.mrc", np.zeros((6, 6, 6), np.float32), voxel_size=5.0)
    write_mrc(tmp_path / "img.mrc", np.zeros((6, 6), np.float32), voxel_size=4.0)
    cases = [
        (["v1.mrc", "v2.mrc"], "rlnImageName", "row 1"),
        (["v1.mrc", "gone.mrc"], "rlnImageName", "gone.mrc"),
        (["v1.mrc", "v3.mrc"], "voxel_size", "5 Angstrom"),
        (["v1.mrc", "img.mrc"], "rlnImageName", "(6, 6)"),
        (["v1.mrc", "2@v1.mrc"], "rlnImageName", "row 1"),
    ]
    for names, field, what in cases:
        star = tmp_path / "e.star"
        star.unlink(missing_ok=True)
        starfile.write({"particles": pd.DataFrame({"rlnImageName": names})}, star)
        with pytest.raises(InputError) as e:
            read_subtomograms(star)
        assert e.value.field == field and what in str(e.value) and "e.star" in str(e.value), str(e.value)


def test_no_pixel_size_anywhere_warns(tmp_path):
    import mrcfile

    with mrcfile.new(tmp_path / "u.mrcs") as m:  # header voxel size 0
        m.set_data(np.zeros((2, 4, 4), np.float32))
    star = _stack_star(tmp_path, ["1@u.mrcs", "2@u.mrcs"])
    with pytest.warns(VoxelSizeWarning, match="1.0"):
        _, t = read_particle_images(star)
    assert t.voxel_size == 1.0


def test_subtomograms_data_dir(tmp_path):
    (tmp_path / "data").mkdir()
    v = RNG.normal(size=(4, 4, 4)).astype(np.float32)
    write_mrc(tmp_path / "data" / "v.mrc", v, voxel_size=3.0)
    star = tmp_path / "s.star"
    starfile.write({"particles": pd.DataFrame({"rlnImageName": ["Extract/job9/v.mrc"]})}, star)
    with pytest.raises(InputError):
        read_subtomograms(star)
    out, t = read_subtomograms(star, data_dir=tmp_path / "data")  # base name in data_dir
    np.testing.assert_array_equal(out[0], v)


def test_writers_refuse_existing(tmp_path, unchanged):
    star = write_particle_stack(tmp_path / "p.star", np.zeros((2, 4, 4), np.float32), voxel_size=1.0)
    unchanged(star, tmp_path / "p.mrcs")
    with pytest.raises(InputError):
        write_particle_stack(star, np.ones((2, 4, 4), np.float32), voxel_size=1.0)
    with pytest.raises(InputError):
        write_particle_stack(tmp_path / "q.star", np.ones((2, 4, 4), np.float32), voxel_size=1.0,
                             stack_path=tmp_path / "p.mrcs")
    assert not (tmp_path / "q.star").exists()
    write_particles(tmp_path / "r.star", coordinates_xyz=np.zeros((1, 3)))
