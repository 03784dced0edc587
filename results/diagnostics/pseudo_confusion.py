"""What the wrong pseudo-labels of trained teachers are, head by head.

    python results/diagnostics/pseudo_confusion.py --out results/diagnostics/pseudo_confusion \
        results/experiments/table3/push_only_s0 ...

For every run folder (its `teacher.keras`, `config.yaml` and `splits/unlabeled.txt`), the
teacher predicts every unlabeled training image whole (no augmentation) with each of its heads
(the n stages' classifiers, then the final one), and each head's confident pixels (max softmax
> the run's tau) are compared with the hidden ground truth. The paper's pulling interaction is
meant to help where "a pseudo negative prototype is actually positive": a pixel given a wrong
class whose own class is close behind. This counts how much of the noise is of that kind here:

- coverage: share of all pixels that pass tau; fg_coverage: share of digit pixels that do;
- error: share of confident pixels that are wrong, split into digit -> background (fg_as_bg),
  background -> digit (bg_as_fg) and digit -> another digit (fg_as_fg);
- digit_error: share of wrong ones among the confident pixels that are digits or called digits;
- true_rank2: share of wrong confident pixels whose true class is the head's second choice;
- pseudo_miou: mIoU of the confident pixels.

Writes `pseudo_confusion.csv` (a row per run and head) and prints it.
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import ppl_tf.layers  # noqa: E402, F401  (registers the custom layers)
from ppl_tf.config import dataset_source, load_config  # noqa: E402
from ppl_tf.data.splits import read_split_list  # noqa: E402
from ppl_tf.evaluation import confusion_matrix, iou_from_confusion  # noqa: E402
from ppl_tf.models.segmenter import build_training_view  # noqa: E402

FIELDS = [
    "run",
    "head",
    "coverage",
    "fg_coverage",
    "error",
    "fg_as_bg",
    "bg_as_fg",
    "fg_as_fg",
    "digit_error",
    "true_rank2",
    "pseudo_miou",
]


def head_rows(run, limit=None, batch_size=50):
    config = load_config(run / "config.yaml")
    source = dataset_source(config)
    samples = source.resolve(read_split_list(run / "splits" / "unlabeled.txt"), "unlabeled")
    samples = samples[:limit]
    model = keras.saving.load_model(run / "teacher.keras", compile=False)
    view = build_training_view(model)
    k = source.num_classes
    heads = None
    for start in range(0, len(samples), batch_size):
        pairs = [source.read(s) for s in samples[start : start + batch_size]]
        images = tf.constant(np.stack([p[0] for p in pairs]), tf.float32)
        truth = np.stack([p[1] for p in pairs]).astype(np.int64)
        logits = view(images, training=False)["logits"]
        if heads is None:
            heads = [Counts(k) for _ in logits]
        for counts, head in zip(heads, logits, strict=True):
            resized = tf.image.resize(head, images.shape[1:3], method="bilinear")
            counts.add(tf.nn.softmax(resized).numpy(), truth, config.tau)
    names = [f"stage_{i + 1}" for i in range(len(heads) - 1)] + ["final"]
    name = f"{run.parent.name}/{run.name}"
    return [{"run": name, "head": n, **c.summary()} for n, c in zip(names, heads, strict=True)]


class Counts:
    def __init__(self, num_classes):
        self.k = num_classes
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.pixels = self.fg = self.fg_confident = self.rank2 = 0

    def add(self, probs, truth, tau):
        valid = truth < self.k
        pred = probs.argmax(-1)
        confident = (probs.max(-1) > tau) & valid
        self.pixels += int(valid.sum())
        self.fg += int((valid & (truth > 0)).sum())
        self.fg_confident += int((confident & (truth > 0)).sum())
        self.confusion += confusion_matrix(truth[confident], pred[confident], self.k)
        wrong = confident & (pred != truth)
        second = np.argsort(probs[wrong], axis=-1)[:, -2]
        self.rank2 += int((second == truth[wrong]).sum())

    def summary(self):
        c = self.confusion
        confident = c.sum()
        correct = np.trace(c)
        fg_as_bg = c[1:, 0].sum()
        bg_as_fg = c[0, 1:].sum()
        fg_as_fg = c[1:, 1:].sum() - np.trace(c[1:, 1:])
        wrong = confident - correct  # every off-diagonal pixel: fg_as_bg + bg_as_fg + fg_as_fg
        digit = confident - c[0, 0]
        return {
            "coverage": confident / self.pixels,
            "fg_coverage": self.fg_confident / self.fg,
            "error": wrong / confident,
            "fg_as_bg": fg_as_bg / confident,
            "bg_as_fg": bg_as_fg / confident,
            "fg_as_fg": fg_as_fg / confident,
            "digit_error": wrong / digit,
            "true_rank2": self.rank2 / max(wrong, 1),
            "pseudo_miou": iou_from_confusion(c)[0],
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for pseudo_confusion.csv")
    parser.add_argument("--limit", type=int, help="only the first N unlabeled images")
    parser.add_argument("runs", nargs="+", help="run folders with teacher.keras")
    args = parser.parse_args()
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    rows = []
    for run in map(Path, args.runs):
        if not (run / "teacher.keras").is_file():
            parser.error(f"{run}: no teacher.keras")
        new = head_rows(run, args.limit)
        for row in new:
            values = (f"{row[f]:.4f}" if isinstance(row[f], float) else row[f] for f in FIELDS)
            print(" ".join(values))
        rows += new
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pseudo_confusion.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.5f}" if isinstance(v, float) else v for k, v in row.items()})


if __name__ == "__main__":
    main()
