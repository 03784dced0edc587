"""scripts/experiments.py in quick mode: runs, skips finished runs, summary agrees with runs."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location(
        "experiments", ROOT / "scripts" / "experiments.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_table3_runs_skips_when_restarted_and_summarises(tmp_path, capsys):
    experiments = load()
    argv = ["--quick", "--only", "table3", "--out", str(tmp_path / "x"),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    summary = experiments.main(argv)
    runs = sorted(p.parent.name for p in (tmp_path / "x").rglob("metrics.json"))
    assert runs == sorted(f"{name}_s0" for name in experiments.TABLE3)
    for name in experiments.TABLE3:
        metrics = json.loads(
            (tmp_path / "x" / "table3" / f"{name}_s0" / "metrics.json").read_text()
        )
        assert summary["table3"][name]["teacher_miou"] == [metrics["teacher_miou"]]
    ppl = summary["table3"]["ppl"]["mean_std"][0]
    assert f"| ppl | {100 * ppl:.2f} ± 0.00 |" in (tmp_path / "x" / "summary.md").read_text()
    capsys.readouterr()
    experiments.main(argv)  # restarted: every run is skipped
    out = capsys.readouterr().out
    assert out.count("[skip]") == len(experiments.TABLE3) and "[run]" not in out
