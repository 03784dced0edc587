"""Table 7 reproduced: trainable parameters and multiply-adds of DeepLabv3+ R50 with n PPL stages.

    python benchmarks/cost.py                   # K = 21, 512x512, n = 0, 1, 2 (about a minute)
    python benchmarks/cost.py --backbone tiny --size 64

Multiply-adds come from TensorFlow's profiler (float_ops / 2) on the inference graph of one
image; the paper counts multiply-adds as "FLOPs". Writes results/cost.json and results/cost.md.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ppl_tf  # noqa: E402, F401  (TensorFlow's CPU settings, before it loads)

# isort: split
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {0: (40.42, 69.67), 1: (40.58, 71.07), 2: (40.75, 72.48)}  # params M, FLOPs G (Table 7)


def multiply_adds(model, size):
    """Multiply-adds of one forward pass on a (1, size, size, 3) image."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec((1, size, size, 3), tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(frozen.graph, options=options)
    return profile.total_float_ops // 2


def main(argv=None):
    from ppl_tf.models import build_segmenter

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    rows = []
    for n in args.stages:
        model = build_segmenter(
            args.num_classes, args.backbone, num_stages=n, backbone_weights=None
        )
        params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        macs = int(multiply_adds(model, args.size))
        row = {
            "backbone": args.backbone,
            "num_stages": n,
            "size": args.size,
            "params": params,
            "macs": macs,
        }
        if args.backbone == "resnet50" and args.size == 512 and args.num_classes == 21:
            row["paper_params_m"], row["paper_gflops"] = PAPER.get(n, (None, None))
        rows.append(row)
        print(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "cost" if args.backbone == "resnet50" else f"cost_{args.backbone}"
    (out / f"{name}.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    lines = [
        f"{args.backbone}, K={args.num_classes}, {args.size}x{args.size}",
        "",
        "| PPL stages | params (M) | multiply-adds (G) | paper params (M) | paper FLOPs (G) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['num_stages']} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e9:.2f} | "
            f"{r.get('paper_params_m') or '-'} | {r.get('paper_gflops') or '-'} |"
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
