"""Inference latency and throughput: Keras model vs SavedModel vs ONNX Runtime, on this CPU.

    python benchmarks/inference.py                       # tiny and R50, 512x512, batch 1 and 8
    python benchmarks/inference.py --backbones tiny --size 128 --runs 3    # seconds

For each backbone it builds the segmenter (K=21, n=2 PPL stages, random weights), exports it with
`ppl_tf.export.export_model` into a temporary folder, and times `--runs` calls after `--warmup`
untimed ones for each path and batch size. It also measures this CPU's fp32 matmul peak (a
4096^3 tf.matmul) and, for R50, the share of that peak the SavedModel reaches, using the
multiply-add count of benchmarks/cost.py. Writes results/inference.json and results/inference.md.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ppl_tf  # noqa: E402, F401  (TensorFlow's CPU settings, before it loads)

# isort: split
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def matmul_peak(size=4096, runs=5):
    """fp32 multiply-adds per second of a size^3 tf.matmul (median of `runs`)."""
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    run = tf.function(lambda: tf.matmul(a, b))
    median, _, _ = timed(lambda: run().numpy(), runs, 2)
    return size**3 / median


def main(argv=None):
    from ppl_tf.export import export_model
    from ppl_tf.inference import ExportedModel
    from ppl_tf.models import build_segmenter

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny", "resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak / 1e9:.1f} G multiply-adds/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            model = build_segmenter(21, backbone, num_stages=2, backbone_weights=None)
            folder = export_model(model, Path(tmp) / backbone, verbose=False)
            keras_call = tf.function(lambda x, m=model: m(x, training=False))
            saved = ExportedModel(folder, backend="tensorflow")
            onnx = ExportedModel(folder, backend="onnxruntime")
            for batch in args.batches:
                rng = np.random.default_rng(0)
                images = rng.integers(0, 256, (batch, args.size, args.size, 3), dtype=np.uint8)
                floats = tf.constant(images.astype(np.float32))
                paths = {
                    "keras": lambda f=floats, k=keras_call: k(f).numpy(),
                    "savedmodel": lambda i=images, m=saved: m.predict(i),
                    "onnxruntime": lambda i=images, m=onnx: m.predict(i),
                }
                for path, fn in paths.items():
                    median, low, high = timed(fn, args.runs, args.warmup)
                    row = {
                        "backbone": backbone,
                        "path": path,
                        "batch": batch,
                        "size": args.size,
                        "median_s": round(median, 4),
                        "min_s": round(low, 4),
                        "max_s": round(high, 4),
                        "images_per_s": round(batch / median, 2),
                    }
                    rows.append(row)
                    print(json.dumps(row))
    macs = {}
    cost_file = RESULTS / "cost.json"
    if cost_file.is_file():
        for entry in json.loads(cost_file.read_text())["rows"]:
            if entry["num_stages"] == 2:
                macs[entry["size"]] = entry["macs"]
    for row in rows:
        if row["backbone"] == "resnet50" and row["size"] in macs:
            rate = macs[row["size"]] * row["batch"] / row["median_s"]
            row["share_of_peak"] = round(rate / peak, 3)
    result = {"matmul_peak_macs_per_s": peak, "rows": rows, "command": " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"fp32 matmul peak of this CPU: {peak / 1e9:.1f} G multiply-adds/s",
        "",
        "| backbone | path | batch | median latency (s) | images/s | share of peak |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        share = f"{100 * r['share_of_peak']:.0f}%" if "share_of_peak" in r else "-"
        lines.append(
            f"| {r['backbone']} | {r['path']} | {r['batch']} | {r['median_s']:.3f} | "
            f"{r['images_per_s']:.2f} | {share} |"
        )
    (out / "inference.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
