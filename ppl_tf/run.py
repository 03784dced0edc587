"""A training run as `scripts/train.py` does it: config -> data -> segmenter and trainer ->
callbacks -> fit -> evaluation of teacher and student -> run folder -> export.

    from ppl_tf.config import DEMO_CONFIG, load_config
    from ppl_tf.run import train

    metrics = train(load_config(DEMO_CONFIG, ["epochs=2", "out=runs/try"]))

`train` returns the metrics it writes to `metrics.json` (None on a non-chief worker of a
multi-worker run: only the chief evaluates and writes). What it writes into the run folder is
listed in `scripts/train.py`'s docstring. A run that cannot start raises `RunError`,
`ppl_tf.distribute.StrategyError` or `ppl_tf.data.DataError` (scripts/train.py: exit 2); a run
whose loss stopped being finite raises `TrainingDiverged` after the epoch that showed it (exit 3).
The other functions are the steps of `train`, for callers that need one of them.
"""

import json
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ppl_tf.callbacks import (
    EPOCH_END_KEYS,
    AtomicBackupAndRestore,
    BestCheckpoint,
    EpochCSVLogger,
    ShortProgbarLogger,
    StepTimer,
)
from ppl_tf.choices import NETWORKS
from ppl_tf.config import dataset_source, save_config
from ppl_tf.data import (
    AugmentConfig,
    DataError,
    SkippedSamples,
    Splits,
    eval_dataset,
    make_splits,
    semi_supervised_dataset,
    validate,
)
from ppl_tf.distribute import is_chief, make_strategy, task_index
from ppl_tf.evaluation import evaluate, format_table, keras_predictor
from ppl_tf.models import build_segmenter
from ppl_tf.training import PPLTrainer
from ppl_tf.visualize import ImageLogger, PseudoLabelLog, plot_curves, save_prediction_grid


class RunError(RuntimeError):
    """A run that cannot start with its config on this machine; the message names the keys."""


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the message names the epoch and the best checkpoint."""


def train(config, cpu_replicas=None, data_hint=None):
    """Trains, evaluates, writes the run folder `config.out` and exports; returns the metrics.

    `cpu_replicas` splits the CPU into that many logical devices (for `strategy=mirrored`
    without GPUs); `data_hint` ends the message of a `DataError` about bad files (train.py
    names the commands that go on without them).
    """
    strategy = make_strategy(config.strategy, cpu_replicas)
    chief = is_chief()
    out = Path(config.out)
    # Non-chief workers run the same callbacks into a scratch folder nobody reads.
    work = out if chief else out / f".worker_{task_index()}"
    work.mkdir(parents=True, exist_ok=True)
    check_batch_size(config, strategy.num_replicas_in_sync)
    keras.utils.set_random_seed(config.seed)
    policy = set_precision(config.precision)
    source, splits = load_data(config, work, write=chief, hint=data_hint)
    steps_per_epoch = config.steps_per_epoch or default_steps_per_epoch(splits, config.batch_size)
    print_plan(config, source, splits, steps_per_epoch, strategy, policy)
    if chief:
        write_run_description(config, source, out)
    skipped = SkippedSamples()
    train_data, val_data = datasets(config, source, splits, skipped)
    trainer = build_trainer(
        config,
        source.num_classes,
        strategy,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=config.warmup_epochs * steps_per_epoch,
    )
    # A few val images for the per-epoch images (if any) and the final grid.
    examples = next(iter(val_data.unbatch().batch(config.images_to_log or 4)))
    val_images, val_masks = (tensor.numpy() for tensor in examples)
    callbacks = run_callbacks(config, source, work, chief, val_images, val_masks)
    step_timer = StepTimer()  # first: its step times leave out the other callbacks' work
    callbacks.insert(0, step_timer)
    start = time.perf_counter()
    history = trainer.fit(
        train_data,
        steps_per_epoch=steps_per_epoch,
        epochs=config.epochs,
        validation_data=val_data,
        validation_freq=validation_epochs(config.epochs, config.validate_every),
        callbacks=callbacks,
        verbose=1 if chief else 0,
    )
    train_seconds = time.perf_counter() - start
    timing = {"train_seconds": train_seconds, "step_seconds": step_timer.seconds}
    if skipped:  # also in metrics.json; val images were decoded at start, so hardly ever val
        print(f"data: {skipped.summary()}", file=sys.stderr)
    check_finite(history.history.get("loss", []), work / "best.weights.h5")
    # Every worker keeps its final weights (non-chief ones in their scratch folder): the
    # replicas of a multi-worker run can be compared.
    trainer.save_weights(work / "final.weights.h5")
    if not chief:
        return None
    metrics = evaluate_and_save(config, trainer, source, val_data, out, timing, skipped)
    grid = out / "predictions.png"
    save_prediction_grid(grid, trainer.teacher, val_images, val_masks, source.palette, config.tau)
    if (out / "log.csv").is_file():
        plot_curves(out / "log.csv", out / "curves.png")
    if config.export:
        export_better_network(config, trainer, source, metrics, precision=policy, splits=splits)
    return metrics


# ------------------------------------------------------------------------------ before fit


def check_batch_size(config, replicas):
    if config.batch_size % replicas:
        raise RunError(
            f"batch_size={config.batch_size} is not divisible by the {replicas} replicas of "
            f"strategy={config.strategy}"
        )


def set_precision(name):
    """Sets Keras' global dtype policy `name` ("auto": mixed_float16 on a GPU, else float32)
    and returns the policy's name."""
    policy = name
    if policy == "auto":
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def load_data(config, out, write, hint=None):
    """(source, splits) of the configured dataset; writes the split lists into `out/splits`.

    Every file's header is read and the labeled and val files are decoded (a header can be
    intact in front of truncated data); a bad one is a DataError naming each, ending in
    `hint`. Unlabeled images are decoded only as training reads them (the pipeline leaves out
    those that fail): they are most of the data.
    """
    source = dataset_source(config, verbose=write)
    labeled = "1/1" if config.labeled == "all" else config.labeled
    splits = make_splits(
        source, labeled, seed=config.seed, split_dir=out / "splits" if write else None
    )
    if not splits.unlabeled:  # every image labeled: the unlabeled stream reuses them
        splits = Splits(splits.labeled, splits.labeled, splits.val)
    start = time.perf_counter()
    splits, report = validate(source, splits, full=("labeled", "val"), hint=hint)
    if time.perf_counter() - start > 5:
        print(f"data: checked {report.checked} samples in {time.perf_counter() - start:.0f} s")
    if config.noise_ratio is not None:
        unlabeled = source.resolve(splits.unlabeled, "unlabeled")
        missing = [s.id for s in unlabeled if not s.has_mask]
        if missing:
            raise DataError(
                f"noise_ratio={config.noise_ratio}: the noise study draws pseudo-labels from "
                f"the unlabeled images' ground truth, but {len(missing)} have no mask "
                f"(e.g. {missing[0]}); set noise_ratio=null"
            )
    return source, splits


def default_steps_per_epoch(splits, batch_size):
    """One pass over the distinct training images (labeled and unlabeled) per epoch."""
    distinct = len(set(splits.labeled) | set(splits.unlabeled))
    return math.ceil(distinct / batch_size)


def print_plan(config, source, splits, steps_per_epoch, strategy, policy):
    replicas = strategy.num_replicas_in_sync
    batch, per_replica = config.batch_size, config.batch_size // replicas
    print(
        f"data: {source.root} | {len(splits.labeled)} labeled, {len(splits.unlabeled)} "
        f"unlabeled, {len(splits.val)} val | {source.num_classes} classes\n"
        f"run: {config.epochs} epochs x {steps_per_epoch} steps, global batch {batch}+{batch} "
        f"({per_replica}+{per_replica} per replica, {replicas} replicas, "
        f"{type(strategy).__name__}), precision {policy}, out {Path(config.out)}"
    )


def write_run_description(config, source, out):
    """config.yaml (the resolved config) and dataset.json (classes, palette, data root): what
    scripts/evaluate.py and scripts/export.py read back."""
    save_config(config, out / "config.yaml")
    dataset = {
        "class_names": list(source.class_names),
        "palette": [list(map(int, color)) for color in source.palette],
        "root": str(source.root),
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n")


def augment_config(config):
    """The training stream's `AugmentConfig` for a `TrainConfig`."""
    return AugmentConfig(
        crop_size=config.crop_size,
        scale_range=(config.scale_min, config.scale_max),
        cutmix=config.cutmix,
        blur_sigma=tuple(config.blur_sigma) if config.blur_sigma else None,
    )


def datasets(config, source, splits, skipped):
    """(training stream, validation batches); unreadable samples are recorded in `skipped`."""
    augment = augment_config(config)
    train_data = semi_supervised_dataset(
        source,
        splits.labeled,
        splits.unlabeled,
        config.batch_size,
        config.batch_size,
        augment,
        seed=config.seed,
        cache=config.dataset == "digits",
        skipped=skipped,
    )
    val_data = eval_dataset(
        source, splits.val, batch_size=config.eval_batch_size, cache=True, skipped=skipped
    )
    return train_data, val_data


def segmenter_from_config(config, num_classes, pretrained=True):
    """The segmenter `config` describes; `pretrained=False` skips the backbone's weights (for a
    model whose weights are set afterwards)."""
    return build_segmenter(
        num_classes,
        config.backbone,
        num_stages=config.num_stages,
        memory_length=config.memory_length,
        output_stride=config.output_stride,
        backbone_weights=config.backbone_weights if pretrained else None,
        use_attention=config.use_attention,
        aspp_rates=config.aspp_rates,
        attention_output_gamma=config.attention_output_gamma,
        rescale_heads=config.rescale_heads,
        scaled_attention=config.scaled_attention,
    )


def build_trainer(config, num_classes, strategy, total_steps, warmup_steps):
    """The compiled `PPLTrainer` around a new segmenter, built under `strategy` (which makes
    its BatchNorm synchronized when there are several replicas)."""
    with strategy.scope():
        trainer = PPLTrainer(
            segmenter_from_config(config, num_classes),
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            tau=config.tau,
            unsupervised_weight=config.unsupervised_weight,
            gamma=config.gamma,
            margin=config.margin,
            use_push=config.use_push,
            contrast_weight=config.contrast_weight,
            use_unlabeled=config.use_unlabeled,
            weight_decay=config.weight_decay,
            backbone_lr_multiplier=config.backbone_lr_multiplier,
            ohem=config.ohem,
            noise_ratio=config.noise_ratio,
            ema_start=config.ema_alpha_start,
            ema_end=config.ema_alpha_end,
            joint_batchnorm=config.joint_batchnorm,
        )
        trainer.compile(optimizer=config.optimizer, base_lr=config.base_lr)
    # Seeded twice on purpose: `train` seeds the weight initialization; this restarts the
    # stream so that training's random draws do not depend on how many draws building took.
    keras.utils.set_random_seed(config.seed)
    return trainer


def validation_epochs(epochs, every):
    """The epochs (counted from 1) after which a run validates, logs images and backs up:
    every `every`-th, the first (log.csv takes its columns from it) and the last."""
    return sorted({1, epochs, *range(every, epochs + 1, every)})


def run_callbacks(config, source, work, chief, val_images, val_masks):
    """Progress bar, NaN stop, log.csv, TensorBoard, best checkpoint, the chief's pseudo-label
    log and images, and last the backup."""
    validated = validation_epochs(config.epochs, config.validate_every)
    callbacks = [
        ShortProgbarLogger(),
        keras.callbacks.TerminateOnNaN(),
        EpochCSVLogger(str(work / "log.csv"), columns=EPOCH_END_KEYS),
        keras.callbacks.TensorBoard(str(work / "tensorboard")),
        BestCheckpoint(work / "best.weights.h5", monitor="val_teacher_miou"),
    ]
    if chief and config.use_unlabeled:
        callbacks.append(
            PseudoLabelLog(
                source.class_names, work / "pseudo_labels.csv", work / "pseudo_labels.png"
            )
        )
    if chief and config.images_to_log:
        callbacks.append(
            ImageLogger(
                val_images,
                val_masks,
                source.palette,
                work / "tensorboard",
                work / "predictions",
                tau=config.tau,
                epochs=validated,
            )
        )
    # Last: an epoch is backed up (counts as done) only once everything it writes is written.
    callbacks.append(AtomicBackupAndRestore(str(work / "backup"), epochs=validated))
    return callbacks


# ------------------------------------------------------------------------------- after fit


def check_finite(losses, best_checkpoint):
    """TrainingDiverged when the last epoch's loss is not finite (TerminateOnNaN stopped it)."""
    if losses and not np.isfinite(losses[-1]):
        raise TrainingDiverged(
            f"training stopped: the loss became {losses[-1]} in epoch {len(losses)}. The best "
            f"checkpoint so far is {best_checkpoint}; lower base_lr and rerun."
        )


def evaluate_and_save(config, trainer, source, val_data, out, timing, skipped):
    """Evaluates teacher and student from the best checkpoint (if any) and writes
    metrics.json, per_class_iou.md, teacher.keras and student.keras; returns the metrics.

    `timing`: {"train_seconds": fit's wall time, "step_seconds": its time inside train steps}.
    """
    train_seconds = timing["train_seconds"]
    steps = int(trainer.optimizer.iterations.numpy())
    best = out / "best.weights.h5"
    if best.is_file():
        trainer.load_weights(best)
    results = {}
    for network in NETWORKS:
        predict = keras_predictor(getattr(trainer, network))
        results[network] = evaluate(
            predict, val_data, source.num_classes, config.eval_crop, config.eval_flip
        )
    per_class = {n: results[n]["per_class_iou"] for n in NETWORKS}
    metrics = {f"{n}_miou": results[n]["miou"] for n in NETWORKS}
    for network in NETWORKS:
        scores = map(float, per_class[network])
        metrics[f"{network}_per_class_iou"] = dict(zip(source.class_names, scores, strict=True))
    metrics.update(
        steps=steps,
        train_seconds=round(train_seconds, 1),
        step_seconds=round(timing["step_seconds"], 1),
        checkpoint=str(best if best.is_file() else "last epoch"),
        eval={"crop": config.eval_crop, "flip": config.eval_flip},
        skipped_samples={
            f"{split}/{sample_id}": message
            for (split, sample_id), message in skipped.messages.items()
        },
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    table = format_table(source.class_names, per_class)
    (out / "per_class_iou.md").write_text(table + "\n")
    trainer.student.save(out / "student.keras")
    trainer.teacher.save(out / "teacher.keras")
    print(table)
    print(
        f"teacher mIoU {100 * metrics['teacher_miou']:.2f}, student mIoU "
        f"{100 * metrics['student_miou']:.2f} after {steps} steps ({train_seconds / 60:.1f} min)"
    )
    return metrics


def export_better_network(config, trainer, source, metrics, precision="float32", splits=None):
    """Exports the network `config.export_network` names (best: higher validation mIoU) to
    `export_dir/<export_name or the run folder's name>/<next version>/`, in float32; with
    `config.export_int8` also its int8 ONNX model, calibrated on the run's training images
    (`splits`, else the lists in the run folder's splits/)."""
    from ppl_tf.export import choose_network, export_model, training_calibration

    out = Path(config.out)
    scores = {n: metrics[f"{n}_miou"] for n in NETWORKS}
    network = choose_network(config.export_network, scores)
    model = getattr(trainer, network)
    keras.mixed_precision.set_global_policy("float32")
    if precision != "float32":  # exports are float32: a float32 twin with the same weights
        twin = segmenter_from_config(config, source.num_classes, pretrained=False)
        twin.set_weights(model.get_weights())
        model = twin
    calibration = None
    if config.export_int8:
        ids = None if splits is None else splits.labeled + splits.unlabeled
        calibration = training_calibration(config, source, ids, split_dir=out / "splits")
    target = export_model(
        model,
        Path(config.export_dir) / (config.export_name or out.resolve().name),
        class_names=source.class_names,
        palette=source.palette,
        model_config=config.to_dict(),
        source_checkpoint=out / f"{network}.keras",
        network=network,
        network_choice=config.export_network,
        validation_miou=scores,
        int8_calibration=calibration,
    )
    print(
        f"exported the {network} (export_network={config.export_network}; val mIoU teacher "
        f"{100 * scores['teacher']:.2f}, student {100 * scores['student']:.2f}): {target}"
    )
    return target
