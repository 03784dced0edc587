import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import load_repo_script
from PIL import Image

from ppl_tf.data import (
    AugmentConfig,
    DataError,
    SkippedSamples,
    Splits,
    cityscapes_source,
    custom_source,
    eval_dataset,
    make_splits,
    read_split_list,
    semi_supervised_dataset,
    validate,
    voc_source,
)
from ppl_tf.data.augment import (
    blur_sigma_range,
    gaussian_blur,
    strong_photometric,
    weak_geometry,
)
from ppl_tf.data.classes import CITYSCAPES_ID_TO_TRAIN_ID, VOC_PALETTE
from ppl_tf.data.decode import read_mask
from ppl_tf.data.digit_scenes import DigitSceneConfig, materialize
from ppl_tf.data.splits import generate_partition

ROOT = Path(__file__).resolve().parents[1]


def save_rgb(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def make_voc(root, n=6, rng=None):
    rng = rng or np.random.default_rng(0)
    voc = root / "VOCdevkit" / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(n)]
    written = {}
    for k, i in enumerate(ids):
        save_rgb(voc / "JPEGImages" / f"{i}.jpg", rng.integers(0, 255, (30, 40, 3)))
        mask = rng.integers(0, 21, (30, 40)).astype(np.uint8)
        mask[0, :5] = 255
        written[i] = mask
        if k % 2 == 0:
            save_rgb(voc / "SegmentationClassAug" / f"{i}.png", mask)
        else:  # the official palette PNG
            image = Image.fromarray(mask, mode="P")
            flat = [c for rgb in VOC_PALETTE for c in rgb] + [224, 224, 192] * (256 - 21)
            image.putpalette(flat)
            (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            image.save(voc / "SegmentationClass" / f"{i}.png")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids[-2:]) + "\n")
    return voc, written


def make_custom(root, n=12, size=(24, 32), unlabeled_without_masks=2, rng=None):
    rng = rng or np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nred\nblue\n")
    for i in range(n):
        image = np.full(size + (3,), 90, np.uint8)
        mask = np.zeros(size, np.uint8)
        mask[4:12, 4:14] = 1
        mask[14:20, 16:28] = 2
        image[mask == 1] = (220, 20, 20)
        image[mask == 2] = (20, 20, 220)
        save_rgb(root / "images" / f"img{i:02d}.png", image)
        if i < n - unlabeled_without_masks:
            save_rgb(root / "masks" / f"img{i:02d}.png", mask)
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("img00\nimg01\n")
    return root


def test_voc_labels_equal_ids_written_and_palette_pngs_read_as_indices(tmp_path):
    voc, written = make_voc(tmp_path)
    source = voc_source(tmp_path)
    assert source.root == voc and source.num_classes == 21
    assert set(source.val_ids) == set(list(written)[-2:])
    for sample_id, mask in written.items():
        decoded = read_mask(source.samples[sample_id].mask, 21)
        np.testing.assert_array_equal(decoded, mask)
    palette_sample = source.samples[list(written)[1]]
    assert palette_sample.mask.parent.name == "SegmentationClass"


def test_cityscapes_ids_map_to_official_train_ids(tmp_path):
    image_path = (
        tmp_path / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    )
    save_rgb(image_path, np.zeros((4, 40, 3)))
    label_ids = np.arange(40, dtype=np.uint8)[None].repeat(4, 0)
    save_rgb(
        tmp_path / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png",
        label_ids,
    )
    source = cityscapes_source(tmp_path)
    assert list(source.samples) == ["train/aachen/aachen_000000_000019"]
    mask = read_mask(
        source.samples["train/aachen/aachen_000000_000019"].mask, 19, source.label_lookup
    )
    official = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
    assert CITYSCAPES_ID_TO_TRAIN_ID == official
    for label_id in range(40):
        assert mask[0, label_id] == official.get(label_id, 255)


def test_custom_folder_unlabeled_images_need_no_mask(tmp_path):
    source = custom_source(make_custom(tmp_path / "ds"))
    assert source.class_names == ("background", "red", "blue")
    splits = make_splits(source, labeled=3, seed=0)
    assert len(splits.labeled) == 3
    assert {"img10", "img11"} <= set(splits.unlabeled)  # the two images without masks
    ds = semi_supervised_dataset(
        source, splits.labeled, splits.unlabeled, 2, 2, AugmentConfig(crop_size=16), seed=0
    )
    batch = next(iter(ds))
    assert "unlabeled_masks" not in batch  # not every unlabeled image has a mask
    assert batch["labeled_images"].shape == (2, 16, 16, 3)
    assert batch["unlabeled_strong"].shape == (2, 16, 16, 3)
    assert batch["unlabeled_valid"].dtype == tf.bool
    assert batch["unlabeled_valid"].shape == (2, 16, 16)


def test_augmented_masks_keep_values_and_alignment():
    image = np.full((80, 100, 3), 60, np.uint8)
    mask = np.zeros((80, 100), np.uint8)
    mask[10:40, 10:50] = 3
    mask[44:70, 40:90] = 7
    mask[0:3, :] = 255
    image[mask == 3] = (250, 0, 0)
    image[mask == 7] = (0, 0, 250)
    colors = np.array([(60, 60, 60), (250, 0, 0), (0, 0, 250)], np.float32)
    flips = set()
    for k in range(30):
        out_image, out_mask = weak_geometry(image, mask, tf.constant([k, 7], tf.int64), 48)
        out_image, out_mask = out_image.numpy(), out_mask.numpy()
        assert set(np.unique(out_mask)) <= {0, 3, 7, 255}
        # The mask still matches the image content: classify each pixel by its nearest color.
        nearest = np.argmin(((out_image[..., None, :] - colors) ** 2).sum(-1), axis=-1)
        content = np.array([0, 3, 7])[nearest]
        inside = (out_mask != 255) & (out_image.sum(-1) > 0)  # not padding
        agreement = np.mean(content[inside] == out_mask[inside])
        assert agreement > 0.93, (k, agreement)
        flips.add(bool(out_image[..., 0].argmax() % 48 > 24))
    assert len(flips) == 2


def test_valid_map_marks_padding_only():
    # A 40x30 image of all-labeled pixels scaled by 0.5-1.0 into 48x48 crops: the padding is
    # exactly where the mask became 255, for an image with no mask the map is the same.
    image = np.random.default_rng(0).integers(1, 255, (40, 30, 3)).astype(np.uint8)
    mask = np.ones((40, 30), np.uint8)
    for k in range(10):
        seed = tf.constant([k, 3], tf.int64)
        out_image, out_mask, valid = weak_geometry(
            image, mask, seed, 48, scale_range=(0.5, 1.0), with_valid=True
        )
        np.testing.assert_array_equal(valid.numpy(), out_mask.numpy() != 255)
        assert 0 < valid.numpy().mean() < 1
        unlabeled = np.full((40, 30), 255, np.uint8)
        _, _, valid_unlabeled = weak_geometry(
            image, unlabeled, seed, 48, scale_range=(0.5, 1.0), with_valid=True
        )
        np.testing.assert_array_equal(valid_unlabeled.numpy(), valid.numpy())
        assert np.all(out_image.numpy()[~valid.numpy()] == 0)


@pytest.mark.parametrize("name", ["voc_r50", "voc_r101", "cityscapes_r50", "cityscapes_r101"])
def test_paper_configs_blur_with_the_usual_sigma_whatever_their_crop(name):
    from ppl_tf.config import load_config
    from ppl_tf.run import augment_config

    augment = augment_config(load_config(ROOT / "configs" / f"{name}.yaml"))
    assert augment.strong_blur_sigma() == pytest.approx((0.1, 2.0))


def test_blur_is_scaled_with_the_crop():
    assert blur_sigma_range(512) == pytest.approx((0.1, 2.0))
    assert blur_sigma_range(64) == pytest.approx((0.0125, 0.25))
    assert AugmentConfig(crop_size=64).strong_blur_sigma() == pytest.approx((0.0125, 0.25))
    assert AugmentConfig(crop_size=64, blur_sigma=(0.1, 2.0)).strong_blur_sigma() == (0.1, 2.0)
    # a 1-pixel line keeps most of its contrast under the 64-pixel crop's largest blur
    line = np.zeros((16, 16, 3), np.float32)
    line[:, 8] = 255.0
    blurred = gaussian_blur(tf.constant(line), tf.constant(0.25)).numpy()
    assert blurred[:, 8].min() > 0.9 * 255
    assert gaussian_blur(tf.constant(line), tf.constant(2.0)).numpy()[:, 8].max() < 0.25 * 255


def test_strong_view_differs_only_photometrically():
    image = np.full((32, 32, 3), 80.0, np.float32)
    image[8:20, 8:24] = (240, 10, 10)
    weak = tf.constant(image)
    for k in range(10):
        strong = strong_photometric(weak, tf.constant([k, 1], tf.int64), p_blur=0.0).numpy()
        region = np.zeros((32, 32), bool)
        region[8:20, 8:24] = True
        # A point-wise color change: every pixel of one weak color gets one strong color.
        assert np.ptp(strong[region], axis=0).max() < 1e-3
        assert np.ptp(strong[~region], axis=0).max() < 1e-3
    changed = [
        not np.allclose(strong_photometric(weak, tf.constant([k, 2], tf.int64)).numpy(), image)
        for k in range(5)
    ]
    assert any(changed)


def test_pipeline_views_share_geometry(tmp_path):
    source = custom_source(make_custom(tmp_path / "ds", unlabeled_without_masks=0))
    splits = make_splits(source, labeled=4, seed=0)
    ds = semi_supervised_dataset(
        source, splits.labeled, splits.unlabeled, 2, 3, AugmentConfig(crop_size=16), seed=3
    )
    batch = next(iter(ds))
    weak, strong = batch["unlabeled_weak"].numpy(), batch["unlabeled_strong"].numpy()
    masks = batch["unlabeled_masks"].numpy()
    for i in range(3):
        # The weak view's red pixels are the mask's class-1 pixels; the strong view keeps the
        # same regions: within a mask region its colors vary little compared with across.
        for cls in np.unique(masks[i]):
            if cls == 255 or (masks[i] == cls).sum() < 10:
                continue
            inside = strong[i][masks[i] == cls].mean(0)
            outside = strong[i][(masks[i] != cls) & (masks[i] != 255)]
            if len(outside):
                assert np.abs(outside.mean(0) - inside).max() > 1.0
        assert weak.shape == strong.shape
    again = next(
        iter(
            semi_supervised_dataset(
                source, splits.labeled, splits.unlabeled, 2, 3, AugmentConfig(crop_size=16), seed=3
            )
        )
    )
    for key in batch:
        np.testing.assert_array_equal(again[key].numpy(), batch[key].numpy())


def test_split_generation_is_deterministic_disjoint_and_covers_classes():
    ids = [f"id{i:03d}" for i in range(200)]
    presence = {i: frozenset({0, 1 + (k % 5)}) for k, i in enumerate(ids)}
    presence["id199"] = frozenset({0, 9})  # a rare class held by one image
    a = generate_partition(ids, 12, seed=4, presence=presence)
    b = generate_partition(ids, 12, seed=4, presence=presence)
    c = generate_partition(ids, 12, seed=5, presence=presence)
    assert a == b and a != c
    labeled, unlabeled = a
    assert len(labeled) == 12 and not set(labeled) & set(unlabeled)
    assert set(labeled) | set(unlabeled) == set(ids)
    covered = set().union(*(presence[i] for i in labeled))
    assert covered == {0, 1, 2, 3, 4, 5, 9}


def test_reads_the_three_external_list_formats(tmp_path):
    (tmp_path / "cps.txt").write_text(
        "JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png\n"
        "JPEGImages/2007_000039.jpg SegmentationClassAug/2007_000039.png\n"
    )
    (tmp_path / "ids.txt").write_text("2007_000032\n2007_000039\n\n")
    (tmp_path / "city.txt").write_text(
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png "
        "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png\n"
    )
    assert read_split_list(tmp_path / "cps.txt") == ("2007_000032", "2007_000039")
    assert read_split_list(tmp_path / "ids.txt") == ("2007_000032", "2007_000039")
    assert read_split_list(tmp_path / "city.txt") == ("train/aachen/aachen_000000_000019",)


@pytest.fixture
def custom(tmp_path):
    return make_custom(tmp_path / "ds")


def _splits(source):
    return Splits(("img02", "img03"), ("img04", "img05", "img10"), ("img00", "img01"))


def test_missing_file_in_list(custom):
    source = custom_source(custom)
    with pytest.raises(DataError, match="img99"):
        source.resolve(["img02", "img99"], "labeled")


def test_empty_list(custom, tmp_path):
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty.txt: the split list is empty"):
        read_split_list(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="missing.txt: split list not found"):
        read_split_list(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    "corruption, message",
    [
        ("corrupt_image", "img03.png: cannot decode the image"),
        ("mask_size", "img03.png: mask is 10x10 \\(WxH\\) but its image"),
        ("grayscale", "img03.png: image is grayscale \\(1 channel\\), not 8-bit RGB"),
        ("rgba", "img03.png: image is RGBA \\(4 channels\\)"),
        ("16bit", "img03.png: image is 16-bit grayscale"),
        ("rgb_mask", "img03.png: mask is RGB"),
    ],
)
def test_bad_files_are_named_by_the_validation_pass(custom, corruption, message):
    image_path, mask_path = custom / "images" / "img03.png", custom / "masks" / "img03.png"
    if corruption == "corrupt_image":
        image_path.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    elif corruption == "mask_size":
        save_rgb(mask_path, np.zeros((10, 10)))
    elif corruption == "grayscale":
        save_rgb(image_path, np.zeros((24, 32)))
    elif corruption == "rgba":
        save_rgb(image_path, np.zeros((24, 32, 4)))
    elif corruption == "16bit":
        Image.fromarray(np.zeros((24, 32), np.uint16)).save(image_path)
    elif corruption == "rgb_mask":
        save_rgb(mask_path, np.zeros((24, 32, 3)))
    source = custom_source(custom)
    with pytest.raises(DataError, match=message):
        validate(source, _splits(source))
    kept, report = validate(source, _splits(source), skip_bad=True)
    assert "img03" not in kept.labeled and report.bad_ids == {"img03"}


def test_grayscale_rgba_and_16bit_convert_when_asked(custom):
    save_rgb(custom / "images" / "img03.png", np.full((24, 32), 7))
    source = custom_source(custom)
    validate(source, _splits(source), convert_images=True, full=True)


def test_out_of_range_labels_found_by_full_validation_and_pipeline(custom):
    mask = np.zeros((24, 32), np.uint8)
    mask[0, 0] = 37
    save_rgb(custom / "masks" / "img01.png", mask)
    source = custom_source(custom)
    with pytest.raises(
        DataError, match="img01.png: mask holds label values outside \\[0, 3\\) and not 255: 37"
    ):
        validate(source, _splits(source), full=True)
    # The pipeline never raises (see test_unreadable_samples_are_left_out_and_named_once).
    skipped = SkippedSamples()
    list(eval_dataset(source, ["img00", "img01"], skipped=skipped))
    assert "img01.png: mask holds label values" in skipped.messages["val", "img01"]


def truncate(path):
    """Cuts a file in half: the header stays readable, the pixel data does not."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_unreadable_samples_are_left_out_and_named_once(custom, capsys):
    # Raised inside tf.data's numpy_function, such an error ended training with a traceback
    # or hung the process in the iterator's destructor.
    truncate(custom / "images" / "img10.png")  # unlabeled (no mask)
    truncate(custom / "images" / "img01.png")  # val
    source = custom_source(custom)
    splits = _splits(source)
    validate(source, splits)  # the header pass cannot see it
    skipped = SkippedSamples()
    ds = semi_supervised_dataset(
        source,
        splits.labeled,
        splits.unlabeled,
        2,
        2,
        AugmentConfig(crop_size=16),
        skipped=skipped,
    )
    for _ in range(8):  # 4 passes over the two readable unlabeled images
        next(iter(ds))
    assert list(skipped.messages) == [("unlabeled", "img10")]
    assert "img10.png: cannot decode the image" in skipped.messages["unlabeled", "img10"]
    assert capsys.readouterr().err.count("img10.png") == 1
    # Evaluation keeps the list's length (Keras warns on datasets of unknown length) and
    # ignores the unreadable image's pixels.
    val = eval_dataset(source, splits.val, skipped=skipped)
    assert val.cardinality().numpy() == 2
    masks = [m.numpy() for _, m in val]
    assert masks[1].shape == (1, 1, 1) and masks[1][0, 0, 0] == 255
    assert skipped.count("val") == 1 and len(skipped) == 2
    assert "img01.png" in skipped.summary() and "img10.png" in skipped.summary()


def test_full_pass_of_named_splits_finds_truncated_data_behind_a_good_header(custom):
    truncate(custom / "images" / "img03.png")  # labeled
    truncate(custom / "images" / "img10.png")  # unlabeled
    source = custom_source(custom)
    with pytest.raises(DataError) as caught:
        validate(source, _splits(source), full=("labeled", "val"), hint="HOW TO GO ON")
    message = str(caught.value)
    assert "img03.png: cannot decode the image (image file is truncated)" in message
    assert "img10" not in message and message.endswith("\nHOW TO GO ON")
    kept, report = validate(source, _splits(source), full=True, skip_bad=True)
    assert report.bad_ids == {"img03", "img10"}
    assert "img03" not in kept.labeled and "img10" not in kept.unlabeled


def test_an_unreadable_mask_does_not_stop_partitioning(custom):
    # Partitioning reads every mask; validation, not partitioning, names the bad ones (all at
    # once), and scripts/validate.py --skip-bad can only write lists without them so.
    (custom / "masks" / "img05.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    source = custom_source(custom)
    splits = make_splits(source, labeled=4, seed=0)
    assert "img05" in splits.labeled + splits.unlabeled
    kept, report = validate(source, splits, skip_bad=True)
    assert report.bad_ids == {"img05"}


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "stats.json":
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_digit_colors_keep_a_luminance_contrast_that_survives_grayscale():
    from ppl_tf.data.digit_scenes import LUMA, _contrasting_color

    rng = np.random.default_rng(0)
    gaps = {0.0: [], 60.0: []}
    for _ in range(300):
        region = rng.uniform(0, 255, (6, 6, 3)) * rng.uniform(0, 1, 3)
        for least in gaps:
            color = _contrasting_color(rng, region, 180.0, least)
            gaps[least].append(abs(float((color - region.reshape(-1, 3).mean(0)) @ LUMA)))
    assert min(gaps[60.0]) >= 60.0
    assert min(gaps[0.0]) < 20.0  # without the rule some digits nearly vanish in gray


def test_crowded_layout_has_more_smaller_digits_and_more_background(tmp_path):
    from ppl_tf.data.digit_scenes import crowded_scenes

    standard = DigitSceneConfig(num_train=8, num_val=2, seed=1)
    roots = {
        name: materialize(tmp_path / name, config, verbose=False)
        for name, config in (("standard", standard), ("crowded", crowded_scenes(standard)))
    }
    import json

    stats = {k: json.loads((v / "stats.json").read_text()) for k, v in roots.items()}
    image = Image.open(roots["crowded"] / "images" / "train_00000.png")
    assert image.size == (128, 128)
    assert (
        stats["crowded"]["class_fraction"]["background"]
        > stats["standard"]["class_fraction"]["background"]
    )


def test_overlap_layout_lets_large_digits_cover_each_other_on_stripes(tmp_path):
    from ppl_tf.data.digit_scenes import _key_fields, digit_pools, overlap_scenes, render_scene

    config = overlap_scenes(DigitSceneConfig(num_train=8, num_val=2, seed=1))
    root = materialize(tmp_path / "overlap", config, verbose=False)
    assert Image.open(root / "images" / "train_00000.png").size == (96, 96)
    pool, _, images, targets = digit_pools(config)

    def boxes_meet(mask):  # the bounding boxes of two different digits intersect
        boxes = []
        for c in [c for c in np.unique(mask) if c]:
            ys, xs = np.nonzero(mask == c)
            boxes.append((ys.min(), ys.max(), xs.min(), xs.max()))
        return any(
            a[0] <= b[1] and b[0] <= a[1] and a[2] <= b[3] and b[2] <= a[3]
            for i, a in enumerate(boxes)
            for b in boxes[i + 1 :]
        )

    meet = {}
    for name, layout in (("overlap", config), ("standard", replace(config, overlap=False))):
        rng = np.random.default_rng(0)
        masks = [render_scene(rng, pool, images, targets, layout)[1] for _ in range(40)]
        meet[name] = sum(boxes_meet(m) for m in masks)
    # (without overlap two boxes meet only where one class appears twice: one merged box)
    assert meet["overlap"] >= 15 and meet["standard"] <= 3
    # Scenes written before the layout keep their cache key: new fields at their defaults
    # are left out of it.
    assert "overlap" not in _key_fields(DigitSceneConfig())
    assert _key_fields(config)["overlap"] is True and _key_fields(config)["texture"] == 40.0


def test_digit_scenes_are_deterministic_with_disjoint_pools(tmp_path):
    config = DigitSceneConfig(num_train=12, num_val=4, size=48, seed=3)
    a = materialize(tmp_path / "a", config, verbose=False)
    b = materialize(tmp_path / "b", config, verbose=False)
    assert _digest(a) == _digest(b)
    import json

    stats = json.loads((a / "stats.json").read_text())
    assert not set(stats["train_pool"]) & set(stats["val_pool"])
    assert len(stats["train_pool"]) + len(stats["val_pool"]) == 1797
    fractions = stats["class_fraction"]
    assert set(fractions) == {"background"} | {str(d) for d in range(10)}
    assert abs(sum(fractions.values()) - 1.0) < 1e-3 and fractions["background"] > 0.5
    source = custom_source(a)
    splits = make_splits(source, labeled="1/4", seed=0)
    assert len(splits.labeled) == 3 and len(splits.val) == 4
    c = materialize(
        tmp_path / "c", DigitSceneConfig(num_train=12, num_val=4, size=48, seed=4), verbose=False
    )
    assert _digest(c) != _digest(a)


def test_validate_command_names_bad_files_and_writes_clean_lists(custom, tmp_path, capsys):
    module = load_repo_script("scripts/validate.py")
    root = custom
    argv = ["dataset=custom", f"data_dir={root}", "labeled=4"]
    assert module.main(argv) == 0
    assert "0 bad" in capsys.readouterr().out
    broken = sorted((root / "images").iterdir())[0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert module.main(argv) == 1
    assert f"{broken}: cannot decode the image" in capsys.readouterr().err
    assert module.main([*argv, "--skip-bad", "--write-splits", str(tmp_path / "clean")]) == 1
    assert "1 bad" in capsys.readouterr().out
    kept = (tmp_path / "clean" / "labeled.txt").read_text().split()
    kept += (tmp_path / "clean" / "unlabeled.txt").read_text().split()
    kept += (tmp_path / "clean" / "val.txt").read_text().split()
    assert broken.stem not in kept and len(kept) == 11
    assert module.main(["epochz=1"]) == 2
