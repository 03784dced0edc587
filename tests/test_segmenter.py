import keras
import numpy as np
import pytest
from helpers import count_params, keras_round_trip

from ppl_tf.layers import DilatedConv2D, PPLStage
from ppl_tf.models import build_segmenter, build_training_view, ppl_stages
from ppl_tf.models.backbones import build_backbone

TABLE7_PARAMS_M = {0: 40.42, 1: 40.58, 2: 40.75}


@pytest.mark.parametrize("num_stages", [0, 1, 2])
def test_trainable_parameters_match_table7(num_stages):
    model = build_segmenter(21, "resnet50", num_stages=num_stages, backbone_weights=None)
    params_m = count_params(model.trainable_weights) / 1e6
    assert abs(params_m - TABLE7_PARAMS_M[num_stages]) / TABLE7_PARAMS_M[num_stages] < 0.01
    assert len(ppl_stages(model)) == num_stages


def test_banks_are_not_trainable_parameters():
    model = build_segmenter(5, "tiny", num_stages=2, memory_length=7, backbone_weights=None)
    for stage in ppl_stages(model):
        assert stage.memory.prototypes.shape == (5, 7, 64)
        assert not any(w is stage.memory.prototypes for w in model.trainable_weights)


@pytest.mark.slow
def test_resnet101_builds_and_runs():
    model = build_segmenter(19, "resnet101", num_stages=2, backbone_weights=None)
    assert model(np.zeros((1, 33, 47, 3), "float32")).shape == (1, 33, 47, 19)
    assert 59e6 < count_params(model.trainable_weights) < 60e6


@pytest.mark.parametrize("name", ["resnet50", "tiny"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_gives_feature_sizes(name, output_stride):
    backbone, low_channels, high_channels = build_backbone(name, output_stride)
    low, high = backbone(np.zeros((1, 64, 96, 3), "float32"))
    assert low.shape == (1, 16, 24, low_channels)
    assert high.shape == (1, 64 // output_stride, 96 // output_stride, high_channels)
    dilated = [
        layer
        for layer in backbone.layers
        if isinstance(layer, DilatedConv2D) and max(layer.dilation_rate) > 1
    ]
    if name != "tiny" or output_stride == 8:
        assert dilated, "the last stage(s) must be dilated, not strided"


@pytest.mark.parametrize("shape", [(1, 65, 97, 3), (2, 64, 64, 3), (1, 31, 33, 3)])
def test_logits_at_input_resolution_for_any_size(shape):
    model = build_segmenter(7, "tiny", num_stages=2, backbone_weights=None)
    logits = model(np.random.default_rng(0).uniform(0, 255, shape).astype("float32"))
    assert logits.shape == shape[:3] + (7,)
    assert logits.dtype == "float32"


def test_keras_round_trip_without_custom_objects(tmp_path, rng):
    model = build_segmenter(4, "tiny", num_stages=2, memory_length=3, backbone_weights=None)
    for stage in ppl_stages(model):
        stage.classifier.kernel.assign(rng.normal(size=stage.classifier.kernel.shape))
        stage.push_classifier()
    images = rng.uniform(0, 255, (2, 40, 36, 3)).astype("float32")
    restored = keras_round_trip(model, tmp_path)
    np.testing.assert_allclose(restored(images), model(images), rtol=1e-5, atol=1e-5)
    for a, b in zip(ppl_stages(restored), ppl_stages(model), strict=True):
        assert isinstance(a, PPLStage)
        np.testing.assert_array_equal(a.memory.prototypes.numpy(), b.memory.prototypes.numpy())


def test_training_view_exposes_heads_and_stage_features():
    model = build_segmenter(5, "tiny", num_stages=2, backbone_weights=None)
    view = build_training_view(model)
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 48, 3)).astype("float32")
    out = view(images)
    assert [t.shape for t in out["logits"]] == [(2, 8, 12, 5)] * 3
    assert [t.shape for t in out["features"]] == [(2, 8, 12, 64)] * 2
    assert len(view.trainable_weights) == len(model.trainable_weights)
    # The final head at stride 4, upsampled, is the model's output.
    final = keras.ops.image.resize(out["logits"][-1], (32, 48), interpolation="bilinear")
    np.testing.assert_allclose(final, model(images), rtol=1e-4, atol=1e-4)


def test_without_stages_is_plain_deeplab():
    model = build_segmenter(3, "tiny", num_stages=0, backbone_weights=None)
    view = build_training_view(model)
    out = view(np.zeros((1, 32, 32, 3), "float32"))
    assert len(out["logits"]) == 1 and out["features"] == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1}, "num_classes=1"),
        ({"num_classes": 3, "backbone": "vgg"}, "backbone='vgg'"),
        ({"num_classes": 3, "output_stride": 32}, "output_stride=32"),
        ({"num_classes": 3, "num_stages": -1}, "num_stages=-1"),
        ({"num_classes": 3, "backbone_weights": "imagenet"}, "backbone_weights='imagenet'"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs.setdefault("backbone", "tiny")
    kwargs.setdefault("backbone_weights", None)
    with pytest.raises(ValueError, match=message):
        build_segmenter(**kwargs)


def test_attention_output_gamma_reaches_every_stage():
    from ppl_tf.config import load_config
    from ppl_tf.run import segmenter_from_config

    def g_gammas(model):
        return [float(s.attention.g.norm_layers[0].gamma.numpy()[0]) for s in ppl_stages(model)]

    default = build_segmenter(3, backbone="tiny", num_stages=2, backbone_weights=None)
    assert g_gammas(default) == pytest.approx([0.1, 0.1])
    config = load_config(None, ["attention_output_gamma=1.0", "num_stages=2"])
    assert g_gammas(segmenter_from_config(config, 3)) == [1.0, 1.0]


def test_rescale_heads_multiplies_each_classifier_input_by_its_halving(tmp_path):
    from ppl_tf.config import load_config
    from ppl_tf.run import segmenter_from_config

    config = load_config(None, ["rescale_heads=true", "num_stages=2"])
    rescaled = segmenter_from_config(config, 3)
    plain = build_segmenter(3, backbone="tiny", num_stages=2, backbone_weights=None)
    plain.set_weights(rescaled.get_weights())
    assert [s.classifier_input_scale for s in ppl_stages(rescaled)] == [1.0, 2.0]
    images = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    heads_rescaled = build_training_view(rescaled)(images)
    heads_plain = build_training_view(plain)(images)
    for a, b in zip(heads_rescaled["features"], heads_plain["features"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # Zero biases (their initial value): each head's logits scale exactly with its factor.
    for factor, a, b in zip(
        (1.0, 2.0, 4.0), heads_rescaled["logits"], heads_plain["logits"], strict=True
    ):
        np.testing.assert_allclose(a, factor * np.asarray(b), rtol=1e-4, atol=1e-5)
    restored = keras_round_trip(rescaled, tmp_path)
    np.testing.assert_allclose(restored(images), rescaled(images), rtol=1e-5, atol=1e-5)
    assert build_segmenter(3, "tiny", num_stages=0, backbone_weights=None, rescale_heads=True)
