"""The cluster benchmark's bookkeeping: merging runs done side by side and the docs table."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_cluster", ROOT / "benchmarks" / "bench_cluster.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(snr, method, n_per_class, acc, mcf=0.5):
    return {"snr": snr, "method": method, "n_per_class": n_per_class, "n": 5 * n_per_class, "accuracy": acc,
            "per_structure": {k: acc for k in ("ribosome", "cct", "mtor", "ruvab", "dengue_e_fab")},
            "settings": {"min_class_fraction": mcf}, "seconds": 60.0 * n_per_class,
            "seconds_per_1000_extrapolated": 12000.0, "within_class_alignment": {"n": 0}}


def test_merge_replaces_rows_with_the_same_key_and_keeps_the_others(bench):
    old = {"protocol": {"n_per_class": 20}, "commands": ["a"],
           "results": [_row(0.03, "joint", 20, 0.9), _row(0.05, "joint", 20, 0.99), _row(0.03, "classical", 20, 0.5)]}
    new = {"protocol": {"n_per_class": 20}, "commands": ["b"], "results": [_row(0.03, "joint", 20, 0.95)]}
    merged = bench.merge_results(old, new)
    assert [(r["snr"], r["method"], r["accuracy"]) for r in merged["results"]] == [
        (0.05, "joint", 0.99), (0.03, "classical", 0.5), (0.03, "joint", 0.95)]
    assert merged["commands"] == ["a", "b"]
    # another size or threshold is another row
    bigger = {"protocol": {"n_per_class": 100}, "commands": ["c"],
              "results": [_row(0.03, "joint", 100, 0.97), _row(0.03, "joint", 20, 0.8, mcf=0.2)]}
    assert len(bench.merge_results(merged, bigger)["results"]) == 5
    # so is another number of globally searched rounds
    glob = _row(0.03, "joint", 20, 0.9)
    glob["settings"]["global_rounds"] = 3
    assert len(bench.merge_results(merged, {"results": [glob]})["results"]) == 4
    # and another re-seeding rule (rows without one used "worst")
    split = _row(0.03, "joint", 20, 0.9)
    split["settings"]["reseed"] = "split"
    assert len(bench.merge_results(merged, {"results": [split]})["results"]) == 4
    split["settings"]["reseed"] = "worst"
    assert len(bench.merge_results(merged, {"results": [split]})["results"]) == 3


def test_table_has_one_line_per_row_sorted_by_snr(bench):
    lines = bench.table([_row(0.03, "joint", 100, 0.97), _row(0.1, "classical", 20, 0.64)]).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| 0.1 | classical | - | - | 100 | **64 %** |")
    assert lines[3].startswith("| 0.03 | joint | 0.5, worst | ? (1) | 500 | **97 %** | 97, 97, 97, 97, 97 | - |")
    row = dict(_row(0.03, "joint", 40, 0.9), iterations=[{}] * 6)
    row["settings"].update(iterations=6, global_rounds=6)
    assert "| 0.03 | joint | 0.5, worst | 6 of 6 (6) | 200 | **90 %** |" in bench.table([row])
    row["settings"]["reseed"] = "split"
    assert "| 0.03 | joint | 0.5, split | 6 of 6 (6) | 200 | **90 %** |" in bench.table([row])


def test_search_band_seed_and_structures_make_other_rows(bench):
    base = _row(0.05, "joint", 50, 1.0)
    merged = bench.merge_results({"results": [base]}, {"results": []})
    for key, value in (("search_frequency", 0.25), ("seed", 2)):
        other = _row(0.05, "joint", 50, 1.0)
        other["settings"][key] = value
        assert len(bench.merge_results(merged, {"results": [other]})["results"]) == 2
    same = _row(0.05, "joint", 50, 0.9)
    same["settings"]["search_frequency"] = 0.5  # rows without a band searched the full box
    assert len(bench.merge_results(merged, {"results": [same]})["results"]) == 1
    four = dict(_row(0.05, "joint", 50, 1.0), structures=["ribosome", "cct", "mtor", "ruvab"])
    assert len(bench.merge_results(merged, {"results": [four]})["results"]) == 2


def test_speed_table_shows_accuracy_fsc_and_time(bench):
    row = dict(_row(0.05, "joint", 50, 1.0), label="defaults", iterations=[{}, {}], cpu_seconds=150.0,
               load_average_before=[1.0, 1.0, 1.0],
               per_structure={"ribosome": 1.0, "cct": 1.0},
               averages_vs_truth_angstrom={"ribosome": {"fsc0143": 32.4}, "cct": {"fsc0143": 35.0}})
    row["n"] = 100
    lines = bench.speed_table([row]).splitlines()
    assert len(lines) == 3
    assert lines[2] == ("| defaults | 0.05 | 0 | 100 (2) | **100.0 %** | ribosome 100, cct 100 | 32, 35 | 2 | "
                        "3000 (150) | 1.0 | 1.50 |")
