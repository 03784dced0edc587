"""Train PPL on the embedded digit scenes (the default) or a custom folder, then evaluate.

    python scripts/train.py [--data-dir DIR] [--epochs N] [--out runs/demo]

This is the first version of the main job (issue 5 grows it: YAML configs, strategies, export,
PNG grids). It trains with `model.fit` and Keras callbacks (progress bar, TensorBoard, CSV log,
best checkpoint by teacher mIoU, BackupAndRestore, TerminateOnNaN) and prints the final teacher
and student mIoU with per-class IoU.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="custom-format dataset folder (default: digit scenes)")
    parser.add_argument("--cache-dir", default="data_cache", help="where digit scenes are written")
    parser.add_argument("--labeled", default="1/16", help="labeled fraction or count")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps-per-epoch", type=int, default=60)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8, help="labeled and unlabeled each")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--base-lr", type=float, default=0.05)
    parser.add_argument("--num-stages", type=int, default=2)
    parser.add_argument("--unsupervised-weight", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demo")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import keras

    from ppl_tf.data import (
        AugmentConfig,
        DataError,
        custom_source,
        eval_dataset,
        make_splits,
        semi_supervised_dataset,
        validate,
    )
    from ppl_tf.data.digit_scenes import materialise
    from ppl_tf.models import build_segmenter
    from ppl_tf.training import PPLTrainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    try:
        root = Path(args.data_dir) if args.data_dir else materialise(args.cache_dir)
        source = custom_source(root)
        splits = make_splits(source, labeled=args.labeled, seed=args.seed, split_dir=out / "splits")
        splits, _ = validate(source, splits)
    except DataError as error:
        print(f"train.py: data error: {error}", file=sys.stderr)
        return 2
    print(
        f"data: {source.root} | {len(splits.labeled)} labeled, {len(splits.unlabeled)} unlabeled, "
        f"{len(splits.val)} val | {source.num_classes} classes"
    )
    train = semi_supervised_dataset(
        source, splits.labeled, splits.unlabeled, args.batch_size, args.batch_size,
        AugmentConfig(crop_size=args.crop_size), seed=args.seed, cache=True,
    )  # fmt: skip
    val = eval_dataset(source, splits.val, batch_size=16, cache=True)
    total_steps = args.epochs * args.steps_per_epoch
    student = build_segmenter(
        source.num_classes, "tiny", num_stages=args.num_stages, backbone_weights=None
    )
    trainer = PPLTrainer(
        student,
        total_steps=total_steps,
        warmup_steps=args.warmup_epochs * args.steps_per_epoch,
        unsupervised_weight=args.unsupervised_weight,
        backbone_lr_multiplier=1.0,  # no pretrained backbone to protect
    )
    trainer.compile(base_lr=args.base_lr)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(out / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "tensorboard")),
        keras.callbacks.ModelCheckpoint(
            str(out / "best.weights.h5"),
            monitor="val_teacher_miou",
            mode="max",
            save_best_only=True,
            save_weights_only=True,
        ),
    ]
    trainer.fit(
        train,
        steps_per_epoch=args.steps_per_epoch,
        epochs=args.epochs,
        validation_data=val,
        callbacks=callbacks,
    )
    logs = trainer.evaluate(val, return_dict=True, verbose=0)
    result = {
        "teacher_miou": float(logs["teacher_miou"]),
        "student_miou": float(logs["student_miou"]),
        "teacher_per_class_iou": dict(
            zip(source.class_names, map(float, trainer.per_class_iou("teacher")), strict=True)
        ),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    trainer.student.save(out / "student.keras")
    trainer.teacher.save(out / "teacher.keras")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
