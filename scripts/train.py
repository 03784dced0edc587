"""Train PPL (semi-supervised segmentation), evaluate teacher and student, export the better.

    python scripts/train.py                                   # the demo: digit scenes, 1/16 labels
    python scripts/train.py --config configs/voc_r50.yaml data_dir=/data/VOCdevkit/VOC2012
    python scripts/train.py --config configs/voc_r50.yaml labeled=1/8 batch_size=4 base_lr=0.005
    python scripts/train.py --strategy mirrored ...            # all visible GPUs
    TF_CONFIG=... python scripts/train.py --strategy multi_worker ...   # one process per machine

Keys are the fields of `ppl_tf.config.TrainConfig` (flat YAML; `key=value` overrides after the
config file). The run itself is `ppl_tf.run.train`; this script reads the command line and turns
errors into messages and exit codes.

A run folder (`out`) gets: config.yaml (resolved), splits/, log.csv, tensorboard/,
best.weights.h5 (by teacher mIoU), backup/ (BackupAndRestore: rerun the same command after an
interruption to resume), predictions/ (a PNG per epoch), predictions.png, curves.png,
pseudo_labels.csv/.png (per epoch and class: pseudo-label share beside the labeled share),
teacher.keras, student.keras, dataset.json and metrics.json; then the network that
`export_network` names (default: the one of higher validation mIoU) is exported to
`export_dir/<export_name>/<version>/` (SavedModel + ONNX, and model_int8.onnx with
`export_int8: true`).

Before any data is read the config is checked as a whole (exit 2 naming the keys); before
training, the labeled and val files are decoded and any bad one stops the run (exit 2, each
named, with the commands that go on without them). Unlabeled images that turn out undecodable
during training are left out with a warning naming each, and counted at the end.
"""

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    from ppl_tf.choices import STRATEGIES
    from ppl_tf.config import DEMO_CONFIG

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help=f"YAML config (default: {DEMO_CONFIG.relative_to(ROOT)})")
    parser.add_argument("--strategy", help=" | ".join(STRATEGIES))
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


def main(argv=None):
    args = parse_args(argv)
    from ppl_tf.config import DEMO_CONFIG, ConfigError, load_config

    overrides = list(args.overrides)
    if args.strategy:
        overrides.append(f"strategy={args.strategy}")
    try:
        config = load_config(args.config or DEMO_CONFIG, overrides)
    except ConfigError as error:
        return fail(error)

    from ppl_tf.data import DataError
    from ppl_tf.distribute import StrategyError
    from ppl_tf.run import RunError, TrainingDiverged, train

    try:
        train(config, args.cpu_replicas, data_hint=clean_splits_hint(args, config.out))
    except (StrategyError, RunError) as error:
        return fail(error)
    except DataError as error:
        return fail(f"data error: {error}")
    except TrainingDiverged as error:
        return fail(error, code=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
