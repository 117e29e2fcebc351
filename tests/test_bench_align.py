"""The align benchmark's docs table is printed from its JSON; the learned curve's projection reads the user's-path
benchmark."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """benchmarks/NAME.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench():
    return _script("bench_align")


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


def test_projection_reads_the_user_path_and_finds_where_a_log_linear_decline_meets_the_goal(tmp_path):
    import json

    import numpy as np

    proj = _script("project_learned_curve")
    files = []
    for steps in (1000, 4000, 16000):  # F = 3 - 0.25 ln t: 0.62 at t = exp(9.52)
        path = tmp_path / f"b{steps}.json"
        rows = [{"snr": 0.1, "method": "learned (weights w.pt)", "rotation_frobenius_mean": 3 - 0.25 * np.log(steps)},
                {"snr": 0.1, "method": "learned+refine (weights w.pt)", "rotation_frobenius_mean": 0.06},
                {"snr": 0.05, "method": "learned (weights w.pt)", "rotation_frobenius_mean": 2.0}]
        path.write_text(json.dumps({"summary": rows}))
        files.append(f"{path}:{steps}")
    t, f = proj.load_bench(files[::-1])
    assert list(t) == [1000, 4000, 16000] and np.isclose(f[0], 3 - 0.25 * np.log(1000))
    fit = proj.fits(t, f, 0.62)["log_linear"]
    assert np.isclose(fit["steps_to_goal"], np.exp((3 - 0.62) / 0.25), rtol=1e-6)
    out = tmp_path / "p.json"
    bench_args = [x for spec in files for x in ("--bench", spec)]
    assert proj.main([*bench_args, "--pace", "2", "--bootstrap", "50", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert np.isclose(res["fits"]["log_linear"]["cpu_hours_one_thread"], np.exp((3 - 0.62) / 0.25) / 2 / 3600)
