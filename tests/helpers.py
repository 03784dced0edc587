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


def load_repo_script(relative_path):
    """A script of the repository (scripts/, benchmarks/) imported as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
