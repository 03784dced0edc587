"""Export a trained model for TF Serving (SavedModel), ONNX Runtime (ONNX) and scripts/predict.py.

    python scripts/export.py runs/demo          # the run's teacher -> exported/demo/<version>/
    python scripts/export.py runs/demo --network student --name digits --version 3
    python scripts/export.py path/to/teacher.keras --name mymodel

A run folder is what scripts/train.py writes: `teacher.keras` / `student.keras` (the best
checkpoint by teacher mIoU), `config.json` and `dataset.json` (class names and palette). The
version folder gets `saved_model.pb` + `variables/`, `model.onnx` (checked in ONNX Runtime) and
`metadata.json`. An existing version is never overwritten.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a run folder from train.py or a .keras model file")
    parser.add_argument("--network", choices=("teacher", "student"), default="teacher")
    parser.add_argument("--name", help="model name (default: the run's name or the file stem)")
    parser.add_argument("--out", default="exported", help="root of TF Serving's model folders")
    parser.add_argument("--version", type=int, help="version number (default: next free)")
    parser.add_argument("--no-onnx", action="store_true", help="SavedModel only")
    return parser.parse_args(argv)


def resolve_source(source, network):
    """(model file, run folder or None) for a run folder or a .keras file."""
    source = Path(source)
    if source.is_dir():
        model_file = source / f"{network}.keras"
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file}: no {network} model in this run folder")
        return model_file, source
    if source.is_file() and source.suffix == ".keras":
        return source, None
    raise FileNotFoundError(f"{source}: expected a run folder or a .keras file")


def load_json(path):
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def export_run(source, network="teacher", name=None, out="exported", version=None, onnx=True):
    """Loads the model of `source` and exports it; returns the version folder."""
    import keras

    import ppl_tf.layers  # noqa: F401  (registers the custom layers for loading)
    from ppl_tf.export import export_model

    model_file, run = resolve_source(source, network)
    try:
        model = keras.saving.load_model(model_file, compile=False)
    except Exception as error:  # Keras raises several types for unreadable archives
        raise ValueError(f"{model_file}: cannot load the model ({error})") from error
    dataset = load_json(run / "dataset.json") if run else None
    config = load_json(run / "config.json") if run else None
    name = name or (run.resolve().name if run else model_file.stem)
    return export_model(
        model,
        Path(out) / name,
        version=version,
        class_names=dataset and dataset.get("class_names"),
        palette=dataset and dataset.get("palette"),
        model_config=config,
        source_checkpoint=model_file,
        network=network,
        onnx=onnx,
    )


def main(argv=None):
    args = parse_args(argv)
    try:
        target = export_run(
            args.source, args.network, args.name, args.out, args.version, not args.no_onnx
        )
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"export.py: {error}", file=sys.stderr)
        return 2
    print(f"export.py: serve it with TF Serving from {target.parent} or run scripts/predict.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
