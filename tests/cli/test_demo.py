"""`cryoalign demo` end to end: every step runs, files exist, the truth-aligned averages are good."""

import json

import pytest

from napari_cryoalign.cli import main


@pytest.mark.slow
def test_demo_runs_and_summarises(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "napari-cryoalign demo: 9 steps" in text and str(out) in text
    summary = json.loads((out / "summary.json").read_text())
    assert [s["title"] for s in summary["steps"]][0].startswith("Simulate a crowded tomogram")
    for step in summary["steps"]:
        for path in step["files"].values():
            assert (out / path).exists() or __import__("pathlib").Path(path).exists(), path
    sub = summary["steps"][1]["numbers"]
    for name, numbers in sub.items():
        # aligned with the angles/origins read back from STAR: the averages look like the references
        assert numbers["cc_with_reference"] > 0.6, (name, numbers)
        assert numbers["fsc_0.143_angstrom"] < 45.0, (name, numbers)
    steps = {s["title"]: s["numbers"] for s in summary["steps"]}
    pick = next(v for k, v in steps.items() if k.startswith("Pick"))
    assert pick["recall"] >= 0.5 and pick["picks"] > 0, pick
    align = next(v for k, v in steps.items() if k.startswith("Align"))
    assert align["median_rotation_error_deg"] < 10 and align["median_shift_error_voxels"] < 1.0, align
    markers = next(v for k, v in steps.items() if k.startswith("Find gold"))
    assert markers["missed"] == 0 and markers["max_error_px"] < 0.3, markers
    cluster = next(v for k, v in steps.items() if k.startswith("Cluster"))
    assert cluster["accuracy"] >= 0.9, cluster
    rec = next(v for k, v in steps.items() if k.startswith("Reconstruct"))
    assert rec["fsc_0.143_angstrom"] < 40.0 and rec["cc_with_truth"] > 0.5, rec
    # the demo never overwrites
    assert main(["-q", "demo", "--out", str(out)]) == 2
