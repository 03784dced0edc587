"""R50 forward latency with TensorFlow's oneDNN kernels on and off, at batch 1 and 8.

    python benchmarks/onednn.py                  # R50 + 2 stages, 512x512, batches 1 and 8
    python benchmarks/onednn.py --backbone tiny --size 64 --runs 2       # seconds

`TF_ENABLE_ONEDNN_OPTS` is read once, when TensorFlow loads, so every (setting, batch) is timed
in its own process (`--child`), which builds the segmenter (K=21, random weights) and times
`--runs` calls of its `tf.function` after 2 untimed ones. ppl_tf turns oneDNN on by default
(ppl_tf/__init__.py); this shows what that costs or saves for inference at each batch size.
Writes results/onednn.{json,md}.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def child(backbone, size, batch, runs):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ppl_tf  # noqa: F401  (keeps a TF_ENABLE_ONEDNN_OPTS the parent set)

    # isort: split
    import numpy as np
    import tensorflow as tf

    from benchmarks.inference import timed
    from ppl_tf.models import build_segmenter

    model = build_segmenter(21, backbone, num_stages=2, backbone_weights=None)
    call = tf.function(lambda x: model(x, training=False))
    images = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    images = tf.constant(images)
    return timed(lambda: call(images).numpy(), runs, warmup=2)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.backbone, args.size, args.batches[0], args.runs)))
        return None
    rows = []
    for batch in args.batches:
        for onednn in ("1", "0"):
            command = [sys.executable, __file__, "--child", "--backbone", args.backbone]
            command += ["--size", str(args.size), "--batches", str(batch), "--runs", str(args.runs)]
            env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "2"}
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise SystemExit(f"onednn.py: the child failed:\n{result.stderr[-2000:]}")
            median = float(result.stdout.strip().splitlines()[-1])
            rows.append({"batch": batch, "onednn": onednn == "1", "median_s": round(median, 4)})
            print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        on = next(r for r in rows if r["batch"] == row["batch"] and r["onednn"])
        row["vs_onednn_on"] = round(row["median_s"] / on["median_s"], 3)
    result = {"backbone": args.backbone, "size": args.size, "rows": rows}
    result["command"] = " ".join(sys.argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "onednn.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"{args.backbone} + 2 stages, {args.size}x{args.size}, Keras model in a tf.function, "
        f"median of {args.runs} calls, one process per row",
        "",
        "| batch | oneDNN | median latency (s) | vs oneDNN on |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['batch']} | {'on' if r['onednn'] else 'off'} | {r['median_s']:.3f} | "
        f"{r['vs_onednn_on']:.2f} |"
        for r in rows
    ]
    (out / "onednn.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
