"""How much of the encoder's gradient comes through the attention's queries (rho of Eq. 2).

    python results/diagnostics/query_gradient.py --out results/diagnostics/query_gradient \
        use_unlabeled=false labeled=all num_stages=2 seed=0

Trains `configs/demo.yaml` with the overrides (the full budget's schedules) and, at the start
and after 1, 3, 6, 10 and 15 epochs, takes the gradient of the labeled loss (every head) with
respect to the encoder's weights (everything before the PPL stages) on 4 training batches,
twice: as the model computes it, and with the features entering rho held constant
(`stop_gradient`, a change made in this script only). The difference is the part that reaches
the encoder through the queries. Writes `query_gradient.csv`: per epoch and batch, its norm
over the norm of the rest and the cosine between the two.
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import ppl_tf  # noqa: E402, F401

# isort: split
import tensorflow as tf  # noqa: E402

from ppl_tf.layers import PrototypeAttention  # noqa: E402
from results.diagnostics.supervised_start import demo_trainer  # noqa: E402

HOLD_QUERIES = {"on": False}
_affinity = PrototypeAttention.affinity


def affinity(self, features, prototypes, training=None):
    if HOLD_QUERIES["on"]:
        features = tf.stop_gradient(features)
    return _affinity(self, features, prototypes, training=training)


PrototypeAttention.affinity = affinity


def encoder_gradient(trainer, variables, batch, hold_queries):
    HOLD_QUERIES["on"] = hold_queries
    try:
        with tf.GradientTape() as tape:
            heads = trainer._student_heads(batch["labeled_images"], training=True)["logits"]
            loss = trainer._labeled_loss(heads, tf.cast(batch["labeled_masks"], tf.int32))
        grads = tape.gradient(loss, variables)
    finally:
        HOLD_QUERIES["on"] = False
    return np.concatenate([g.numpy().ravel() for g in grads])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache-dir", default=str(ROOT / "data_cache"))
    parser.add_argument("overrides", nargs="*", help="key=value on top of configs/demo.yaml")
    args = parser.parse_args()
    out = Path(args.out)
    config, _, train_data, _, trainer = demo_trainer(out, args.overrides, args.cache_dir)
    steps = config.steps_per_epoch
    batches = [batch for _, batch in zip(range(4), train_data, strict=False)]
    encoder = [
        v
        for v in trainer.student.trainable_weights
        if not v.path.startswith(("ppl_stage", "final_classifier"))
    ]
    rows, done = [], 0
    for epoch in (0, 1, 3, 6, 10, 15):
        if epoch > done:
            trainer.fit(
                train_data, steps_per_epoch=steps, epochs=epoch, initial_epoch=done, verbose=0
            )
            done = epoch
        for i, batch in enumerate(batches):
            full = encoder_gradient(trainer, encoder, batch, hold_queries=False)
            rest = encoder_gradient(trainer, encoder, batch, hold_queries=True)
            query = full - rest
            norm_rest = np.linalg.norm(rest)
            rows.append(
                {
                    "epoch": epoch,
                    "batch": i,
                    "query_over_rest": float(np.linalg.norm(query) / norm_rest),
                    "cosine": float(query @ rest / (np.linalg.norm(query) * norm_rest)),
                }
            )
        last = rows[-len(batches) :]
        print(
            f"after {epoch} epochs: |query| / |rest| "
            f"{np.mean([r['query_over_rest'] for r in last]):.3f}, "
            f"cosine {np.mean([r['cosine'] for r in last]):+.3f}",
            flush=True,
        )
        with open(out / "query_gradient.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
