"""Export a trained model for TF Serving (SavedModel), ONNX Runtime (ONNX) and scripts/predict.py.

    python scripts/export.py runs/demo          # the run's choice -> exported/demo/<version>/
    python scripts/export.py runs/demo --network student --name digits --version 3
    python scripts/export.py path/to/teacher.keras --name mymodel
    python scripts/export.py runs/demo --int8   # also model_int8.onnx, for CPU serving

A run folder is what scripts/train.py writes: `teacher.keras` / `student.keras` (the best
checkpoint by teacher mIoU), `config.yaml`, `dataset.json` (class names and palette) and
`metrics.json` (both networks' validation mIoU). `--network` defaults to the run's
`export_network` (default "best": the network of higher validation mIoU). The version folder
gets `saved_model.pb` + `variables/`, `model.onnx` (checked in ONNX Runtime) and
`metadata.json` (with the run's config, so that scripts/evaluate.py finds the dataset). An
existing version is never overwritten.

`--int8` (default: the run's `export_int8`, unless --no-onnx) also writes `model_int8.onnx`:
model.onnx statically quantized with ONNX Runtime's tools, calibrated on `--int8-calibration`
(default: the run's `export_int8_calibration`, 64) of the run's training images (labeled +
unlabeled, from its splits/) as `crop_size` crops. It needs a run folder (for the training
images) and ONNX. `scripts/predict.py --int8` runs it.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    from ppl_tf.choices import EXPORT_NETWORKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a run folder from train.py or a .keras model file")
    parser.add_argument(
        "--network",
        choices=EXPORT_NETWORKS,
        help="default: the run's export_network (best: higher validation mIoU); teacher for a "
        ".keras file",
    )
    parser.add_argument("--name", help="model name (default: the run's name or the file stem)")
    parser.add_argument("--out", default="exported", help="root of TF Serving's model folders")
    parser.add_argument("--version", type=int, help="version number (default: next free)")
    parser.add_argument("--no-onnx", action="store_true", help="SavedModel only")
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        help="also write model_int8.onnx, calibrated on the run's training images (default: the "
        "run's export_int8)",
    )
    parser.add_argument(
        "--int8-calibration",
        type=int,
        metavar="N",
        help="calibration images for --int8 (default: the run's export_int8_calibration)",
    )
    return parser.parse_args(argv)


def load_json(path):
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def run_choice(run, network):
    """(network, choice, {network: validation mIoU} or None, TrainConfig) of a run folder."""
    from ppl_tf.choices import NETWORKS
    from ppl_tf.config import load_config
    from ppl_tf.export import choose_network

    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not found; is {run} a run folder of train.py?")
    config = load_config(config_file)  # a ConfigError names the file and the key
    choice = network or config.export_network
    metrics = load_json(run / "metrics.json")
    scores = metrics and {n: metrics[f"{n}_miou"] for n in NETWORKS}
    if choice == "best" and scores is None:
        raise FileNotFoundError(
            f"{run / 'metrics.json'}: not found, so the better network is unknown (did the run "
            "finish?); pass --network teacher or --network student"
        )
    return choose_network(choice, scores), choice, scores, config


def export_run(
    source,
    network=None,
    name=None,
    out="exported",
    version=None,
    onnx=True,
    int8=None,
    int8_calibration=None,
):
    """Loads the model of `source` and exports it; returns the version folder.

    `int8` None follows the run's `export_int8`; `int8_calibration` None its
    `export_int8_calibration`.
    """
    import dataclasses

    import keras

    import ppl_tf.layers  # noqa: F401  (registers the custom layers for loading)
    from ppl_tf.export import export_model, training_calibration

    source = Path(source)
    if int8_calibration is not None and int8_calibration < 1:
        raise ValueError(f"--int8-calibration must be at least 1, got {int8_calibration}")
    if source.is_dir():
        run = source
        network, choice, scores, config = run_choice(run, network)
        model_file = run / f"{network}.keras"
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file}: no {network} model in this run folder")
        int8 = (config.export_int8 and onnx) if int8 is None else int8
    elif source.is_file() and source.suffix == ".keras":
        if network == "best":
            raise ValueError(f"{source}: --network best needs a run folder, not a model file")
        if int8:
            raise ValueError(
                f"{source}: --int8 calibrates on the run's training images, so it needs a run "
                "folder, not a model file"
            )
        run, model_file, config, scores = None, source, None, None
        network = choice = network or "teacher"
    else:
        raise FileNotFoundError(f"{source}: expected a run folder or a .keras file")
    if int8 and not onnx:
        raise ValueError(
            "the int8 model is quantized from model.onnx: --int8 cannot go with --no-onnx"
        )
    calibration = None
    if int8:
        if int8_calibration is not None:
            config = dataclasses.replace(config, export_int8_calibration=int8_calibration)
        calibration = training_calibration(config, split_dir=run / "splits")
    try:
        model = keras.saving.load_model(model_file, compile=False)
    except Exception as error:  # Keras raises several types for unreadable archives
        raise ValueError(f"{model_file}: cannot load the model ({error})") from error
    dataset = load_json(run / "dataset.json") if run else None
    name = name or (run.resolve().name if run else model_file.stem)
    return export_model(
        model,
        Path(out) / name,
        version=version,
        class_names=dataset and dataset.get("class_names"),
        palette=dataset and dataset.get("palette"),
        model_config=config and config.to_dict(),
        source_checkpoint=model_file,
        network=network,
        onnx=onnx,
        network_choice=choice,
        validation_miou=scores,
        int8_calibration=calibration,
    )


def main(argv=None):
    args = parse_args(argv)
    try:
        target = export_run(
            args.source,
            args.network,
            args.name,
            args.out,
            args.version,
            not args.no_onnx,
            args.int8,
            args.int8_calibration,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"export.py: {error}", file=sys.stderr)
        return 2
    print(f"export.py: serve it with TF Serving from {target.parent} or run scripts/predict.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
