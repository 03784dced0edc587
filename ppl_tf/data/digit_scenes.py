"""Digit scenes: the embedded default dataset, made from real handwritten digits.

scikit-learn ships the UCI handwritten digits (1,797 images of 8x8 pixels, no download). Each
scene pastes several of them, enlarged and colored, on a cluttered background (color
gradients, rectangles, lines and noise). The per-pixel class is the digit (classes "0"-"9" as
ids 1-10) or background (id 0). Train and val scenes draw their digits from disjoint pools of
the 1,797 images, so val measures generalization to unseen handwriting.

`materialize()` writes the scenes once into a cache folder in the custom format
(`ppl_tf.data.sources`), so they go through the same loader as a user's data.
"""

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = ("background",) + tuple(str(d) for d in range(10))
FORMAT_VERSION = 3  # 3: digits keep a luminance contrast (they survive grayscale)


@dataclass(frozen=True)
class DigitSceneConfig:
    num_train: int = 4000
    num_val: int = 200
    size: int = 64
    digits_per_scene: tuple[int, int] = (2, 4)
    digit_size: tuple[int, int] = (20, 28)
    val_pool_fraction: float = 0.3
    clutter: int = 2  # most rectangles and lines drawn on a background
    noise: float = 5.0  # std of the Gaussian pixel noise
    min_contrast: float = 180.0  # least RGB distance between a digit and what it covers
    # least luminance difference (0-255): the strong view turns 20% of images gray, and a
    # digit that differs from its background in hue only would vanish there
    min_luma_contrast: float = 60.0
    stroke_threshold: float = 0.3  # glyph coverage above which a pixel is labeled as the digit
    seed: int = 0
    overlap: bool = False  # digits may cover each other (the later one on top, in the mask too)
    texture: float = 0.0  # amplitude of a random stripe texture on the background (0: none)


# Fields added after scenes were cached: left out of the cache key and the stored config at
# their defaults, so that the folders written before them stay valid.
_LATER_FIELDS = {"overlap": False, "texture": 0.0}


def _key_fields(config):
    fields = asdict(config)
    for key, default in _LATER_FIELDS.items():
        if fields[key] == default:
            del fields[key]
    return fields


def digit_pools(config: DigitSceneConfig):
    """(train_pool, val_pool): disjoint index arrays into sklearn's digits, and the data."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(config.seed).permutation(len(digits.images))
    num_val = int(round(len(order) * config.val_pool_fraction))
    return order[num_val:], order[:num_val], digits.images, digits.target


def _background(rng, config: DigitSceneConfig):
    size = config.size
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    image = (top * (1 - t) + bottom * t) * np.ones((size, size, 3))
    for _ in range(rng.integers(0, config.clutter + 1)):  # rectangles
        y0, x0 = rng.integers(0, size, 2)
        h, w = rng.integers(4, size // 2, 2)
        image[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, 3)
    for _ in range(rng.integers(0, config.clutter + 1)):  # lines
        color = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            y = rng.integers(0, size)
            image[y : y + rng.integers(1, 3), :] = color
        else:
            x = rng.integers(0, size)
            image[:, x : x + rng.integers(1, 3)] = color
    if config.texture > 0:  # stripes of a random frequency and direction
        y, x = np.mgrid[0:size, 0:size].astype(np.float64)
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
        phase = 2 * np.pi * (np.cos(angle) * x + np.sin(angle) * y) / period
        image = image + config.texture * np.sin(phase)[..., None] * rng.uniform(0.3, 1.0, 3)
    return image


def _place(rng, boxes, side, size, tries=20):
    """A top-left corner for a `side` square that overlaps no box in `boxes`, or None."""
    for _ in range(tries):
        y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
        if all(y0 + side <= y or y + s <= y0 or x0 + side <= x or x + s <= x0 for y, x, s in boxes):
            return y0, x0
    return None


LUMA = np.array([0.299, 0.587, 0.114])  # the weights of the strong view's grayscale


def _contrasting_color(rng, region, min_contrast, min_luma_contrast=0.0):
    """A random color at least `min_contrast` (RGB distance) and `min_luma_contrast`
    (luminance) away from the mean of `region`."""
    mean = region.reshape(-1, 3).mean(axis=0)
    for _ in range(50 if min_luma_contrast > 0 else 20):
        color = rng.uniform(0, 255, 3)
        if (
            np.linalg.norm(color - mean) >= min_contrast
            and abs(float((color - mean) @ LUMA)) >= min_luma_contrast
        ):
            return color
    if min_luma_contrast <= 0:  # format 2's scenes, drawn exactly as they were
        return np.where(mean > 127.5, 0.0, 255.0)  # the far corner of the RGB cube
    return np.full(3, 0.0 if mean @ LUMA > 127.5 else 255.0)  # black or white, the farther


def render_scene(rng, pool, images, targets, config: DigitSceneConfig):
    """One scene: (image uint8 (S, S, 3), mask uint8 (S, S)). Digits do not overlap."""
    size = config.size
    image = _background(rng, config)
    mask = np.zeros((size, size), np.uint8)
    boxes = []
    for _ in range(rng.integers(config.digits_per_scene[0], config.digits_per_scene[1] + 1)):
        index = pool[rng.integers(len(pool))]
        side = int(rng.integers(config.digit_size[0], config.digit_size[1] + 1))
        corner = _place(rng, [] if config.overlap else boxes, side, size)
        if corner is None:
            continue
        y0, x0 = corner
        boxes.append((y0, x0, side))
        glyph = Image.fromarray((images[index] / 16.0 * 255).astype(np.uint8))
        alpha = np.asarray(glyph.resize((side, side), Image.BILINEAR), np.float64) / 255.0
        region = image[y0 : y0 + side, x0 : x0 + side]
        color = _contrasting_color(rng, region, config.min_contrast, config.min_luma_contrast)
        image[y0 : y0 + side, x0 : x0 + side] = (
            region * (1 - alpha[..., None]) + color * alpha[..., None]
        )
        mask[y0 : y0 + side, x0 : x0 + side][alpha > config.stroke_threshold] = targets[index] + 1
    image += rng.normal(0, config.noise, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def crowded_scenes(config: DigitSceneConfig = DigitSceneConfig()) -> DigitSceneConfig:
    """The "crowded" layout: 128x128 scenes with 4-8 digits of 14-22 px (more, smaller digits
    and more background than the standard 64x64 scenes). The demo's settings were never tuned
    on it: it checks that they carry over."""
    return replace(config, size=128, digits_per_scene=(4, 8), digit_size=(14, 22), clutter=4)


def overlap_scenes(config: DigitSceneConfig = DigitSceneConfig()) -> DigitSceneConfig:
    """The "overlap" layout: 96x96 scenes with 2-3 large digits of 30-44 px that may cover each
    other, on striped textured backgrounds (the third layout, on which fixes are chosen
    beside the standard scenes; the crowded layout stays held out)."""
    return replace(
        config, size=96, digits_per_scene=(2, 3), digit_size=(30, 44), overlap=True, texture=40.0
    )


def class_frequencies(masks_dir):
    num_classes = len(CLASS_NAMES)
    counts = np.zeros(num_classes, np.int64)
    for path in sorted(Path(masks_dir).glob("*.png")):
        counts += np.bincount(np.asarray(Image.open(path)).ravel(), minlength=256)[:num_classes]
    return counts


def materialize(cache_dir, config: DigitSceneConfig = DigitSceneConfig(), verbose=True) -> Path:
    """Writes the scenes under `cache_dir` (once per config) and returns the dataset folder.

    The folder holds images/, masks/, classes.txt, palette.txt, splits/val.txt and stats.json
    (class pixel frequencies, pools, generation time). A folder written for the same config is
    reused as it is. The scenes are written into a private temporary folder that is renamed
    into place at the end, so processes that materialize at the same time (the workers of a
    multi-worker run) never read a half-written dataset.
    """
    from ppl_tf.data.classes import default_palette

    fields = _key_fields(config)
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
    key = f"digit_scenes_v{FORMAT_VERSION}_{config.num_train}x{config.num_val}_{digest}"
    root = Path(cache_dir) / key
    stats_file = root / "stats.json"
    if stats_file.is_file():
        stats = json.loads(stats_file.read_text())
        if stats.get("config") == json.loads(json.dumps(fields)):
            return root
    start = time.perf_counter()
    final = root
    root = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    train_pool, val_pool, images, targets = digit_pools(config)
    rng = np.random.default_rng(config.seed + 1)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    val_ids = []
    for split, count, pool in (
        ("train", config.num_train, train_pool),
        ("val", config.num_val, val_pool),
    ):
        for i in range(count):
            image, mask = render_scene(rng, pool, images, targets, config)
            sample_id = f"{split}_{i:05d}"
            Image.fromarray(image).save(root / "images" / f"{sample_id}.png")
            Image.fromarray(mask).save(root / "masks" / f"{sample_id}.png")
            if split == "val":
                val_ids.append(sample_id)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES))
    palette = default_palette(len(CLASS_NAMES))
    (root / "palette.txt").write_text("".join(f"{r} {g} {b}\n" for r, g, b in palette))
    (root / "splits" / "val.txt").write_text("".join(f"{i}\n" for i in val_ids))
    counts = class_frequencies(root / "masks")
    stats = {
        "config": fields,
        "train_pool": sorted(int(i) for i in train_pool),
        "val_pool": sorted(int(i) for i in val_pool),
        "class_pixels": {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)},
        "class_fraction": {
            name: round(float(c) / float(counts.sum()), 5)
            for name, c in zip(CLASS_NAMES, counts, strict=True)
        },
        "generation_seconds": round(time.perf_counter() - start, 2),
    }
    (root / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    try:
        os.rename(root, final)
    except OSError:  # another process finished the same (deterministic) scenes first
        shutil.rmtree(root, ignore_errors=True)
        if not stats_file.is_file():
            raise
    root = final
    if verbose:
        print(
            f"digit scenes: wrote {config.num_train} train + {config.num_val} val scenes to {root} "
            f"in {stats['generation_seconds']} s"
        )
    return root
