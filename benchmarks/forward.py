"""Forward (inference) time of the segmenter on this machine.

    python benchmarks/forward.py --backbone resnet50 --num-stages 2 --size 512 --batch 1

Prints the median and spread of `--runs` timed calls after `--warmup` untimed ones, and writes
them to benchmarks/results/forward_<backbone>_n<stages>_<size>_b<batch>.json.
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ppl_tf  # noqa: E402, F401  (TensorFlow's CPU settings, before it loads)

# isort: split
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ppl_tf.models import build_segmenter  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--num-stages", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    model = build_segmenter(
        args.num_classes, args.backbone, num_stages=args.num_stages, backbone_weights=None
    )
    forward = tf.function(lambda x: model(x, training=False))
    images = tf.constant(
        np.random.default_rng(0).uniform(0, 255, (args.batch, args.size, args.size, 3)),
        tf.float32,
    )
    for _ in range(args.warmup):
        forward(images).numpy()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        forward(images).numpy()
        times.append(time.perf_counter() - start)
    result = {
        "backbone": args.backbone,
        "num_stages": args.num_stages,
        "size": args.size,
        "batch": args.batch,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": args.runs,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "tensorflow": tf.__version__,
    }
    name = f"forward_{args.backbone}_n{args.num_stages}_{args.size}_b{args.batch}.json"
    out = Path(__file__).parent / "results" / name
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
