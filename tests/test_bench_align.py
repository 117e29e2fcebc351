"""The align benchmark's docs table is printed from its JSON."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_align", ROOT / "benchmarks" / "bench_align.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(rot, n=10, pps=2.0):
    per = {k: {"rotation_error_frobenius_mean": rot / 2, "translation_error_voxels_mean": 0.1}
           for k in ("ribosome", "cct", "mtor", "ruvab", "dengue_e_fab")}
    return {"n": n, "rotation_error_frobenius_mean": rot, "rotation_error_frobenius_std": 0.5,
            "rotation_error_deg_median": 3.0, "translation_error_voxels_mean": 0.3,
            "translation_error_voxels_std": 0.2, "per_structure": per, "pairs_per_second": pps}


def test_table_has_a_line_per_snr_and_method_high_snr_first():
    bench = _bench()
    lines = bench.table({"0.1": {"exhaustive": _row(0.6), "learned": _row(1.8, pps=150.0),
                                 "throughput_ratio_learned_over_exhaustive": 75.0},
                         "100": {"exhaustive": _row(0.5)}}).splitlines()
    assert len(lines) == 5
    assert lines[2] == "| 100 | exhaustive | 10 | 0.50 ± 0.50 | 3.0 | 0.30 ± 0.20 | 0.25 / 0.10 | 2 |"
    assert lines[3].startswith("| 0.1 | exhaustive |") and lines[4].startswith("| 0.1 | learned |")
    assert lines[4].endswith("| 0.90 / 0.10 | 150 |")
