"""Which static-quantization settings make the int8 ONNX model fastest on this CPU.

    python benchmarks/int8_settings.py                    # R50 + 2 stages, 512x512, batch 1
    python benchmarks/int8_settings.py --backbone tiny --size 64 --runs 2     # seconds

Exports the segmenter (K=21, random weights) to ONNX once, quantizes it with
`ppl_tf.export.write_int8_onnx` under INT8_SETTINGS and one change at a time (per-tensor
weights, QOperator format, no reduce_range, int8 activations), calibrated on random images,
and times every model in ONNX Runtime (median of `--runs` calls after 2 untimed ones), fp32
first and last so that a drift of the machine shows. Writes results/int8_settings.{json,md}
with each variant's latency and speed-up over fp32.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ppl_tf  # noqa: E402, F401  (TensorFlow's CPU settings, before it loads)

# isort: split
import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "INT8_SETTINGS (the export's)": {},
    "per-tensor weights": {"per_channel": False},
    "QOperator format": {"quant_format": "QOperator"},
    "no reduce_range": {"reduce_range": False},
    "int8 activations (S8S8)": {"activation_type": "QInt8"},
}


def latency(path, images, runs):
    import onnxruntime as ort

    from benchmarks.inference import timed

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return timed(lambda: session.run(None, {"images": images}), runs, warmup=2)[0]


def main(argv=None):
    from ppl_tf.export import INT8_SETTINGS, CalibrationSet, export_model, write_int8_onnx
    from ppl_tf.models import build_segmenter

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=8, help="random calibration images")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    shape = (args.calibration, args.size, args.size, 3)
    calibration = CalibrationSet(rng.integers(0, 256, shape, dtype=np.uint8), (), "random")
    images = np.random.default_rng(0).integers(0, 256, (1, args.size, args.size, 3), np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_segmenter(21, args.backbone, num_stages=2, backbone_weights=None)
        fp32 = export_model(model, Path(tmp) / "model", verbose=False) / "model.onnx"
        first = latency(fp32, images, args.runs)
        for name, change in VARIANTS.items():
            path = Path(tmp) / f"variant{len(rows)}.onnx"
            write_int8_onnx(fp32, path, calibration, change)
            rows.append({"variant": name, "settings": {**INT8_SETTINGS, **change}})
            rows[-1]["median_s"] = round(latency(path, images, args.runs), 6)
            print(json.dumps(rows[-1]), flush=True)
        last = latency(fp32, images, args.runs)
    fp32_s = statistics.mean([first, last])
    for row in rows:
        row["speedup_vs_fp32"] = round(fp32_s / row["median_s"], 3)
    result = {
        "backbone": args.backbone,
        "size": args.size,
        "batch": 1,
        "fp32_median_s_first_last": [round(first, 6), round(last, 6)],
        "rows": rows,
        "command": " ".join(sys.argv),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_settings.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"{args.backbone} + 2 stages, {args.size}x{args.size}, batch 1, ONNX Runtime; fp32 "
        f"{first:.3f} s before the variants and {last:.3f} s after (speed-ups use their mean)",
        "",
        "| int8 variant | median latency (s) | speed-up over fp32 |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {r['variant']} | {r['median_s']:.3f} | {r['speedup_vs_fp32']:.2f}x |" for r in rows
    ]
    (out / "int8_settings.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
