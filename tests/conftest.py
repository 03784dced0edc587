import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ppl_tf  # noqa: E402, F401  (TensorFlow's CPU settings, before it loads)

# isort: split
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so MirroredStrategy tests have two replicas on one CPU. This must
# happen before TensorFlow initializes its devices, hence at import time of the test session.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """(model, version folder): an untrained tiny 2-stage segmenter with perturbed BatchNorm
    statistics (so that its classes are not near-ties), exported once per test session."""
    import keras

    from ppl_tf.export import export_model
    from ppl_tf.models import build_segmenter

    keras.utils.set_random_seed(7)
    model = build_segmenter(5, "tiny", num_stages=2, backbone_weights=None)
    rng = np.random.default_rng(7)
    layers = list(model.layers) + list(model.get_layer("tiny_backbone").layers)
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.5, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    names = ["background", "a", "b", "c", "d"]
    folder = export_model(
        model, tmp_path_factory.mktemp("exported") / "tiny", class_names=names, verbose=False
    )
    return model, folder
