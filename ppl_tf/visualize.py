"""What users look at: PNG grids of predictions and pseudo-labels, TensorBoard images, curves."""

import csv
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from ppl_tf import inference
from ppl_tf.callbacks import keep_epochs_before
from ppl_tf.data.classes import IGNORE_LABEL

IGNORE_COLOR = (255, 255, 255)  # pixels without a label or below the pseudo-label threshold


def colorize(labels, palette):
    """(H, W) ids with IGNORE_LABEL (255) = ignore -> (H, W, 3) uint8."""
    labels = np.asarray(labels)
    out = inference.colorize(labels, palette)
    out[labels == IGNORE_LABEL] = IGNORE_COLOR
    return out


def prediction_panels(model, images, masks, tau=0.8):
    """(prediction, pseudo-label with low-confidence pixels ignored) of `model` per image."""
    probs = tf.nn.softmax(model(tf.cast(images, tf.float32), training=False), axis=-1).numpy()
    prediction = probs.argmax(-1)
    pseudo = np.where(probs.max(-1) > tau, prediction, IGNORE_LABEL)
    return prediction, pseudo


def grid(images, masks, pseudo, prediction, palette, titles=None):
    """Rows of [image | ground truth | pseudo-label | prediction] as one uint8 array."""
    titles = titles or ("image", "ground truth", "pseudo-label", "prediction")
    rows = []
    for image, mask, ps, pred in zip(images, masks, pseudo, prediction, strict=True):
        row = [
            np.asarray(image, np.uint8),
            colorize(mask, palette),
            colorize(ps, palette),
            colorize(pred, palette),
        ]
        rows.append(np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0))) for p in row], axis=1))
    body = np.concatenate(rows, axis=0)
    scale = max(1, 768 // body.shape[1])  # small images are enlarged to be seen
    picture = Image.fromarray(body).resize(
        (body.shape[1] * scale, body.shape[0] * scale), Image.NEAREST
    )
    header = Image.new("RGB", (picture.width, 16), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    for i, title in enumerate(titles):
        draw.text((i * picture.width // len(titles) + 4, 2), title, fill=(0, 0, 0))
    canvas = Image.new("RGB", (picture.width, picture.height + 16))
    canvas.paste(header, (0, 0))
    canvas.paste(picture, (0, 16))
    return np.asarray(canvas)


def save_prediction_grid(path, model, images, masks, palette, tau=0.8):
    """Writes the grid of `model` (the teacher: its pseudo-labels are the training targets)."""
    prediction, pseudo = prediction_panels(model, images, masks, tau)
    Image.fromarray(grid(images, masks, pseudo, prediction, palette)).save(path)


class ImageLogger(keras.callbacks.Callback):
    """After each epoch in `epochs` (counted from 1; None: every epoch): the teacher's
    predictions and pseudo-labels on a few val images, to TensorBoard (`images` tab) and as
    `<out>/predictions/epoch_NNN.png`."""

    def __init__(self, images, masks, palette, log_dir, png_dir=None, tau=0.8, epochs=None):
        super().__init__()
        self.epochs = None if epochs is None else set(epochs)
        self.images, self.masks = np.asarray(images), np.asarray(masks)
        self.palette, self.tau = palette, tau
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "images"))
        self.png_dir = Path(png_dir) if png_dir else None

    def on_epoch_end(self, epoch, logs=None):
        if self.epochs is not None and epoch + 1 not in self.epochs:
            return
        teacher = self.model.teacher
        prediction, pseudo = prediction_panels(teacher, self.images, self.masks, self.tau)
        picture = grid(self.images, self.masks, pseudo, prediction, self.palette)
        with self.writer.as_default():
            tf.summary.image(
                "teacher: image | truth | pseudo-label | prediction", picture[None], step=epoch
            )
        self.writer.flush()
        if self.png_dir:
            self.png_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(self.png_dir / f"epoch_{epoch + 1:03d}.png")


def _local_value(variable, strategy):
    """A metric variable's value on this worker, as NumPy. Under a distribution strategy a
    plain read of a metric variable is a collective reduction, which fails when only the chief
    reads; the trainer adds all-reduced increments, so every copy holds the global value and
    the first local one is enough."""
    value = getattr(variable, "_value", variable)  # the tf.Variable, not a (reducing) read
    value = strategy.experimental_local_results(value)[0]
    return np.asarray(keras.ops.convert_to_numpy(value))


class PseudoLabelLog(keras.callbacks.Callback):
    """Per epoch, per class: the share of the pseudo-labels that pass tau next to the share of
    the class in the labeled masks (its prior), and, where the unlabeled images have ground
    truth, the pseudo-labels' precision and recall. Rows go to `csv_path` (one per epoch and
    class, appended, so a resumed run continues the file; rows of the epochs it trains again
    are dropped first) and the plot to `png_path` at the end of training
    (`plot_pseudo_labels`).

    The counts are read after each epoch's last step: fit's validation resets the trainer's
    metrics before `on_epoch_end`.
    """

    FIELDS = (
        "epoch",
        "class",
        "labeled_share",
        "pseudo_share",
        "pseudo_precision",
        "pseudo_recall",
    )

    def __init__(self, class_names, csv_path, png_path=None):
        super().__init__()
        self.class_names = list(class_names)
        self.csv_path, self.png_path = Path(csv_path), png_path and Path(png_path)
        self._epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._epoch is None:
            keep_epochs_before(self.csv_path, epoch)
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 < (self.params.get("steps") or 0):
            return
        trainer = self.model
        strategy = trainer.distribute_strategy
        labeled_counts = _local_value(trainer.labeled_classes.histogram, strategy)
        labeled = labeled_counts / max(labeled_counts.sum(), 1.0)
        pseudo_counts = _local_value(trainer.pseudo_classes.histogram, strategy)
        pseudo = pseudo_counts / max(pseudo_counts.sum(), 1.0)
        matrix = _local_value(trainer.pseudo_iou.matrix, strategy)
        coverage = _local_value(trainer.pseudo_coverage.matrix, strategy)
        has_truth = coverage.sum() > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.diag(matrix) / matrix.sum(axis=0)
            recall = np.diag(coverage)[: len(self.class_names)] / coverage.sum(axis=1)[:-1]
        new = not self.csv_path.is_file()
        with open(self.csv_path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(self.FIELDS)
            for k, name in enumerate(self.class_names):
                row = [self._epoch, name, labeled[k], pseudo[k]]
                row += [precision[k], recall[k]] if has_truth else ["", ""]
                writer.writerow(
                    [f"{v:.6g}" if isinstance(v, float | np.floating) else v for v in row]
                )

    def on_train_end(self, logs=None):
        if self.png_path and self.csv_path.is_file():
            plot_pseudo_labels(self.csv_path, self.png_path)


def plot_pseudo_labels(csv_path, path):
    """Pseudo-label class shares per epoch (solid) beside the labeled class shares (dashed),
    log scale; with ground truth, a second panel of per-class pseudo-label precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    latest = {(int(r["epoch"]), r["class"]): r for r in rows}  # a resumed epoch: its last row
    classes = list(dict.fromkeys(r["class"] for r in rows))
    epochs = sorted({e for e, _ in latest})
    has_truth = any(r["pseudo_precision"] not in ("", "nan") for r in rows)
    figure, axes = plt.subplots(1, 2 if has_truth else 1, figsize=(12 if has_truth else 6, 4))
    axes = np.atleast_1d(axes)
    colors = plt.get_cmap("tab20")

    def series(name, key):
        return [float(latest[(e, name)][key] or "nan") for e in epochs]

    x = [e + 1 for e in epochs]
    for i, name in enumerate(classes):
        color = colors(i % 20)
        axes[0].plot(x, series(name, "pseudo_share"), color=color, label=name)
        axes[0].plot(x, series(name, "labeled_share"), color=color, linestyle="--", linewidth=0.8)
        if has_truth:
            axes[1].plot(x, series(name, "pseudo_precision"), color=color, label=name)
    axes[0].set_yscale("log")
    axes[0].set_title("pseudo-label share (solid) vs labeled share (dashed)")
    if has_truth:
        axes[1].set_title("pseudo-label precision")
        axes[1].set_ylim(0, 1)
    for axis in axes:
        axis.set_xlabel("epoch")
    axes[-1].legend(fontsize=6, ncol=2, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_curves(log_csv, path):
    """Training curves from a CSVLogger file: losses, mIoUs, mask ratio, pseudo-label quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    epochs = [int(r["epoch"]) + 1 for r in rows]

    def series(name):
        return [float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows]

    panels = [
        ("losses", [k for k in rows[0] if k.startswith("loss")]),
        ("val mIoU", [k for k in ("val_teacher_miou", "val_student_miou") if k in rows[0]]),
        (
            "pseudo-labels",
            [k for k in ("mask_ratio", "pseudo_miou", "pseudo_recall") if k in rows[0]],
        ),
    ]
    panels = [(title, keys) for title, keys in panels if keys]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
    for axis, (title, keys) in zip(np.atleast_1d(axes), panels, strict=True):
        for key in keys:
            values = np.asarray(series(key))
            shown = np.isfinite(values)  # val mIoU exists on validated epochs only
            axis.plot(np.asarray(epochs)[shown], values[shown], label=key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
