"""Callbacks: the short progress bar, kill-safe backups and checkpoints, one log row per epoch."""

import contextlib
import csv
import io
import re

import h5py
import keras
import numpy as np
import pytest

from ppl_tf.callbacks import (
    EPOCH_ATTR,
    AtomicBackupAndRestore,
    BestCheckpoint,
    EpochCSVLogger,
    ShortProgbarLogger,
    keep_epochs_before,
)


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def weights_of(model):
    return [w.numpy().copy() for w in model.weights]


def test_short_progress_bar_shows_the_chosen_logs_only():
    logs = {f"loss_contrast_{i}": 0.123456 for i in range(1, 9)}
    logs.update(loss=1.5, loss_labeled=1.0, loss_unlabeled_ce=0.5, mask_ratio=0.25, lr_head=0.01)
    bar = ShortProgbarLogger()
    bar.set_params({"verbose": 1, "epochs": 2, "steps": 3})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bar.on_train_begin()
        bar.on_epoch_begin(0)
        for step in range(3):
            bar.on_train_batch_end(step, logs)
        bar.on_epoch_end(0, {**logs, "val_teacher_miou": 0.4, "val_student_miou": 0.5})
    text = printed.getvalue()
    for key in ("loss_labeled", "loss_unlabeled_ce", "mask_ratio", "val_teacher_miou"):
        assert key in text
    assert "loss_contrast" not in text and "lr_head" not in text
    assert "\nval_teacher_miou: 0.4000 - val_student_miou: 0.5000\n" in text
    assert max(map(len, visible_lines(text))) < 140


def visible_lines(text):
    """The lines a terminal shows of Keras' progress output (color codes and the
    backspaces and carriage returns that redraw the bar removed)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).replace("\b", "")
    return [line for part in text.split("\n") for line in part.split("\r")]


def test_a_kill_during_the_backup_write_leaves_the_previous_backup(tmp_path, monkeypatch):
    model = small_model()
    backup = AtomicBackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup.on_epoch_end(0)  # a complete backup after epoch 1
    saved = weights_of(model)
    model.layers[0].kernel.assign(np.zeros((4, 3)))

    def killed_while_writing(path, overwrite=True):
        with open(path, "wb") as handle:
            handle.write(b"\x89HDF\r\n\x1a\n half a file")
        raise KeyboardInterrupt  # stands for SIGKILL: nothing after this line runs

    with monkeypatch.context() as patch:
        patch.setattr(model, "save_weights", killed_while_writing)
        with pytest.raises(KeyboardInterrupt):
            backup.on_epoch_end(1)

    resumed = small_model(seed=1)
    restore = AtomicBackupAndRestore(str(tmp_path / "backup"))
    restore.set_model(resumed)
    restore.on_train_begin()
    assert resumed._initial_epoch == 1
    for got, expected in zip(weights_of(resumed), saved, strict=True):
        np.testing.assert_array_equal(got, expected)
    with h5py.File(tmp_path / "backup" / "latest.weights.h5", "r") as handle:
        assert handle.attrs[EPOCH_ATTR] == 1


def test_an_unreadable_backup_is_set_aside_and_training_starts_over(tmp_path, capsys):
    # What Keras' own callback left after a kill mid-write: a truncated weights file.
    model = small_model()
    model.save_weights(tmp_path / "full.weights.h5")
    data = (tmp_path / "full.weights.h5").read_bytes()
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "latest.weights.h5").write_bytes(data[: len(data) // 3])
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')

    fresh = small_model(seed=1)
    before = weights_of(fresh)
    restore = AtomicBackupAndRestore(str(tmp_path / "backup"))
    restore.set_model(fresh)
    restore.on_train_begin()  # Keras' own: OSError "Unable to synchronously open file"
    assert fresh._initial_epoch is None
    for got, expected in zip(weights_of(fresh), before, strict=True):
        np.testing.assert_array_equal(got, expected)
    err = capsys.readouterr().err
    assert "latest.weights.h5 cannot be read" in err and "training starts at epoch 1" in err
    assert list((tmp_path / "backup").glob("latest.weights.h5.unreadable-*"))
    assert not (tmp_path / "backup" / "latest.weights.h5").exists()
    assert not (tmp_path / "backup" / "training_metadata.json").exists()


def test_a_backup_of_keras_own_callback_still_resumes(tmp_path):
    model = small_model()
    keras_backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    keras_backup.set_model(model)
    keras_backup.on_epoch_end(2)
    resumed = small_model(seed=1)
    restore = AtomicBackupAndRestore(str(tmp_path / "backup"))
    restore.set_model(resumed)
    restore.on_train_begin()
    assert resumed._initial_epoch == 3
    for got, expected in zip(weights_of(resumed), weights_of(model), strict=True):
        np.testing.assert_array_equal(got, expected)


def write_log(path, epochs, partial_last=False):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "loss"])
        writer.writerows([[e, 1.0 / (e + 1)] for e in epochs])
        if partial_last:
            handle.write(f"{max(epochs) + 1},0.")  # a kill in the middle of a row


def log_epochs(path):
    with open(path, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def test_rows_of_epochs_trained_again_are_dropped(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log, range(4), partial_last=True)
    keep_epochs_before(log, 2)
    assert log_epochs(log) == [0, 1]
    keep_epochs_before(log, 0)  # a run that starts over starts a new file
    assert not log.exists()

    write_log(log, range(3))
    model = small_model()
    logger = EpochCSVLogger(str(log))
    logger.set_model(model)
    logger.on_train_begin()
    for epoch in (1, 2, 3):  # resumed after epoch 1
        logger.on_epoch_begin(epoch)
        logger.on_epoch_end(epoch, {"loss": 0.5})
    logger.on_train_end()
    assert log_epochs(log) == [0, 1, 2, 3]


def test_best_checkpoint_is_atomic_and_remembers_its_score_across_a_resume(tmp_path):
    path = tmp_path / "best.weights.h5"
    model = small_model()
    best = BestCheckpoint(path, monitor="val_miou")
    best.set_model(model)
    best.on_epoch_begin(0)
    best.on_epoch_end(0, {"val_miou": 0.5})
    saved = weights_of(model)
    model.layers[0].kernel.assign(np.zeros((4, 3)))
    best.on_epoch_begin(1)
    best.on_epoch_end(1, {"val_miou": 0.4})
    # Resumed at epoch 2: Keras' ModelCheckpoint would start from nothing and save 0.45.
    resumed = BestCheckpoint(path, monitor="val_miou")
    resumed.set_model(model)
    resumed.on_epoch_begin(2)
    resumed.on_epoch_end(2, {"val_miou": 0.45})
    check = small_model(seed=1)
    check.load_weights(path)
    for got, expected in zip(weights_of(check), saved, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert not list(tmp_path.glob(".partial*"))


def test_epochs_without_validation_have_empty_val_columns_and_no_backup(tmp_path):
    from ppl_tf.run import validation_epochs

    assert validation_epochs(10, 1) == list(range(1, 11))
    assert validation_epochs(10, 4) == [1, 4, 8, 10]  # the first and the last always
    assert validation_epochs(3, 5) == [1, 3]
    log = tmp_path / "log.csv"
    logger = EpochCSVLogger(str(log), columns=("val_miou",))
    model = small_model()
    backup = AtomicBackupAndRestore(str(tmp_path / "backup"), epochs=[1, 3])
    for callback in (logger, backup):
        callback.set_model(model)
        callback.on_train_begin()
    saved_after = []
    for epoch in range(3):
        logs = {"loss": 0.5, **({"val_miou": 0.25} if epoch != 1 else {})}
        for callback in (logger, backup):
            callback.on_epoch_begin(epoch)
            callback.on_epoch_end(epoch, logs)
        saved_after.append(backup._finished_epochs())
    logger.on_train_end()
    with open(log, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["val_miou"] for row in rows] == ["0.25", "", "0.25"]
    assert saved_after == [1, 1, 3]  # epoch 2 was not backed up
