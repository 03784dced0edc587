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
        code = (
            "import runpy, sys\n"
            f"sys.argv = ['predict.py', {str(folder.parent)!r}, {str(inputs)!r}, '--out', "
            f"{str(out)!r}, '--backend', {backend!r}, '--batch-size', '2']\n"
            "try:\n"
            f"    runpy.run_path({str(ROOT / 'scripts' / 'predict.py')!r}, run_name='__main__')\n"
            "except SystemExit as stop:\n"
            "    assert stop.code == 0, stop.code\n"
            "names = ('keras', 'tensorflow')\n"
            "loaded = sorted(m for m in sys.modules if m in names or m.startswith('ppl_tf.'))\n"
            "print('MODULES', loaded)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
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
