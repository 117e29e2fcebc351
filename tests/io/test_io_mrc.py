"""MRC reading and writing: round trips, conventions and every kind of bad input."""

from __future__ import annotations

import gzip
import warnings

import mrcfile
import numpy as np
import pytest

from napari_cryoalign.errors import InputError
from napari_cryoalign.io import (
    MrcHeaderWarning,
    VoxelSizeWarning,
    check_same_voxel_size,
    mrc_info,
    read_mrc,
    voxel_size_isotropic,
    write_mrc,
)
from napari_cryoalign.io import mrc as mrc_module

RNG = np.random.default_rng(0)


def _vol(shape=(6, 7, 8), dtype=np.float32):
    return RNG.normal(size=shape).astype(dtype)


# ----------------------------------------------------------------------------- round trips
def test_volume_round_trip_voxel_size_and_header(tmp_path):
    vol = _vol()
    p = write_mrc(tmp_path / "v.mrc", vol, voxel_size=(1.5, 2.0, 2.5), origin=(10, 20, 30))
    out = read_mrc(p)
    assert out.data.dtype == np.float32 and out.data.shape == (6, 7, 8)
    np.testing.assert_array_equal(out.data, vol)
    assert out.voxel_size == pytest.approx((1.5, 2.0, 2.5))
    assert out.scale == pytest.approx((2.5, 2.0, 1.5))  # napari (vz, vy, vx)
    assert not out.is_stack
    with mrcfile.open(p) as m:  # what other software sees
        assert int(m.header.ispg) == 1 and int(m.header.mz) == 6
        assert (m.header.nx, m.header.ny, m.header.nz) == (8, 7, 6)
        assert float(m.voxel_size.x) == pytest.approx(1.5)
        assert float(m.header.origin.z) == pytest.approx(30)
        assert float(m.header.dmax) == pytest.approx(vol.max())
    info = out.header_info
    assert info["origin"] == pytest.approx((10, 20, 30)) and info["mode"] == 2


def test_axis_order_zyx_is_mrcfile_order(tmp_path):
    """A voxel at numpy index [z, y, x] is column x, row y, section z of the file."""
    vol = np.zeros((5, 6, 7), np.float32)
    vol[1, 2, 3] = 1.0
    p = write_mrc(tmp_path / "v.mrc", vol, voxel_size=1.0)
    raw = mrcfile.read(p)
    assert raw[1, 2, 3] == 1.0 and raw.shape == (5, 6, 7)
    assert tuple(np.argwhere(read_mrc(p).data == 1)[0]) == (1, 2, 3)


def test_non_standard_axis_order_is_transposed_to_zyx(tmp_path):
    """mapc/mapr/maps = 3, 1, 2 (as EMD-3001): columns are z, rows x, sections y."""
    zyx = _vol((4, 5, 6))  # (z, y, x)
    stored = np.ascontiguousarray(zyx.transpose(1, 2, 0))  # (sections=y, rows=x, columns=z)
    p = tmp_path / "perm.map"
    with mrcfile.new(p) as m:
        m.set_data(stored)
        m.header.mapc, m.header.mapr, m.header.maps = 3, 1, 2
        m.voxel_size = 2.0
    out = read_mrc(p)
    np.testing.assert_array_equal(out.data, zyx)
    assert mrc_info(p)["shape"] == (4, 5, 6)
    assert mrc_info(p)["axis_order"] == (3, 1, 2)


@pytest.mark.parametrize("dtype,mode", [(np.int8, 0), (np.int16, 1), (np.uint16, 6),
                                        (np.float16, 12), (np.float32, 2)])
def test_dtypes_kept(tmp_path, dtype, mode):
    data = (RNG.integers(0, 100, size=(3, 4, 5))).astype(dtype)
    p = write_mrc(tmp_path / "d.mrc", data, voxel_size=3.0)
    assert mrc_info(p)["mode"] == mode
    raw = read_mrc(p, raw=True)
    assert raw.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(raw.data, data)
    f = read_mrc(p)
    assert f.data.dtype == np.float32
    np.testing.assert_array_equal(f.data, data.astype(np.float32))


def test_float64_and_torch_written_as_float32(tmp_path):
    torch = pytest.importorskip("torch")
    data = _vol().astype(np.float64)
    p = write_mrc(tmp_path / "f.mrc", data, voxel_size=1.0)
    assert mrc_info(p)["mode"] == 2
    np.testing.assert_allclose(read_mrc(p).data, data, rtol=1e-6)
    p2 = write_mrc(tmp_path / "t.mrc", torch.from_numpy(data.astype(np.float32)), voxel_size=1.0)
    np.testing.assert_array_equal(read_mrc(p2).data, data.astype(np.float32))


@pytest.mark.parametrize("name", ["s.mrcs", "s.st", "s.ali"])
def test_stack_round_trip(tmp_path, name):
    stack = _vol((5, 8, 8))
    p = write_mrc(tmp_path / name, stack, voxel_size=2.5)
    with mrcfile.open(p) as m:
        assert int(m.header.ispg) == 0 and int(m.header.mz) == 1 and m.is_image_stack()
    out = read_mrc(p)
    assert out.is_stack and out.data.shape == (5, 8, 8)
    assert out.voxel_size == pytest.approx((2.5, 2.5, 2.5))
    np.testing.assert_array_equal(out.data, stack)


def test_stack_flag_explicit_and_from_header(tmp_path):
    p = write_mrc(tmp_path / "s.mrc", _vol((3, 4, 4)), voxel_size=1.0, is_stack=True)
    assert read_mrc(p).is_stack  # ispg 0 in a .mrc
    p = write_mrc(tmp_path / "v.mrcs", _vol((3, 4, 4)), voxel_size=1.0, is_stack=False)
    assert read_mrc(p).is_stack  # the extension says stack
    assert not read_mrc(p, is_stack=False).is_stack


def test_single_image_and_one_image_stack(tmp_path):
    img = _vol((9, 11))
    p = write_mrc(tmp_path / "i.mrc", img, voxel_size=(0.8, 0.8, 1.0))
    out = read_mrc(p)
    assert out.data.shape == (9, 11) and not out.is_stack and out.scale == pytest.approx((0.8, 0.8))
    p = write_mrc(tmp_path / "one.mrcs", img[None], voxel_size=0.8)
    out = read_mrc(p)
    assert out.is_stack and out.data.shape == (1, 9, 11)


@pytest.mark.parametrize("suffix,magic", [(".mrc.gz", b"\x1f\x8b"), (".map.bz2", b"BZh")])
def test_compressed_round_trip(tmp_path, suffix, magic):
    vol = _vol()
    p = write_mrc(tmp_path / f"c{suffix}", vol, voxel_size=4.0)
    assert p.read_bytes()[:len(magic)] == magic
    out = read_mrc(p, mmap=True)  # compressed files are read, never mapped
    assert not isinstance(out.data, np.memmap)
    np.testing.assert_array_equal(out.data, vol)
    assert out.voxel_size == pytest.approx((4.0,) * 3)
    assert mrc_info(p)["compression"] == {".mrc.gz": "gzip", ".map.bz2": "bzip2"}[suffix]


def test_memory_map(tmp_path, monkeypatch):
    vol = _vol((8, 16, 16))
    p = write_mrc(tmp_path / "big.mrc", vol, voxel_size=1.0)
    out = read_mrc(p, mmap=True)
    assert isinstance(out.data, np.memmap) and not out.data.flags.writeable
    np.testing.assert_array_equal(out.data, vol)
    assert out.header_info["memory_mapped"]
    assert not isinstance(read_mrc(p).data, np.memmap)  # small: read
    monkeypatch.setattr(mrc_module, "MMAP_THRESHOLD_BYTES", 1000)
    assert isinstance(read_mrc(p).data, np.memmap)  # "auto" maps files above the threshold


def test_write_refuses_to_clobber_and_is_atomic(tmp_path):
    p = write_mrc(tmp_path / "v.mrc", _vol(), voxel_size=1.0)
    before = p.read_bytes()
    with pytest.raises(InputError) as e:
        write_mrc(p, _vol(), voxel_size=1.0)
    assert e.value.field == "output"
    bad = _vol()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError):
        write_mrc(p, bad, voxel_size=1.0, overwrite=True)
    assert p.read_bytes() == before
    new = _vol()
    write_mrc(p, new, voxel_size=1.0, overwrite=True)
    np.testing.assert_array_equal(read_mrc(p).data, new)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["v.mrc"]


@pytest.mark.parametrize("kwargs,field", [
    (dict(data=np.zeros((2, 2, 2, 2), np.float32), voxel_size=1.0), "data"),
    (dict(data=np.zeros((3, 3), np.complex64), voxel_size=1.0), "data"),
    (dict(data=np.zeros((3, 3), np.float32), voxel_size=0.0), "voxel_size"),
    (dict(data=np.zeros((3, 3), np.float32), voxel_size=(1.0, 2.0)), "voxel_size"),
    (dict(data=np.zeros((3, 3), np.float32), voxel_size=float("nan")), "voxel_size"),
])
def test_write_bad_input(tmp_path, kwargs, field):
    with pytest.raises(InputError) as e:
        write_mrc(tmp_path / "x.mrc", kwargs.pop("data"), **kwargs)
    assert e.value.field == field and "x.mrc" in str(e.value)
    assert not (tmp_path / "x.mrc").exists()


# ----------------------------------------------------------------------------- voxel size
def test_zero_voxel_size_warns_and_uses_one(tmp_path):
    p = tmp_path / "z.mrc"
    with mrcfile.new(p) as m:
        m.set_data(_vol())
        m.voxel_size = 0.0
    with pytest.warns(VoxelSizeWarning, match="1.0"):
        out = read_mrc(p)
    assert out.voxel_size == (1.0, 1.0, 1.0)
    info = mrc_info(p)
    assert info["voxel_size_header"] == (0.0, 0.0, 0.0) and info["voxel_size"] == (1.0, 1.0, 1.0)
    assert info["voxel_size_unset"]


def test_image_with_zero_z_voxel_size_does_not_warn(tmp_path):
    p = tmp_path / "img.mrc"
    with mrcfile.new(p) as m:
        m.set_data(_vol((6, 6)))
        m.voxel_size = (1.2, 1.2, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_mrc(p)
    assert out.voxel_size == pytest.approx((1.2, 1.2, 1.2))
    assert not mrc_info(p)["voxel_size_unset"]


def test_voxel_size_isotropic_and_same(tmp_path):
    assert voxel_size_isotropic((2.0, 2.0, 2.001)) == 2.0
    with pytest.raises(InputError) as e:
        voxel_size_isotropic((2.0, 2.0, 2.1), path="t.mrc")
    assert e.value.field == "voxel_size" and "t.mrc" in str(e.value) and "2.1" in str(e.value)
    a = read_mrc(write_mrc(tmp_path / "a.mrc", _vol(), voxel_size=5.0))
    b = read_mrc(write_mrc(tmp_path / "b.mrc", _vol(), voxel_size=5.4))
    img = read_mrc(write_mrc(tmp_path / "i.mrc", _vol((4, 4)), voxel_size=(5.0, 5.0, 9.0)))
    assert voxel_size_isotropic(img) == 5.0  # images: only x and y count
    assert check_same_voxel_size(a, 5.002) == 5.0
    with pytest.raises(InputError) as e:
        check_same_voxel_size(a, b)
    msg = str(e.value)
    assert "a.mrc" in msg and "b.mrc" in msg and "5.4" in msg and e.value.field == "voxel_size"


# ----------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(InputError) as e:
        read_mrc(tmp_path / "nope.mrc")
    assert e.value.field == "path" and "nope.mrc" in str(e.value)


@pytest.mark.parametrize("content", [b"hello, not an MRC file\n" * 3, b"\x00" * 10, b"x" * 5000])
def test_not_an_mrc_file(tmp_path, content):
    p = tmp_path / "bad.mrc"
    p.write_bytes(content)
    with pytest.raises(InputError) as e:
        read_mrc(p)
    assert e.value.field == "header" and "bad.mrc" in str(e.value) and "MRC" in str(e.value)
    with pytest.raises(InputError):
        mrc_info(p)


def test_truncated_file(tmp_path, unchanged):
    p = write_mrc(tmp_path / "v.mrc", _vol((10, 10, 10)), voxel_size=1.0)
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(p.read_bytes()[:-100])
    unchanged(cut)
    for mmap in (False, True):
        with pytest.raises(InputError) as e:
            read_mrc(cut, mmap=mmap)
        assert e.value.field == "data" and "truncated" in str(e.value) and "cut.mrc" in str(e.value)
    gz = tmp_path / "cut.mrc.gz"
    gz.write_bytes(gzip.compress(p.read_bytes())[:-200])
    with pytest.raises(InputError) as e:
        read_mrc(gz)
    assert e.value.field == "data"


def _write_raw(path, data, voxel_size=1.0):
    """Write with mrcfile directly (bypassing write_mrc's checks), quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.new(path) as m:
            m.set_data(data)
            m.voxel_size = voxel_size


def _set_mode(path, mode):
    b = bytearray(path.read_bytes())
    b[12:16] = np.int32(mode).tobytes()
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("mode", [3, 4, 7, 9])
def test_unsupported_mode(tmp_path, mode):
    p = write_mrc(tmp_path / "m.mrc", _vol(), voxel_size=1.0)
    if mode == 4:  # a real complex64 file from mrcfile
        p.unlink()
        with mrcfile.new(p) as m:
            m.set_data(np.zeros((4, 4, 4), np.complex64))
    else:
        _set_mode(p, mode)
    with pytest.raises(InputError) as e:
        read_mrc(p)
    assert e.value.field == "mode" and f"mode {mode}" in str(e.value) and "m.mrc" in str(e.value)


def test_volume_stack_rejected(tmp_path):
    p = tmp_path / "vs.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(InputError) as e:
        read_mrc(p)
    assert e.value.field == "ispg"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path, bad):
    vol = _vol()
    vol[2, 3, 4] = bad
    p = tmp_path / "n.mrc"
    _write_raw(p, vol)
    with pytest.raises(InputError) as e:
        read_mrc(p)
    assert e.value.field == "data" and "(2, 3, 4)" in str(e.value) and "n.mrc" in str(e.value)
    assert read_mrc(p, validate=False).data.shape == vol.shape


def test_non_finite_found_in_later_chunk_of_memory_map(tmp_path, monkeypatch):
    vol = _vol((20, 8, 8))
    vol[17, 1, 2] = np.nan
    vol[19, 0, 0] = np.inf
    p = tmp_path / "n.mrc"
    _write_raw(p, vol)
    monkeypatch.setattr(mrc_module, "_CHUNK_ELEMENTS", 64)  # one section per chunk
    with pytest.raises(InputError) as e:
        read_mrc(p, mmap=True)
    assert "2 non-finite" in str(e.value) and "(17, 1, 2)" in str(e.value)


def test_missing_map_id_read_permissively_with_warning(tmp_path):
    vol = _vol()
    p = write_mrc(tmp_path / "old.mrc", vol, voxel_size=2.0)
    b = bytearray(p.read_bytes())
    b[208:212] = b"\x00\x00\x00\x00"  # no 'MAP ' id, as some old programs write
    p.write_bytes(bytes(b))
    with pytest.warns(MrcHeaderWarning, match="Map ID"):
        out = read_mrc(p)
    np.testing.assert_array_equal(out.data, vol)


def test_inputs_never_modified_by_reading(tmp_path, unchanged):
    p = write_mrc(tmp_path / "v.mrc", _vol(), voxel_size=1.0)
    unchanged(p)
    read_mrc(p)
    read_mrc(p, mmap=True)
    mrc_info(p)


def test_mrc_info_reads_header_only(tmp_path):
    vol = _vol((3, 4, 5))
    p = write_mrc(tmp_path / "v.mrc", vol, voxel_size=(1.0, 2.0, 3.0))
    info = mrc_info(p)
    assert info["shape"] == (3, 4, 5) and info["axes"] == "zyx" and info["dtype"] == "float32"
    assert info["voxel_size"] == pytest.approx((1.0, 2.0, 3.0))
    assert info["min"] == pytest.approx(vol.min()) and info["max"] == pytest.approx(vol.max())
    assert info["mean"] == pytest.approx(vol.mean(), abs=1e-6)
    assert info["is_stack"] is False and info["extended_header_type"] == ""
    assert info["labels"][0] == "napari-cryoalign"
