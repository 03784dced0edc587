import importlib.util
import json
from pathlib import Path

import pytest

from ppl_tf.data.digit_scenes import DigitSceneConfig, materialise

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_two_epoch_run_writes_checkpoint_logs_and_metrics(tmp_path):
    data = materialise(tmp_path / "cache", DigitSceneConfig(num_train=32, num_val=8), verbose=False)
    out = tmp_path / "run"
    code = load_script().main(
        ["--data-dir", str(data), "--epochs", "2", "--steps-per-epoch", "3", "--warmup-epochs",
         "1", "--batch-size", "2", "--labeled", "8", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    for name in ("best.weights.h5", "log.csv", "metrics.json", "student.keras", "teacher.keras"):
        assert (out / name).is_file(), name
    assert (out / "splits" / "labeled.txt").read_text().count("\n") == 8
    log = (out / "log.csv").read_text().splitlines()
    assert len(log) == 3 and "val_teacher_miou" in log[0] and "loss_contrast_2" in log[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["teacher_miou"] <= 1.0
    assert set(metrics["teacher_per_class_iou"]) == {"background"} | {str(d) for d in range(10)}


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    code = load_script().main(["--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert code == 2
    assert "nope: dataset folder not found" in capsys.readouterr().err
