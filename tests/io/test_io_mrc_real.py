"""MRC readers on real files written by other software (EMDB, FEI/EPU, RELION/cryoDRGN).

The files come from mrcfile's and cryoDRGN's source distributions, fetched by
scripts/fetch_test_data.sh. Expected values are independent of this project: the EMDB entry
(EMD-3197: 20^3 voxels of 11.4 A; EMD-3001: P21 microED map stored with mapc/mapr/maps =
3, 1, 2) and mrcfile's own reading of the voxels.
"""

from __future__ import annotations

import shutil
import warnings

import mrcfile
import numpy as np
import pytest

from napari_cryoalign.errors import InputError
from napari_cryoalign.io import MrcHeaderWarning, VoxelSizeWarning, mrc_info, read_mrc, write_mrc


def _raw(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True) as m:
            return np.array(m.data)


@pytest.mark.parametrize("name", ["EMD-3197.map", "EMD-3197.map.bz2", "emd_3197.map.gz"])
def test_emd_3197(mrcfile_data, name, unchanged):
    p = mrcfile_data / name
    unchanged(p)
    vol = read_mrc(p)
    assert vol.data.shape == (20, 20, 20) and vol.data.dtype == np.float32
    assert vol.voxel_size == pytest.approx((11.4, 11.4, 11.4))
    assert not vol.is_stack
    np.testing.assert_array_equal(vol.data, _raw(mrcfile_data / "EMD-3197.map"))
    # header statistics written by the EMDB agree with the voxels
    assert vol.header_info["min"] == pytest.approx(vol.data.min())
    assert vol.header_info["max"] == pytest.approx(vol.data.max())
    assert vol.header_info["mean"] == pytest.approx(vol.data.mean(), abs=1e-5)


@pytest.mark.parametrize("name", ["EMD-3001.map", "EMD-3001.map.bz2", "emd_3001.map.gz"])
def test_emd_3001_axis_order(mrcfile_data, name):
    """Stored as sections = y, rows = x, columns = z (mapc/mapr/maps = 3, 1, 2): read as
    (z, y, x) with the anisotropic voxel size cella / mx along each axis."""
    p = mrcfile_data / name
    vol = read_mrc(p)
    raw = _raw(mrcfile_data / "EMD-3001.map")  # (sections, rows, columns) = (y, x, z)
    assert raw.shape == (25, 43, 73)
    assert vol.data.shape == (73, 25, 43)
    np.testing.assert_array_equal(vol.data, raw.transpose(2, 0, 1))
    assert vol.voxel_size == pytest.approx((17.93 / 40, 4.71 / 12, 33.03 / 72), rel=1e-5)
    info = mrc_info(p)
    assert info["axis_order"] == (3, 1, 2) and info["shape"] == (73, 25, 43)
    assert info["ispg"] == 4
    mm = read_mrc(mrcfile_data / "EMD-3001.map", mmap=True)
    np.testing.assert_array_equal(np.asarray(mm.data), vol.data)


def test_fei_extended_header_image(mrcfile_data, unchanged):
    p = mrcfile_data / "fei-extended.mrc"
    unchanged(p)
    info = mrc_info(p)
    assert info["extended_header_type"] == "FEI1" and info["extended_header_bytes"] == 786432
    assert info["mode"] == 6 and info["shape"] == (3838, 3710) and info["axes"] == "yx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid MRC2014 file: no warning at all
        raw = read_mrc(p, raw=True)
    assert raw.data.dtype == np.uint16
    np.testing.assert_array_equal(raw.data, _raw(p))
    assert raw.voxel_size[:2] == pytest.approx((0.85377, 0.85377), rel=1e-4)
    assert raw.voxel_size[2] == pytest.approx(raw.voxel_size[0])  # images: z takes x
    f = read_mrc(p, mmap=True)  # uint16 -> float32 in memory
    assert f.data.dtype == np.float32 and f.data.max() == 45804.0 and f.data.min() == 302.0


def test_epu_fei2_image(mrcfile_data):
    p = mrcfile_data / "epu2.9_example.mrc"
    info = mrc_info(p)
    assert info["extended_header_type"] == "FEI2" and info["shape"] == (4096, 4096)
    vol = read_mrc(p, mmap=True, raw=True)
    assert isinstance(vol.data, np.memmap) and vol.data.dtype == np.uint16
    assert vol.voxel_size[0] == pytest.approx(0.66655, rel=1e-4)
    assert float(vol.data.mean()) == pytest.approx(info["mean"], rel=1e-6)


def test_png_is_not_an_mrc(mrcfile_data):
    with pytest.raises(InputError) as e:
        read_mrc(mrcfile_data / "emd_3197.png")
    assert e.value.field == "header" and "emd_3197.png" in str(e.value)


def test_truncated_real_map(mrcfile_data, tmp_path):
    for name, cut in (("EMD-3197.map", 1000), ("emd_3197.map.gz", 5000), ("EMD-3197.map.bz2", 5000)):
        data = (mrcfile_data / name).read_bytes()
        p = tmp_path / f"cut-{name}"
        p.write_bytes(data[:-cut])
        with pytest.raises(InputError) as e:
            read_mrc(p)
        assert e.value.field == "data" and p.name in str(e.value)


def test_cryodrgn_volume_and_stacks(cryodrgn_data):
    vol = read_mrc(cryodrgn_data / "hand-vol.mrc")
    assert vol.data.ndim == 3 and np.isfinite(vol.data).all()
    np.testing.assert_array_equal(vol.data, _raw(cryodrgn_data / "hand-vol.mrc"))
    # a RELION-style .mrcs without the 'MAP ' id: read permissively, with a warning
    with pytest.warns(MrcHeaderWarning):
        st = read_mrc(cryodrgn_data / "relion31.mrcs")
    assert st.is_stack and st.data.shape == (5, 256, 256)
    # an old particle stack (.mrc, ispg 1) without voxel size
    with pytest.warns(VoxelSizeWarning):
        st = read_mrc(cryodrgn_data / "empiar_10076_7.mrc", is_stack=True)
    assert st.is_stack and st.data.shape == (7, 320, 320) and st.voxel_size == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("suffix", [".map", ".map.gz", ".mrc.bz2"])
def test_real_map_round_trip(mrcfile_data, tmp_path, suffix):
    vol = read_mrc(mrcfile_data / "EMD-3001.map")
    out = write_mrc(tmp_path / f"copy{suffix}", vol.data, voxel_size=vol.voxel_size)
    back = read_mrc(out)
    np.testing.assert_array_equal(back.data, vol.data)
    assert back.voxel_size == pytest.approx(vol.voxel_size, rel=1e-6)
    assert mrc_info(out)["axis_order"] == (1, 2, 3)


def test_read_copy_of_real_file_keeps_source(mrcfile_data, tmp_path, unchanged):
    src = tmp_path / "fei.mrc"
    shutil.copy(mrcfile_data / "fei-extended.mrc", src)
    unchanged(src)
    img = read_mrc(src)
    with pytest.raises(InputError):  # never overwritten by default
        write_mrc(src, img.data, voxel_size=img.voxel_size)
