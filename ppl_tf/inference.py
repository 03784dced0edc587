"""Run an exported model (see `ppl_tf.export`) with ONNX Runtime or TensorFlow.

This module needs only the exported folder, NumPy and Pillow, plus onnxruntime or tensorflow for
the chosen backend: it does not import Keras or the project's model code, so `scripts/predict.py`
runs wherever the export is copied.

>>> model = ExportedModel("exported/digits")               # the newest version, ONNX Runtime
>>> class_ids, probabilities = model.predict(images_uint8)  # (B, H, W), (B, H, W, K)
>>> int8 = ExportedModel("exported/digits", int8=True)     # model_int8.onnx (export --int8)
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# The interface of an exported model (see `ppl_tf.export`), defined once for the exporter, this
# module, the serving clients and servers and the evaluation of an export. It lives here because
# this module imports neither TensorFlow nor Keras: every reader can import it.
DEFAULT_SIGNATURE = "serving_default"  # images -> class ids and probabilities
BYTES_SIGNATURE = "predict_image_bytes"  # encoded images -> the same outputs
INPUT_NAME = "images"
BYTES_INPUT_NAME = "image_bytes"
CLASS_IDS = "class_ids"
PROBABILITIES = "probabilities"
OUTPUT_NAMES = (CLASS_IDS, PROBABILITIES)
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model_int8.onnx"  # written beside ONNX_FILE when an int8 export is asked for
METADATA_FILE = "metadata.json"
SAVED_MODEL_FILE = "saved_model.pb"

BACKENDS = ("onnxruntime", "tensorflow")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class InputError(ValueError):
    """An input image or batch the exported model cannot take; the message says why."""


def resolve_version(path):
    """`path` itself when it is a version folder, else its newest integer version folder."""
    path = Path(path)
    if (path / SAVED_MODEL_FILE).is_file() or (path / METADATA_FILE).is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such exported model folder")
    versions = sorted((int(p.name), p) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise FileNotFoundError(
            f"{path}: not an exported model (no {SAVED_MODEL_FILE} and no numbered version folder)"
        )
    return versions[-1][1]


def check_batch(images):
    """Checks a batch for the `images` input: uint8, (B, H, W, 3), nothing empty."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise InputError(f"images must be uint8 RGB; got dtype {images.dtype}")
    if images.ndim != 4:
        raise InputError(
            f"images must have shape (B, H, W, 3); got rank {images.ndim} {images.shape}"
        )
    if images.shape[-1] != 3:
        raise InputError(
            f"images must have 3 channels (RGB); got {images.shape[-1]} in {images.shape}"
        )
    if min(images.shape[:3]) == 0:
        raise InputError(f"images must not be empty; got shape {images.shape}")
    return images


class ExportedModel:
    """An exported version folder, run with `backend` ("onnxruntime" or "tensorflow").

    `int8=True` runs the statically quantized `model_int8.onnx` (ONNX Runtime only) instead of
    `model.onnx`; it has the same inputs and outputs.
    """

    def __init__(self, path, backend="onnxruntime", threads=None, int8=False):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        if int8 and backend != "onnxruntime":
            raise ValueError(
                f"the int8 model ({INT8_ONNX_FILE}) runs in ONNX Runtime; got backend {backend!r}"
            )
        self.path = resolve_version(path)
        metadata_file = self.path / METADATA_FILE
        self.metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
        self.backend = backend
        self.int8 = bool(int8)
        if backend == "onnxruntime":
            import onnxruntime as ort

            onnx_file = self.path / (INT8_ONNX_FILE if int8 else ONNX_FILE)
            if int8 and not onnx_file.is_file():
                raise FileNotFoundError(
                    f"{onnx_file}: missing; this export has no int8 model (export one with "
                    "scripts/export.py --int8, or use model.onnx without int8)"
                )
            if not onnx_file.is_file():
                raise FileNotFoundError(f"{onnx_file}: missing; export with ONNX or use TensorFlow")
            self.model_file = onnx_file
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self._session = ort.InferenceSession(
                str(onnx_file), options, providers=["CPUExecutionProvider"]
            )
            self._output_names = [o.name for o in self._session.get_outputs()]
        else:
            import tensorflow as tf

            self._tf = tf
            self.model_file = self.path / SAVED_MODEL_FILE
            self._loaded = tf.saved_model.load(str(self.path))
            self._signature = self._loaded.signatures[DEFAULT_SIGNATURE]

    @property
    def class_names(self):
        return self.metadata.get("class_names")

    @property
    def palette(self):
        palette = self.metadata.get("palette")
        return None if palette is None else np.asarray(palette, np.uint8)

    def predict(self, images):
        """uint8 (B, H, W, 3) -> (class_ids int32 (B, H, W), probabilities float32 (B, H, W, K))."""
        images = check_batch(images)
        if self.backend == "onnxruntime":
            outputs = self._session.run(self._output_names, {INPUT_NAME: images})
            result = dict(zip(self._output_names, outputs, strict=True))
        else:
            outputs = self._signature(**{INPUT_NAME: self._tf.constant(images)})
            result = {name: value.numpy() for name, value in outputs.items()}
        return result[CLASS_IDS], result[PROBABILITIES]


def read_rgb(path):
    """An image file as uint8 (H, W, 3); grayscale, palette, RGBA and 16-bit are converted."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, np.float64)
                array = np.round(array / max(array.max(), 1.0) * 255.0).astype(np.uint8)
                image = Image.fromarray(array)
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{path}: not a readable image ({error})") from error
    if min(array.shape[:2]) == 0:
        raise InputError(f"{path}: the image is empty ({array.shape[1]}x{array.shape[0]})")
    return array


def colorize(class_ids, palette):
    """(H, W) class ids -> (H, W, 3) uint8 colors."""
    return np.asarray(palette, np.uint8)[np.clip(class_ids, 0, len(palette) - 1)]


def overlay(image, class_ids, palette, alpha=0.5, keep_class=None):
    """The image blended with each pixel's class color; pixels of `keep_class` (for example the
    background) are left as they are."""
    colors = colorize(class_ids, palette).astype(np.float32)
    blended = image.astype(np.float32) * (1 - alpha) + colors * alpha
    if keep_class is not None:
        blended = np.where((class_ids == keep_class)[..., None], image.astype(np.float32), blended)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def save_mask(path, class_ids, palette):
    """A palette PNG whose pixel values are the class ids (readable as ids and as colors)."""
    mask = Image.fromarray(class_ids.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(palette)] = np.asarray(palette, np.uint8)[:256]
    mask.putpalette(flat.reshape(-1).tolist())
    mask.save(path)


def list_images(inputs):
    """Image files named in `inputs` (files or folders, folders searched non-recursively)."""
    files = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, inputs))}")
    return files
