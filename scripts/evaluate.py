"""Evaluate a trained model on a validation set: mIoU and a per-class IoU table.

    python scripts/evaluate.py runs/demo                         # the run's teacher, its val set
    python scripts/evaluate.py runs/demo --network student --crop 64 --flip
    python scripts/evaluate.py exported/digits                   # an exported SavedModel
    python scripts/evaluate.py model.keras --config configs/voc_r50.yaml data_dir=/data/VOC2012

Whole-image evaluation by default; `--crop N` evaluates with sliding windows of N pixels (stride
2/3 of N) and `--flip` averages with the horizontally flipped image. The dataset comes from the
run's config.yaml, the export's metadata, or `--config` plus overrides; the split is the run's
val list (splits/val.txt) when present.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    from ppl_tf.choices import NETWORKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a run folder, a .keras file or an exported model folder")
    parser.add_argument("--network", choices=NETWORKS, default="teacher")
    parser.add_argument("--config", help="YAML config naming the dataset (default: the run's)")
    parser.add_argument("--crop", type=int, help="sliding-window size (default: whole image)")
    parser.add_argument("--flip", action="store_true", help="add horizontal-flip inference")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args(argv)


def fail(message):
    print(f"evaluate.py: {message}", file=sys.stderr)
    return 2


def resolve(args):
    """(predict function, TrainConfig, split folder or None, description)."""
    import keras

    import ppl_tf.layers  # noqa: F401  (registers the custom layers)
    from ppl_tf.config import TrainConfig, load_config
    from ppl_tf.evaluation import keras_predictor, saved_model_predictor
    from ppl_tf.inference import resolve_version

    source = Path(args.source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such run folder, model file or export")
    run, config = None, None
    if source.is_dir() and (source / "config.yaml").is_file():
        run = source
        model_file = run / f"{args.network}.keras"
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file}: the run has no {args.network} model")
    elif source.is_file():
        model_file = source
    else:
        folder = resolve_version(source)
        predict, metadata = saved_model_predictor(folder)
        values = {k: v for k, v in (metadata.get("model_config") or {}).items()}
        config = TrainConfig(**values) if values and not args.config else None
        if args.config or args.overrides:
            config = load_config(args.config, args.overrides)
        if config is None:
            raise ValueError(f"{folder}: no model config in metadata.json; pass --config")
        return predict, config, None, f"SavedModel {folder}"
    try:
        model = keras.saving.load_model(model_file, compile=False)
    except Exception as error:  # Keras raises several types for unreadable archives
        raise ValueError(f"{model_file}: cannot load the model ({error})") from None
    if args.config or run is None:
        config = load_config(args.config, args.overrides)
    else:
        config = load_config(run / "config.yaml", args.overrides)
    split_dir = run / "splits" if run and (run / "splits" / "val.txt").is_file() else None
    return keras_predictor(model), config, split_dir, f"{model_file}"


def main(argv=None):
    args = parse_args(argv)
    from ppl_tf.config import ConfigError, dataset_source
    from ppl_tf.data import DataError, SkippedSamples, eval_dataset, read_split_list
    from ppl_tf.evaluation import evaluate, format_table

    try:
        predict, config, split_dir, description = resolve(args)
        source = dataset_source(config)
        if split_dir is not None:
            val_ids = read_split_list(split_dir / "val.txt")
        elif source.val_ids:
            val_ids = source.val_ids
        elif source.split_dir is not None:
            val_ids = read_split_list(source.split_dir / "val.txt")
        else:
            raise DataError(f"{source.root}: no validation list")
        skipped = SkippedSamples()
        dataset = eval_dataset(source, val_ids, batch_size=args.batch_size, skipped=skipped)
        results = evaluate(predict, dataset, source.num_classes, args.crop, args.flip)
        if skipped:  # a score over part of the list would pass for one over all of it
            raise DataError(f"no score: {skipped.summary()}")
    except (FileNotFoundError, ValueError, ConfigError, DataError) as error:
        return fail(error)
    mode = f"sliding window {args.crop}" if args.crop else "whole image"
    mode += " + flip" if args.flip else ""
    print(f"{description} on {len(val_ids)} images ({mode})")
    print(format_table(source.class_names, {"IoU (%)": results["per_class_iou"]}))
    print(f"mIoU {100 * results['miou']:.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "miou": results["miou"],
                    "per_class_iou": dict(
                        zip(source.class_names, map(float, results["per_class_iou"]), strict=True)
                    ),
                    "mode": mode,
                    "model": description,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
