"""Split lists: reading the formats in circulation, writing ours, generating partitions.

Our lists are plain text, one sample id per line: `labeled.txt`, `unlabeled.txt`, `val.txt`.
`read_split_list` also reads the lists of other codebases:
  - CPS / UniMatch style: "JPEGImages/x.jpg SegmentationClassAug/x.png" (image path first),
  - U2PL / UniMatch id lists: "2007_000032",
  - Cityscapes paths: "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png ...".
"""

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ppl_tf.data.decode import DataError
from ppl_tf.data.sources import IMAGE_SUFFIXES, SegmentationSource

SPLIT_NAMES = ("labeled", "unlabeled", "val")
PAPER_FRACTIONS = ("1/16", "1/8", "1/4", "1/2")
VOC_COUNTS = (92, 183, 366, 732, 1464)


@dataclass(frozen=True)
class Splits:
    labeled: tuple[str, ...]
    unlabeled: tuple[str, ...]
    val: tuple[str, ...]

    def check_disjoint(self):
        overlap = set(self.labeled) & set(self.unlabeled)
        if overlap:
            raise DataError(f"labeled and unlabeled lists share {len(overlap)} id(s)")
        for name in ("labeled", "unlabeled"):
            shared = set(getattr(self, name)) & set(self.val)
            if shared:
                raise DataError(f"{name} and val lists share {len(shared)} id(s)")


def line_to_id(line: str) -> str:
    first = line.split()[0]
    if "leftImg8bit/" in first:
        rel = first.split("leftImg8bit/", 1)[1]
        return rel[: -len("_leftImg8bit.png")] if rel.endswith("_leftImg8bit.png") else rel
    path = Path(first)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return path.stem
    return first


def read_split_list(path) -> tuple[str, ...]:
    """Ids of a split list in any of the supported formats; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    ids = [line_to_id(line) for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: the split list is empty")
    duplicates = len(ids) - len(set(ids))
    if duplicates:
        raise DataError(f"{path}: {duplicates} id(s) appear more than once")
    return tuple(ids)


def write_split_list(path, ids):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def read_splits(split_dir) -> Splits:
    split_dir = Path(split_dir)
    splits = Splits(*(read_split_list(split_dir / f"{name}.txt") for name in SPLIT_NAMES))
    splits.check_disjoint()
    return splits


def write_splits(split_dir, splits: Splits):
    for name in SPLIT_NAMES:
        write_split_list(Path(split_dir) / f"{name}.txt", getattr(splits, name))


def labeled_count(spec, total) -> int:
    """`spec` is a fraction ("1/16", 0.125) or an absolute count (92)."""
    if isinstance(spec, str) and "/" in spec:
        fraction = Fraction(spec)
    elif isinstance(spec, float) or (isinstance(spec, str) and "." in spec):
        fraction = Fraction(str(spec))
    else:
        count = int(spec)
        if not 1 <= count <= total:
            raise DataError(f"labeled count {count} is not within 1..{total} training images")
        return count
    if not 0 < fraction <= 1:
        raise DataError(f"labeled fraction {spec} is not in (0, 1]")
    return max(1, math.floor(total * fraction))


def class_presence(source: SegmentationSource, ids) -> dict[str, frozenset]:
    """For each id, the set of classes its mask contains (reads every mask).

    An unreadable mask counts as holding no class: the validation pass that follows names it
    together with every other bad file, and `scripts/validate.py --skip-bad` can only write
    lists without it if partitioning does not stop at it first.
    """
    presence = {}
    for sample in source.resolve(ids, "train", need_masks=True):
        try:
            mask = source.read_mask(sample)
        except DataError:
            presence[sample.id] = frozenset()
            continue
        presence[sample.id] = frozenset(int(c) for c in np.unique(mask) if c < source.num_classes)
    return presence


def generate_partition(train_ids, count, seed, presence=None) -> tuple[tuple, tuple]:
    """Deterministic labeled/unlabeled partition of `train_ids` with `count` labeled ids.

    With `presence` (id -> classes in its mask), the labeled part first takes, class by class
    from the rarest, one image holding each class not yet covered, so every class appears in
    the labeled part whenever `count` allows; the rest is filled in a seeded random order.
    """
    train_ids = sorted(train_ids)
    if not 1 <= count <= len(train_ids):
        raise DataError(f"labeled count {count} is not within 1..{len(train_ids)}")
    order = [train_ids[i] for i in np.random.default_rng(seed).permutation(len(train_ids))]
    chosen, chosen_set, covered = [], set(), set()
    if presence:
        frequency = {}
        for classes in presence.values():
            for c in classes:
                frequency[c] = frequency.get(c, 0) + 1
        for c in sorted(frequency, key=lambda k: (frequency[k], k)):
            if c in covered or len(chosen) >= count:
                continue
            pick = next(i for i in order if c in presence.get(i, ()) and i not in chosen_set)
            chosen.append(pick)
            chosen_set.add(pick)
            covered |= presence[pick]
    for i in order:
        if len(chosen) >= count:
            break
        if i not in chosen_set:
            chosen.append(i)
            chosen_set.add(i)
    unlabeled = tuple(i for i in order if i not in chosen_set)
    return tuple(chosen), unlabeled


def make_splits(
    source: SegmentationSource, labeled="1/16", seed=0, split_dir=None, cover_classes=True
) -> Splits:
    """The splits of a run, in this order of preference:

    1. `labeled` is a folder (or the source has `splits/`): read its three lists;
    2. otherwise generate a partition of the source's train ids with `labeled` a fraction or a
       count, seeded, covering every class where possible; val is the source's val ids (or,
       for a custom folder without val.txt, an error asking for one). When `split_dir` is
       given the generated lists are written there.
    """
    if isinstance(labeled, (str, Path)) and Path(labeled).is_dir():
        return read_splits(labeled)
    if source.split_dir is not None and labeled in (None, "given"):
        return read_splits(source.split_dir)
    if not source.train_ids:
        raise DataError(f"{source.root}: no labeled training images to partition")
    val_ids = source.val_ids
    if not val_ids and source.split_dir is not None and (source.split_dir / "val.txt").is_file():
        val_ids = read_split_list(source.split_dir / "val.txt")
    if not val_ids:
        raise DataError(f"{source.root}: no validation ids (write splits/val.txt)")
    val_set = set(val_ids)
    train_ids = [i for i in source.train_ids if i not in val_set]
    count = labeled_count(labeled, len(train_ids))
    presence = class_presence(source, train_ids) if cover_classes else None
    chosen, rest = generate_partition(train_ids, count, seed, presence)
    # Images without masks are unlabeled data too.
    extra = tuple(
        sorted(i for i, s in source.samples.items() if not s.has_mask and i not in val_set)
    )
    splits = Splits(chosen, rest + extra, tuple(val_ids))
    splits.check_disjoint()
    if split_dir is not None:
        write_splits(split_dir, splits)
    return splits
