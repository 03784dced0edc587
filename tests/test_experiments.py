"""scripts/experiments.py in quick mode: runs, skips finished runs, summary agrees with runs."""

import json
from pathlib import Path

import pytest
from helpers import load_repo_script

ROOT = Path(__file__).resolve().parents[1]


def load():
    return load_repo_script("scripts/experiments.py")


@pytest.mark.slow
def test_quick_table3_runs_skips_when_restarted_and_summarises(tmp_path, capsys):
    experiments = load()
    argv = ["--quick", "--only", "table3", "--jobs", "1", "--out", str(tmp_path / "x"),
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


def test_demo_budget_runs_use_the_demo_config_and_reach_the_summary(tmp_path):
    experiments = load()
    runs = dict(experiments.plan([3, 4], ["demo_budget"]))
    assert list(runs) == [f"demo_budget/{n}_s3" for n in ("ppl", "baseline", "sup_only")]
    for name, overrides in runs.items():
        method = name.split("/")[1][: -len("_s3")]
        # no budget override: the demo's 80 x 60 steps and 10 warm-up epochs apply
        assert overrides == [*experiments.TABLE3[method], "seed=3"]
    short = dict(experiments.plan([3], ["table3"]))["table3/ppl_s3"]
    assert "epochs=20" in short and "warmup_epochs=4" in short
    for k, name in enumerate(("sup_only", "baseline", "ppl")):
        folder = tmp_path / "demo_budget" / f"{name}_s3"
        folder.mkdir(parents=True)
        metrics = {"teacher_miou": 0.1 + 0.1 * k, "student_miou": 0.15 + 0.1 * k}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    summary = experiments.summarise(tmp_path, [3])
    assert summary["demo_budget"]["baseline"] == {"teacher_miou": 0.2, "student_miou": 0.25}
    text = (tmp_path / "summary.md").read_text()
    assert "| sup_only | 10.00 | 15.00 |" in text and "| ppl | 30.00 | 35.00 |" in text


@pytest.mark.slow
def test_parallel_jobs_run_in_processes_and_reach_the_summary(tmp_path, capsys):
    experiments = load()
    argv = ["--quick", "--only", "demo_budget", "--jobs", "2", "--out", str(tmp_path / "x"),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    summary = experiments.main(argv)
    out = capsys.readouterr().out
    assert out.count("[done]") == 3
    for name in experiments.DEMO_BUDGET_RUNS:
        folder = tmp_path / "x" / "demo_budget" / f"{name}_s0"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert summary["demo_budget"][name]["teacher_miou"] == metrics["teacher_miou"]
        assert metrics["steps"] == 4  # the quick budget: 2 epochs x 2 steps
        log = (tmp_path / "x" / "demo_budget" / f"{name}_s0.log").read_text()
        assert "teacher mIoU" in log
    experiments.main(argv)
    assert capsys.readouterr().out.count("[skip]") == 3
    log = (tmp_path / "x" / "experiments.log").read_text()  # what main() said, kept beside
    assert log.count("[done]") == 3 and log.count("[skip]") == 3
    assert "--jobs 2" in log and "3 runs" in log and "0 runs" in log
