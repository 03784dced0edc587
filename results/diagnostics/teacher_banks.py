"""What the teacher's attention loses to its banks and its BatchNorm statistics (item 4).

    python results/diagnostics/teacher_banks.py RUN_FOLDER [RUN_FOLDER ...] \
        --out results/diagnostics/teacher_banks.csv

A run folder of `scripts/train.py` holds teacher.keras and student.keras. The teacher's psi and
delta normalize the prototype set with BatchNorm, and at inference they use moving statistics
that the EMA carried over from the student, whose bank holds other prototypes (the teacher
pushes its own averaged classifiers). Val mIoU (the run's own val scenes, whole images) of:
- `teacher`: the teacher as it is (what the run reports);
- `teacher_student_banks`: the teacher with the student's banks copied in;
- `teacher_bank_statistics`: the teacher with psi and delta normalizing by the statistics of
  its own bank (BatchNorm in training mode on the K*T prototypes; the images do not enter them);
- `student`: the student as it is.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import ppl_tf  # noqa: E402, F401

# isort: split
import keras  # noqa: E402

from ppl_tf.config import dataset_source, load_config  # noqa: E402
from ppl_tf.data import eval_dataset  # noqa: E402
from ppl_tf.evaluation import evaluate, keras_predictor  # noqa: E402
from ppl_tf.models.segmenter import ppl_stages  # noqa: E402


def on_bank_statistics(model):
    """Makes psi and delta of every stage normalize with their input's statistics."""
    for stage in ppl_stages(model):
        for block in (stage.attention.psi, stage.attention.delta):
            call = block.call
            block.call = lambda x, training=None, call=call: call(x, training=True)


def measure(folder, cache_dir):
    folder = Path(folder)
    config = load_config(folder / "config.yaml", [f"cache_dir={cache_dir}"])
    source = dataset_source(config)
    val_ids = (folder / "splits" / "val.txt").read_text().split()
    val = eval_dataset(source, val_ids, batch_size=config.eval_batch_size)
    networks = {n: keras.models.load_model(folder / f"{n}.keras") for n in ("teacher", "student")}
    row = {"run": str(folder)}

    def score(name, model):
        result = evaluate(keras_predictor(model), val, source.num_classes, progress=False)
        row[name] = round(100 * result["miou"], 2)
        print(f"{folder.name}: {name} {row[name]}", flush=True)

    score("teacher", networks["teacher"])
    score("student", networks["student"])
    swapped = keras.models.load_model(folder / "teacher.keras")
    for mine, theirs in zip(ppl_stages(swapped), ppl_stages(networks["student"]), strict=True):
        mine.memory.prototypes.assign(theirs.memory.prototypes)
    score("teacher_student_banks", swapped)
    on_bank = keras.models.load_model(folder / "teacher.keras")
    on_bank_statistics(on_bank)
    score("teacher_bank_statistics", on_bank)
    row["reported_teacher"] = round(
        100 * json.loads((folder / "metrics.json").read_text())["teacher_miou"], 2
    )
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache-dir", default=str(ROOT / "data_cache"))
    args = parser.parse_args()
    rows = [measure(folder, args.cache_dir) for folder in args.runs]
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
