"""Training runs end to end (`ppl_tf.run.train` and scripts/train.py), scripts/evaluate.py,
their errors, resume after SIGKILL."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import load_repo_script

ROOT = Path(__file__).resolve().parents[1]


def tiny_run(tmp_path, out="run", **extra):
    """Overrides for a seconds-long run on a small digit-scene set."""
    values = {
        "cache_dir": tmp_path / "cache",
        "digits_train_scenes": 40,
        "labeled": 8,
        "epochs": 2,
        "steps_per_epoch": 3,
        "warmup_epochs": 1,
        "batch_size": 2,
        "eval_batch_size": 50,
        "out": tmp_path / out,
        "export_dir": tmp_path / "exported",
        "images_to_log": 2,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def log_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_two_epoch_run_writes_everything_and_evaluate_reproduces_it(tmp_path, capsys):
    from ppl_tf.config import DEMO_CONFIG, load_config
    from ppl_tf.run import train

    returned = train(load_config(DEMO_CONFIG, tiny_run(tmp_path)))
    out = tmp_path / "run"
    for name in (
        "config.yaml",
        "dataset.json",
        "best.weights.h5",
        "log.csv",
        "metrics.json",
        "per_class_iou.md",
        "student.keras",
        "teacher.keras",
        "predictions.png",
        "curves.png",
        "predictions/epoch_002.png",
        "pseudo_labels.png",
    ):
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
    assert metrics == returned
    assert metrics["steps"] == 6
    assert set(metrics["teacher_per_class_iou"]) == {"background"} | {str(d) for d in range(10)}
    export = tmp_path / "exported" / "digits" / "1"  # export_name of configs/demo.yaml
    assert (export / "saved_model.pb").is_file() and (export / "model.onnx").is_file()

    # The logged val mIoU of the best epoch, the final metrics and evaluate.py agree.
    best_logged = max(float(r["val_teacher_miou"]) for r in rows)
    assert metrics["teacher_miou"] == pytest.approx(best_logged, abs=1e-4)
    evaluate = load_repo_script("scripts/evaluate.py")
    assert evaluate.main([str(out), "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["miou"] == pytest.approx(
        metrics["teacher_miou"], abs=1e-6
    )
    assert evaluate.main([str(export.parent), "--json", str(tmp_path / "saved.json")]) == 0
    saved = json.loads((tmp_path / "saved.json").read_text())["miou"]
    network = json.loads((export / "metadata.json").read_text())["network"]  # the better one
    assert saved == pytest.approx(metrics[f"{network}_miou"], abs=1e-3)
    assert evaluate.main([str(out), "--crop", "48", "--flip"]) == 0
    assert "sliding window 48 + flip" in capsys.readouterr().out


@pytest.mark.slow
def test_validating_every_few_epochs_keeps_the_best_checkpoint_right(tmp_path):
    from ppl_tf.config import DEMO_CONFIG, load_config
    from ppl_tf.run import train

    config = load_config(DEMO_CONFIG, tiny_run(tmp_path, epochs=4, validate_every=3, export=False))
    metrics = train(config)
    out = tmp_path / "run"
    rows = log_rows(out / "log.csv")
    assert [r["val_teacher_miou"] != "" for r in rows] == [True, False, True, True]
    pictures = sorted(path.name for path in (out / "predictions").iterdir())
    assert pictures == ["epoch_001.png", "epoch_003.png", "epoch_004.png"]
    best_logged = max(float(r["val_teacher_miou"]) for r in rows if r["val_teacher_miou"])
    assert metrics["teacher_miou"] == pytest.approx(best_logged, abs=1e-4)
    assert metrics["steps"] == 4 * 3 and (out / "curves.png").is_file()


@pytest.mark.slow
def test_mirrored_run_over_two_logical_cpus(tmp_path, capsys):
    # conftest splits the CPU into two logical devices for the whole test session.
    code = load_repo_script("scripts/train.py").main(
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
    assert load_repo_script("scripts/train.py").main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    code = load_repo_script("scripts/train.py").main(
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
    assert load_repo_script("scripts/evaluate.py").main([str(run)]) == 2
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
        processes.append(
            subprocess.Popen(
                [*argv, *overrides],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
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


# --- issue 13: what a new user hit -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, keys",
    [
        (
            ["--config", "configs/voc_r50.yaml", "optimizer=adamw"],
            ("optimizer='adamw'", "backbone_lr_multiplier=0.1"),
        ),
        (["backbone_lr_multiplier=0.5"], ("optimizer='adamw'", "backbone_lr_multiplier=0.5")),
        (["backbone=tiny", "backbone_weights=imagenet"], ("backbone=tiny", "backbone_weights")),
        (["noise_ratio=0.2", "use_unlabeled=false"], ("noise_ratio=0.2", "use_unlabeled=false")),
        (["warmup_epochs=12", "epochs=10"], ("warmup_epochs/epochs", "12, 10")),
        (["tau=1.5"], ("tau",)),
        (["eval_crop=0"], ("eval_crop",)),
        (["export_network=both"], ("export_network",)),
        (["attention_output_gamma=0"], ("attention_output_gamma", "> 0")),
        (["contrast_weight=-0.5"], ("contrast_weight", ">= 0")),
    ],
)
def test_config_mistakes_stop_before_any_data_is_read(argv, keys, capsys, monkeypatch):
    import ppl_tf.run

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the config was checked")

    monkeypatch.setattr(ppl_tf.run, "load_data", no_data)
    monkeypatch.chdir(ROOT)
    assert load_repo_script("scripts/train.py").main([*argv, "data_dir=/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.py: "), err
    for key in keys:
        assert key in err


def make_folder(root, n=14, without_masks=3, size=(24, 32)):
    """A custom-format dataset: n images, the last `without_masks` unlabeled, 2 val."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("background\nred\nblue\n")
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        mask[4:12, 4:14], mask[14:20, 16:28] = 1, 2
        image = rng.integers(0, 60, (*size, 3)).astype(np.uint8)
        image[mask == 1], image[mask == 2] = (220, 20, 20), (20, 20, 220)
        Image.fromarray(image).save(root / "images" / f"img{i:02d}.png")
        if i < n - without_masks:
            Image.fromarray(mask).save(root / "masks" / f"img{i:02d}.png")
    (root / "splits" / "val.txt").write_text("img00\nimg01\n")
    return root


def truncate(path):
    """Half of the file: the header still reads, the pixel data does not (the start-up check
    used to read only headers)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def folder_run(tmp_path, data, out="run", **extra):
    values = {
        "dataset": "custom",
        "data_dir": data,
        "labeled": 4,
        "crop_size": 16,
        "epochs": 2,
        "steps_per_epoch": 3,
        "warmup_epochs": 0,
        "batch_size": 2,
        "eval_batch_size": 4,
        "export": False,
        "images_to_log": 0,
        "out": tmp_path / out,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


TIME_LIMIT = 180  # seconds; the failure this guards against is a process that never ends


def run_script(argv, cwd=ROOT):
    """Runs a command in a subprocess with a time limit; a hang fails the test."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    try:
        return subprocess.run(
            argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIME_LIMIT
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{argv[1]} did not end within {TIME_LIMIT} s: {error.stderr!r}"[-3000:])


@pytest.mark.slow
def test_corrupt_unlabeled_image_is_skipped_with_a_warning_not_a_hang(tmp_path):
    data = make_folder(tmp_path / "data")
    bad = data / "images" / "img13.png"  # no mask: unlabeled
    truncate(bad)
    argv = [sys.executable, str(ROOT / "scripts" / "train.py"), *folder_run(tmp_path, data)]
    result = run_script(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: unlabeled sample left out: {bad}: cannot decode the image "
        "(image file is truncated)"
    ]
    assert "data: 1 sample(s) could not be read and were left out:" in result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 6 and list(metrics["skipped_samples"]) == ["unlabeled/img13"]


@pytest.mark.slow
def test_corrupt_labeled_image_is_refused_with_commands_that_go_on(tmp_path):
    from ppl_tf.data import custom_source, make_splits

    data = make_folder(tmp_path / "data")
    labeled = make_splits(custom_source(data), 4, seed=0).labeled  # what train.py draws
    bad = data / "images" / f"{labeled[0]}.png"
    truncate(bad)
    argv = [sys.executable, str(ROOT / "scripts" / "train.py"), *folder_run(tmp_path, data)]
    result = run_script(argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"{bad}: cannot decode the image (image file is truncated)" in result.stderr
    assert not (tmp_path / "run" / "log.csv").exists()  # refused before training
    # The hint is two commands; run them as a user would paste them.
    lines = result.stderr.splitlines()
    start = lines.index(
        "To train without them, write split lists that leave them out and train on those:"
    )
    validate, train = (shlex.split(line) for line in lines[start + 1 : start + 3])
    assert validate[1].endswith("validate.py") and "--skip-bad" in validate
    checked = run_script(validate, cwd=tmp_path)
    assert checked.returncode == 1 and "1 bad" in checked.stdout, checked.stderr[-2000:]
    clean = tmp_path / "run" / "clean_splits"
    assert labeled[0] not in (clean / "labeled.txt").read_text().split()
    trained = run_script(train, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "3 labeled" in trained.stdout


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """(run folder, what train.py printed, tmp folder) of one tiny run with the default
    export."""
    import contextlib
    import io

    tmp_path = tmp_path_factory.mktemp("finished")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = load_repo_script("scripts/train.py").main(tiny_run(tmp_path, images_to_log=0))
    assert code == 0
    return tmp_path / "run", printed.getvalue(), tmp_path


def visible_lines(text):
    """The lines a terminal shows of Keras' progress output (color codes and the
    backspaces and carriage returns that redraw the bar removed)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text).replace("\b", "")
    return [line for part in text.split("\n") for line in part.split("\r")]


@pytest.mark.slow
def test_progress_bar_is_short_and_the_log_keeps_every_metric(finished_run):
    run, printed, _ = finished_run
    bars = [line for line in visible_lines(printed) if "/step" in line]
    assert bars and max(map(len, bars)) < 140, max(bars, key=len)
    assert all("loss_labeled" in bar and "mask_ratio" in bar for bar in bars)
    assert "loss_contrast" not in printed and "lr_head" not in printed
    columns = set(log_rows(run / "log.csv")[0])
    assert columns >= {
        "loss",
        "loss_labeled",
        "loss_unlabeled_ce",
        "loss_contrast",
        "loss_contrast_1",
        "loss_contrast_2",
        "mask_ratio",
        "ema_alpha",
        "lr_head",
        "lr_backbone",
        "pseudo_miou",
        "pseudo_recall",
        "val_teacher_miou",
        "val_student_miou",
    }


@pytest.mark.slow
def test_the_better_network_is_exported_with_both_scores(finished_run):
    from ppl_tf.export import choose_network

    run, printed, tmp_path = finished_run
    metrics = json.loads((run / "metrics.json").read_text())
    scores = {"teacher": metrics["teacher_miou"], "student": metrics["student_miou"]}
    metadata = json.loads((tmp_path / "exported" / "digits" / "1" / "metadata.json").read_text())
    expected = "student" if scores["student"] > scores["teacher"] else "teacher"
    assert metadata["network"] == expected and metadata["network_choice"] == "best"
    assert metadata["validation_miou"] == scores
    assert metadata["source_checkpoint"].endswith(f"{expected}.keras")
    assert f"exported the {expected} (export_network=best" in printed
    assert choose_network("best", {"teacher": 0.479, "student": 0.518}) == "student"
    assert choose_network("best", {"teacher": 0.5, "student": 0.5}) == "teacher"
    assert choose_network("teacher", {"teacher": 0.1, "student": 0.9}) == "teacher"


@pytest.mark.slow
def test_run_folder_round_trips_through_export_evaluate_and_predict(finished_run, tmp_path):
    import yaml

    run, _, _ = finished_run
    metrics = json.loads((run / "metrics.json").read_text())
    export = load_repo_script("scripts/export.py")
    exported = tmp_path / "exported"
    argv = [str(run), "--network", "teacher", "--name", "digits2", "--out", str(exported)]
    assert export.main(argv) == 0
    version = exported / "digits2" / "1"
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["model_config"] == yaml.safe_load((run / "config.yaml").read_text())
    result = tmp_path / "eval.json"
    evaluate = load_repo_script("scripts/evaluate.py")
    assert evaluate.main([str(version.parent), "--json", str(result)]) == 0
    miou = json.loads(result.read_text())["miou"]
    assert miou == pytest.approx(metrics["teacher_miou"], abs=1e-3)

    images = tmp_path / "images"
    images.mkdir()
    val_id = (run / "splits" / "val.txt").read_text().split()[0]
    root = Path(json.loads((run / "dataset.json").read_text())["root"])
    (images / "scene.png").write_bytes((root / "images" / f"{val_id}.png").read_bytes())
    masks = tmp_path / "masks"
    predict = load_repo_script("scripts/predict.py")
    assert predict.main([str(version.parent), str(images), "--out", str(masks)]) == 0
    assert (masks / "scene_mask.png").is_file()

    # Without --network: the run's export_network (config.yaml), here edited to "student".
    config = (
        (run / "config.yaml").read_text().replace("export_network: best", "export_network: student")
    )
    edited = tmp_path / "edited_run"
    edited.mkdir()
    for name in ("dataset.json", "metrics.json", "student.keras"):
        (edited / name).write_bytes((run / name).read_bytes())
    (edited / "config.yaml").write_text(config)
    assert export.main([str(edited), "--out", str(exported), "--no-onnx"]) == 0
    metadata = json.loads((exported / "edited_run" / "1" / "metadata.json").read_text())
    assert metadata["network"] == "student" and metadata["network_choice"] == "student"
    assert metadata["validation_miou"]["student"] == metrics["student_miou"]


@pytest.mark.slow
def test_truncated_backup_from_a_kill_is_set_aside_and_the_run_finishes(tmp_path, capsys):
    # What Keras' BackupAndRestore left when killed while writing the backup after epoch 2:
    # a truncated weights file, its metadata from epoch 1, the log row of epoch 1.
    run = tmp_path / "run"
    (run / "backup").mkdir(parents=True)
    (run / "backup" / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(4000))
    (run / "backup" / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    (run / "log.csv").write_text("epoch,loss\n0,1.5\n")
    overrides = tiny_run(tmp_path, epochs=3, export=False, images_to_log=0)
    train = load_repo_script("scripts/train.py")
    assert train.main(overrides) == 0  # before: OSError on every rerun
    err = capsys.readouterr().err
    assert "latest.weights.h5 cannot be read" in err and "starts at epoch 1" in err
    assert [r["epoch"] for r in log_rows(run / "log.csv")] == ["0", "1", "2"]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 9
    assert list(run.glob("backup*")) == []  # removed at the end, the set-aside file with it


def has_epoch(path):
    """Whether `path` is a complete backup of AtomicBackupAndRestore (opened without the lock
    that would stop a writer)."""
    import h5py

    from ppl_tf.callbacks import EPOCH_ATTR

    try:
        with h5py.File(path, "r", locking=False) as handle:
            return EPOCH_ATTR in handle.attrs
    except OSError:
        return False


@pytest.mark.slow
def test_sigkill_while_the_backup_is_written_leaves_a_resumable_run(tmp_path):
    overrides = tiny_run(tmp_path, epochs=4, warmup_epochs=1, export=False, images_to_log=0)
    argv = [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    backup = tmp_path / "run" / "backup"
    latest = backup / "latest.weights.h5"
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    complete = None  # (mtime, size) of a backup known to be complete
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        try:
            names = set(os.listdir(backup))
            stat = latest.stat()
        except FileNotFoundError:
            time.sleep(0.002)
            continue
        writing = any(name.startswith(".partial") for name in names)
        if complete is None:
            if not writing and ("training_metadata.json" in names or has_epoch(latest)):
                complete = (stat.st_mtime_ns, stat.st_size)
        # Kill as soon as the next backup is being written: a new temporary file (atomic
        # backups) or the backup itself changing (Keras' own, written in place).
        elif writing or (stat.st_mtime_ns, stat.st_size) != complete:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait()
    assert complete is not None and process.returncode == -signal.SIGKILL, (
        process.stderr.read().decode()[-2000:]
    )
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [int(r["epoch"]) for r in log_rows(tmp_path / "run" / "log.csv")] == [0, 1, 2, 3]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 4 * 3
