"""Reading images and masks from files, with errors that name the file and the problem.

Images must be 8-bit RGB; masks one channel of class ids (8-bit grayscale, or a palette PNG read
as palette indices, never as colors). `convert_images=True` accepts grayscale, RGBA and 16-bit
images and converts them to 8-bit RGB instead of refusing them.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ppl_tf.data.classes import IGNORE_LABEL


class DataError(ValueError):
    """A data file or list that cannot be used; the message names the file and the problem."""


def open_image(path, data=None):
    """The decoded image of the file `path`, or of the encoded bytes `data` that `path` names."""
    if data is None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: file not found")
    try:
        image = Image.open(path if data is None else io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: cannot decode the image ({error})") from None
    return image


def describe_mode(mode):
    return {
        "L": "grayscale (1 channel)",
        "LA": "grayscale with alpha (2 channels)",
        "RGBA": "RGBA (4 channels)",
        "I;16": "16-bit grayscale",
        "I;16B": "16-bit grayscale",
        "I": "32-bit integer",
        "P": "palette",
        "1": "1-bit",
        "CMYK": "CMYK",
    }.get(mode, mode)


def check_image_mode(path, mode, convert_images=False):
    if mode != "RGB" and not convert_images:
        raise DataError(
            f"{path}: image is {describe_mode(mode)}, not 8-bit RGB; convert it, or pass "
            "convert_images=True to convert grayscale, RGBA and 16-bit images on load"
        )


def check_mask_mode(path, mode):
    if mode not in ("L", "P"):
        raise DataError(
            f"{path}: mask is {describe_mode(mode)}; masks must hold class ids in one "
            "8-bit channel (grayscale or palette PNG)"
        )


def check_sizes(image_path, image_wh, mask_path, mask_wh):
    if tuple(mask_wh) != tuple(image_wh):
        raise DataError(
            f"{mask_path}: mask is {mask_wh[0]}x{mask_wh[1]} (WxH) but its image "
            f"{image_path} is {image_wh[0]}x{image_wh[1]}"
        )


def read_image(path, convert_images=False):
    """Returns an (H, W, 3) uint8 RGB array."""
    image = open_image(path)
    if image.mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    check_image_mode(path, image.mode, convert_images)
    if image.mode.startswith("I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        gray = np.round(array / top * 255.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_mask(path, num_classes, lookup=None):
    """Returns an (H, W) uint8 array of class ids in [0, num_classes) or IGNORE_LABEL.

    `lookup` (256 entries) maps stored ids to class ids first (Cityscapes label ids).
    """
    image = open_image(path)
    check_mask_mode(path, image.mode)
    mask = np.asarray(image, dtype=np.uint8)  # a palette PNG gives its indices
    if lookup is not None:
        mask = np.asarray(lookup, dtype=np.uint8)[mask]
    check_labels(mask, num_classes, path)
    return mask


def check_labels(mask, num_classes, path):
    bad = (mask >= num_classes) & (mask != IGNORE_LABEL)
    if bad.any():
        values = sorted(int(v) for v in np.unique(mask[bad]))
        shown = ", ".join(map(str, values[:10])) + (" ..." if len(values) > 10 else "")
        raise DataError(
            f"{path}: mask holds label values outside [0, {num_classes}) and not "
            f"{IGNORE_LABEL}: {shown} ({int(bad.sum())} pixels)"
        )


def read_pair(image_path, mask_path, num_classes, lookup=None, convert_images=False):
    """Reads an image and its mask (or None) and checks that their sizes agree."""
    image = read_image(image_path, convert_images)
    if mask_path is None:
        return image, None
    mask = read_mask(mask_path, num_classes, lookup)
    check_sizes(image_path, image.shape[1::-1], mask_path, mask.shape[::-1])
    return image, mask
