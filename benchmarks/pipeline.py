"""Data-pipeline throughput: the trainer's dict batches from JPEG files, weak + strong views.

    python benchmarks/pipeline.py                          # 500x375 JPEGs, crop 512, batch 8+8
    python benchmarks/pipeline.py --images 16 --batches 5 --crop 128      # seconds

Writes `--images` synthetic 500x375 JPEGs (smooth color fields, VOC-sized) with PNG masks into a
temporary custom-format folder, then times `semi_supervised_dataset` (decode, scale 0.5-2.0,
crop with 255 padding, flip, color jitter, grayscale, blur, CutMix boxes on) for `--batches`
batches after `--warmup` batches. Images/s counts every image a batch holds (labeled images +
unlabeled images; each unlabeled image comes as a weak and a strong view). Writes
results/pipeline.json.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ppl_tf  # noqa: E402, F401  (TensorFlow's CPU settings, before it loads)

# isort: split
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def write_dataset(root, count, width=500, height=375, seed=0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(21)))
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    for i in range(count):
        a, b, c = rng.uniform(-3, 3, 3)
        field = np.sin(a * 6 * xx + b * 6 * yy + c)
        image = np.stack([field * 100 + 127 + rng.normal(0, 10, field.shape) for _ in range(3)], -1)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            root / "images" / f"im{i:04d}.jpg", quality=90
        )
        mask = (np.digitize(field, [-0.5, 0.5]) * 7).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"im{i:04d}.png")
    (root / "splits" / "val.txt").write_text("im0000\n")


def main(argv=None):
    from ppl_tf.data import AugmentConfig, custom_source, semi_supervised_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_dataset(root, args.images)
        source = custom_source(root)
        ids = sorted(source.samples)
        half = len(ids) // 2
        dataset = semi_supervised_dataset(
            source,
            ids[:half],
            ids[half:],
            args.batch,
            args.batch,
            AugmentConfig(crop_size=args.crop, cutmix=True),
            seed=0,
        )
        iterator = iter(dataset)
        for _ in range(args.warmup):
            next(iterator)
        start = time.perf_counter()
        for _ in range(args.batches):
            batch = next(iterator)
        seconds = time.perf_counter() - start
    assert batch["unlabeled_strong"].shape[1] == args.crop
    images = args.batches * 2 * args.batch
    result = {
        "source_size": "500x375 JPEG",
        "crop": args.crop,
        "batch": f"{args.batch}+{args.batch}",
        "batches": args.batches,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
        "batches_per_s": round(args.batches / seconds, 2),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
