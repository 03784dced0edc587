"""Segment image files with an exported model: PNG masks and color overlays out.

    python scripts/predict.py exported/digits photos/ --out predictions/
    python scripts/predict.py exported/digits/1 a.jpg b.png --backend tensorflow --batch-size 8
    python scripts/predict.py exported/digits photos/ --int8    # model_int8.onnx (export --int8)

Needs only the exported folder (see scripts/export.py), NumPy, Pillow and onnxruntime (default)
or tensorflow; not the project's model code. For every input `x.jpg` it writes `x_mask.png` (a
palette PNG whose pixel values are class ids) and `x_overlay.png`. Images of the same size are
batched together. `--int8` runs the export's int8 model, `model_int8.onnx`, in ONNX Runtime.
"""

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ppl_tf.inference import (  # noqa: E402  (after the path and log-level setup)
    BACKENDS,
    ExportedModel,
    InputError,
    list_images,
    overlay,
    read_rgb,
    save_mask,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="exported model folder (a version folder or its parent)")
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", default="predictions", help="output folder")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="run model_int8.onnx (written by scripts/export.py --int8) in ONNX Runtime",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-bad", action="store_true", help="list unreadable images, go on")
    return parser.parse_args(argv)


def main(argv=None):
    from tqdm import tqdm

    args = parse_args(argv)
    if args.batch_size < 1:
        print(
            f"predict.py: --batch-size must be at least 1, got {args.batch_size}", file=sys.stderr
        )
        return 2
    try:
        files = list_images(args.inputs)
        model = ExportedModel(args.model, backend=args.backend, int8=args.int8)
    except (FileNotFoundError, ValueError) as error:
        print(f"predict.py: {error}", file=sys.stderr)
        return 2
    palette = model.palette
    names = model.class_names or []
    keep = names.index("background") if "background" in names else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    images, bad = {}, []
    for path in files:
        try:
            images[path] = read_rgb(path)
        except InputError as error:
            if not args.skip_bad:
                print(f"predict.py: {error} (use --skip-bad to go on without it)", file=sys.stderr)
                return 2
            bad.append(str(error))
    by_size = defaultdict(list)
    for path, image in images.items():
        by_size[image.shape].append(path)
    batches = [
        paths[i : i + args.batch_size]
        for paths in by_size.values()
        for i in range(0, len(paths), args.batch_size)
    ]
    written = 0
    with tqdm(total=len(images), unit="image", desc="predict") as progress:
        for paths in batches:
            class_ids, _ = model.predict(np.stack([images[p] for p in paths]))
            for path, ids in zip(paths, class_ids, strict=True):
                save_mask(out / f"{path.stem}_mask.png", ids, palette)
                Image.fromarray(overlay(images[path], ids, palette, keep_class=keep)).save(
                    out / f"{path.stem}_overlay.png"
                )
                written += 1
            progress.update(len(paths))
    print(
        f"predict.py: {written} images segmented into {out} with {model.backend} "
        f"({model.model_file})"
    )
    if bad:
        print(f"predict.py: skipped {len(bad)} unreadable images:", file=sys.stderr)
        for line in bad:
            print(f"  {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
