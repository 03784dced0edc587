"""Export a segmenter for TF Serving (SavedModel) and ONNX Runtime (ONNX), with its metadata.

`export_model(model, "exported/digits")` writes TF Serving's layout::

    exported/digits/<version>/saved_model.pb, variables/    the SavedModel
    exported/digits/<version>/model.onnx                    the same function for ONNX Runtime
    exported/digits/<version>/model_int8.onnx               its int8 twin (only when asked for)
    exported/digits/<version>/metadata.json                 classes, palette, config, provenance

Signatures of the SavedModel:

- `serving_default`: `images` uint8 (B, H, W, 3), any H and W ->
  `class_ids` int32 (B, H, W) and `probabilities` float32 (B, H, W, K).
- `predict_image_bytes`: `image_bytes` string (B,), encoded JPEG/PNG/BMP/GIF images of one size ->
  the same outputs. This is the one REST users send base64 to (`{"b64": ...}`).

The ONNX model has the `serving_default` input and output names. It is converted with tf2onnx
from the same tf.function, then loaded and run in ONNX Runtime before the export counts as done
(tf2onnx can write a broken file with exit code 0).

`model_int8.onnx` (`export_model(..., int8_calibration=...)`, `scripts/export.py --int8`) is
`model.onnx` statically quantized with ONNX Runtime's own tools (`quant_pre_process`, then
`quantize_static` in QDQ format, see `write_int8_onnx`), calibrated on training images
(`training_calibration`) cropped to one size and fed as the serving input is, uint8. It has the
same input and outputs; the export records how well its classes agree with model.onnx's on the
calibration images.
"""

import datetime
import json
import os
import tempfile
from dataclasses import dataclass
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
    INT8_ONNX_FILE,
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
    int8_calibration=None,
    int8_settings=None,
):
    """Writes the SavedModel, the ONNX model(s) and metadata.json into `export_dir/<version>/`.

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
        int8_calibration: a `CalibrationSet` (see `training_calibration`), or uint8 images
            (N, H, W, 3) of one size: also write `model_int8.onnx`, quantized with these as
            calibration data (needs `onnx`). None: no int8 model.
        int8_settings: changes to INT8_SETTINGS (e.g. {"reduce_range": False} for a CPU with
            VNNI), see `write_int8_onnx`.

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
    if int8_calibration is not None and not onnx:
        raise ValueError("the int8 model is quantized from model.onnx: int8 needs onnx=True")
    if int8_calibration is not None and not isinstance(int8_calibration, CalibrationSet):
        int8_calibration = CalibrationSet(np.asarray(int8_calibration), (), "images given")
    if int8_calibration is not None:
        int8_calibration.check()
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

    onnx_report = int8_report = None
    if onnx:
        onnx_report = write_onnx(model, staging / ONNX_FILE)
    if int8_calibration is not None:
        int8_report = write_int8_onnx(
            staging / ONNX_FILE, staging / INT8_ONNX_FILE, int8_calibration, int8_settings
        )

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
        "onnx_int8": int8_report,
    }
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    os.replace(staging, target)  # a version appears complete or not at all
    if verbose:
        parts = ["SavedModel"] + (["ONNX"] if onnx else [])
        if int8_report:
            agreement = 100 * int8_report["calibration_class_agreement"]
            parts.append(
                f"int8 ONNX (classes agree with ONNX on {agreement:.2f}% of the pixels of its "
                f"{int8_report['calibration_images']} calibration images)"
            )
        print(f"export: wrote {target} ({', '.join(parts + ['metadata'])})")
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


# How model_int8.onnx is quantized. ONNX Runtime's guidance for x86 CPUs: QDQ format, uint8
# activations and int8 weights; `reduce_range` (7-bit weights) for CPUs without VNNI, whose
# 8-bit products can saturate otherwise; per-channel weight scales for convolutions whose
# channels differ in range (ResNets), at a small cost in speed. On our AVX2 CPU (no VNNI), a
# random-weight tiny model calibrated on digit scenes agreed with model.onnx on 88% of the
# validation pixels with these settings and on 62% without reduce_range (the saturation).
INT8_SETTINGS = {
    "quant_format": "QDQ",
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": True,
    "calibrate_method": "MinMax",
}
INT8_CALIBRATION_COUNT = 64
# Nodes between the last layer with weights and the outputs that only move, resize or compare
# the logits: they stay float32, so the logits are not rounded to 8 bits before the argmax.
FLOAT_HEAD_OPS = frozenset(
    {"Transpose", "Reshape", "Resize", "Softmax", "ArgMax", "Cast", "Squeeze", "Unsqueeze"}
)


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """uint8 images (N, H, W, 3) of one size for static quantization, with where they are from."""

    images: np.ndarray
    ids: tuple = ()
    description: str = ""

    def check(self):
        images = self.images
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"int8 calibration images must be uint8 (N, H, W, 3) of one size; got "
                f"{images.dtype} {images.shape}"
            )
        if min(images.shape[:3]) == 0:
            raise ValueError(f"int8 calibration needs at least one image; got {images.shape}")


def calibration_crop(image, size):
    """`image` (H, W, 3) uint8 as a size x size crop: its center, after a bilinear resize that
    brings the shorter side up to `size` when it is shorter (never down: the model sees
    objects at the scale it was trained on)."""
    from PIL import Image

    height, width = image.shape[:2]
    if min(height, width) < size:
        scale = size / min(height, width)
        width, height = max(size, round(width * scale)), max(size, round(height * scale))
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def calibration_set(source, ids, count=INT8_CALIBRATION_COUNT, size=512, seed=0, description=""):
    """`count` of the images `ids` of `source` (a seeded random choice; all when fewer), each as
    `calibration_crop(image, size)`. An image that cannot be read is passed over for the next
    one; an error when none can be read."""
    ids = list(dict.fromkeys(ids))
    if count < 1:
        raise ValueError(f"the int8 calibration count must be at least 1, got {count}")
    order = np.random.default_rng(seed).permutation(len(ids))
    samples = source.resolve([ids[i] for i in order], "int8 calibration")
    images, chosen, unreadable = [], [], []
    for sample in samples:
        if len(images) == count:
            break
        try:
            image, _ = source.read(sample)
        except Exception as error:  # DataError, or whatever a broken file raises
            unreadable.append(f"{sample.id} ({error})")
            continue
        images.append(calibration_crop(image, size))
        chosen.append(sample.id)
    if not images:
        raise ValueError(
            f"int8 calibration: none of the {len(ids)} images could be read: {unreadable[:3]}"
        )
    text = description or f"{len(images)} of {len(ids)} images of {source.name}"
    if unreadable:
        text += f"; {len(unreadable)} unreadable passed over"
    return CalibrationSet(np.stack(images), tuple(chosen), text)


def training_calibration(config, source=None, ids=None, split_dir=None):
    """The `CalibrationSet` of a run: `config.export_int8_calibration` of its training images
    (labeled + unlabeled: `ids`, else the lists in `split_dir`, else the split `config` makes),
    as `config.crop_size` crops, chosen with `config.seed`."""
    from ppl_tf.config import dataset_source
    from ppl_tf.data import make_splits, read_splits

    source = source or dataset_source(config)
    if ids is None:
        if split_dir is not None and (Path(split_dir) / "labeled.txt").is_file():
            splits = read_splits(split_dir)
        else:
            labeled = "1/1" if config.labeled == "all" else config.labeled
            splits = make_splits(source, labeled, seed=config.seed)
        ids = splits.labeled + splits.unlabeled
    ids = list(dict.fromkeys(ids))
    count = config.export_int8_calibration
    description = (
        f"{min(count, len(ids))} of the {len(ids)} training images (labeled + unlabeled) of "
        f"{source.name}, center {config.crop_size}x{config.crop_size} crops"
    )
    return calibration_set(source, ids, count, config.crop_size, config.seed, description)


class _Images:
    """onnxruntime.quantization's CalibrationDataReader protocol over uint8 images, one each."""

    def __init__(self, images):
        self.images, self.index = images, 0

    def get_next(self):
        if self.index >= len(self.images):
            return None
        self.index += 1
        return {INPUT_NAME: self.images[self.index - 1 : self.index]}

    def __len__(self):
        return len(self.images)


def float_head_nodes(model):
    """Names of the nodes of `model` (an onnx ModelProto) from the graph outputs back to the
    first node that is not in FLOAT_HEAD_OPS (the classifier)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    names, stack = set(), [output.name for output in model.graph.output]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.op_type not in FLOAT_HEAD_OPS or node.name in names:
            continue
        names.add(node.name)
        stack.extend(node.input)
    return sorted(names)


def write_int8_onnx(onnx_path, path, calibration, settings=None, batch_size=4):
    """Quantizes the float model `onnx_path` into `path` with ONNX Runtime and checks it.

    `quant_pre_process` (ONNX shape inference and ONNX Runtime's graph optimizations; the
    symbolic shape inference for transformers is skipped, it needs sympy) prepares the model,
    `quantize_static` quantizes it with `settings` (default INT8_SETTINGS), calibrated on
    `calibration` (a CalibrationSet) one image at a time. The quantized model must load in ONNX
    Runtime with the float model's input and output names (else ExportError); the report for
    the metadata holds the settings, the calibration and, measured on the calibration images,
    the share of pixels whose class the two models agree on.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    unknown = set(settings or {}) - set(INT8_SETTINGS)
    if unknown:
        raise ValueError(f"unknown int8 settings {sorted(unknown)}; known: {list(INT8_SETTINGS)}")
    settings = {**INT8_SETTINGS, **(settings or {})}
    images = calibration.images
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        float_nodes = float_head_nodes(onnx.load(str(prepared)))
        quantize_static(
            str(prepared),
            str(path),
            _Images(images),
            quant_format=QuantFormat[settings["quant_format"]],
            activation_type=QuantType[settings["activation_type"]],
            weight_type=QuantType[settings["weight_type"]],
            per_channel=settings["per_channel"],
            reduce_range=settings["reduce_range"],
            calibrate_method=CalibrationMethod[settings["calibrate_method"]],
            nodes_to_exclude=float_nodes,
        )
    sessions = {}
    for name, file in (("float", Path(onnx_path)), ("int8", path)):
        try:
            sessions[name] = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise ExportError(f"{file}: ONNX Runtime cannot load it: {error}") from error
    names = {
        name: ([i.name for i in s.get_inputs()], sorted(o.name for o in s.get_outputs()))
        for name, s in sessions.items()
    }
    if names["int8"] != names["float"]:
        raise ExportError(
            f"{path}: inputs and outputs {names['int8']} differ from model.onnx's {names['float']}"
        )
    same, difference = 0, 0.0
    for start in range(0, len(images), batch_size):
        batch = {INPUT_NAME: images[start : start + batch_size]}
        ids, probs = {}, {}
        for name, session in sessions.items():
            ids[name], probs[name] = session.run([CLASS_IDS, PROBABILITIES], batch)
        same += int(np.sum(ids["float"] == ids["int8"]))
        difference = max(difference, float(np.max(np.abs(probs["float"] - probs["int8"]))))
    agreement = same / images[..., 0].size
    if not np.isfinite(difference):
        raise ExportError(f"{path}: the int8 model gives non-finite probabilities")
    return {
        "file": INT8_ONNX_FILE,
        "quantized_from": ONNX_FILE,
        "tool": f"onnxruntime.quantization.quantize_static (onnxruntime {ort.__version__})",
        **settings,
        "float_nodes": float_nodes,
        "calibration_images": int(len(images)),
        "calibration_size": [int(images.shape[1]), int(images.shape[2])],
        "calibration_source": calibration.description,
        "calibration_ids": list(calibration.ids),
        "calibration_class_agreement": round(agreement, 6),
        "calibration_max_probability_difference": round(difference, 6),
    }
