"""How fast a segmenter learns the labeled images at the start, head by head.

    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \
        python results/diagnostics/supervised_start.py --out results/diagnostics/start_n2_g01 \
        use_unlabeled=false num_stages=2 seed=0

(the runs in results/diagnostics/start_* ran two at a time with those one-thread settings)

Trains `configs/demo.yaml` with the given overrides (the LR and EMA schedules of the full budget,
so epoch e here is epoch e of a full run), stops after `--stop` epochs, and after every epoch
writes `diag.csv` in `--out`, on the 200 validation scenes:
- val_student_miou / val_teacher_miou / loss_labeled: what log.csv of a run shows;
- head<i>_miou: the student's mIoU of every head at stride 4 (head0 = stage 1's classifier,
  which sees f itself; the last head = the final classifier), against nearest-downsampled masks;
- head<i>_digit_acc, head<i>_digit_confident, head<i>_confident_digit_acc: on the pixels whose
  true class is a digit (not class 0), the head's accuracy, the share whose largest
  probability passes `tau` (what a pseudo-label from that head would keep), and the accuracy
  on those; teacher_head<i>_...: the same for the teacher (whose final head labels the
  unlabeled images);
- s<i>_g_over_f: mean norm of g(context) over mean norm of f at stage i (Eq. 3's two terms),
  s<i>_g_pixel_std_over_f: the same for their per-channel standard deviation over pixels;
- s<i>_maxw, s<i>_entropy: the attention's largest weight and its entropy / ln(K*T) (Eq. 2;
  about 0.49 when each pixel attends to one class's T prototypes only);
- s<i>_attended_acc: share of pixels whose most attended class (weights summed over its T
  slots) is their ground-truth class; s<i>_truth_weight: the mean weight on that class;
  s<i>_class_mass_max: the mean weight of the most attended class (1: one class only);
- s<i>_slot_cos: cosine between every class's oldest and newest slot in the bank, averaged
  over classes (1: the T slots are copies of one prototype).

`--freeze-banks` is a control: no bank is ever pushed, every slot keeps the random initial
classifier (the attention then attends over fixed random keys).
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import ppl_tf  # noqa: E402, F401

# isort: split
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from ppl_tf import run  # noqa: E402
from ppl_tf.config import DEMO_CONFIG, load_config  # noqa: E402
from ppl_tf.data import SkippedSamples  # noqa: E402
from ppl_tf.evaluation import confusion_matrix, iou_from_confusion  # noqa: E402
from ppl_tf.models.segmenter import build_training_view, ppl_stages  # noqa: E402


def stage_statistics(stage, features, labels):
    """The stage's attention statistics on `features`; `labels`: ground truth at their size
    (255 ignored)."""
    attention = stage.attention
    prototypes = stage.memory.read()
    weights = attention.affinity(features, prototypes, training=False)
    values = attention.delta(attention._flat_prototypes(prototypes), training=False)
    g = attention.g(ops.matmul(weights, values), training=False).numpy()
    f, w = features.numpy(), weights.numpy()
    num_classes, length = prototypes.shape[0], prototypes.shape[1]
    mass = w.reshape(*w.shape[:-1], num_classes, length).sum(-1)  # per class
    valid = labels != 255
    truth = np.take_along_axis(mass, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    bank = prototypes.numpy() if hasattr(prototypes, "numpy") else np.asarray(prototypes)
    first, last = bank[:, 0], bank[:, -1]
    cosines = (first * last).sum(-1) / (
        np.linalg.norm(first, axis=-1) * np.linalg.norm(last, axis=-1) + 1e-12
    )
    return {
        "attended_acc": float((mass.argmax(-1) == labels)[valid].mean()),
        "truth_weight": float(truth[valid].mean()),
        "class_mass_max": float(mass.max(-1).mean()),
        "slot_cos": float(cosines.mean()),
        "g_over_f": float(np.linalg.norm(g, axis=-1).mean() / np.linalg.norm(f, axis=-1).mean()),
        "g_pixel_std_over_f": float(g.std(axis=(0, 1, 2)).mean() / f.std(axis=(0, 1, 2)).mean()),
        "maxw": float(w.max(-1).mean()),
        "entropy": float((-(w * np.log(w + 1e-12)).sum(-1)).mean() / np.log(w.shape[-1])),
    }


def digit_confidence(name, logits, labels, tau):
    """Accuracy and confidence of a head on the pixels whose true class is a digit (1..K-1)."""
    probabilities = tf.nn.softmax(logits, axis=-1).numpy()
    digit = (labels > 0) & (labels != 255)
    correct = probabilities.argmax(-1) == labels
    confident = probabilities.max(-1) > tau
    return {
        f"{name}_digit_acc": float(correct[digit].mean()),
        f"{name}_digit_confident": float(confident[digit].mean()),
        f"{name}_confident_digit_acc": float(correct[digit & confident].mean())
        if (digit & confident).any()
        else float("nan"),
    }


class HeadLog(keras.callbacks.Callback):
    def __init__(self, trainer, images, masks, num_classes, path, stop, tau=0.8):
        super().__init__()
        self.tau = tau
        self.trainer, self.images, self.masks = trainer, images, masks
        self.num_classes, self.path, self.stop, self.rows = num_classes, path, stop, []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": epoch}
        row.update({k: logs.get(k) for k in ("val_student_miou", "val_teacher_miou")})
        row["loss_labeled"] = logs.get("loss_labeled")
        outputs = self.trainer._student_heads(self.images, training=False)
        for i, logits in enumerate(outputs["logits"]):
            size = logits.shape[1:3]
            labels = tf.image.resize(self.masks[..., None], size, method="nearest")[..., 0]
            predictions = np.argmax(logits.numpy(), -1)
            matrix = confusion_matrix(labels.numpy(), predictions, self.num_classes)
            row[f"head{i}_miou"] = iou_from_confusion(matrix)[0]
            row.update(digit_confidence(f"head{i}", logits, labels.numpy(), self.tau))
        teacher_heads = getattr(self, "teacher_heads", None)
        if teacher_heads is None:
            teacher_heads = self.teacher_heads = build_training_view(self.trainer.teacher)
        for i, logits in enumerate(teacher_heads(self.images, training=False)["logits"]):
            size = logits.shape[1:3]
            labels = tf.image.resize(self.masks[..., None], size, method="nearest")[..., 0]
            row.update(digit_confidence(f"teacher_head{i}", logits, labels.numpy(), self.tau))
        stages = ppl_stages(self.trainer.student)
        for i, (stage, features) in enumerate(zip(stages, outputs["features"], strict=True)):
            size = features.shape[1:3]
            labels = tf.image.resize(self.masks[..., None], size, method="nearest")[..., 0]
            labels = labels.numpy()
            if stage.attention is not None:
                for key, value in stage_statistics(stage, features, labels).items():
                    row[f"s{i + 1}_{key}"] = value
        self.rows.append(row)
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(self.rows)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        if epoch + 1 >= self.stop:
            self.model.stop_training = True


def demo_trainer(out, overrides, cache_dir):
    """`configs/demo.yaml` with `overrides`, its data and a new trainer on the full budget's
    schedules: (config, num_classes, train_data, val_data, trainer). Also used by
    query_gradient.py."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [f"out={out}", "export=false", "images_to_log=0", f"cache_dir={cache_dir}"]
    config = load_config(DEMO_CONFIG, [*overrides, *extra])
    keras.utils.set_random_seed(config.seed)
    source, splits = run.load_data(config, out, write=True)
    steps = config.steps_per_epoch
    train_data, val_data = run.datasets(config, source, splits, SkippedSamples())
    trainer = run.build_trainer(
        config,
        source.num_classes,
        tf.distribute.get_strategy(),
        config.epochs * steps,
        config.warmup_epochs * steps,
    )
    return config, source.num_classes, train_data, val_data, trainer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop", type=int, default=20, help="epochs to train")
    parser.add_argument("--cache-dir", default=str(ROOT / "data_cache"))
    parser.add_argument(
        "--freeze-banks", action="store_true", help="control: banks stay at their random start"
    )
    parser.add_argument("overrides", nargs="*", help="key=value on top of configs/demo.yaml")
    args = parser.parse_args()
    out = Path(args.out)
    config, num_classes, train_data, val_data, trainer = demo_trainer(
        out, args.overrides, args.cache_dir
    )
    steps = config.steps_per_epoch
    if args.freeze_banks:
        for stage in ppl_stages(trainer.student) + ppl_stages(trainer.teacher):
            stage.push_classifier = lambda: None
    images, masks = (
        np.concatenate(parts) for parts in zip(*val_data.as_numpy_iterator(), strict=True)
    )
    log = HeadLog(trainer, images, masks, num_classes, out / "diag.csv", args.stop, config.tau)
    trainer.fit(
        train_data,
        steps_per_epoch=steps,
        epochs=config.epochs,
        validation_data=val_data,
        callbacks=[log],
        verbose=0,
    )


if __name__ == "__main__":
    main()
