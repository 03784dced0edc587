"""Shared helpers of the tests (pytest puts this folder on sys.path)."""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[1]


def relative_error(actual, expected):
    """max |actual - expected| / max |expected|."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def count_params(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def keras_round_trip(model, tmp_path, name="model.keras"):
    path = tmp_path / name
    model.save(path)
    return keras.models.load_model(path)


def load_repo_script(relative_path):
    """A script of the repository (scripts/, benchmarks/) imported as a module, for tests of
    what the script itself does (its arguments, messages and exit codes)."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_layer_test(layer, model, inputs, tmp_path, unchanged=()):
    """The checks every custom layer gets (as keras-hub's `run_layer_test` does), for `layer`
    inside the functional `model`; returns the model restored from `.keras`.

    1. config round trip: `from_config(get_config())` has the same config;
    2. `.keras` round trip of `model`: the same weights, bit for bit, and the same outputs;
    3. one training step (SGD on the mean square of the outputs minus 1): every trainable
       weight of `model` gets a finite gradient and moves; the weights in `unchanged` (state
       such as a memory bank) do not.
    """
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config

    expected = tf.nest.flatten(model(inputs))
    restored = keras_round_trip(model, tmp_path)
    assert [w.path for w in restored.weights] == [w.path for w in model.weights]
    for saved, loaded in zip(model.weights, restored.weights, strict=True):
        assert saved.numpy().tobytes() == loaded.numpy().tobytes(), saved.path
    for got, want in zip(tf.nest.flatten(restored(inputs)), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    variables = model.trainable_weights
    assert variables, "a training step needs trainable weights"
    before = [w.numpy().copy() for w in variables]
    fixed = [w.numpy().copy() for w in unchanged]
    with tf.GradientTape() as tape:
        outputs = tf.nest.flatten(model(inputs, training=True))
        loss = tf.add_n([tf.reduce_mean((out - 1.0) ** 2) for out in outputs])
    grads = tape.gradient(loss, variables)
    for grad, weight in zip(grads, variables, strict=True):
        assert grad is not None and np.all(np.isfinite(grad.numpy())), weight.path
    keras.optimizers.SGD(0.1).apply(grads, variables)
    for old, weight in zip(before, variables, strict=True):
        assert not np.array_equal(old, weight.numpy()), f"{weight.path} did not move"
    for old, weight in zip(fixed, unchanged, strict=True):
        np.testing.assert_array_equal(old, weight.numpy(), err_msg=weight.path)
    return restored
