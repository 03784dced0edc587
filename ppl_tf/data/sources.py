"""Where a dataset's files are: PASCAL VOC 2012 (aug), Cityscapes and the custom folder format.

A `SegmentationSource` maps sample ids to image and mask files and carries the class names,
palette and label mapping. Split lists (`ppl_tf.data.splits`) name samples by id.

Custom folder format (what `digit_scenes` writes too):

    root/
      classes.txt          one class name per line; line i is class id i
      palette.txt          optional: "r g b" per line, one per class
      images/<id>.jpg|png  8-bit RGB images
      masks/<id>.png       one-channel class ids (255 = ignore); unlabeled images need none
      splits/              optional labeled.txt, unlabeled.txt, val.txt (one id per line)
"""

from dataclasses import dataclass, field
from pathlib import Path

from ppl_tf.data.classes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    VOC_CLASSES,
    VOC_PALETTE,
    cityscapes_lookup_table,
    default_palette,
)
from ppl_tf.data.decode import DataError, read_mask, read_pair

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Sample:
    """One image: files on disk, or (`record`) an index into a prepared TFDS split."""

    id: str
    image: Path | None
    mask: Path | None
    record: int | None = None

    @property
    def has_mask(self) -> bool:
        return self.mask is not None or self.record is not None


@dataclass(frozen=True)
class SegmentationSource:
    """A dataset on disk: ids -> files, plus class names, palette and label mapping."""

    name: str
    root: Path
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    samples: dict[str, Sample] = field(repr=False)
    split_dir: Path | None = None
    train_ids: tuple[str, ...] = ()
    val_ids: tuple[str, ...] = ()
    label_lookup: tuple[int, ...] | None = field(default=None, repr=False)
    records: object | None = field(default=None, repr=False)  # ppl_tf.data.tfds_cityscapes

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read(self, sample: Sample, convert_images=False):
        """(image uint8 (H, W, 3), mask uint8 (H, W) of class ids, or None); errors name it."""
        if sample.record is not None:
            return self.records.read(sample)
        return read_pair(
            sample.image, sample.mask, self.num_classes, self.label_lookup, convert_images
        )

    def read_mask(self, sample: Sample):
        if sample.record is not None:
            return self.records.read_mask(sample)
        return read_mask(sample.mask, self.num_classes, self.label_lookup)

    def resolve(self, ids, split_name="list", need_masks=False) -> list[Sample]:
        """The samples of `ids`; a clear error for unknown ids or missing masks."""
        ids = list(ids)
        if not ids:
            raise DataError(f"{split_name}: the split list is empty")
        unknown = [i for i in ids if i not in self.samples]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise DataError(
                f"{split_name}: {len(unknown)} id(s) have no image under {self.root}: {shown}"
            )
        samples = [self.samples[i] for i in ids]
        if need_masks:
            missing = [s for s in samples if not s.has_mask]
            if missing:
                shown = ", ".join(s.id for s in missing[:5])
                raise DataError(
                    f"{split_name}: {len(missing)} labeled id(s) have no mask file: {shown}"
                )
        return samples


def _require_dir(path, what):
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


def _read_lines(path):
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def voc_source(root) -> SegmentationSource:
    """PASCAL VOC 2012 with the SBD augmented masks.

    `root` is `VOCdevkit/VOC2012` (or a folder holding it). Masks come from
    `SegmentationClassAug` (one channel, ids 0-20 and 255) where present, else from the
    official palette PNGs of `SegmentationClass`, read as palette indices. The train set is
    every image with a mask that is not in `ImageSets/Segmentation/val.txt`.
    """
    root = Path(root)
    if (root / "VOCdevkit" / "VOC2012").is_dir():
        root = root / "VOCdevkit" / "VOC2012"
    images = _require_dir(root / "JPEGImages", "VOC JPEGImages")
    aug = root / "SegmentationClassAug"
    official = root / "SegmentationClass"
    if not aug.is_dir() and not official.is_dir():
        raise DataError(f"{root}: neither SegmentationClassAug nor SegmentationClass found")
    samples = {}
    for image in sorted(images.glob("*.jpg")):
        mask = None
        for folder in (aug, official):
            if (folder / f"{image.stem}.png").is_file():
                mask = folder / f"{image.stem}.png"
                break
        samples[image.stem] = Sample(image.stem, image, mask)
    val_list = root / "ImageSets" / "Segmentation" / "val.txt"
    val_ids = tuple(_read_lines(val_list)) if val_list.is_file() else ()
    val_set = set(val_ids)
    train_ids = tuple(i for i, s in samples.items() if s.mask is not None and i not in val_set)
    return SegmentationSource(
        "voc", root, VOC_CLASSES, VOC_PALETTE, samples, None, train_ids, val_ids
    )


def cityscapes_source(root) -> SegmentationSource:
    """Cityscapes: `leftImg8bit/<split>/<city>/*` and `gtFine/.../*_gtFine_labelIds.png`.

    Label ids are mapped to the 19 train ids (others to 255) by the official table. Ids are
    "<split>/<city>/<city>_<seq>_<frame>".
    """
    root = Path(root)
    left = _require_dir(root / "leftImg8bit", "Cityscapes leftImg8bit")
    gt = root / "gtFine"
    samples = {}
    for image in sorted(left.glob("*/*/*_leftImg8bit.png")):
        rel = image.relative_to(left).as_posix()[: -len("_leftImg8bit.png")]
        mask = gt / f"{rel}_gtFine_labelIds.png"
        samples[rel] = Sample(rel, image, mask if mask.is_file() else None)
    train_ids = tuple(i for i in samples if i.startswith("train/"))
    val_ids = tuple(i for i in samples if i.startswith("val/"))
    return SegmentationSource(
        "cityscapes",
        root,
        CITYSCAPES_CLASSES,
        CITYSCAPES_PALETTE,
        samples,
        None,
        train_ids,
        val_ids,
        tuple(cityscapes_lookup_table()),
    )


def custom_source(root) -> SegmentationSource:
    """A folder in the custom format (see the module docstring)."""
    root = Path(root)
    _require_dir(root, "dataset")
    images = _require_dir(root / "images", "images")
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise DataError(f"{classes_file}: file not found (one class name per line)")
    class_names = tuple(_read_lines(classes_file))
    if len(class_names) < 2:
        raise DataError(f"{classes_file}: needs at least 2 class names, found {len(class_names)}")
    palette = default_palette(len(class_names))
    palette_file = root / "palette.txt"
    if palette_file.is_file():
        palette = _read_palette(palette_file, len(class_names))
    masks = root / "masks"
    samples = {}
    for image in sorted(images.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if image.stem in samples:
            raise DataError(f"{image}: two images share the id {image.stem!r}")
        mask = masks / f"{image.stem}.png"
        samples[image.stem] = Sample(image.stem, image, mask if mask.is_file() else None)
    split_dir = root / "splits"
    return SegmentationSource(
        root.name,
        root,
        class_names,
        palette,
        samples,
        split_dir if split_dir.is_dir() else None,
        tuple(i for i, s in samples.items() if s.mask is not None),
        (),
    )


def _read_palette(path, num_classes):
    palette = []
    for number, line in enumerate(_read_lines(path), start=1):
        parts = line.replace(",", " ").split()
        try:
            rgb = tuple(int(p) for p in parts)
        except ValueError:
            rgb = ()
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise DataError(f"{path}:{number}: expected 'r g b' with values 0-255, got {line!r}")
        palette.append(rgb)
    if len(palette) < num_classes:
        raise DataError(f"{path}: {len(palette)} colors for {num_classes} classes")
    return tuple(palette[:num_classes])


def load_source(kind, root, tfds_data_dir=None) -> SegmentationSource:
    """`kind` is "voc", "cityscapes", "cityscapes_tfds" or "custom".

    For "cityscapes_tfds" `root` is the manual download folder holding the Cityscapes zips and
    `tfds_data_dir` where TFDS keeps the prepared dataset (default ~/tensorflow_datasets).
    """
    if kind == "cityscapes_tfds":
        from ppl_tf.data.tfds_cityscapes import cityscapes_tfds_source

        return cityscapes_tfds_source(root, tfds_data_dir)
    loaders = {"voc": voc_source, "cityscapes": cityscapes_source, "custom": custom_source}
    if kind not in loaders:
        raise DataError(
            f"dataset kind must be one of {sorted([*loaders, 'cityscapes_tfds'])}; got {kind!r}"
        )
    return loaders[kind](root)
