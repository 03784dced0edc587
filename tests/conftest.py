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
    statistics (so that its classes are not near-ties), exported once per test session (no
    int8 model)."""
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


@pytest.fixture(scope="session")
def tiny_int8_export(tmp_path_factory):
    """(run folder, version folder): a run folder on small digit scenes (config.yaml with
    export_int8 and 6 calibration images of 48x48, dataset.json, splits/, no metrics) whose
    teacher is an untrained tiny 2-stage segmenter of the scenes' 11 classes, exported by
    scripts/export.py, which writes model_int8.onnx because the run's config asks for it.

    The teacher's BatchNorm statistics are those of 16 training scenes (one training-mode pass
    with momentum 0): its features are normalized on the data, so its classes depend on the
    image as a trained model's do. (`tiny_export`'s perturbed statistics give a model that
    predicts nearly the same classes for any input: its int8 twin agreed with it on over 98%
    of the pixels even when calibrated on black images.)"""
    import json

    import keras
    from helpers import load_repo_script

    from ppl_tf.config import dataset_source, load_config, save_config
    from ppl_tf.data import make_splits
    from ppl_tf.models import build_segmenter

    tmp = tmp_path_factory.mktemp("int8")
    run = tmp / "run"
    run.mkdir()
    overrides = [
        f"cache_dir={tmp / 'data'}",
        "digits_train_scenes=24",
        "crop_size=48",
        "export_int8=true",
        "export_int8_calibration=6",
        f"out={run}",
    ]
    config = load_config(None, overrides)
    save_config(config, run / "config.yaml")
    source = dataset_source(config)
    splits = make_splits(source, config.labeled, config.seed, split_dir=run / "splits")
    names = {"class_names": list(source.class_names), "palette": [list(c) for c in source.palette]}
    (run / "dataset.json").write_text(json.dumps(names))

    keras.utils.set_random_seed(7)
    model = build_segmenter(source.num_classes, "tiny", num_stages=2, backbone_weights=None)
    ids = (splits.labeled + splits.unlabeled)[:16]
    images = np.stack([source.read(source.samples[i])[0] for i in ids]).astype(np.float32)
    layers = list(model.layers) + list(model.get_layer("tiny_backbone").layers)
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(images, training=True)
    for layer in norms:
        layer.momentum = 0.99
    model.save(run / "teacher.keras")

    export = load_repo_script("scripts/export.py")
    argv = [str(run), "--network", "teacher", "--name", "tiny", "--out", str(tmp / "exported")]
    assert export.main(argv) == 0
    return run, tmp / "exported" / "tiny" / "1"
