"""Cityscapes through the TFDS builder `cityscapes/semantic_segmentation` (manual download).

Cityscapes needs a login, so TFDS cannot download it: put `leftImg8bit_trainvaltest.zip` and
`gtFine_trainvaltest.zip` from https://www.cityscapes-dataset.com in one folder (the *manual
dir*) and point `data_dir` at it with `dataset: cityscapes_tfds`. The first run lets TFDS
extract and prepare the records (ArrayRecord, for random access) under `tfds_data_dir`
(default ~/tensorflow_datasets); later runs reuse them.

The source has the same ids as the folder source `cityscapes` ("train/aachen/aachen_000000_000019"),
so split lists move between the two; label ids are mapped to the 19 train ids by the same table.
Only the train and val splits are used (the test masks are not public).

Needs the `tfds` extra: `pip install -e ".[tfds]"`.
"""

import json
import os
from pathlib import Path

import numpy as np

from ppl_tf.data.classes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    cityscapes_lookup_table,
)
from ppl_tf.data.decode import DataError, check_labels, open_image
from ppl_tf.data.sources import Sample, SegmentationSource

BUILDER = "cityscapes/semantic_segmentation"
ZIPS = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")
SPLITS = ("train", "val")
_TFDS_SPLIT = {"train": "train", "val": "validation"}
INDEX_FILE = "ppl_tf_ids.json"


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(
            f'dataset cityscapes_tfds needs tensorflow-datasets: pip install -e ".[tfds]" ({error})'
        ) from None
    return tfds


def prepare(manual_dir, tfds_data_dir=None):
    """The prepared TFDS builder; extracts and writes the records on first use."""
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise DataError(f"{manual_dir}: Cityscapes manual download folder not found")
    missing = [name for name in ZIPS if not (manual_dir / name).is_file()]
    tfds = _import_tfds()
    kwargs = {"file_format": "array_record"}
    if tfds_data_dir is not None:
        kwargs["data_dir"] = str(tfds_data_dir)
    try:
        builder = tfds.builder(BUILDER, **kwargs)
    except ValueError as error:  # e.g. prepared earlier as TFRecord, which has no random access
        raise DataError(
            f"{BUILDER} in {tfds_data_dir or 'the default TFDS data dir'}: {error}. The records "
            "must be ArrayRecord (random access): point tfds_data_dir at a new folder to prepare "
            "them again"
        ) from error
    if builder.is_prepared():
        return builder
    if missing:
        raise DataError(
            f"{manual_dir}: missing {', '.join(missing)} (download them from "
            "https://www.cityscapes-dataset.com/downloads/ after logging in; TFDS cannot)"
        )
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as error:  # zip, PNG and shape errors come from deep inside TFDS
        raise DataError(
            f"{manual_dir}: TFDS could not prepare {BUILDER} from {', '.join(ZIPS)}: "
            f"{type(error).__name__}: {error}"
        ) from error
    return builder


class CityscapesRecords:
    """Random access to the prepared records: encoded PNGs, decoded here with checks."""

    def __init__(self, builder):
        tfds = _import_tfds()
        skip = tfds.decode.SkipDecoding()
        self.where = f"{BUILDER} in {builder.data_dir}"
        self.lookup = np.asarray(cityscapes_lookup_table(), np.uint8)
        decoders = {"image_left": skip, "segmentation_label": skip}
        try:
            self.splits = {
                split: builder.as_data_source(_TFDS_SPLIT[split], decoders=decoders)
                for split in SPLITS
            }
        except Exception as error:
            raise DataError(
                f"{self.where}: cannot open the prepared records for random access "
                f"({type(error).__name__}: {error}); point tfds_data_dir at a new folder to "
                "prepare them again as ArrayRecord"
            ) from error
        self.index = self._load_index(Path(builder.data_dir))

    def _load_index(self, folder):
        """{split: {image id: record index}}; read once from the records, then from a file."""
        path = folder / INDEX_FILE
        if path.is_file():
            index = json.loads(path.read_text())
            if all(len(index.get(s, ())) == len(r) for s, r in self.splits.items()):
                return index
        index = {}
        for split, records in self.splits.items():
            ids = {}
            for position in range(len(records)):
                image_id = records[position]["image_id"]
                ids[image_id.decode() if isinstance(image_id, bytes) else str(image_id)] = position
            index[split] = ids
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index))
        tmp.replace(path)
        return index

    def _decode(self, record, key, what, mode):
        image = open_image(f"{self.where}: {what}", record[key])
        if image.mode != mode:
            raise DataError(f"{self.where}: {what}: expected mode {mode}, found {image.mode}")
        return np.asarray(image, np.uint8)

    def _record(self, sample: Sample):
        return self.splits[sample.id.split("/", 1)[0]][sample.record]

    def _mask(self, sample, record):
        label = self._decode(record, "segmentation_label", f"{sample.id} label", "L")
        mask = self.lookup[label]
        check_labels(mask, len(CITYSCAPES_CLASSES), f"{self.where}: {sample.id}")
        return mask

    def read_mask(self, sample: Sample):
        return self._mask(sample, self._record(sample))

    def read(self, sample: Sample):
        record = self._record(sample)
        image = self._decode(record, "image_left", f"{sample.id} image", "RGB")
        mask = self._mask(sample, record)
        if mask.shape != image.shape[:2]:
            raise DataError(f"{self.where}: {sample.id}: label and image sizes differ")
        return image, mask


def sample_id(split, image_id):
    """The sample id as the folder source names it: "train/aachen/aachen_000000_000019"."""
    city = image_id.rsplit("_", 2)[0]
    return f"{split}/{city}/{image_id}"


def cityscapes_tfds_source(manual_dir, tfds_data_dir=None) -> SegmentationSource:
    records = CityscapesRecords(prepare(manual_dir, tfds_data_dir))
    samples = {}
    for split, ids in records.index.items():
        for image_id, position in sorted(ids.items()):
            key = sample_id(split, image_id)
            samples[key] = Sample(key, None, None, record=position)
    return SegmentationSource(
        "cityscapes_tfds",
        Path(manual_dir),
        CITYSCAPES_CLASSES,
        CITYSCAPES_PALETTE,
        samples,
        None,
        tuple(i for i in samples if i.startswith("train/")),
        tuple(i for i in samples if i.startswith("val/")),
        tuple(cityscapes_lookup_table()),
        records,
    )
