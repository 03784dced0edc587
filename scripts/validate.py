"""Check a dataset before training: every file of the split lists, with errors that name them.

    python scripts/validate.py --config configs/voc_r50.yaml data_dir=/data/VOCdevkit/VOC2012
    python scripts/validate.py dataset=custom data_dir=my_data labeled=1/8 --full
    python scripts/validate.py dataset=custom data_dir=my_data --skip-bad --write-splits clean/

The quick pass reads file headers (missing files, undecodable images, image and mask modes,
image/mask size mismatches); `--full` decodes every file and checks label values too. Exit code
0 when everything is usable, 1 when problems were found (all listed), 2 for a bad config.
`--skip-bad` lists the bad samples and, with `--write-splits`, writes split lists without them.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML config naming the dataset (default: the demo's)")
    parser.add_argument("--full", action="store_true", help="decode every file, check labels")
    parser.add_argument("--skip-bad", action="store_true", help="list bad samples, keep the rest")
    parser.add_argument("--write-splits", help="write the (cleaned) split lists to this folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args(argv)


def main(argv=None):
    from ppl_tf.config import DEMO_CONFIG, ConfigError, dataset_source, load_config
    from ppl_tf.data import DataError, make_splits, validate
    from ppl_tf.data.splits import write_splits

    args = parse_args(argv)
    try:
        config = load_config(args.config or DEMO_CONFIG, args.overrides)
    except ConfigError as error:
        print(f"validate.py: {error}", file=sys.stderr)
        return 2
    try:
        source = dataset_source(config)
        labeled = "1/1" if config.labeled == "all" else config.labeled
        splits = make_splits(source, labeled, seed=config.seed)
        splits, report = validate(
            source,
            splits,
            full=args.full,
            skip_bad=args.skip_bad,
            hint="(add --skip-bad --write-splits FOLDER to write split lists without them; "
            "train with labeled=FOLDER)",
        )
    except DataError as error:
        print(f"validate.py: {error}", file=sys.stderr)
        return 1
    if args.write_splits:
        write_splits(args.write_splits, splits)
    kind = "full" if args.full else "quick"
    print(
        f"validate.py: {source.root}: {report.checked} samples checked ({kind} pass), "
        f"{len(report.bad_ids)} bad; {len(splits.labeled)} labeled, {len(splits.unlabeled)} "
        f"unlabeled, {len(splits.val)} val usable"
    )
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
