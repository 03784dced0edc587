"""Export: SavedModel and ONNX parity with the Keras model, signatures, metadata, predict.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import load_repo_script, relative_error
from PIL import Image

from ppl_tf.export import next_version
from ppl_tf.inference import ExportedModel, InputError

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(1, 65, 97), (3, 128, 96), (2, 33, 40)]


def log_softmax(logits):
    return np.asarray(tf.nn.log_softmax(logits))


def log_probabilities(probabilities):
    return np.log(np.maximum(probabilities, 1e-30))


def random_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def predict_in_fresh_process(args, cwd):
    """Runs scripts/predict.py with `args` in a new Python process that then prints which of
    keras, tensorflow and ppl_tf.* it loaded ("MODULES [...]")."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['predict.py', *{args!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'scripts' / 'predict.py')!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        "names = ('keras', 'tensorflow')\n"
        "loaded = sorted(m for m in sys.modules if m in names or m.startswith('ppl_tf.'))\n"
        "print('MODULES', loaded)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("shape", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_keras_savedmodel_and_onnx_agree(tiny_export, shape):
    model, folder = tiny_export
    images = random_images(shape)
    logits = model(images.astype(np.float32), training=False)
    reference_ids = np.argmax(logits, axis=-1)
    reference = log_softmax(logits)
    for backend in ("tensorflow", "onnxruntime"):
        class_ids, probabilities = ExportedModel(folder, backend=backend).predict(images)
        assert class_ids.shape == shape and class_ids.dtype == np.int32
        assert probabilities.shape == (*shape, 5) and probabilities.dtype == np.float32
        agreement = np.mean(class_ids == reference_ids)
        assert agreement >= 0.999, (backend, agreement)
        assert relative_error(log_probabilities(probabilities), reference) < 1e-4, backend
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)


def test_signatures_seen_by_saved_model_cli(tiny_export, tmp_path):
    model, folder = tiny_export
    cli = Path(sys.executable).with_name("saved_model_cli")
    show = subprocess.run(
        [cli, "show", "--dir", folder, "--tag_set", "serve", "--signature_def", "serving_default"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "inputs['images']" in show and "DT_UINT8" in show and "(-1, -1, -1, 3)" in show
    assert "outputs['class_ids']" in show and "DT_INT32" in show
    assert "outputs['probabilities']" in show and "(-1, -1, -1, 5)" in show
    images = random_images((2, 41, 30), seed=3)
    np.save(tmp_path / "images.npy", images)
    subprocess.run(
        [
            cli,
            "run",
            "--dir",
            folder,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"images={tmp_path / 'images.npy'}",
            "--outdir",
            tmp_path / "out",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    class_ids = np.load(tmp_path / "out" / "class_ids.npy")
    expected = np.argmax(model(images.astype(np.float32), training=False), axis=-1)
    assert np.mean(class_ids == expected) >= 0.999


def test_bytes_signature_matches_the_array_signature(tiny_export):
    _, folder = tiny_export
    loaded = tf.saved_model.load(str(folder))
    images = random_images((2, 37, 45), seed=5)
    encoded = []
    for image in images:
        buffer = tf.io.encode_png(image).numpy()
        encoded.append(buffer)
    by_bytes = loaded.signatures["predict_image_bytes"](image_bytes=tf.constant(encoded))
    by_array = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_array_equal(by_bytes["class_ids"], by_array["class_ids"])
    np.testing.assert_allclose(by_bytes["probabilities"], by_array["probabilities"], atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same size"):
        other = tf.io.encode_png(random_images((1, 20, 20))[0]).numpy()
        loaded.signatures["predict_image_bytes"](image_bytes=tf.constant([encoded[0], other]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["predict_image_bytes"](image_bytes=tf.constant([b"not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-empty"):
        loaded.signatures["serving_default"](images=tf.zeros((1, 0, 5, 3), tf.uint8))


def test_metadata_describes_the_model(tiny_export):
    _, folder = tiny_export
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["class_names"] == ["background", "a", "b", "c", "d"]
    assert len(metadata["palette"]) == 5 and metadata["num_classes"] == 5
    np.testing.assert_allclose(metadata["normalisation"]["mean"], [123.675, 116.28, 103.53])
    np.testing.assert_allclose(metadata["normalisation"]["std"], [58.395, 57.12, 57.375])
    assert metadata["onnx"]["opset"] == 17 and metadata["onnx"]["check_class_agreement"] >= 0.99
    assert folder.name == "1" and next_version(folder.parent) == 2
    assert not list(folder.parent.glob(".*partial"))


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((1, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((1, 8, 8, 4), np.uint8), "3 channels"),
        (np.zeros((8, 8, 3), np.uint8), "rank 3"),
        (np.zeros((1, 0, 8, 3), np.uint8), "empty"),
    ],
    ids=["dtype", "channels", "rank", "empty"],
)
def test_exported_model_rejects_bad_batches(tiny_export, images, message):
    _, folder = tiny_export
    with pytest.raises(InputError, match=message):
        ExportedModel(folder, backend="onnxruntime").predict(images)


def test_predict_script_in_a_fresh_process_without_model_code(tiny_export, tmp_path):
    model, folder = tiny_export
    inputs = tmp_path / "in"
    inputs.mkdir()
    images = {f"img{i}": random_images((1, 30 + 7 * i, 41), seed=i)[0] for i in range(3)}
    images["gray"] = random_images((1, 30, 41), seed=9)[0]
    for name, image in images.items():
        if name == "gray":
            Image.fromarray(image[..., 0]).save(inputs / f"{name}.png")
            images[name] = np.repeat(image[..., :1], 3, axis=-1)
        else:
            Image.fromarray(image).save(inputs / f"{name}.png")
    for backend in ("onnxruntime", "tensorflow"):
        out = tmp_path / backend
        result = predict_in_fresh_process(
            [
                str(folder.parent),
                str(inputs),
                "--out",
                str(out),
                "--backend",
                backend,
                "--batch-size",
                "2",
            ],
            tmp_path,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        # Only the inference module of the package; ONNX Runtime needs no TensorFlow at all.
        expected_modules = ["ppl_tf.inference"]
        if backend == "tensorflow":
            expected_modules = ["keras", "ppl_tf.inference", "tensorflow"]
        assert f"MODULES {expected_modules}" in result.stdout, result.stdout
        for name, image in images.items():
            mask = np.asarray(Image.open(out / f"{name}_mask.png"))
            expected = np.argmax(model(image[None].astype(np.float32), training=False)[0], -1)
            assert np.mean(mask == expected) >= 0.999, (backend, name)
            overlay = np.asarray(Image.open(out / f"{name}_overlay.png"))
            assert overlay.shape == image.shape
            background = expected == 0
            np.testing.assert_array_equal(overlay[background], image[background])


def test_predict_script_names_a_corrupt_image_and_can_skip_it(tiny_export, tmp_path, capsys):
    _, folder = tiny_export
    predict = load_repo_script("scripts/predict.py")
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(random_images((1, 20, 20))[0]).save(inputs / "good.png")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert predict.main([str(folder), str(inputs), "--out", str(tmp_path / "o")]) == 2
    assert "broken.jpg: not a readable image" in capsys.readouterr().err
    code = predict.main([str(folder), str(inputs), "--out", str(tmp_path / "o"), "--skip-bad"])
    assert code == 0
    assert "skipped 1 unreadable images" in capsys.readouterr().err
    assert (tmp_path / "o" / "good_mask.png").is_file()
    assert predict.main([str(tmp_path / "nothing"), str(inputs)]) == 2
    assert "no such exported model folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- int8 ONNX


def test_int8_model_is_written_only_when_asked_and_described(tiny_export, tiny_int8_export):
    _, plain = tiny_export
    run, folder = tiny_int8_export
    assert not (plain / "model_int8.onnx").exists()
    assert json.loads((plain / "metadata.json").read_text())["onnx_int8"] is None
    assert (folder / "model_int8.onnx").is_file() and (folder / "model.onnx").is_file()
    assert not list(folder.glob(".int8-*")) and not list(folder.parent.glob(".*partial"))
    report = json.loads((folder / "metadata.json").read_text())["onnx_int8"]
    assert report["file"] == "model_int8.onnx" and report["quantized_from"] == "model.onnx"
    assert report["quant_format"] == "QDQ" and report["calibrate_method"] == "MinMax"
    assert report["calibration_images"] == 6 and report["calibration_size"] == [48, 48]
    training = set((run / "splits" / "labeled.txt").read_text().split())
    training |= set((run / "splits" / "unlabeled.txt").read_text().split())
    assert len(report["calibration_ids"]) == 6 and set(report["calibration_ids"]) <= training
    assert "training images (labeled + unlabeled)" in report["calibration_source"]
    # Measured 0.892 on the six calibration scenes (see test_int8_classes_agree_with_fp32_onnx).
    assert report["calibration_class_agreement"] >= 0.80
    assert {"ArgMax", "Softmax"} <= {name.split("__")[0] for name in report["float_nodes"]}


def validation_scenes(run, count=20):
    """The first `count` validation images of `run`'s digit scenes, uint8 (count, 64, 64, 3)."""
    from ppl_tf.config import dataset_source, load_config

    source = dataset_source(load_config(run / "config.yaml"))
    ids = (run / "splits" / "val.txt").read_text().split()[:count]
    return np.stack([source.read(source.samples[i])[0] for i in ids])


def test_int8_classes_agree_with_fp32_onnx(tiny_int8_export):
    """Measured on these 20 validation scenes (onnxruntime 1.32, AVX2 CPU): the classes agree
    on 0.871 of all pixels and on 0.976 of those where model.onnx's top-two log-probability
    margin exceeds 0.1 (41% of them; the untrained model has many near-ties). The same model
    calibrated on black images instead agreed on 0.231 and 0.255: the floors, 0.80 and 0.95,
    sit between a sound quantization and a broken one."""
    run, folder = tiny_int8_export
    images = validation_scenes(run)
    fp32_ids, fp32_probabilities = ExportedModel(folder).predict(images)
    int8_ids, _ = ExportedModel(folder, int8=True).predict(images)
    top_two = np.sort(log_probabilities(fp32_probabilities), axis=-1)[..., -2:]
    clear = top_two[..., 1] - top_two[..., 0] > 0.1
    assert np.mean(int8_ids == fp32_ids) >= 0.80
    assert np.mean(clear) > 0.2 and np.mean(int8_ids[clear] == fp32_ids[clear]) >= 0.95


@pytest.mark.parametrize("shape", [(1, 97, 130), (3, 33, 40)])
def test_int8_model_takes_any_image_size(tiny_int8_export, shape):
    run, folder = tiny_int8_export
    scene = validation_scenes(run, count=1)[0]
    image = np.asarray(Image.fromarray(scene).resize((shape[2], shape[1]), Image.BILINEAR))
    images = np.stack([image] * shape[0])
    class_ids, probabilities = ExportedModel(folder, int8=True).predict(images)
    assert class_ids.shape == shape and class_ids.dtype == np.int32
    assert probabilities.shape == (*shape, 11) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(class_ids, np.argmax(probabilities, axis=-1))


def test_predict_script_int8_in_a_fresh_process_without_tensorflow(tiny_int8_export, tmp_path):
    _, folder = tiny_int8_export
    inputs = tmp_path / "in"
    inputs.mkdir()
    images = {f"img{i}": random_images((1, 40 + 9 * i, 52), seed=20 + i)[0] for i in range(3)}
    for name, image in images.items():
        Image.fromarray(image).save(inputs / f"{name}.png")
    out = tmp_path / "out"
    result = predict_in_fresh_process(
        [str(folder), str(inputs), "--out", str(out), "--int8"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MODULES ['ppl_tf.inference']" in result.stdout, result.stdout
    assert "model_int8.onnx" in result.stdout
    int8 = ExportedModel(folder, int8=True)
    for name, image in images.items():
        mask = np.asarray(Image.open(out / f"{name}_mask.png"))
        np.testing.assert_array_equal(mask, int8.predict(image[None])[0][0])


def test_a_missing_int8_model_and_bad_input_are_named(
    tiny_export, tiny_int8_export, tmp_path, capsys
):
    _, plain = tiny_export
    _, folder = tiny_int8_export
    with pytest.raises(FileNotFoundError, match="model_int8.onnx: missing"):
        ExportedModel(plain, int8=True)
    with pytest.raises(ValueError, match="runs in ONNX Runtime"):
        ExportedModel(folder, backend="tensorflow", int8=True)
    predict = load_repo_script("scripts/predict.py")
    Image.fromarray(random_images((1, 20, 20))[0]).save(tmp_path / "image.png")
    assert predict.main([str(plain), str(tmp_path / "image.png"), "--int8"]) == 2
    assert f"{plain / 'model_int8.onnx'}: missing" in capsys.readouterr().err
    int8 = ExportedModel(folder, int8=True)
    with pytest.raises(InputError, match="uint8"):
        int8.predict(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match="empty"):
        int8.predict(np.zeros((1, 0, 8, 3), np.uint8))


def test_export_script_int8_needs_a_run_folder_and_onnx(tiny_int8_export, tmp_path, capsys):
    from ppl_tf.config import ConfigError, load_config

    run, _ = tiny_int8_export
    export = load_repo_script("scripts/export.py")
    model_file = tmp_path / "teacher.keras"
    model_file.write_bytes(b"not read: the flags are checked first")
    assert export.main([str(model_file), "--int8", "--out", str(tmp_path)]) == 2
    assert "--int8 calibrates on the run's training images" in capsys.readouterr().err
    argv = [str(run), "--network", "teacher", "--out", str(tmp_path), "--int8", "--no-onnx"]
    assert export.main(argv) == 2
    assert "--int8 cannot go with --no-onnx" in capsys.readouterr().err
    argv = [str(run), "--network", "teacher", "--int8-calibration", "0", "--out", str(tmp_path)]
    assert export.main(argv) == 2
    assert "--int8-calibration must be at least 1" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/*"))
    with pytest.raises(ConfigError, match="export_int8_calibration"):
        load_config(None, ["export_int8_calibration=0"])


def test_int8_calibration_images_are_training_images_at_one_size(tmp_path):
    from ppl_tf.data import load_source
    from ppl_tf.export import calibration_crop, calibration_set

    gradient = np.arange(30 * 50 * 3, dtype=np.int64).reshape(30, 50, 3) % 251
    large = random_images((1, 80, 60), seed=1)[0]
    crop = calibration_crop(large, 48)
    np.testing.assert_array_equal(crop, large[16:64, 6:54])  # the center, not resized
    small = calibration_crop(gradient.astype(np.uint8), 48)  # 30x50 -> 48x80, center 48x48
    expected = np.asarray(
        Image.fromarray(gradient.astype(np.uint8)).resize((80, 48), Image.BILINEAR)
    )[:, 16:64]
    np.testing.assert_array_equal(small, expected)

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("background\nthing\n")
    for i, shape in enumerate([(1, 30, 50), (1, 80, 60), (1, 64, 64), (1, 48, 100)]):
        Image.fromarray(random_images(shape, seed=i)[0]).save(root / "images" / f"s{i}.png")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    source = load_source("custom", root)
    ids = ["s0", "s1", "s2", "s3", "broken"]
    chosen = calibration_set(source, ids, count=3, size=48, seed=0)
    assert chosen.images.shape == (3, 48, 48, 3) and chosen.images.dtype == np.uint8
    assert len(set(chosen.ids)) == 3 and set(chosen.ids) <= set(ids) - {"broken"}
    again = calibration_set(source, ids, count=3, size=48, seed=0)
    assert again.ids == chosen.ids and np.array_equal(again.images, chosen.images)
    every = calibration_set(source, ids, count=64, size=48, seed=1)
    assert sorted(every.ids) == ["s0", "s1", "s2", "s3"]
    assert "1 unreadable passed over" in every.description
    with pytest.raises(ValueError, match="none of the 1 images could be read"):
        calibration_set(source, ["broken"], count=4, size=48)


def test_the_end_of_training_export_writes_int8_when_the_config_asks(tiny_int8_export, tmp_path):
    import dataclasses
    from types import SimpleNamespace

    import keras

    import ppl_tf.layers  # noqa: F401  (registers the custom layers for loading)
    from ppl_tf.config import dataset_source, load_config
    from ppl_tf.data import read_splits
    from ppl_tf.run import export_better_network

    run, _ = tiny_int8_export
    config = load_config(run / "config.yaml", [f"export_dir={tmp_path}", "export_name=end"])
    teacher = keras.saving.load_model(run / "teacher.keras", compile=False)
    trainer = SimpleNamespace(teacher=teacher, student=teacher)
    metrics = {"teacher_miou": 0.5, "student_miou": 0.4}
    splits = read_splits(run / "splits")
    config = dataclasses.replace(config, export_int8_calibration=3)
    target = export_better_network(config, trainer, dataset_source(config), metrics, splits=splits)
    assert (target / "model_int8.onnx").is_file()
    report = json.loads((target / "metadata.json").read_text())["onnx_int8"]
    assert report["calibration_images"] == 3
    assert set(report["calibration_ids"]) <= set(splits.labeled + splits.unlabeled)
