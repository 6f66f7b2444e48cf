"""`velcro demo --quick` runs end to end on the shipped weights and real data."""

import json
import subprocess
import sys


def test_demo_quick_writes_a_complete_report(tmp_path):
    out = tmp_path / "report"
    res = subprocess.run(
        [sys.executable, "-m", "velcro_ref.cli", "demo", "--quick", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert (out / "summary.md").read_text().startswith("Ratios")
    assert report["models"]
    for name, entry in report["models"].items():
        assert entry["tasks"]
        for task, r in entry["tasks"].items():
            assert (out / f"sweep_{name}_{task}.png").stat().st_size > 0
            assert (out / f"locality_{name}_{task}.png").stat().st_size > 0
            for sweep in r["sweeps"].values():
                csrs = [p["csr"] for p in sweep["points"]]
                assert csrs[0] == 0.0 and csrs == sorted(csrs) and csrs[-1] > 0
                assert sweep["n_eval_images"] > 0
