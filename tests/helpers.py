"""Shared helpers of the tests (pytest puts this folder on sys.path)."""

import keras
import numpy as np


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
