"""Training step time and throughput: mean-teacher baseline (n = 0) vs PPL (n = 2).

    python benchmarks/train_step.py                  # tiny 64x64 8+8, R50 256x256 2+2
    python benchmarks/train_step.py --configs tiny:64:8 --steps 5     # seconds
    python benchmarks/train_step.py --breakdown --configs resnet50:256:2   # where PPL's time goes

Each config is backbone:crop:batch[:output_stride[:precision]] (batch = labeled and unlabeled
images per step each; output stride 16 and float32 unless given; the demo is tiny:64:8:8). The
defaults add mixed_bfloat16 rows (oneDNN uses AMX-BF16 where the CPU has it). The trainer
runs `fit` on a synthetic batch stream after the warm-up phase (every loss term on), and a
callback times each step; the median of `--steps` steps after `--warmup` untimed ones is
reported with images/s (labeled + unlabeled) and PPL's overhead over the baseline. Writes
results/train_step.json and results/train_step.md.

`--breakdown` times, per config, the baseline and PPL with parts of PPL switched off (no
pushing loss, no pulling attention, neither: only the stages' classifiers, banks and extra
heads), interleaved `--repeats` times, and attributes PPL's overhead to the parts. Writes
results/train_step_breakdown.{json,md}.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ppl_tf  # noqa: E402, F401  (TensorFlow's CPU settings, before it loads)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def synthetic_batches(crop, batch, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, crop, crop, 3)).astype(np.float32)
    masks = rng.integers(0, num_classes, (batch, crop, crop)).astype(np.int32)
    element = {
        "labeled_images": images,
        "labeled_masks": masks,
        "unlabeled_weak": images[::-1].copy(),
        "unlabeled_strong": images[::-1] * 0.9,
    }
    return tf.data.Dataset.from_tensors(element).repeat()


def time_config(
    backbone,
    crop,
    batch,
    num_stages,
    steps,
    warmup,
    output_stride=16,
    precision="float32",
    num_classes=21,
    use_attention=True,
    use_push=True,
):
    from ppl_tf.models import build_segmenter
    from ppl_tf.training import PPLTrainer

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    try:
        student = build_segmenter(
            num_classes,
            backbone,
            num_stages=num_stages,
            output_stride=output_stride,
            backbone_weights=None,
            use_attention=use_attention,
        )
        trainer = PPLTrainer(student, total_steps=1000, warmup_steps=0, tau=0.0, use_push=use_push)
        trainer.compile(base_lr=0.001)
        timer = StepTimer()
        trainer.fit(
            synthetic_batches(crop, batch, num_classes),
            steps_per_epoch=steps + warmup,
            epochs=1,
            verbose=0,
            callbacks=[timer],
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    times = timer.times[warmup:]
    return statistics.median(times), min(times), max(times)


BREAKDOWN = {
    "baseline (n=0)": {"num_stages": 0},
    "PPL (n=2)": {"num_stages": 2},
    "PPL without pushing (Eq. 1 off)": {"num_stages": 2, "use_push": False},
    "PPL without pulling (attention off)": {"num_stages": 2, "use_attention": False},
    "PPL without both (heads and banks only)": {
        "num_stages": 2,
        "use_push": False,
        "use_attention": False,
    },
}


def breakdown(specs, steps, warmup, repeats, out):
    """Medians over `repeats` interleaved rounds of every BREAKDOWN variant, and the parts."""
    rows = []
    for spec in specs:
        backbone, crop, batch, output_stride, precision = parse_spec(spec)
        samples = {name: [] for name in BREAKDOWN}
        for _ in range(repeats):
            for name, variant in BREAKDOWN.items():
                median, _, _ = time_config(
                    backbone, crop, batch, steps=steps, warmup=warmup,
                    output_stride=output_stride, precision=precision, **variant,
                )  # fmt: skip
                samples[name].append(median)
        medians = {name: statistics.median(values) for name, values in samples.items()}
        base = medians["baseline (n=0)"]
        full = medians["PPL (n=2)"]
        for name, values in samples.items():
            row = {
                "config": spec,
                "variant": name,
                "median_s": round(medians[name], 4),
                "spread_pct": round(100 * (max(values) - min(values)) / medians[name], 1),
                "over_baseline_pct": round(100 * (medians[name] / base - 1), 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        parts = {
            "pushing loss": full - medians["PPL without pushing (Eq. 1 off)"],
            "pulling attention": full - medians["PPL without pulling (attention off)"],
            "heads and banks": medians["PPL without both (heads and banks only)"] - base,
        }
        for part, seconds in parts.items():
            rows.append(
                {
                    "config": spec,
                    "part": part,
                    "seconds": round(seconds, 4),
                    "pct_of_baseline": round(100 * seconds / base, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step_breakdown.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    lines = [
        "| config | variant | median step (s) | spread over repeats | vs baseline |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['config']} | {r['variant']} | {r['median_s']:.3f} | {r['spread_pct']:.1f}% | "
        f"{r['over_baseline_pct']:+.1f}% |"
        for r in rows
        if "variant" in r
    ]
    lines += ["", "| config | part of PPL's overhead | seconds per step | % of the baseline step |"]
    lines += ["| --- | --- | --- | --- |"]
    lines += [
        f"| {r['config']} | {r['part']} | {r['seconds']:+.3f} | {r['pct_of_baseline']:+.1f}% |"
        for r in rows
        if "part" in r
    ]
    (out / "train_step_breakdown.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def parse_spec(spec):
    parts = spec.split(":")
    if not 3 <= len(parts) <= 5:
        raise SystemExit(f"--configs: {spec!r} is not backbone:crop:batch[:os[:precision]]")
    backbone, crop, batch = parts[0], int(parts[1]), int(parts[2])
    output_stride = int(parts[3]) if len(parts) > 3 else 16
    precision = parts[4] if len(parts) > 4 else "float32"
    return backbone, crop, batch, output_stride, precision


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[
            "tiny:64:8:8",
            "tiny:64:8:8:mixed_bfloat16",
            "resnet50:256:2",
            "resnet50:256:2:16:mixed_bfloat16",
        ],
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--breakdown", action="store_true", help="time PPL with parts off (see above)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of --breakdown")
    args = parser.parse_args(argv)
    if args.breakdown:
        return breakdown(args.configs, args.steps, args.warmup, args.repeats, args.out)
    rows = []
    for spec in args.configs:
        backbone, crop, batch, output_stride, precision = parse_spec(spec)
        medians = {}
        for n in (0, 2):
            median, low, high = time_config(
                backbone, crop, batch, n, args.steps, args.warmup, output_stride, precision
            )
            medians[n] = median
            row = {
                "backbone": backbone,
                "crop": crop,
                "batch": f"{batch}+{batch}",
                "output_stride": output_stride,
                "precision": precision,
                "num_stages": n,
                "median_s": round(median, 4),
                "min_s": round(low, 4),
                "max_s": round(high, 4),
                "images_per_s": round(2 * batch / median, 2),
            }
            if n == 2:
                row["overhead_pct"] = round(100 * (median / medians[0] - 1), 1)
            rows.append(row)
            print(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    lines = [
        "| backbone | crop | batch | OS | precision | PPL stages | median step (s) | images/s "
        "| PPL overhead |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        overhead = f"{r['overhead_pct']:+.1f}%" if "overhead_pct" in r else "-"
        lines.append(
            f"| {r['backbone']} | {r['crop']} | {r['batch']} | {r['output_stride']} | "
            f"{r['precision']} | {r['num_stages']} | "
            f"{r['median_s']:.3f} | {r['images_per_s']:.1f} | {overhead} |"
        )
    (out / "train_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
