"""IMOD .tlt tilt angles and acquisition-order files."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoalign.errors import InputError
from napari_cryoalign.io import read_acquisition_order, read_tlt, write_acquisition_order, write_tlt


def test_tlt_round_trip_imod_format(tmp_path):
    angles = np.arange(-60, 61, 3, dtype=float)
    p = write_tlt(tmp_path / "ts.tlt", angles)
    lines = p.read_text().splitlines()
    assert lines[0] == " -60.00" and lines[20] == "   0.00" and len(lines) == 41  # IMOD's %7.2f
    np.testing.assert_array_equal(read_tlt(p, n_tilts=41), angles)


def test_tlt_keeps_precision(tmp_path):
    angles = np.array([-59.98731, 0.001234, 45.5])
    p = write_tlt(tmp_path / "ts.tlt", angles)
    np.testing.assert_allclose(read_tlt(p), angles, atol=1e-6)


def test_tlt_written_by_imod_style_text(tmp_path):
    p = tmp_path / "imod.tlt"
    p.write_text("  -54.00\n  -51.00\r\n\n   -48.0\n# comment\n  3e1\n")  # blank lines, CRLF
    np.testing.assert_array_equal(read_tlt(p), [-54.0, -51.0, -48.0, 30.0])


@pytest.mark.parametrize("text,field,what", [
    ("1.0\nabc\n3.0\n", "line 2", "'abc'"),
    ("1.0\n2.0 3.0\n", "line 2", "'2.0 3.0'"),
    ("1.0\n\n95.0\n", "line 3", "95.0"),
    ("nan\n", "line 1", "nan"),
    ("\n\n", "n_tilts", "empty"),
])
def test_tlt_bad_lines(tmp_path, text, field, what):
    p = tmp_path / "bad.tlt"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        read_tlt(p)
    assert e.value.field == field and what in str(e.value) and "bad.tlt" in str(e.value)


def test_tlt_count_mismatch(tmp_path):
    p = write_tlt(tmp_path / "ts.tlt", [-3.0, 0.0, 3.0])
    with pytest.raises(InputError) as e:
        read_tlt(p, n_tilts=41)
    assert e.value.field == "n_tilts" and "41" in str(e.value) and "3 angles" in str(e.value)


def test_tlt_write_bad_input_and_no_clobber(tmp_path, unchanged):
    for bad in ([], [[1.0, 2.0]], [0.0, np.nan], [100.0]):
        with pytest.raises(InputError) as e:
            write_tlt(tmp_path / "x.tlt", bad)
        assert e.value.field == "angles"
    assert not (tmp_path / "x.tlt").exists()
    p = write_tlt(tmp_path / "a.tlt", [0.0])
    unchanged(p)
    with pytest.raises(InputError) as e:
        write_tlt(p, [1.0])
    assert e.value.field == "output"


def test_tlt_missing_or_binary(tmp_path):
    with pytest.raises(InputError) as e:
        read_tlt(tmp_path / "none.tlt")
    assert e.value.field == "path"
    p = tmp_path / "bin.tlt"
    p.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(InputError) as e:
        read_tlt(p)
    assert e.value.field == "format"


def test_acquisition_order_round_trip(tmp_path):
    # dose-symmetric order of a 7-image stack (stack index 3 is 0 degrees)
    order = np.array([3, 4, 2, 1, 5, 6, 0])
    p = write_acquisition_order(tmp_path / "order.txt", order)
    assert p.read_text() == "3\n4\n2\n1\n5\n6\n0\n"
    got = read_acquisition_order(p, n_tilts=7)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, order)


@pytest.mark.parametrize("text,field,what", [
    ("0\n1\n1\n", "order", "repeated [1], missing [2]"),
    ("0\n1\n", "order", "2 indices"),
    ("0\n1\n3\n", "line 3", "between 0 and 2"),
    ("0\n1.5\n2\n", "line 2", "'1.5'"),
    ("0\nx\n2\n", "line 2", "'x'"),
])
def test_acquisition_order_bad(tmp_path, text, field, what):
    p = tmp_path / "o.txt"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        read_acquisition_order(p, n_tilts=3)
    assert e.value.field == field and what in str(e.value), str(e.value)


def test_acquisition_order_write_refuses_non_permutation(tmp_path):
    for bad in ([0, 0, 1], [1, 2, 3], [], [0.5, 1]):
        with pytest.raises(InputError) as e:
            write_acquisition_order(tmp_path / "o.txt", bad)
        assert e.value.field == "order"
    assert not (tmp_path / "o.txt").exists()
