"""Cityscapes through the TFDS builder with a manual download folder (dataset: cityscapes_tfds).

The fixture writes the two Cityscapes zips the builder expects (full 1024x2048 frames: the
builder's features have that fixed shape), lets TFDS prepare them once per session, and checks
that the source gives the same ids, images and train ids as the folder source on the same files.
"""

import io
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from ppl_tf.config import dataset_source, load_config
from ppl_tf.data import (
    AugmentConfig,
    DataError,
    cityscapes_source,
    eval_dataset,
    make_splits,
    semi_supervised_dataset,
    validate,
)
from ppl_tf.data.sources import load_source

H, W = 1024, 2048
FRAMES = {
    "train": ["aachen_000000_000019", "aachen_000001_000019", "bad-honnef_000002_000019"],
    "val": ["frankfurt_000000_000294"],
    "test": ["berlin_000000_000019"],
}


def frame(split, k):
    """An image whose red channel encodes the frame and a label map with 4 label ids."""
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = 10 + 40 * k + (split == "val") * 7
    image[: H // 2, :, 1] = 200
    labels = np.full((H, W), 7, np.uint8)  # road -> train id 0
    labels[: H // 2] = 26  # car -> 13
    labels[:16, : 32 + 16 * k] = 3  # "out of roi" -> ignored (255)
    labels[-16:, -64:] = 33  # bicycle -> 18
    return image, labels


def png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_zips(manual, extracted=None):
    manual.mkdir(parents=True, exist_ok=True)
    left = zipfile.ZipFile(manual / "leftImg8bit_trainvaltest.zip", "w")
    fine = zipfile.ZipFile(manual / "gtFine_trainvaltest.zip", "w")
    with left, fine:
        for split, ids in FRAMES.items():
            for k, image_id in enumerate(ids):
                city = image_id.rsplit("_", 2)[0]
                image, labels = frame(split, k)
                names = (
                    f"leftImg8bit/{split}/{city}/{image_id}_leftImg8bit.png",
                    f"gtFine/{split}/{city}/{image_id}_gtFine_labelIds.png",
                )
                for archive, name, array in ((left, names[0], image), (fine, names[1], labels)):
                    data = png(array)
                    archive.writestr(name, data)
                    if extracted is not None:
                        (extracted / name).parent.mkdir(parents=True, exist_ok=True)
                        (extracted / name).write_bytes(data)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes_tfds")
    write_zips(root / "manual", extracted=root / "folders")
    source = load_source("cityscapes_tfds", root / "manual", tfds_data_dir=root / "tfds")
    return root, source


@pytest.mark.slow
def test_tfds_source_matches_the_folder_source(prepared):
    root, source = prepared
    folders = cityscapes_source(root / "folders")
    expected = {i for i in folders.samples if not i.startswith("test/")}
    assert set(source.samples) == expected
    assert "train/bad-honnef/bad-honnef_000002_000019" in source.samples
    assert sorted(source.train_ids) == sorted(i for i in expected if i.startswith("train/"))
    assert source.val_ids == ("val/frankfurt/frankfurt_000000_000294",)
    assert source.num_classes == 19 and source.class_names == folders.class_names
    for sample_id in expected:
        image, mask = source.read(source.samples[sample_id])
        ref_image, ref_mask = folders.read(folders.samples[sample_id])
        np.testing.assert_array_equal(image, ref_image)
        np.testing.assert_array_equal(mask, ref_mask)
        assert set(np.unique(mask)) == {0, 13, 18, 255}


@pytest.mark.slow
def test_tfds_labels_are_the_official_train_ids(prepared):
    _, source = prepared
    split, k = "train", 1
    _, labels = frame(split, k)
    _, mask = source.read(source.samples["train/aachen/aachen_000001_000019"])
    official = {7: 0, 26: 13, 3: 255, 33: 18}
    np.testing.assert_array_equal(mask, np.vectorize(official.get)(labels).astype(np.uint8))


@pytest.mark.slow
def test_tfds_source_feeds_splits_validation_and_both_pipelines(prepared, tmp_path):
    root, source = prepared
    splits = make_splits(source, labeled=1, seed=0, split_dir=tmp_path / "splits")
    assert len(splits.labeled) == 1 and len(splits.unlabeled) == 2
    assert (tmp_path / "splits" / "labeled.txt").read_text().strip() == splits.labeled[0]
    # the folder source reads the same split lists
    assert make_splits(cityscapes_source(root / "folders"), labeled=tmp_path / "splits") == splits
    checked, report = validate(source, splits, full=True)
    assert checked == splits and report.checked == 4 and not report.problems
    ds = semi_supervised_dataset(
        source, splits.labeled, splits.unlabeled, 1, 2, AugmentConfig(crop_size=64), seed=0
    )
    batch = next(iter(ds))
    assert batch["labeled_images"].shape == (1, 64, 64, 3)
    assert batch["unlabeled_masks"].shape == (2, 64, 64)
    values = set(np.unique(batch["labeled_masks"].numpy()))
    assert values <= {0, 13, 18, 255}
    images, masks = next(iter(eval_dataset(source, splits.val)))
    assert images.shape == (1, H, W, 3) and masks.shape == (1, H, W)
    assert float(images[0, 0, 0, 0]) == 10 + 7  # the val frame


@pytest.mark.slow
def test_train_config_reaches_the_tfds_source(prepared):
    root, _ = prepared
    config = load_config(
        None,
        [
            "dataset=cityscapes_tfds",
            f"data_dir={root / 'manual'}",
            f"tfds_data_dir={root / 'tfds'}",
        ],
    )
    source = dataset_source(config)
    assert source.name == "cityscapes_tfds" and len(source.samples) == 4


def test_missing_zips_are_named(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "gtFine_trainvaltest.zip").write_bytes(b"")
    with pytest.raises(DataError, match="missing leftImg8bit_trainvaltest.zip") as error:
        load_source("cityscapes_tfds", tmp_path / "manual", tfds_data_dir=tmp_path / "tfds")
    assert "gtFine" not in str(error.value).split("missing", 1)[1]
    with pytest.raises(DataError, match="manual download folder not found"):
        load_source("cityscapes_tfds", tmp_path / "nowhere", tfds_data_dir=tmp_path / "tfds")


@pytest.mark.slow
def test_a_corrupt_zip_is_a_data_error(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"):
        (manual / name).write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="TFDS could not prepare cityscapes/semantic_segmentation"):
        load_source("cityscapes_tfds", manual, tfds_data_dir=tmp_path / "tfds")


def test_without_tensorflow_datasets_the_error_says_how_to_install(tmp_path, monkeypatch):
    write_zips(tmp_path / "manual")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(DataError, match=r'needs tensorflow-datasets: pip install -e "\.\[tfds\]"'):
        load_source("cityscapes_tfds", tmp_path / "manual", tfds_data_dir=tmp_path / "tfds")


@pytest.mark.slow
def test_records_prepared_as_tfrecord_get_a_clear_error(prepared, tmp_path):
    import tensorflow_datasets as tfds

    root, _ = prepared
    builder = tfds.builder(
        "cityscapes/semantic_segmentation", data_dir=str(tmp_path / "tfds"), file_format="tfrecord"
    )
    config = tfds.download.DownloadConfig(manual_dir=str(root / "manual"))
    builder.download_and_prepare(download_config=config)
    with pytest.raises(DataError, match="must be ArrayRecord .random access.: point tfds_data_dir"):
        load_source("cityscapes_tfds", root / "manual", tfds_data_dir=tmp_path / "tfds")
