"""Sliding-window evaluation, the IoU arithmetic and run configurations."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ppl_tf.config import ConfigError, TrainConfig, load_config, parse_override, save_config
from ppl_tf.evaluation import (
    _window_starts,
    confusion_matrix,
    iou_from_confusion,
    predict_probabilities,
)


def pixelwise(images):
    """A per-pixel 'model': the class is the brightest channel. Windows cannot change it."""
    return tf.one_hot(tf.argmax(images, axis=-1), 3)


@pytest.mark.parametrize("shape", [(1, 50, 70), (2, 20, 33)])
def test_sliding_window_equals_whole_image_for_a_pixelwise_model(shape):
    images = np.random.default_rng(0).uniform(0, 255, (*shape, 3)).astype(np.float32)
    whole = predict_probabilities(pixelwise, images)
    windows = predict_probabilities(pixelwise, images, crop=24)
    flipped = predict_probabilities(pixelwise, images, crop=24, flip=True)
    np.testing.assert_allclose(windows, whole, atol=1e-6)
    np.testing.assert_allclose(flipped, 2 * whole, atol=1e-6)


def test_windows_cover_the_image_with_two_thirds_stride():
    assert _window_starts(64, 64, 42) == [0]
    assert _window_starts(100, 48, 32) == [0, 32, 52]
    assert _window_starts(20, 48, 32) == [0]


def test_iou_ignores_255_and_averages_present_classes():
    labels = np.array([[0, 0, 1, 255], [2, 2, 1, 1]])
    predictions = np.array([[0, 1, 1, 2], [2, 2, 0, 1]])
    matrix = confusion_matrix(labels, predictions, 4)
    assert matrix.sum() == 7  # the 255 pixel is not counted
    miou, per_class = iou_from_confusion(matrix)
    np.testing.assert_allclose(per_class[:3], [1 / 3, 2 / 4, 1.0])
    assert np.isnan(per_class[3]) and miou == pytest.approx((1 / 3 + 0.5 + 1) / 3)


def test_config_overrides_types_and_round_trip(tmp_path):
    config = load_config(None, ["labeled=1/8", "epochs=3", "warmup_epochs=1", "base_lr=1"])
    assert config.labeled == "1/8" and config.epochs == 3
    assert config.base_lr == 1.0 and isinstance(config.base_lr, float)
    assert parse_override("labeled=92") == ("labeled", 92)
    assert load_config(None, ["labeled=92"]).labeled == "92"
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    with pytest.raises(ConfigError, match="use_push must be bool"):
        load_config(None, ["use_push=maybe"])
    (tmp_path / "bad.yaml").write_text("epochs: 2\nbackbone_weigths: imagenet\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown key 'backbone_weigths'"):
        load_config(tmp_path / "bad.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        config = load_config(path)
        assert config.epochs >= 1, path


def test_defaults_tell_one_story():
    """TrainConfig's method and optimization defaults are PPLTrainer's, compile's and
    build_segmenter's, and the paper's VOC setting of configs/voc_r50.yaml."""
    from ppl_tf.models import build_segmenter
    from ppl_tf.training import PPLTrainer

    def defaults(function):
        return {name: p.default for name, p in inspect.signature(function).parameters.items()}

    library = {**defaults(build_segmenter), **defaults(PPLTrainer.compile)}
    library.update(defaults(PPLTrainer.__init__))
    renamed = {"ema_alpha_start": "ema_start", "ema_alpha_end": "ema_end"}
    config = TrainConfig()
    shared = [key for key in config.to_dict() if renamed.get(key, key) in library]
    assert len(shared) >= 20, shared
    for key in shared:
        if key in ("backbone", "backbone_weights"):  # the data and the model's size: tiny
            continue
        assert getattr(config, key) == library[renamed.get(key, key)], key
    root = Path(__file__).resolve().parents[1]
    voc = load_config(root / "configs" / "voc_r50.yaml")
    method = (
        "optimizer base_lr backbone_lr_multiplier weight_decay batch_size epochs warmup_epochs "
        "unsupervised_weight tau gamma margin num_stages memory_length output_stride"
    )
    for key in method.split():
        assert getattr(voc, key) == getattr(config, key), key
