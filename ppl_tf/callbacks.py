"""Callbacks of a training run where Keras' own fall short: the progress bar and resuming.

- `ShortProgbarLogger`: Keras' progress bar with a handful of the trainer's logs.
- `AtomicBackupAndRestore`, `BestCheckpoint`: weights files written so that a kill at any
  instant leaves the previous complete file or the new one, never a truncated one.
- `EpochCSVLogger` (and `keep_epochs_before` for other per-epoch CSV files): one row per epoch
  across interruptions and resumes.

On an epoch's end the backup must come last (`scripts/train.py` puts it at the end of the
callback list): an epoch counts as done only once everything it writes is written.
"""

import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import h5py
import keras

PROGRESS_KEYS = ("loss", "loss_labeled", "loss_unlabeled_ce", "mask_ratio")
EPOCH_END_KEYS = ("val_teacher_miou", "val_student_miou")
EPOCH_ATTR = "ppl_tf_epoch"  # in a backup: the epochs it has finished
SCORE_ATTR = "ppl_tf_score"  # in a best checkpoint: its monitored value


class ShortProgbarLogger(keras.callbacks.ProgbarLogger):
    """Keras' progress bar showing only `keys`; at an epoch's end, `epoch_end_keys` follow on
    a line of their own.

    Keras prints every log; the trainer's thirteen made each line about 450 characters, which
    a terminal wraps on every update, printing screens of bars. log.csv and TensorBoard keep
    every log.
    """

    def __init__(self, keys=PROGRESS_KEYS, epoch_end_keys=EPOCH_END_KEYS):
        super().__init__()
        self.keys = tuple(keys)
        self.epoch_end_keys = tuple(epoch_end_keys)

    def _shown(self, logs, keys):
        return {key: logs[key] for key in keys if key in (logs or {})}

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self._shown(logs, self.keys))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._shown(logs, self.keys))
        shown = self._shown(logs, self.epoch_end_keys)
        if self.verbose and shown:
            print(" - ".join(f"{key}: {float(value):.4f}" for key, value in shown.items()))


class StepTimer(keras.callbacks.Callback):
    """Adds up the wall time spent inside train steps (`seconds`): what a run spends on
    validation, logs, images and backups is the rest of its training time."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start


def save_weights_atomically(model, path, attrs=None):
    """`model.save_weights(path)` through a temporary file renamed over `path` when complete,
    with `attrs` stored in the file (so that they cannot disagree with the weights)."""
    path = Path(path)
    partial = path.with_name(f".partial.{path.name}")  # Keras wants the .weights.h5 ending
    model.save_weights(partial, overwrite=True)
    with h5py.File(partial, "a") as handle:
        handle.attrs.update(attrs or {})
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())  # the data is on disk before the rename is (power loss)
    os.replace(partial, path)  # atomic: readers see the old file or the new one


def set_aside(path, error):
    """Renames an unreadable file to `<name>.unreadable-<time>` beside it; returns the new
    path."""
    path = Path(path)
    target = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    print(f"warning: {path} cannot be read ({error}); moved it to {target}", file=sys.stderr)
    return target


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose backup survives a kill at any instant.

    Keras writes `backup/latest.weights.h5` in place: SIGKILL during that write (a preempted VM,
    the out-of-memory killer) left a truncated file, and every rerun then died opening it. Here
    the weights and the number of finished epochs go into one temporary file that is renamed
    over the backup when complete (`save_weights_atomically`). A backup that cannot be read
    (one of Keras' own, truncated) is moved aside with a warning and training starts over;
    the rest of the backup folder goes with it, since it describes that backup.
    """

    def __init__(self, backup_dir, epochs=None, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.epochs = None if epochs is None else set(epochs)

    def on_train_begin(self, logs=None):
        if not os.path.exists(self._weights_path):
            return
        model = self.model
        before = [v.numpy() for v in model.weights]
        optimizer = model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        optimizer_before = [v.numpy() for v in optimizer.variables] if optimizer else []
        try:
            epoch = self._finished_epochs()
            model.load_weights(self._weights_path)
        except Exception as error:  # h5py and Keras raise OSError, KeyError, ValueError, ...
            # A failed load may have assigned some variables: put them all back.
            for variable, value in zip(model.weights, before, strict=True):
                variable.assign(value)
            if optimizer:
                for variable, value in zip(optimizer.variables, optimizer_before, strict=True):
                    variable.assign(value)
            set_aside(self._weights_path, error)
            if os.path.exists(self._training_metadata_path):
                os.remove(self._training_metadata_path)
            print("warning: no usable backup; training starts at epoch 1", file=sys.stderr)
            return
        model._initial_epoch = epoch  # what Keras' own callback sets; fit starts there

    def _finished_epochs(self):
        with h5py.File(self._weights_path, "r") as handle:
            epoch = handle.attrs.get(EPOCH_ATTR)
        if epoch is None:  # a backup of Keras' own callback: the epoch is in the metadata
            with open(self._training_metadata_path) as handle:
                epoch = json.load(handle)["epoch"]
        return int(epoch)

    def on_epoch_end(self, epoch, logs=None):
        """Backs up after the epochs in `epochs` (counted from 1; None: every epoch)."""
        if self.epochs is None or epoch + 1 in self.epochs:
            super().on_epoch_end(epoch, logs)
        else:
            self._current_epoch = epoch + 1

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        save_weights_atomically(self.model, self._weights_path, {EPOCH_ATTR: self._current_epoch})
        # Keras' own metadata file is left out: the epoch lives in the weights file.
        if os.path.exists(self._training_metadata_path):
            os.remove(self._training_metadata_path)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the weights to `filepath` whenever `monitor` (higher is better) beats every
    earlier epoch of the run, atomically, with the value stored in the file.

    Keras' `ModelCheckpoint` writes in place and forgets its best value when a run resumes,
    so the first epoch after a resume overwrote a better checkpoint; here a resumed run starts
    from the value in the file.
    """

    def __init__(self, filepath, monitor="val_teacher_miou"):
        super().__init__()
        self.filepath = Path(filepath)
        self.monitor = monitor
        self.best = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.best is not None:
            return
        self.best = -math.inf
        if epoch > 0 and self.filepath.is_file():  # resumed: the checkpoint is this run's
            try:
                with h5py.File(self.filepath, "r") as handle:
                    self.best = float(handle.attrs.get(SCORE_ATTR, -math.inf))
            except OSError as error:
                set_aside(self.filepath, error)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or value <= self.best:
            return
        self.best = float(value)
        save_weights_atomically(self.model, self.filepath, {SCORE_ATTR: self.best})


def keep_epochs_before(path, epoch):
    """Drops the rows of the CSV file `path` whose "epoch" column is `epoch` or later (and
    rows cut short by a kill); no rows left: the file goes, so its header is written anew.

    A run that was killed wrote rows after its last backup; resumed, it writes them again.
    """
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or "epoch" not in rows[0]:
        return
    header, body = rows[0], rows[1:]
    column = header.index("epoch")
    kept = [
        row
        for row in body
        if len(row) == len(header) and row[column].isdigit() and int(row[column]) < epoch
    ]
    if len(kept) == len(body):
        return
    if not kept:
        path.unlink()
        return
    partial = path.with_name(f".partial.{path.name}")
    with open(partial, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *kept])
    os.replace(partial, path)


class EpochCSVLogger(keras.callbacks.CSVLogger):
    """`CSVLogger` (appending) with one row per epoch across resumes: the file is opened at
    the first epoch the run trains, after dropping rows of that epoch and later ones.

    `columns` are written in every row, empty in epochs whose logs lack them (epochs that were
    not validated): Keras' logger takes its columns from the first epoch it sees.
    """

    def __init__(self, filename, separator=",", columns=()):
        super().__init__(filename, separator=separator, append=True)
        self._opened = False
        self.columns = tuple(columns)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {**{key: "" for key in self.columns}, **(logs or {})})

    def on_train_begin(self, logs=None):
        self._opened = False  # the first epoch is known only once the backup is restored

    def on_epoch_begin(self, epoch, logs=None):
        if not self._opened:
            keep_epochs_before(self.filename, epoch)
            super().on_train_begin()
            self._opened = True
