"""The validation pass: finds unusable files before training starts.

The cheap pass (`full=False`) reads only file headers: missing files, undecodable headers,
image modes, mask modes and image/mask size mismatches. The full pass also decodes every
file and checks label values; a header can be intact while the data behind it is truncated,
which only the full pass finds. `full` may name splits (`full=("labeled", "val")`) to decode
those and read only the headers of the rest. Problems raise one `DataError` listing them all,
unless `skip_bad=True`, which drops the bad samples and reports them (never silently).
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from ppl_tf.data.decode import (
    DataError,
    check_image_mode,
    check_mask_mode,
    check_sizes,
)
from ppl_tf.data.sources import SegmentationSource
from ppl_tf.data.splits import Splits


@dataclass
class ValidationReport:
    checked: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (sample id, message)

    @property
    def bad_ids(self):
        return {sample_id for sample_id, _ in self.problems}

    def summary(self, limit=20):
        lines = [f"{len(self.bad_ids)} of {self.checked} samples have problems:"]
        lines += [f"  {message}" for _, message in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


def _header(path):
    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{path}: cannot decode the image ({error})") from None


def check_sample(source, sample, full=False, convert_images=False):
    """Raises DataError for the first problem of one sample."""
    if full:
        source.read(sample, convert_images)
        return
    if sample.record is not None:
        return  # TFDS checked shapes and channels when it prepared the records
    size, mode = _header(sample.image)
    check_image_mode(sample.image, mode, convert_images)
    if sample.mask is not None:
        mask_size, mask_mode = _header(sample.mask)
        check_mask_mode(sample.mask, mask_mode)
        check_sizes(sample.image, size, sample.mask, mask_size)


SKIP_HINT = "(pass skip_bad=True to leave these samples out)"


def _problem(source, sample, full, convert_images):
    try:
        check_sample(source, sample, full, convert_images)
    except DataError as error:
        return str(error)
    return None


def validate(
    source: SegmentationSource,
    splits: Splits,
    full=False,
    convert_images=False,
    skip_bad=False,
    hint=SKIP_HINT,
):
    """Checks every sample of `splits`; returns (splits without bad samples, report).

    `full`: True decodes every file, False reads headers, or a collection of split names
    whose files are decoded (the rest: headers). `hint` ends the error message: how to go on
    without the bad samples (scripts give their own command).
    """
    report = ValidationReport()
    # Decoding is mostly outside the GIL (Pillow's decoders, NumPy), so threads help the full
    # pass on large images.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for name in ("labeled", "unlabeled", "val"):
            need_masks = name != "unlabeled"
            decode = full if isinstance(full, bool) else name in full
            samples = source.resolve(getattr(splits, name), name, need_masks=need_masks)
            problems = pool.map(
                lambda sample, decode=decode: _problem(source, sample, decode, convert_images),
                samples,
            )
            for sample, problem in zip(samples, problems, strict=True):
                report.checked += 1
                if problem is not None and (sample.id, problem) not in report.problems:
                    report.problems.append((sample.id, problem))  # once if in two lists
    if not report.problems:
        return splits, report
    if not skip_bad:
        raise DataError(report.summary() + (f"\n{hint}" if hint else ""))
    bad = report.bad_ids
    kept = Splits(
        *(
            tuple(i for i in getattr(splits, n) if i not in bad)
            for n in ("labeled", "unlabeled", "val")
        )
    )
    print(f"validation: skipping {len(bad)} bad samples\n{report.summary()}")
    for name in ("labeled", "unlabeled", "val"):
        if not getattr(kept, name):
            raise DataError(f"{name}: no samples left after skipping bad files\n{report.summary()}")
    return kept, report
