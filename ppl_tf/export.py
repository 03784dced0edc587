"""Export a segmenter for TF Serving (SavedModel) and ONNX Runtime (ONNX), with its metadata.

`export_model(model, "exported/digits")` writes TF Serving's layout::

    exported/digits/<version>/saved_model.pb, variables/    the SavedModel
    exported/digits/<version>/model.onnx                    the same function for ONNX Runtime
    exported/digits/<version>/metadata.json                 classes, palette, config, provenance

Signatures of the SavedModel:

- `serving_default`: `images` uint8 (B, H, W, 3), any H and W ->
  `class_ids` int32 (B, H, W) and `probabilities` float32 (B, H, W, K).
- `predict_image_bytes`: `image_bytes` string (B,), encoded JPEG/PNG/BMP/GIF images of one size ->
  the same outputs. This is the one REST users send base64 to (`{"b64": ...}`).

The ONNX model has the `serving_default` input and output names. It is converted with tf2onnx
from the same tf.function, then loaded and run in ONNX Runtime before the export counts as done
(tf2onnx can write a broken file with exit code 0).
"""

import datetime
import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

import ppl_tf
from ppl_tf.choices import EXPORT_NETWORKS
from ppl_tf.inference import (
    BYTES_INPUT_NAME,
    BYTES_SIGNATURE,
    CLASS_IDS,
    DEFAULT_SIGNATURE,
    INPUT_NAME,
    METADATA_FILE,
    ONNX_FILE,
    OUTPUT_NAMES,
    PROBABILITIES,
)

ONNX_OPSET = 17
IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)
BYTES_SPEC = tf.TensorSpec([None], tf.string, name=BYTES_INPUT_NAME)


class ExportError(RuntimeError):
    """An export that did not produce a working artifact."""


def _outputs(model, images):
    logits = model(tf.cast(images, tf.float32), training=False)
    return {
        CLASS_IDS: tf.argmax(logits, axis=-1, output_type=tf.int32),
        PROBABILITIES: tf.nn.softmax(logits, axis=-1),
    }


def inference_function(model):
    """The bare `images` -> outputs tf.function (what the ONNX model holds)."""
    return tf.function(lambda images: _outputs(model, images), input_signature=[IMAGES_SPEC])


def serving_functions(model):
    """(serving_default, predict_image_bytes): the SavedModel's two tf.functions.

    Both check their input and fail with an InvalidArgumentError that says what was wrong (an
    empty image, corrupt bytes, images of different sizes in one request); dtype, rank and
    channel count are checked by the signature itself.
    """

    def serve(images):
        shape = tf.shape(images)
        tf.debugging.assert_positive(
            tf.reduce_min(shape[:3]),
            message="`images` must be a non-empty (B, H, W, 3) uint8 batch; got a zero-sized "
            "dimension",
        )
        return _outputs(model, images)

    def serve_bytes(image_bytes):
        tf.debugging.assert_positive(tf.size(image_bytes), message="`image_bytes` holds no images")

        def decode(data):
            return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)

        first = tf.shape(decode(image_bytes[0]))

        def decode_same_size(data):
            image = decode(data)
            tf.debugging.assert_equal(
                tf.shape(image),
                first,
                message="all images in one `image_bytes` request must have the same size",
            )
            return image

        images = tf.map_fn(
            decode_same_size,
            image_bytes,
            fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
        )
        return serve(images)

    return serve, serve_bytes


def next_version(export_dir):
    """1 + the largest integer version folder under `export_dir` (1 when there is none)."""
    versions = [int(p.name) for p in Path(export_dir).glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def choose_network(choice, scores):
    """The network to export: `choice` itself ("teacher" or "student"), or for "best" the one
    of higher validation mIoU in `scores` ({"teacher": ..., "student": ...}; teacher on a tie).
    """
    if choice not in EXPORT_NETWORKS:
        raise ValueError(f"`choice` must be one of {EXPORT_NETWORKS}. Received: {choice!r}")
    if choice != "best":
        return choice
    return "student" if scores["student"] > scores["teacher"] else "teacher"


def model_normalization(model):
    """(mean, std) per RGB channel of the model's "normalize" layer, as plain lists."""
    layer = model.get_layer("normalize")
    mean, std = layer.mean, layer.std
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def export_model(
    model,
    export_dir,
    version=None,
    class_names=None,
    palette=None,
    model_config=None,
    source_checkpoint=None,
    network="teacher",
    onnx=True,
    verbose=True,
    network_choice=None,
    validation_miou=None,
):
    """Writes the SavedModel, the ONNX model and metadata.json into `export_dir/<version>/`.

    Args:
        model: a segmenter from `build_segmenter` (float32 [0, 255] images -> logits).
        export_dir: the model's folder in TF Serving's layout, e.g. "exported/digits".
        version: an integer; defaults to one more than the largest version present. An existing
            version is never overwritten.
        class_names, palette: K names and K RGB triples for clients; defaults are "class_i" and
            a generated palette.
        model_config: the configuration the model was built and trained with (saved as is).
        source_checkpoint: the file the weights came from (saved in the metadata).
        network: "teacher" or "student" (saved in the metadata).
        onnx: also write and verify `model.onnx`.
        network_choice: how `network` was chosen ("best", "teacher" or "student"; see
            `choose_network`), saved in the metadata.
        validation_miou: the validation mIoU of both networks, {"teacher": ..., "student":
            ...}, saved in the metadata.

    Returns:
        The version folder (a Path).
    """
    import keras

    from ppl_tf.data.classes import default_palette

    num_classes = int(model.output.shape[-1])
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    if palette is None:
        palette = default_palette(num_classes)
    if len(class_names) != num_classes or len(palette) != num_classes:
        raise ValueError(
            f"The model predicts {num_classes} classes but got {len(class_names)} class names "
            f"and {len(palette)} palette colors"
        )
    export_dir = Path(export_dir)
    version = next_version(export_dir) if version is None else int(version)
    target = export_dir / str(version)
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another --version")

    serve, serve_bytes = serving_functions(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(DEFAULT_SIGNATURE, serve, input_signature=[IMAGES_SPEC])
    archive.add_endpoint(BYTES_SIGNATURE, serve_bytes, input_signature=[BYTES_SPEC])
    staging = export_dir / f".{version}.partial"
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    archive.write_out(str(staging), verbose=False)

    onnx_report = None
    if onnx:
        onnx_report = write_onnx(model, staging / ONNX_FILE)

    mean, std = model_normalization(model)
    outputs = {CLASS_IDS: "int32 (B, H, W)", PROBABILITIES: "float32 (B, H, W, K)"}
    metadata = {
        "format": "ppl_tf-export-1",
        "package_version": ppl_tf.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "network": network,
        "network_choice": network_choice,
        "validation_miou": validation_miou,
        "source_checkpoint": None if source_checkpoint is None else str(source_checkpoint),
        "num_classes": num_classes,
        "class_names": list(class_names),
        "palette": [[int(c) for c in color] for color in palette],
        # Key and text as the export format (ppl_tf-export-1) has them since its first
        # version: readers look for "normalisation", so its spelling stays.
        "normalisation": {
            "input": "uint8 RGB; the model casts to float32 [0, 255] and normalises inside",
            "mean": mean,
            "std": std,
        },
        "model_config": model_config or {},
        "signatures": {
            DEFAULT_SIGNATURE: {"inputs": {INPUT_NAME: "uint8 (B, H, W, 3)"}, "outputs": outputs},
            BYTES_SIGNATURE: {
                "inputs": {BYTES_INPUT_NAME: "string (B,): encoded images of one size"},
                "outputs": outputs,
            },
        },
        "onnx": onnx_report,
    }
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    os.replace(staging, target)  # a version appears complete or not at all
    if verbose:
        print(f"export: wrote {target} (SavedModel{', ONNX' if onnx else ''}, metadata)")
    return target


def write_onnx(model, path, opset=ONNX_OPSET, check_size=(1, 37, 53)):
    """Converts the inference function with tf2onnx and checks it in ONNX Runtime.

    The check runs a random uint8 image of `check_size` through both TF and ONNX Runtime and
    requires equal input/output names and logits-level agreement; a file that does not load or
    disagrees raises ExportError. Returns a small report for the metadata.
    """
    import onnxruntime as ort
    import tf2onnx

    function = inference_function(model)
    tf2onnx.convert.from_function(
        function, input_signature=[IMAGES_SPEC], opset=opset, output_path=str(path)
    )
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise ExportError(
            f"{path}: ONNX Runtime cannot load the converted model: {error}"
        ) from error
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise ExportError(
            f"{path}: expected input {[INPUT_NAME]} and outputs {list(OUTPUT_NAMES)}, "
            f"got {inputs} and {outputs}"
        )
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*check_size, 3), dtype=np.uint8)
    expected = function(tf.constant(image))
    got = dict(zip(outputs, session.run(outputs, {INPUT_NAME: image}), strict=True))
    probs_tf = expected[PROBABILITIES].numpy()
    difference = float(np.max(np.abs(got[PROBABILITIES] - probs_tf)))
    agreement = float(np.mean(got[CLASS_IDS] == expected[CLASS_IDS].numpy()))
    if not np.isfinite(difference) or difference > 1e-3 or agreement < 0.99:
        raise ExportError(
            f"{path}: ONNX Runtime disagrees with TensorFlow on a test image "
            f"(max probability difference {difference:.2e}, class agreement {agreement:.4f})"
        )
    return {
        "file": ONNX_FILE,
        "opset": opset,
        "checked_in_onnxruntime": ort.__version__,
        "check_max_probability_difference": difference,
        "check_class_agreement": agreement,
    }
