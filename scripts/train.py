"""Train PPL (semi-supervised segmentation), evaluate teacher and student, export the better.

    python scripts/train.py                                   # the demo: digit scenes, 1/16 labels
    python scripts/train.py --config configs/voc_r50.yaml data_dir=/data/VOCdevkit/VOC2012
    python scripts/train.py --config configs/voc_r50.yaml labeled=1/8 batch_size=4 base_lr=0.005
    python scripts/train.py --strategy mirrored ...            # all visible GPUs
    TF_CONFIG=... python scripts/train.py --strategy multi_worker ...   # one process per machine

Keys are the fields of `ppl_tf.config.TrainConfig` (flat YAML; `key=value` overrides after the
config file). A run folder (`out`) gets: config.yaml (resolved), splits/, log.csv, tensorboard/,
best.weights.h5 (by teacher mIoU), backup/ (BackupAndRestore: rerun the same command after an
interruption to resume), predictions/ (a PNG per epoch), predictions.png, curves.png,
pseudo_labels.csv/.png (per epoch and class: pseudo-label share beside the labeled share),
teacher.keras, student.keras, dataset.json and metrics.json; then the network that
`export_network` names (default: the one of higher validation mIoU) is exported to
`export_dir/<export_name>/<version>/` (SavedModel + ONNX).

Before any data is read the config is checked as a whole (exit 2 naming the keys); before
training, the labeled and val files are decoded and any bad one stops the run (exit 2, each
named, with the commands that go on without them). Unlabeled images that turn out undecodable
during training are left out with a warning naming each, and counted at the end.
"""

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help=f"YAML config (default: {DEMO_CONFIG.relative_to(ROOT)})")
    parser.add_argument("--strategy", help="auto | one | mirrored | multi_worker")
    parser.add_argument("--cpu-replicas", type=int, help="split the CPU into N logical devices")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser.parse_args(argv)


def fail(message, code=2):
    print(f"train.py: {message}", file=sys.stderr)
    return code


def clean_splits_hint(args, out):
    """The commands that go on without the bad samples: scripts/validate.py writes split
    lists that leave them out, and `labeled=<folder>` trains on a folder's lists."""
    python = shlex.quote(sys.executable)
    scripts = Path(os.path.relpath(ROOT / "scripts"))
    config = ["--config", args.config] if args.config else []
    strategy = ["--strategy", args.strategy] if args.strategy else []
    replicas = ["--cpu-replicas", str(args.cpu_replicas)] if args.cpu_replicas else []
    clean = str(Path(out) / "clean_splits")
    validate = [*config, "--full", "--skip-bad", "--write-splits", clean, *args.overrides]
    train = [*config, *strategy, *replicas, *args.overrides, f"labeled={clean}"]
    return (
        "To train without them, write split lists that leave them out and train on those:\n"
        f"  {python} {shlex.quote(str(scripts / 'validate.py'))} {shlex.join(validate)}\n"
        f"  {python} {shlex.quote(str(scripts / 'train.py'))} {shlex.join(train)}"
    )


def load_data(config, out, write, hint=None):
    """(source, splits) of the configured dataset; writes the split lists into the run.

    Every file's header is read and the labeled and val files are decoded (a header can be
    intact in front of truncated data); a bad one is a DataError naming each, ending in
    `hint`. Unlabeled images are decoded only as training reads them (the pipeline leaves out
    those that fail): they are most of the data.
    """
    from ppl_tf.config import dataset_source
    from ppl_tf.data import DataError, Splits, make_splits, validate

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


def build(config, source, strategy, total_steps, warmup_steps):
    import keras

    from ppl_tf.models import build_segmenter
    from ppl_tf.training import PPLTrainer, use_synchronized_batchnorm

    with strategy.scope():
        student = build_segmenter(
            source.num_classes,
            config.backbone,
            num_stages=config.num_stages,
            memory_length=config.memory_length,
            output_stride=config.output_stride,
            backbone_weights=config.backbone_weights,
            use_attention=config.use_attention,
            aspp_rates=config.aspp_rates,
        )
        if strategy.num_replicas_in_sync > 1:
            use_synchronized_batchnorm(student)
        trainer = PPLTrainer(
            student,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            tau=config.tau,
            unsupervised_weight=config.unsupervised_weight,
            gamma=config.gamma,
            margin=config.margin,
            use_push=config.use_push,
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
    # Seeded twice on purpose: main() seeds the weight initialisation; this restarts the stream
    # so that training's random draws do not depend on how many draws building the model took.
    keras.utils.set_random_seed(config.seed)
    return trainer


def set_precision(config):
    import keras
    import tensorflow as tf

    policy = config.precision
    if policy == "auto":
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def main(argv=None):
    args = parse_args(argv)
    from ppl_tf.config import ConfigError, load_config, save_config

    overrides = list(args.overrides)
    if args.strategy:
        overrides.append(f"strategy={args.strategy}")
    try:
        config = load_config(args.config or DEMO_CONFIG, overrides)
    except ConfigError as error:
        return fail(error)

    import keras
    import numpy as np

    from ppl_tf.callbacks import (
        AtomicBackupAndRestore,
        BestCheckpoint,
        EpochCSVLogger,
        ShortProgbarLogger,
    )
    from ppl_tf.data import (
        AugmentConfig,
        DataError,
        SkippedSamples,
        eval_dataset,
        semi_supervised_dataset,
    )
    from ppl_tf.distribute import StrategyError, is_chief, make_strategy
    from ppl_tf.evaluation import evaluate, format_table, keras_predictor
    from ppl_tf.visualize import ImageLogger, PseudoLabelLog, plot_curves, save_prediction_grid

    try:
        strategy = make_strategy(config.strategy, args.cpu_replicas)
    except StrategyError as error:
        return fail(error)
    chief = is_chief()
    out = Path(config.out)
    # Non-chief workers run the same callbacks into a scratch folder nobody reads.
    work = out if chief else out / f".worker_{json.loads(os.environ['TF_CONFIG'])['task']['index']}"
    work.mkdir(parents=True, exist_ok=True)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        return fail(
            f"batch_size={config.batch_size} is not divisible by the {replicas} replicas of "
            f"strategy={config.strategy}"
        )
    keras.utils.set_random_seed(config.seed)
    policy = set_precision(config)
    try:
        source, splits = load_data(config, work, write=chief, hint=clean_splits_hint(args, out))
    except DataError as error:
        return fail(f"data error: {error}")
    unlabeled = splits.unlabeled
    distinct = len(set(splits.labeled) | set(splits.unlabeled))
    steps_per_epoch = config.steps_per_epoch or math.ceil(distinct / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    print(
        f"data: {source.root} | {len(splits.labeled)} labeled, {len(splits.unlabeled)} "
        f"unlabeled, {len(splits.val)} val | {source.num_classes} classes\n"
        f"run: {config.epochs} epochs x {steps_per_epoch} steps, global batch "
        f"{config.batch_size}+{config.batch_size} ({config.batch_size // replicas}+"
        f"{config.batch_size // replicas} per replica, {replicas} replicas, "
        f"{type(strategy).__name__}), precision {policy}, out {out}"
    )
    if chief:
        save_config(config, out / "config.yaml")
        (out / "dataset.json").write_text(json.dumps({
            "class_names": list(source.class_names),
            "palette": [list(map(int, c)) for c in source.palette],
            "root": str(source.root),
        }, indent=1) + "\n")  # fmt: skip

    augment = AugmentConfig(
        crop_size=config.crop_size,
        scale_range=(config.scale_min, config.scale_max),
        cutmix=config.cutmix,
        blur_sigma=tuple(config.blur_sigma) if config.blur_sigma else None,
    )
    skipped = SkippedSamples()
    train = semi_supervised_dataset(
        source, splits.labeled, unlabeled, config.batch_size, config.batch_size, augment,
        seed=config.seed, cache=config.dataset == "digits", skipped=skipped,
    )  # fmt: skip
    val = eval_dataset(
        source, splits.val, batch_size=config.eval_batch_size, cache=True, skipped=skipped
    )
    trainer = build(config, source, strategy, total_steps, config.warmup_epochs * steps_per_epoch)
    # A few val images for the per-epoch images (if any) and the final grid.
    val_images, val_masks = next(iter(val.unbatch().batch(config.images_to_log or 4)))
    callbacks = [
        ShortProgbarLogger(),
        keras.callbacks.TerminateOnNaN(),
        EpochCSVLogger(str(work / "log.csv")),
        keras.callbacks.TensorBoard(str(work / "tensorboard")),
        BestCheckpoint(work / "best.weights.h5", monitor="val_teacher_miou"),
    ]
    if chief and config.use_unlabeled:
        pseudo_log = PseudoLabelLog(
            source.class_names, work / "pseudo_labels.csv", work / "pseudo_labels.png"
        )
        callbacks.append(pseudo_log)
    if chief and config.images_to_log:
        callbacks.append(
            ImageLogger(
                val_images.numpy(),
                val_masks.numpy(),
                source.palette,
                work / "tensorboard",
                work / "predictions",
                tau=config.tau,
            )  # fmt: skip
        )
    # Last: an epoch is backed up (counts as done) only once everything it writes is written.
    callbacks.append(AtomicBackupAndRestore(str(work / "backup")))
    start = time.perf_counter()
    history = trainer.fit(
        train,
        steps_per_epoch=steps_per_epoch,
        epochs=config.epochs,
        validation_data=val,
        callbacks=callbacks,
        verbose=1 if chief else 0,
    )
    train_seconds = time.perf_counter() - start
    if skipped:  # also in metrics.json; val images were decoded at start, so hardly ever val
        print(f"data: {skipped.summary()}", file=sys.stderr)
    losses = history.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        return fail(
            f"training stopped: the loss became {losses[-1]} in epoch {len(losses)}. The best "
            f"checkpoint so far is {work / 'best.weights.h5'}; lower base_lr and rerun.",
            code=3,
        )
    # Every worker keeps its final weights (non-chief ones in their scratch folder): the
    # replicas of a multi-worker run can be compared.
    trainer.save_weights(work / "final.weights.h5")
    if not chief:
        return 0
    steps = int(trainer.optimizer.iterations.numpy())
    best = out / "best.weights.h5"
    if best.is_file():
        trainer.load_weights(best)
    results = {}
    for network in ("teacher", "student"):
        model = getattr(trainer, network)
        result = evaluate(
            keras_predictor(model), val, source.num_classes, config.eval_crop, config.eval_flip
        )
        results[network] = result
    metrics = {
        "teacher_miou": results["teacher"]["miou"],
        "student_miou": results["student"]["miou"],
        "teacher_per_class_iou": dict(zip(source.class_names,
            map(float, results["teacher"]["per_class_iou"]), strict=True)),
        "student_per_class_iou": dict(zip(source.class_names,
            map(float, results["student"]["per_class_iou"]), strict=True)),
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "checkpoint": str(best if best.is_file() else "last epoch"),
        "eval": {"crop": config.eval_crop, "flip": config.eval_flip},
        "skipped_samples": {f"{split}/{sample_id}": message
                            for (split, sample_id), message in skipped.messages.items()},
    }  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    table = format_table(
        source.class_names,
        {n: results[n]["per_class_iou"] for n in ("teacher", "student")},
    )
    (out / "per_class_iou.md").write_text(table + "\n")
    trainer.student.save(out / "student.keras")
    trainer.teacher.save(out / "teacher.keras")
    save_prediction_grid(
        out / "predictions.png", trainer.teacher, val_images.numpy(), val_masks.numpy(),
        source.palette, tau=config.tau,
    )  # fmt: skip
    if (out / "log.csv").is_file():
        plot_curves(out / "log.csv", out / "curves.png")
    print(table)
    print(
        f"teacher mIoU {100 * metrics['teacher_miou']:.2f}, student mIoU "
        f"{100 * metrics['student_miou']:.2f} after {steps} steps ({train_seconds / 60:.1f} min)"
    )
    if config.export:
        from ppl_tf.export import choose_network, export_model

        scores = {n: metrics[f"{n}_miou"] for n in ("teacher", "student")}
        network = choose_network(config.export_network, scores)
        model = getattr(trainer, network)
        keras.mixed_precision.set_global_policy("float32")
        target = export_model(
            model if policy == "float32" else _float32_copy(config, source, model),
            Path(config.export_dir) / (config.export_name or out.resolve().name),
            class_names=source.class_names,
            palette=source.palette,
            model_config=config.to_dict(),
            source_checkpoint=out / f"{network}.keras",
            network=network,
            network_choice=config.export_network,
            validation_miou=scores,
        )
        print(
            f"exported the {network} (export_network={config.export_network}; val mIoU teacher "
            f"{100 * scores['teacher']:.2f}, student {100 * scores['student']:.2f}): {target}"
        )
    return 0


def _float32_copy(config, source, model):
    """A float32 twin of a mixed-precision model (exports are float32)."""
    from ppl_tf.models import build_segmenter

    twin = build_segmenter(
        source.num_classes, config.backbone, num_stages=config.num_stages,
        memory_length=config.memory_length, output_stride=config.output_stride,
        backbone_weights=None, use_attention=config.use_attention,
        aspp_rates=config.aspp_rates,
    )  # fmt: skip
    twin.set_weights(model.get_weights())
    return twin


if __name__ == "__main__":
    sys.exit(main())
