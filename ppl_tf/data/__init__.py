"""Data: sources (VOC, Cityscapes, custom folders, digit scenes), splits, augmentation, tf.data."""

from ppl_tf.data.decode import DataError
from ppl_tf.data.pipeline import (
    AugmentConfig,
    SkippedSamples,
    eval_dataset,
    semi_supervised_dataset,
)
from ppl_tf.data.sources import (
    SegmentationSource,
    cityscapes_source,
    custom_source,
    load_source,
    voc_source,
)
from ppl_tf.data.splits import Splits, make_splits, read_split_list, read_splits
from ppl_tf.data.validate import validate

__all__ = [
    "AugmentConfig",
    "DataError",
    "SegmentationSource",
    "SkippedSamples",
    "Splits",
    "cityscapes_source",
    "custom_source",
    "eval_dataset",
    "load_source",
    "make_splits",
    "read_split_list",
    "read_splits",
    "semi_supervised_dataset",
    "validate",
    "voc_source",
]
