"""tf.data pipelines: the trainer's dict batches and evaluation batches.

Trainer batches (what `PPLTrainer.train_step` takes) are dicts of
  labeled_images (B, S, S, 3) float32 in [0, 255], labeled_masks (B, S, S) int32,
  unlabeled_weak and unlabeled_strong (B', S, S, 3) float32 (one geometry, two colorings),
  unlabeled_valid (B', S, S) bool, False on pixels added by padding (they get no pseudo-label),
  unlabeled_masks (B', S, S) int32 when every unlabeled image has a mask (metrics only),
  unlabeled_cutmix_box (B', S, S) bool when CutMix is on.
The streams repeat forever and are reproducible from `seed`; `fit` takes steps_per_epoch.

A file that cannot be read is left out of the stream, named once on stderr and recorded in a
`SkippedSamples`; nothing is ever raised inside tf.data: an exception raised in the decoding
`tf.numpy_function` of a parallel map ended training with a traceback, or hung the process in
the iterator's destructor. `scripts/train.py` refuses bad labeled and val files before
training (`ppl_tf.data.validate`), so in practice what is skipped is unlabeled images whose
data is corrupt behind an intact header.
"""

import sys
import threading
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ppl_tf.data.augment import (
    apply_cutmix,
    blur_sigma_range,
    cutmix_boxes,
    strong_photometric,
    weak_geometry,
)
from ppl_tf.data.classes import IGNORE_LABEL
from ppl_tf.data.decode import DataError
from ppl_tf.data.sources import Sample, SegmentationSource

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class AugmentConfig:
    crop_size: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)
    cutmix: bool = False
    cutmix_p: float = 0.5
    blur_sigma: tuple[float, float] | None = None  # pixels; None: scaled with the crop

    def strong_blur_sigma(self):
        return self.blur_sigma or blur_sigma_range(self.crop_size)


class SkippedSamples:
    """Samples that pipelines left out because they could not be read.

    Each is named on stderr the first time it fails (the streams repeat, so a file would
    otherwise be reported every epoch); `len()` counts them and `summary()` lists them.
    """

    def __init__(self):
        self.messages = {}  # (split name, sample id) -> message
        self._lock = threading.Lock()  # parallel map calls come from several threads

    def add(self, split_name, sample_id, message):
        with self._lock:
            if (split_name, sample_id) in self.messages:
                return
            self.messages[split_name, sample_id] = message
        print(f"warning: {split_name} sample left out: {message}", file=sys.stderr, flush=True)

    def __len__(self):
        return len(self.messages)

    def count(self, split_name):
        return sum(1 for split, _ in self.messages if split == split_name)

    def summary(self):
        lines = [f"{len(self)} sample(s) could not be read and were left out:"]
        lines += [f"  {split}: {message}" for (split, _), message in self.messages.items()]
        return "\n".join(lines)


def decoded_dataset(
    source: SegmentationSource,
    samples: list[Sample],
    convert_images=False,
    skipped: SkippedSamples | None = None,
    split_name="list",
    keep_length=False,
) -> tf.data.Dataset:
    """(image uint8 (H, W, 3), mask uint8 (H, W)) per sample; masks of 255 where none exists.

    Decoding runs `SegmentationSource.read` (`ppl_tf.data.decode.read_pair` for files). A
    sample it cannot read (a corrupt file, a mask of the wrong size, an out-of-range label) is
    recorded in `skipped` under `split_name`, with a warning naming the file, and left out;
    with `keep_length` it becomes a 1x1 image whose pixel is ignored (255) instead, so that
    the dataset keeps a known length (Keras' evaluation loop warns about running out of data
    on a dataset of unknown length).
    """
    samples = list(samples)
    skipped = SkippedSamples() if skipped is None else skipped

    def load(index):
        sample = samples[int(index)]
        try:
            image, mask = source.read(sample, convert_images)
        # Anything raised here would surface from inside tf.data (see the module docstring).
        except Exception as error:
            where = sample.image or sample.id
            message = str(error) if isinstance(error, DataError) else f"{where}: {error!r}"
            skipped.add(split_name, sample.id, message)
            return np.zeros((1, 1, 3), np.uint8), np.full((1, 1), IGNORE_LABEL, np.uint8), False
        if mask is None:
            mask = np.full(image.shape[:2], IGNORE_LABEL, np.uint8)
        return image, mask, True

    def tf_load(index):
        image, mask, ok = tf.numpy_function(load, [index], [tf.uint8, tf.uint8, tf.bool])
        image = tf.ensure_shape(image, [None, None, 3])
        return image, tf.ensure_shape(mask, [None, None]), tf.ensure_shape(ok, [])

    def readable(image, mask, ok):
        return ok

    def pair(image, mask, ok):
        return image, mask

    ds = tf.data.Dataset.range(len(samples)).map(tf_load, num_parallel_calls=AUTOTUNE)
    return (ds if keep_length else ds.filter(readable)).map(pair)


def _seeded(ds, seed):
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip(ds, seeds)


def _stream(source, samples, seed, convert_images, cache, skipped, split_name):
    ds = decoded_dataset(source, samples, convert_images, skipped, split_name)
    if cache:
        ds = ds.cache()
    return ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True).repeat()


def labeled_stream(
    source,
    samples,
    batch_size,
    augment: AugmentConfig,
    seed,
    convert_images=False,
    cache=False,
    skipped=None,
):
    """Weakly augmented labeled batches: (images, masks)."""
    stream = _stream(source, samples, seed, convert_images, cache, skipped, "labeled")
    ds = _seeded(stream, seed + 1)

    def augment_one(example, example_seed):
        image, mask = example
        return weak_geometry(image, mask, example_seed, augment.crop_size, augment.scale_range)

    ds = ds.map(augment_one, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True)


def unlabeled_stream(
    source,
    samples,
    batch_size,
    augment: AugmentConfig,
    seed,
    convert_images=False,
    cache=False,
    skipped=None,
):
    """Unlabeled batches: dict of weak view, strong view, valid pixels, masks (all 255 where
    none)."""
    stream = _stream(source, samples, seed, convert_images, cache, skipped, "unlabeled")
    ds = _seeded(stream, seed + 1)

    def augment_one(example, example_seed):
        image, mask = example
        seeds = tf.random.experimental.stateless_split(example_seed, 2)
        weak, mask, valid = weak_geometry(
            image, mask, seeds[0], augment.crop_size, augment.scale_range, with_valid=True
        )
        strong = strong_photometric(weak, seeds[1], blur_sigma=augment.strong_blur_sigma())
        return {
            "unlabeled_weak": weak,
            "unlabeled_strong": strong,
            "unlabeled_valid": valid,
            "unlabeled_masks": mask,
        }

    ds = ds.map(augment_one, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True)
    if augment.cutmix:
        ds = _seeded(ds, seed + 2)

        def mix(batch, batch_seed):
            boxes = cutmix_boxes(
                batch_size, augment.crop_size, augment.crop_size, batch_seed, augment.cutmix_p
            )
            return {
                **batch,
                "unlabeled_strong": apply_cutmix(batch["unlabeled_strong"], boxes),
                "unlabeled_cutmix_box": boxes,
            }

        ds = ds.map(mix, num_parallel_calls=AUTOTUNE)
    return ds


def semi_supervised_dataset(
    source: SegmentationSource,
    labeled_ids,
    unlabeled_ids,
    labeled_batch_size,
    unlabeled_batch_size,
    augment: AugmentConfig,
    seed=0,
    convert_images=False,
    cache=False,
    skipped: SkippedSamples | None = None,
) -> tf.data.Dataset:
    """The trainer's infinite stream of dict batches (see the module docstring).

    Samples that cannot be read are left out and recorded in `skipped`.
    """
    labeled = source.resolve(labeled_ids, "labeled", need_masks=True)
    unlabeled = source.resolve(unlabeled_ids, "unlabeled")
    has_masks = all(s.has_mask for s in unlabeled)
    skipped = SkippedSamples() if skipped is None else skipped
    lab = labeled_stream(
        source, labeled, labeled_batch_size, augment, seed, convert_images, cache, skipped
    )
    unl = unlabeled_stream(
        source,
        unlabeled,
        unlabeled_batch_size,
        augment,
        seed + 100,
        convert_images,
        cache,
        skipped,
    )

    def merge(lab_batch, unl_batch):
        images, masks = lab_batch
        batch = {"labeled_images": images, "labeled_masks": masks, **unl_batch}
        if not has_masks:
            batch.pop("unlabeled_masks")
        return batch

    return tf.data.Dataset.zip(lab, unl).map(merge, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def eval_dataset(
    source: SegmentationSource,
    ids,
    batch_size=1,
    convert_images=False,
    cache=False,
    skipped: SkippedSamples | None = None,
) -> tf.data.Dataset:
    """(images float32 (B, H, W, 3), masks int32 (B, H, W)) at full resolution.

    Images of different sizes in one batch are padded (image 0, mask 255, so padding is
    ignored by the metrics). A sample that cannot be read is recorded in `skipped` (split
    "val") and becomes a 1x1 image with an ignored label: a score over fewer images than asked
    for is the caller's to refuse.
    """
    samples = source.resolve(ids, "val", need_masks=True)
    ds = decoded_dataset(source, samples, convert_images, skipped, "val", keep_length=True)
    if cache:
        ds = ds.cache()
    ds = ds.map(lambda image, mask: (tf.cast(image, tf.float32), tf.cast(mask, tf.int32)))
    ds = ds.padded_batch(
        batch_size,
        padded_shapes=([None, None, 3], [None, None]),
        padding_values=(0.0, IGNORE_LABEL),
    )
    return ds.prefetch(AUTOTUNE)
