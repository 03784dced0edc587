"""scripts/train.py and scripts/evaluate.py end to end, their errors, resume after SIGKILL."""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_run(tmp_path, out="run", **extra):
    """Overrides for a seconds-long run on a small digit-scene set."""
    values = {
        "cache_dir": tmp_path / "cache", "digits_train_scenes": 40, "labeled": 8,
        "epochs": 2, "steps_per_epoch": 3, "warmup_epochs": 1, "batch_size": 2,
        "eval_batch_size": 50, "out": tmp_path / out, "export_dir": tmp_path / "exported",
        "images_to_log": 2,
    }  # fmt: skip
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def log_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_two_epoch_run_writes_everything_and_evaluate_reproduces_it(tmp_path, capsys):
    assert load_script("train").main(tiny_run(tmp_path)) == 0
    out = tmp_path / "run"
    for name in ("config.yaml", "dataset.json", "best.weights.h5", "log.csv", "metrics.json",
                 "per_class_iou.md", "student.keras", "teacher.keras", "predictions.png",
                 "curves.png", "predictions/epoch_002.png", "pseudo_labels.png"):  # fmt: skip
        assert (out / name).is_file(), name
    # per epoch and class: the pseudo-label share beside the labeled share
    shares = log_rows(out / "pseudo_labels.csv")
    assert len(shares) == 2 * 11 and {r["epoch"] for r in shares} == {"0", "1"}
    for epoch in ("0", "1"):
        labeled = [float(r["labeled_share"]) for r in shares if r["epoch"] == epoch]
        assert sum(labeled) == pytest.approx(1.0, abs=1e-4) and labeled[0] > 0.5  # background
        pseudo = [float(r["pseudo_share"]) for r in shares if r["epoch"] == epoch]
        assert sum(pseudo) == pytest.approx(1.0, abs=1e-4) or sum(pseudo) == 0.0
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert (out / "splits" / "labeled.txt").read_text().count("\n") == 8
    rows = log_rows(out / "log.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert "loss_contrast_2" in rows[0] and "pseudo_miou" in rows[0] and "lr_head" in rows[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6
    assert set(metrics["teacher_per_class_iou"]) == {"background"} | {str(d) for d in range(10)}
    export = tmp_path / "exported" / "digits" / "1"  # export_name of configs/demo.yaml
    assert (export / "saved_model.pb").is_file() and (export / "model.onnx").is_file()

    # The logged val mIoU of the best epoch, the final metrics and evaluate.py agree.
    best_logged = max(float(r["val_teacher_miou"]) for r in rows)
    assert metrics["teacher_miou"] == pytest.approx(best_logged, abs=1e-4)
    evaluate = load_script("evaluate")
    assert evaluate.main([str(out), "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["miou"] == pytest.approx(
        metrics["teacher_miou"], abs=1e-6
    )
    assert evaluate.main([str(export.parent), "--json", str(tmp_path / "saved.json")]) == 0
    saved = json.loads((tmp_path / "saved.json").read_text())["miou"]
    assert saved == pytest.approx(metrics["teacher_miou"], abs=1e-3)
    assert evaluate.main([str(out), "--crop", "48", "--flip"]) == 0
    assert "sliding window 48 + flip" in capsys.readouterr().out


@pytest.mark.slow
def test_mirrored_run_over_two_logical_cpus(tmp_path, capsys):
    # conftest splits the CPU into two logical devices for the whole test session.
    code = load_script("train").main(
        ["--strategy", "mirrored", *tiny_run(tmp_path, epochs=1, warmup_epochs=0, export=False)]
    )
    assert code == 0
    assert "2 replicas, MirroredStrategy" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["epoch=3"], "unknown key 'epoch'; did you mean 'epochs'?"),
        (["epochs=three"], "epochs must be int"),
        (["--strategy", "tpu"], "strategy: must be one of"),
        (["dataset=custom"], "data_dir: required"),
        (["--config", "nope.yaml"], "nope.yaml: config file not found"),
    ],
)
def test_bad_configuration_is_a_clear_error(argv, message, capsys):
    assert load_script("train").main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    code = load_script("train").main(
        ["dataset=custom", f"data_dir={tmp_path / 'nope'}", f"out={tmp_path / 'r'}"]
    )
    assert code == 2
    assert "nope: dataset folder not found" in capsys.readouterr().err


def test_mirrored_without_gpus_is_a_clear_error(monkeypatch):
    import tensorflow as tf

    from ppl_tf.distribute import StrategyError, make_strategy

    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: ["cpu0"])
    with pytest.raises(StrategyError, match="needs GPUs and none is visible"):
        make_strategy("mirrored")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StrategyError, match="needs the TF_CONFIG"):
        make_strategy("multi_worker")


def test_unreadable_checkpoint_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 1\n")
    (run / "teacher.keras").write_bytes(b"not a zip archive")
    assert load_script("evaluate").main([str(run)]) == 2
    assert "teacher.keras: cannot load the model" in capsys.readouterr().err


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_from_its_backup(tmp_path):
    overrides = tiny_run(tmp_path, epochs=5, warmup_epochs=1, export=False, images_to_log=0)
    argv = [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    log = tmp_path / "run" / "log.csv"
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log.is_file() and len(log_rows(log)) >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(log_rows(log))
    assert 2 <= done_before < 5
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = [int(r["epoch"]) for r in log_rows(log)]
    assert epochs == list(range(5)), epochs  # resumed after the last finished epoch
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 5 * 3  # the same number of steps as an uninterrupted run


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_workers_with_multi_worker_mirrored_strategy_end_identical(tmp_path):
    import h5py
    import numpy as np

    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    overrides = tiny_run(tmp_path, export=False, images_to_log=0)
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "CUDA_VISIBLE_DEVICES": ""}
        argv = [sys.executable, str(ROOT / "scripts" / "train.py"), "--strategy", "multi_worker"]
        processes.append(subprocess.Popen([*argv, *overrides], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))  # fmt: skip
    outputs = [p.communicate(timeout=600) for p in processes]
    codes = [p.returncode for p in processes]
    assert codes == [0, 0], "\n---\n".join(err[-2500:] for _, err in outputs)
    assert "2 replicas, CollectiveAllReduceStrategy" in outputs[0][0]
    run = tmp_path / "run"
    assert (run / "metrics.json").is_file()  # the chief evaluates and writes
    assert not (run / ".worker_1" / "metrics.json").exists()
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6

    def arrays(path):
        found = {}
        with h5py.File(path, "r") as handle:
            handle.visititems(
                lambda name, item: (
                    found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
                )
            )
        return found

    chief = arrays(run / "final.weights.h5")
    other = arrays(run / ".worker_1" / "final.weights.h5")
    assert chief.keys() == other.keys() and len(chief) > 100
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
