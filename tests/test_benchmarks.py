"""Quick modes of the benchmark scripts: they run from the repository and write their tables."""

import json

import keras
import pytest
from helpers import load_repo_script


def load(name):
    return load_repo_script(f"benchmarks/{name}.py")


def test_cost_counts_parameters_and_multiply_adds(tmp_path):
    rows = load("cost").main(
        ["--backbone", "tiny", "--size", "64", "--stages", "0", "2", "--out", str(tmp_path)]
    )
    n0, n2 = rows
    assert n2["params"] > n0["params"] and n2["macs"] > n0["macs"]
    # A 64x64 image through the tiny model: tens of millions of multiply-adds, not billions.
    assert 1e7 < n0["macs"] < 1e9
    saved = json.loads((tmp_path / "cost_tiny.json").read_text())
    assert saved["rows"] == rows and (tmp_path / "cost_tiny.md").is_file()


@pytest.mark.slow
def test_train_step_benchmark_quick_mode(tmp_path):
    argv = [
        "--configs",
        "tiny:32:2",
        "tiny:32:2:8:mixed_bfloat16",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--out",
        str(tmp_path),
    ]
    rows = load("train_step").main(argv)
    assert [r["num_stages"] for r in rows] == [0, 2, 0, 2]
    assert [(r["output_stride"], r["precision"]) for r in rows[1:3]] == [
        (16, "float32"),
        (8, "mixed_bfloat16"),
    ]
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert all(r["median_s"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert "overhead_pct" in rows[1]
    assert "PPL overhead" in (tmp_path / "train_step.md").read_text()


@pytest.mark.slow
def test_train_step_breakdown_attributes_the_overhead_to_parts(tmp_path):
    argv = ["--breakdown", "--configs", "tiny:32:2", "--steps", "1", "--warmup", "1"]
    rows = load("train_step").main([*argv, "--repeats", "1", "--out", str(tmp_path)])
    variants = {r["variant"]: r for r in rows if "variant" in r}
    parts = {r["part"]: r for r in rows if "part" in r}
    assert len(variants) == 5 and set(parts) == {
        "pushing loss",
        "pulling attention",
        "heads and banks",
    }
    median = {name: r["median_s"] for name, r in variants.items()}
    assert variants["baseline (n=0)"]["over_baseline_pct"] == 0.0
    expected = median["PPL (n=2)"] - median["PPL without pushing (Eq. 1 off)"]
    assert parts["pushing loss"]["seconds"] == pytest.approx(expected, abs=2e-4)
    expected = median["PPL without both (heads and banks only)"] - median["baseline (n=0)"]
    assert parts["heads and banks"]["seconds"] == pytest.approx(expected, abs=2e-4)
    table = (tmp_path / "train_step_breakdown.md").read_text()
    assert "pulling attention" in table and "PPL without both" in table


@pytest.mark.slow
def test_inference_benchmark_quick_mode(tmp_path):
    argv = [
        "--backbones",
        "tiny",
        "--batches",
        "1",
        "--size",
        "64",
        "--runs",
        "1",
        "--warmup",
        "1",
        "--int8-calibration",
        "2",
        "--repeats",
        "2",
        "--out",
        str(tmp_path),
    ]
    result = load("inference").main(argv)
    paths = {r["path"]: r for r in result["rows"]}
    assert set(paths) == {
        "keras",
        "savedmodel",
        "savedmodel_xla",
        "onnxruntime",
        "onnxruntime_int8",
    }
    assert result["matmul_peak_macs_per_s"] > 1e9
    # one peak sample before the (tiny, 1) group in each repeat and one at the end
    assert len(result["matmul_peak_samples"]) == 3
    assert all(len(r["repeat_medians_s"]) == 2 and r["spread_pct"] >= 0 for r in paths.values())
    assert paths["onnxruntime"]["latency_vs_onnxruntime"] == 1.0
    keras_ratio = paths["keras"]["median_s"] / paths["onnxruntime"]["median_s"]
    assert paths["keras"]["latency_vs_onnxruntime"] == pytest.approx(keras_ratio, abs=2e-3)
    int8 = [r for r in result["rows"] if r["path"] == "onnxruntime_int8"]
    assert len(int8) == 1 and int8[0]["speedup_vs_fp32_onnxruntime"] > 0
    assert "demo_int8" not in result
    assert "| tiny | 1 |" in (tmp_path / "inference.md").read_text()


def test_inference_benchmark_int8_miou_on_the_demo_validation_set(tiny_int8_export, tmp_path):
    _, folder = tiny_int8_export
    demo = load("inference").demo_miou(folder)
    evaluate = load_repo_script("scripts/evaluate.py")
    assert evaluate.main([str(folder), "--json", str(tmp_path / "eval.json")]) == 0
    saved_model_miou = json.loads((tmp_path / "eval.json").read_text())["miou"]
    assert demo["val_images"] == 200 and demo["calibration_images"] == 6
    assert demo["fp32_miou"] == pytest.approx(saved_model_miou, abs=1e-3)
    lost = 100 * (demo["fp32_miou"] - demo["int8_miou"])
    assert 0 < demo["int8_miou"] < 1 and demo["lost_points"] == pytest.approx(lost, abs=2e-3)


def test_pipeline_benchmark_quick_mode(tmp_path):
    argv = [
        "--images",
        "8",
        "--batch",
        "2",
        "--crop",
        "96",
        "--batches",
        "2",
        "--warmup",
        "1",
        "--out",
        str(tmp_path),
    ]
    result = load("pipeline").main(argv)
    assert result["images_per_s"] > 0 and result["crop"] == 96
    assert json.loads((tmp_path / "pipeline.json").read_text()) == result


def test_interleaved_timing_is_round_robin_with_peak_samples_between_groups():
    inference = load("inference")
    calls = []
    paths = {
        (b, n, p): (lambda key=(b, n, p): calls.append(key))
        for b in ("tiny", "resnet50")
        for n in (1, 8)
        for p in ("keras", "onnxruntime")
    }
    peaks = iter(range(100))
    timings, samples = inference.interleaved(
        paths, repeats=2, runs=1, warmup=0, peak=lambda: calls.append("peak") or next(peaks)
    )
    assert all(len(medians) == 2 for medians in timings.values())
    assert samples == list(range(9))  # 4 groups x 2 repeats + 1 at the end
    one_repeat = ["peak", *list(paths)[:2], "peak", *list(paths)[2:4]]
    one_repeat += ["peak", *list(paths)[4:6], "peak", *list(paths)[6:]]
    assert calls == one_repeat * 2 + ["peak"]


@pytest.mark.slow
def test_int8_settings_benchmark_quick_mode(tmp_path):
    argv = ["--backbone", "tiny", "--size", "32", "--runs", "1", "--calibration", "2"]
    result = load("int8_settings").main([*argv, "--out", str(tmp_path)])
    rows = {r["variant"]: r for r in result["rows"]}
    assert len(rows) == 5
    assert rows["per-tensor weights"]["settings"]["per_channel"] is False
    assert rows["QOperator format"]["settings"]["quant_format"] == "QOperator"
    fp32 = sum(result["fp32_median_s_first_last"]) / 2
    for row in rows.values():
        assert row["speedup_vs_fp32"] == pytest.approx(fp32 / row["median_s"], rel=1e-2)
    assert "| no reduce_range |" in (tmp_path / "int8_settings.md").read_text()


@pytest.mark.slow
def test_onednn_benchmark_times_each_setting_in_its_own_process(tmp_path):
    argv = ["--backbone", "tiny", "--size", "32", "--batches", "1", "--runs", "1"]
    result = load("onednn").main([*argv, "--out", str(tmp_path)])
    rows = result["rows"]
    assert [(r["batch"], r["onednn"]) for r in rows] == [(1, True), (1, False)]
    assert rows[0]["vs_onednn_on"] == 1.0 and rows[1]["median_s"] > 0
    assert rows[1]["vs_onednn_on"] == pytest.approx(
        rows[1]["median_s"] / rows[0]["median_s"], rel=0.02
    )
    assert "| 1 | off |" in (tmp_path / "onednn.md").read_text()


@pytest.mark.slow
def test_demo_run_times_the_training_job_and_writes_its_row(tmp_path):
    out = tmp_path / "results"
    overrides = ["epochs=1", "steps_per_epoch=2", "warmup_epochs=0", "export=false"]
    small = ["digits_train_scenes=48", "batch_size=2", "images_to_log=0"]
    argv = ["--out", str(out), "--cache-dir", str(tmp_path / "cache"), *overrides, *small]
    row = load("demo_run").main(argv)
    assert 0 < row["train_minutes"] < row["wall_minutes"] < 15 and row["within_budget"]
    assert 0.1 < row["peak_memory_gb"] < 24
    assert 0 <= row["teacher_miou"] <= 1 and 0 <= row["student_miou"] <= 1
    assert 0 < row["outside_steps_pct"] < 100  # one validation beside two steps
    assert json.loads((out / "demo_run.json").read_text()) == row
    assert "| within 15 min |" in (out / "demo_run.md").read_text()


def test_demo_run_refuses_overrides_that_would_move_its_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load("demo_run").main(["--out", str(tmp_path / "results"), f"out={tmp_path}/mine"])
    assert "out=" in capsys.readouterr().err and not (tmp_path / "results").exists()


def test_demo_run_stops_without_writing_when_training_fails(tmp_path):
    out = tmp_path / "results"
    with pytest.raises(SystemExit, match="exited with 2; nothing written"):
        load("demo_run").main(["--out", str(out), "no_such_key=1"])
    assert not out.exists()
