"""Inference latency and throughput: Keras model vs SavedModel vs ONNX Runtime (fp32 and int8).

    python benchmarks/inference.py                       # tiny and R50, 512x512, batch 1 and 8
    python benchmarks/inference.py --backbones tiny --size 128 --runs 3    # seconds
    python benchmarks/inference.py --demo-export exported/digits   # + the demo's int8 mIoU loss

For each backbone it builds the segmenter (K=21, n=2 PPL stages, random weights), exports it with
`ppl_tf.export.export_model` into a temporary folder, and times `--runs` calls after `--warmup`
untimed ones for each path and batch size. All paths are timed round-robin, `--repeats` times,
with a sample of this CPU's fp32 matmul peak (a 4096^3 tf.matmul) before each backbone-batch
group and at the end, so a slower minute of the machine shows in every figure alike. Each row
reports the median over the repeats, their spread, and its latency relative to fp32 ONNX
Runtime on the same batch (the ratio survives the machine's speed changing between sessions,
which the absolute figures do not); the peak is the median of its samples. For R50's fp32
paths it also gives the share of that peak, using the multiply-add count of
benchmarks/cost.py. Writes results/inference.json and results/inference.md.

`savedmodel_xla` is a diagnostic, not a serving path: the SavedModel's `serving_default`
wrapped in `tf.function(jit_compile=True)` (compiled during the untimed warm-up calls). On CPUs
where TensorFlow's oneDNN convolutions fall back to im2col + GEMM at batch 1 it shows what the
model costs there without that fallback. It is not offered for serving: XLA's bilinear resize
to some sizes differs from TensorFlow's (at 33x47, 3% of the pixels change class), and TF
Serving runs no XLA unless started with `--xla_cpu_compilation_enabled`.

The int8 path (`onnxruntime_int8`) is the export's `model_int8.onnx`, quantized as
`export_model` does it. The random-weight models have no training images: they are calibrated on
`--int8-calibration` random uint8 images of the benchmark's size, which sets the quantization
ranges, not the amount of arithmetic. Each int8 row gets its speed-up over fp32 ONNX Runtime at
the same batch. What int8 costs in accuracy needs a trained model: `--demo-export` names an
export of the demo (scripts/train.py, or scripts/export.py --int8 on its run folder) that has
`model_int8.onnx`; both ONNX files are then evaluated on the demo's validation set (the dataset
of its metadata's config) and the mIoU of each and the points lost are written too.
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


def matmul_peak(size=4096, runs=3, warmup=1):
    """fp32 multiply-adds per second of a size^3 tf.matmul (median of `runs`): one sample."""
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    run = tf.function(lambda: tf.matmul(a, b))
    median, _, _ = timed(lambda: run().numpy(), runs, warmup)
    return size**3 / median


def interleaved(paths, repeats, runs, warmup, peak=matmul_peak):
    """Times every call of `paths` ({key: fn}) `repeats` times, round-robin: each repeat times
    every path once (`runs` calls after `warmup`, the median kept) and takes a peak sample
    before each (backbone, batch) group and at the end. A slow minute of the machine then
    shows in every path and in the peak alike. Returns ({key: [median per repeat]}, [peaks])."""
    timings = {key: [] for key in paths}
    peaks = []
    for _ in range(repeats):
        group = None
        for key, fn in paths.items():
            if key[:2] != group:
                group = key[:2]
                peaks.append(peak())
            timings[key].append(timed(fn, runs, warmup)[0])
    peaks.append(peak())
    return timings, peaks


def demo_miou(folder, batch_size=None, progress=False):
    """mIoU of an export's model.onnx and model_int8.onnx on the validation set of the dataset
    its metadata's config names (the split that training evaluated on), and the points lost."""
    from ppl_tf.config import TrainConfig, dataset_source
    from ppl_tf.data import eval_dataset, make_splits
    from ppl_tf.evaluation import evaluate, onnx_predictor

    predict_fp32, metadata = onnx_predictor(folder)
    predict_int8, _ = onnx_predictor(folder, int8=True)
    if not metadata.get("model_config"):
        raise ValueError(f"{folder}: no model config in metadata.json, so no validation set")
    config = TrainConfig(**metadata["model_config"])
    source = dataset_source(config)
    labeled = "1/1" if config.labeled == "all" else config.labeled
    val_ids = make_splits(source, labeled, seed=config.seed).val
    dataset = eval_dataset(source, val_ids, batch_size=batch_size or config.eval_batch_size)
    scores = {
        name: evaluate(predict, dataset, source.num_classes, progress=progress)["miou"]
        for name, predict in (("fp32", predict_fp32), ("int8", predict_int8))
    }
    int8 = metadata.get("onnx_int8") or {}
    return {
        "export": str(folder),
        "val_images": len(val_ids),
        "fp32_miou": round(scores["fp32"], 5),
        "int8_miou": round(scores["int8"], 5),
        "lost_points": round(100 * (scores["fp32"] - scores["int8"]), 3),
        "calibration_images": int8.get("calibration_images"),
        "calibration_class_agreement": int8.get("calibration_class_agreement"),
    }


def xla_signature(exported):
    """`serving_default` of an ExportedModel (TensorFlow backend) compiled with XLA: a call on
    uint8 images returns its outputs as NumPy, as `ExportedModel.predict` does (the
    `savedmodel_xla` diagnostic above)."""
    from ppl_tf.inference import INPUT_NAME

    signature = exported._signature
    compiled = tf.function(lambda images: signature(**{INPUT_NAME: images}), jit_compile=True)
    # The closure keeps `exported` (the loaded SavedModel that owns the variables) alive.
    return lambda images, keep=exported: {k: v.numpy() for k, v in compiled(images).items()}


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
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="times every path this many times, interleaved with the others and with peak "
        "samples; the median is reported with the spread between repeats",
    )
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--int8-calibration",
        type=int,
        default=8,
        help="random calibration images for the int8 model of each random-weight backbone",
    )
    parser.add_argument(
        "--demo-export",
        help="an export of the demo with model_int8.onnx: also the fp32 and int8 mIoU on the "
        "demo's validation set",
    )
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}  # (backbone, batch, path) -> a call on that batch
        for backbone in args.backbones:
            model = build_segmenter(21, backbone, num_stages=2, backbone_weights=None)
            rng = np.random.default_rng(1)
            shape = (args.int8_calibration, args.size, args.size, 3)
            calibration = rng.integers(0, 256, shape, dtype=np.uint8)
            folder = export_model(
                model, Path(tmp) / backbone, verbose=False, int8_calibration=calibration
            )
            keras_call = tf.function(lambda x, m=model: m(x, training=False))
            saved = ExportedModel(folder, backend="tensorflow")
            saved_xla = xla_signature(ExportedModel(folder, backend="tensorflow"))
            onnx = ExportedModel(folder, backend="onnxruntime")
            onnx_int8 = ExportedModel(folder, backend="onnxruntime", int8=True)
            for batch in args.batches:
                rng = np.random.default_rng(0)
                images = rng.integers(0, 256, (batch, args.size, args.size, 3), dtype=np.uint8)
                floats = tf.constant(images.astype(np.float32))
                paths[(backbone, batch, "keras")] = lambda f=floats, k=keras_call: k(f).numpy()
                paths[(backbone, batch, "savedmodel")] = lambda i=images, m=saved: m.predict(i)
                paths[(backbone, batch, "savedmodel_xla")] = lambda i=images, f=saved_xla: f(
                    tf.constant(i)
                )
                paths[(backbone, batch, "onnxruntime")] = lambda i=images, m=onnx: m.predict(i)
                paths[(backbone, batch, "onnxruntime_int8")] = lambda i=images, m=onnx_int8: (
                    m.predict(i)
                )
        timings, peaks = interleaved(paths, args.repeats, args.runs, args.warmup)
    peak = statistics.median(peaks)
    print(f"fp32 matmul peak: {peak / 1e9:.1f} G multiply-adds/s (median of {len(peaks)})")
    for (backbone, batch, path), medians in timings.items():
        median = statistics.median(medians)
        rows.append(
            {
                "backbone": backbone,
                "path": path,
                "batch": batch,
                "size": args.size,
                "median_s": round(median, 4),
                "repeat_medians_s": [round(m, 4) for m in medians],
                "spread_pct": round(100 * (max(medians) - min(medians)) / median, 1),
                "images_per_s": round(batch / median, 2),
            }
        )
    fp32_ort = {(r["backbone"], r["batch"]): r for r in rows if r["path"] == "onnxruntime"}
    for row in rows:
        # Latency relative to fp32 ONNX Runtime on the same batch, from the same interleaved run:
        # the figure that survives the machine's speed changing between sessions.
        fp32 = fp32_ort[(row["backbone"], row["batch"])]
        row["latency_vs_onnxruntime"] = round(row["median_s"] / fp32["median_s"], 3)
        print(json.dumps(row))
    macs = {}
    cost_file = RESULTS / "cost.json"
    if cost_file.is_file():
        for entry in json.loads(cost_file.read_text())["rows"]:
            if entry["num_stages"] == 2:
                macs[entry["size"]] = entry["macs"]
    for row in rows:
        # A share of the fp32 peak says nothing about int8 arithmetic: fp32 paths only.
        if row["backbone"] == "resnet50" and row["size"] in macs and "int8" not in row["path"]:
            rate = macs[row["size"]] * row["batch"] / row["median_s"]
            row["share_of_peak"] = round(rate / peak, 3)
    for row in rows:
        if row["path"] == "onnxruntime_int8":
            fp32 = fp32_ort[(row["backbone"], row["batch"])]
            row["speedup_vs_fp32_onnxruntime"] = round(fp32["median_s"] / row["median_s"], 3)
    peak_spread = 100 * (max(peaks) - min(peaks)) / peak
    result = {
        "matmul_peak_macs_per_s": peak,
        "matmul_peak_samples": [round(p) for p in peaks],
        "matmul_peak_spread_pct": round(peak_spread, 1),
        "repeats": args.repeats,
        "rows": rows,
        "command": " ".join(sys.argv),
    }
    if args.demo_export:
        result["demo_int8"] = demo_miou(args.demo_export)
        print(json.dumps(result["demo_int8"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"fp32 matmul peak of this CPU: {peak / 1e9:.1f} G multiply-adds/s, the median of "
        f"{len(peaks)} samples taken between the timings (spread {peak_spread:.1f}%); each "
        f"latency is the median of {args.repeats} interleaved repeats, spread = (max - min) / "
        "median over them; vs ORT = latency / fp32 ONNX Runtime's on the same batch",
        "",
        "| backbone | path | batch | median latency (s) | spread | vs ORT | images/s | "
        "share of peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        share = f"{100 * r['share_of_peak']:.0f}%" if "share_of_peak" in r else "-"
        lines.append(
            f"| {r['backbone']} | {r['path']} | {r['batch']} | {r['median_s']:.3f} | "
            f"{r['spread_pct']:.1f}% | {r['latency_vs_onnxruntime']:.2f} | "
            f"{r['images_per_s']:.2f} | {share} |"
        )
    lines += [
        "",
        "int8 ONNX Runtime (model_int8.onnx) vs fp32 ONNX Runtime (model.onnx), same run:",
        "",
        "| backbone | batch | fp32 images/s | int8 images/s | int8 speed-up |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["path"] == "onnxruntime_int8":
            fp32 = fp32_ort[(r["backbone"], r["batch"])]
            lines.append(
                f"| {r['backbone']} | {r['batch']} | {fp32['images_per_s']:.2f} | "
                f"{r['images_per_s']:.2f} | {r['speedup_vs_fp32_onnxruntime']:.2f}x |"
            )
    if "demo_int8" in result:
        demo = result["demo_int8"]
        lines += [
            "",
            f"Demo export {demo['export']} on its {demo['val_images']} validation images:",
            "",
            "| fp32 ONNX mIoU | int8 ONNX mIoU | points lost |",
            "| --- | --- | --- |",
            f"| {100 * demo['fp32_miou']:.2f} | {100 * demo['int8_miou']:.2f} | "
            f"{demo['lost_points']:.2f} |",
        ]
    (out / "inference.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
