"""Evaluation: whole-image or sliding-window inference, optional flip, mIoU and per-class IoU.

`predict_probabilities(fn, images, crop, flip)` works with any `fn` from float32 [0, 255] images
(B, H, W, 3) to per-pixel class scores: a Keras segmenter (logits) or an exported SavedModel's
`serving_default` (probabilities; see `saved_model_predictor`). Sliding windows of `crop` pixels
move by 2/3 of the crop, as in the UniMatch/U2PL evaluation; images smaller than the crop are
padded (the padding is cut off again).
"""

import math

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from ppl_tf.data.classes import IGNORE_LABEL


def keras_predictor(model):
    """A Keras segmenter as a probabilities function."""

    @tf.function(reduce_retracing=True)
    def run(images):
        return tf.nn.softmax(model(images, training=False), axis=-1)

    return run


def saved_model_predictor(path):
    """(probabilities function, metadata) of an exported SavedModel folder."""
    import json
    from pathlib import Path

    from ppl_tf.inference import (
        DEFAULT_SIGNATURE,
        INPUT_NAME,
        METADATA_FILE,
        PROBABILITIES,
        resolve_version,
    )

    folder = resolve_version(path)
    signature = tf.saved_model.load(str(folder)).signatures[DEFAULT_SIGNATURE]
    metadata_file = Path(folder) / METADATA_FILE
    metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}

    def run(images):
        images = tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
        return signature(**{INPUT_NAME: images})[PROBABILITIES]

    return run, metadata


def onnx_predictor(path, int8=False):
    """(probabilities function, metadata) of an export's model.onnx (`int8`: model_int8.onnx)
    in ONNX Runtime."""
    from ppl_tf.inference import ExportedModel

    model = ExportedModel(path, backend="onnxruntime", int8=int8)

    def run(images):
        images = np.clip(np.round(np.asarray(images)), 0, 255).astype(np.uint8)
        return model.predict(images)[1]

    return run, model.metadata


def _window_starts(size, crop, stride):
    if size <= crop:
        return [0]
    count = math.ceil((size - crop) / stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(count)})


def predict_probabilities(predict, images, crop=None, flip=False, stride_ratio=2 / 3):
    """Class probabilities (B, H, W, K) of float32 images (B, H, W, 3)."""
    images = tf.convert_to_tensor(images, tf.float32)

    def once(x):
        probs = predict(x)
        if flip:
            probs = probs + tf.reverse(predict(tf.reverse(x, axis=[2])), axis=[2])
        return probs

    if crop is None:
        return once(images)
    height, width = int(images.shape[1]), int(images.shape[2])
    pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
    padded = tf.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    full_h, full_w = height + pad_h, width + pad_w
    stride = max(int(crop * stride_ratio), 1)
    total, counts = None, np.zeros((1, full_h, full_w, 1), np.float32)
    for y in _window_starts(full_h, crop, stride):
        for x in _window_starts(full_w, crop, stride):
            probs = once(padded[:, y : y + crop, x : x + crop]).numpy()
            if total is None:
                total = np.zeros((*padded.shape[:3], probs.shape[-1]), np.float32)
            total[:, y : y + crop, x : x + crop] += probs
            counts[:, y : y + crop, x : x + crop] += 1.0
    return tf.constant((total / counts)[:, :height, :width])


def confusion_matrix(labels, predictions, num_classes):
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    valid = (labels != IGNORE_LABEL) & (labels < num_classes)
    index = labels[valid].astype(np.int64) * num_classes + predictions[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(matrix):
    """(mIoU over classes present in truth or prediction, per-class IoU with NaN for absent)."""
    matrix = matrix.astype(np.float64)
    true_positive = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(union > 0, true_positive / union, np.nan)
    return float(np.nanmean(per_class)), per_class


def evaluate(predict, dataset, num_classes, crop=None, flip=False, progress=True):
    """mIoU, per-class IoU and the confusion matrix of `predict` on (images, masks) batches."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for images, masks in tqdm(dataset, desc="evaluate", unit="batch", disable=not progress):
        probs = predict_probabilities(predict, images, crop, flip)
        predictions = np.argmax(np.asarray(probs), axis=-1)
        matrix += confusion_matrix(np.asarray(masks), predictions, num_classes)
    miou, per_class = iou_from_confusion(matrix)
    return {"miou": miou, "per_class_iou": per_class, "confusion": matrix}


def format_table(class_names, results):
    """A Markdown table of per-class IoU (in %) for several results {name: per_class}."""
    names = list(results)
    lines = ["| class | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for i, class_name in enumerate(class_names):
        cells = [f"{100 * results[n][i]:.2f}" if np.isfinite(results[n][i]) else "-" for n in names]
        lines.append(f"| {class_name} | " + " | ".join(cells) + " |")
    means = [f"**{100 * np.nanmean(results[n]):.2f}**" for n in names]
    lines.append("| **mIoU** | " + " | ".join(means) + " |")
    return "\n".join(lines)
