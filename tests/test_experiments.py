"""scripts/experiments.py in quick mode: runs, skips finished runs, summary agrees with runs."""

import json
from pathlib import Path

import pytest
from helpers import load_repo_script

ROOT = Path(__file__).resolve().parents[1]


def load():
    return load_repo_script("scripts/experiments.py")


@pytest.mark.slow
def test_quick_table3_runs_skips_when_restarted_and_summarizes(tmp_path, capsys):
    experiments = load()
    argv = [
        "--quick",
        "--only",
        "table3",
        "--jobs",
        "1",
        "--out",
        str(tmp_path / "x"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
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


def test_every_run_uses_the_demo_budget_and_heldout_runs_reach_the_summary(tmp_path):
    experiments = load()
    runs = dict(experiments.plan([3, 4], list(experiments.PARTS)))
    assert len(runs) == 7 * 2 + 8 + 1 + 3 + 3 * 2
    for name, overrides in runs.items():
        # no budget override: configs/demo.yaml's epochs, steps and warm-up apply
        assert not any(
            o.split("=")[0] in ("epochs", "steps_per_epoch", "warmup_epochs") for o in overrides
        ), name
    heldout = {n: o for n, o in runs.items() if n.startswith("heldout/")}
    assert list(heldout) == [f"heldout/{n}_s3" for n in ("sup_only", "baseline", "ppl")]
    assert all("digits_layout=crowded" in o for o in heldout.values())
    for k, name in enumerate(("sup_only", "baseline", "ppl")):
        folder = tmp_path / "heldout" / f"{name}_s3"
        folder.mkdir(parents=True)
        metrics = {"teacher_miou": 0.1 + 0.1 * k, "student_miou": 0.15 + 0.1 * k}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    layout3 = {n: o for n, o in runs.items() if n.startswith("layout3/")}
    assert list(layout3) == [f"layout3/{n}_s{s}" for s in (3, 4) for n in experiments.HELDOUT]
    assert all("digits_layout=overlap" in o for o in layout3.values())
    summary = experiments.summarize(tmp_path, [3])
    assert summary["heldout"]["baseline"] == {"teacher_miou": 0.2, "student_miou": 0.25}
    text = (tmp_path / "summary.md").read_text()
    assert "| sup_only | 10.00 | 15.00 |" in text and "| ppl | 30.00 | 35.00 |" in text
    assert "Third layout" not in text  # no run of it yet
    for s, value in ((3, 0.4), (4, 0.5)):
        folder = tmp_path / "layout3" / f"ppl_s{s}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(
            json.dumps({"teacher_miou": value, "student_miou": value + 0.01})
        )
    summary = experiments.summarize(tmp_path, [3, 4])
    assert summary["layout3"]["ppl"]["teacher_miou"] == [0.4, 0.5]
    assert "| ppl | 45.00 ± 7.07 | 46.00 ± 7.07 |" in (tmp_path / "summary.md").read_text()


def test_finished_run_made_with_another_config_is_kept_and_named(tmp_path, capsys):
    from ppl_tf.config import DEMO_CONFIG, load_config, save_config

    experiments = load()
    runs = experiments.plan([0], ["fig4", "heldout"], methods=("ppl",))
    for k, (name, overrides) in enumerate(runs):
        folder = tmp_path / name
        folder.mkdir(parents=True)
        argv = experiments.train_argv(name, overrides, tmp_path, tmp_path / "cache")
        if k == 0:
            argv = [*argv, "unsupervised_weight=0.1"]  # made before demo.yaml changed
        save_config(load_config(DEMO_CONFIG, argv), folder / "config.yaml")
        (folder / "metrics.json").write_text("{}")
    assert experiments.pending(runs, tmp_path, tmp_path / "cache") == []
    out = capsys.readouterr().out
    assert "[stale] fig4/one_stage_s0: finished with another config (unsupervised_weight: " in out
    assert "0.1 then, 0.5 now)" in out and "[skip] heldout/ppl_s0: finished before" in out


@pytest.mark.parametrize(
    ("text", "message"), [("out: [", "not valid YAML"), ("- a list", "not a mapping of keys")]
)
def test_finished_run_with_an_unreadable_config_is_a_clear_error(tmp_path, text, message):
    experiments = load()
    runs = experiments.plan([0], ["fig4"])
    folder = tmp_path / runs[0][0]
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(text)
    (folder / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit, match=f"config.yaml: {message}.*delete .*one_stage_s0"):
        experiments.pending(runs, tmp_path, tmp_path / "cache")


def test_noise_table_gives_each_method_its_drop_from_zero_noise(tmp_path):
    experiments = load()
    values = {"baseline_00": 0.70, "baseline_10": 0.66, "ppl_00": 0.72, "ppl_20": 0.705}
    for name, miou in values.items():
        folder = tmp_path / "noise" / name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"teacher_miou": miou}))
    experiments.summarize(tmp_path, [0])
    text = (tmp_path / "summary.md").read_text()
    assert "| 0% | 70.00 | +0.00 | 72.00 | +0.00 |" in text
    assert "| 10% | 66.00 | -4.00 | - | - |" in text
    assert "| 20% | - | - | 70.50 | -1.50 |" in text


def test_methods_narrow_table3_and_heldout_in_seed_order():
    experiments = load()
    names = [
        n for n, _ in experiments.plan([0, 1], ["table3", "heldout"], methods=("ppl", "sup_only"))
    ]
    assert names == [
        "table3/sup_only_s0",
        "table3/ppl_s0",
        "table3/sup_only_s1",
        "table3/ppl_s1",
        "heldout/sup_only_s0",
        "heldout/ppl_s0",
    ]


@pytest.mark.slow
def test_parallel_jobs_run_in_processes_and_reach_the_summary(tmp_path, capsys):
    experiments = load()
    argv = [
        "--quick",
        "--only",
        "heldout",
        "--jobs",
        "2",
        "--out",
        str(tmp_path / "x"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    summary = experiments.main(argv)
    out = capsys.readouterr().out
    assert out.count("[done]") == 3
    for name in experiments.HELDOUT:
        folder = tmp_path / "x" / "heldout" / f"{name}_s0"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert summary["heldout"][name]["teacher_miou"] == metrics["teacher_miou"]
        assert metrics["steps"] == 4  # the quick budget: 2 epochs x 2 steps
        log = (tmp_path / "x" / "heldout" / f"{name}_s0.log").read_text()
        assert "teacher mIoU" in log and "digit_scenes_v3_48x200" in log
    experiments.main(argv)
    assert capsys.readouterr().out.count("[skip]") == 3
    log = (tmp_path / "x" / "experiments.log").read_text()  # what main() said, kept beside
    assert log.count("[done]") == 3 and log.count("[skip]") == 3
    assert "--jobs 2" in log and "3 runs" in log and "0 runs" in log


def test_teacher_curves_of_both_layouts_are_read_and_drawn(tmp_path):
    experiments = load()
    for k, name in enumerate(("sup_only", "baseline", "ppl")):
        for offset, part in ((0.0, "table3"), (0.5, "heldout")):
            folder = tmp_path / part / f"{name}_s0"
            folder.mkdir(parents=True)
            rows = "".join(f"{e},{offset + 0.1 * k + 0.01 * e}\n" for e in range(4))
            rows += "4,\n"  # an epoch without a value is left out
            (folder / "log.csv").write_text("epoch,val_teacher_miou\n" + rows)
            (folder / "config.yaml").write_text("warmup_epochs: 2\n")
    curves = experiments.teacher_curves(tmp_path, 0)
    points, warmup = curves["held-out layout"]["ppl"]
    assert [e for e, _ in points] == [1, 2, 3, 4] and warmup == 2
    assert [v for _, v in points] == pytest.approx([0.7, 0.71, 0.72, 0.73])
    assert curves["standard scenes (Table 3)"]["ppl"][0][0][1] == pytest.approx(0.2)
    drawn = experiments.plot_teacher_curves(curves, tmp_path / "curves.png")
    assert drawn["held-out layout"]["sup_only"] == pytest.approx([50.0, 51.0, 52.0, 53.0])
    assert drawn["standard scenes (Table 3)"]["baseline"] == pytest.approx([10, 11, 12, 13])
    experiments.summarize(tmp_path, [0])
    assert (tmp_path / "teacher_curves.png").is_file()
