"""Segmentation metrics: confusion-matrix mIoU (per-class IoU too), pseudo-label recall and
per-class pixel counts.

Both keep their state in variables that aggregate by "mean" across replicas: the trainer adds
the same all-reduced increments on every replica, so any replica, or the cross-replica read,
holds the global counts.
"""

import keras
from keras import ops

from ppl_tf.data.classes import IGNORE_LABEL


@keras.saving.register_keras_serializable(package="ppl_tf")
class ConfusionMatrixIoU(keras.metrics.Metric):
    """mIoU from a K x K confusion matrix (rows: truth, columns: prediction).

    `update_state(labels, predictions, sample_weight=None)` takes integer maps; pixels labeled
    IGNORE_LABEL (or with zero weight) do not count. `result()` is the mean IoU over classes
    that occur in truth or prediction; `per_class_iou()` gives all K values (NaN for absent).
    """

    def __init__(self, num_classes, name="miou", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.matrix = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype="float64",
            aggregation="mean",
            name="confusion_matrix",
        )

    def increment(self, labels, predictions, sample_weight=None):
        """The confusion-matrix increment of one batch (without adding it)."""
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        predictions = ops.reshape(ops.cast(predictions, "int32"), (-1,))
        valid = ops.logical_and(ops.not_equal(labels, IGNORE_LABEL), labels < self.num_classes)
        weight = ops.cast(valid, "float64")
        if sample_weight is not None:
            weight = weight * ops.cast(ops.reshape(sample_weight, (-1,)), "float64")
        labels = ops.where(valid, labels, 0)
        predictions = ops.clip(predictions, 0, self.num_classes - 1)
        index = labels * self.num_classes + predictions
        counts = ops.segment_sum(weight, index, num_segments=self.num_classes**2)
        return ops.reshape(counts, (self.num_classes, self.num_classes))

    def add_increment(self, increment):
        self.matrix.assign_add(increment)

    def update_state(self, labels, predictions, sample_weight=None):
        self.add_increment(self.increment(labels, predictions, sample_weight))

    def per_class_iou(self):
        m = ops.convert_to_tensor(self.matrix)
        true_positive = ops.diagonal(m)
        union = ops.sum(m, axis=0) + ops.sum(m, axis=1) - true_positive
        return ops.where(union > 0, true_positive / ops.maximum(union, 1.0), float("nan"))

    def result(self):
        m = ops.convert_to_tensor(self.matrix)
        true_positive = ops.diagonal(m)
        union = ops.sum(m, axis=0) + ops.sum(m, axis=1) - true_positive
        present = union > 0
        iou = ops.where(present, true_positive / ops.maximum(union, 1.0), 0.0)
        return ops.cast(
            ops.sum(iou) / ops.maximum(ops.sum(ops.cast(present, "float64")), 1.0), "float32"
        )

    def recall(self):
        """Mean over classes present in truth of (correct pixels / truth pixels)."""
        m = ops.convert_to_tensor(self.matrix)
        truth = ops.sum(m, axis=1)
        present = truth > 0
        recall = ops.where(present, ops.diagonal(m) / ops.maximum(truth, 1.0), 0.0)
        return ops.cast(
            ops.sum(recall) / ops.maximum(ops.sum(ops.cast(present, "float64")), 1.0), "float32"
        )

    def reset_state(self):
        self.matrix.assign(ops.zeros_like(self.matrix))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="ppl_tf")
class ClassHistogram(keras.metrics.Metric):
    """Pixel counts per class: `increment(labels, weights=None)` counts labels in [0, K) (255
    and other values do not count) weighted by `weights`; `result()` is the (K,) share of
    each class (zeros when nothing was counted) and `counts()` the raw counts."""

    def __init__(self, num_classes, name="class_histogram", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.histogram = self.add_variable(
            shape=(num_classes,),
            initializer="zeros",
            dtype="float64",
            aggregation="mean",
            name="histogram",
        )

    def increment(self, labels, weights=None):
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        valid = ops.logical_and(labels >= 0, labels < self.num_classes)
        weight = ops.cast(valid, "float64")
        if weights is not None:
            weight = weight * ops.cast(ops.reshape(weights, (-1,)), "float64")
        return ops.segment_sum(weight, ops.where(valid, labels, 0), num_segments=self.num_classes)

    def add_increment(self, increment):
        self.histogram.assign_add(increment)

    def update_state(self, labels, weights=None):
        self.add_increment(self.increment(labels, weights))

    def counts(self):
        return ops.convert_to_tensor(self.histogram)

    def result(self):
        counts = self.counts()
        return counts / ops.maximum(ops.sum(counts), 1.0)

    def reset_state(self):
        self.histogram.assign(ops.zeros_like(self.histogram))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
