"""Parity of the export paths: Keras model vs SavedModel vs ONNX Runtime on random uint8 images.

    python benchmarks/parity.py                          # R50 + 2 stages, K = 21, random weights
    python benchmarks/parity.py --backbone tiny

For each image size: the share of pixels whose class agrees with the Keras argmax, and the
largest difference of log-probabilities relative to their largest magnitude (the export returns
probabilities; log-softmax of the Keras logits is the reference). Writes results/parity_<bb>.json.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ppl_tf  # noqa: E402, F401  (TensorFlow's CPU settings, before it loads)

# isort: split
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None):
    from ppl_tf.export import export_model
    from ppl_tf.inference import ExportedModel
    from ppl_tf.models import build_segmenter

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--sizes", nargs="+", default=["1x65x97", "3x128x96", "1x512x512"])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    model = build_segmenter(21, args.backbone, num_stages=2, backbone_weights=None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_model(model, Path(tmp) / args.backbone, verbose=False)
        paths = {b: ExportedModel(folder, backend=b) for b in ("tensorflow", "onnxruntime")}
        for size in args.sizes:
            shape = tuple(int(v) for v in size.split("x"))
            images = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
            logits = model(images.astype(np.float32), training=False)
            reference = np.asarray(tf.nn.log_softmax(logits), np.float64)
            ids = np.argmax(reference, axis=-1)
            for name, exported in paths.items():
                class_ids, probabilities = exported.predict(images)
                log_p = np.log(np.maximum(probabilities.astype(np.float64), 1e-30))
                row = {
                    "backbone": args.backbone,
                    "size": size,
                    "path": name,
                    "class_agreement": float(np.mean(class_ids == ids)),
                    "relative_logprob_error": float(
                        np.max(np.abs(log_p - reference)) / np.max(np.abs(reference))
                    ),
                }
                rows.append(row)
                print(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"parity_{args.backbone}.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
