import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import count_params, run_layer_test

from ppl_tf.layers import PPLStage


def stage_model(**kwargs):
    inputs = keras.Input((None, None, 8))
    logits, refined = PPLStage(4, memory_length=3, key_channels=4, name="stage", **kwargs)(inputs)
    return keras.Model(inputs, [logits, refined])


def test_standard_layer_checks(tmp_path, rng):
    model = stage_model()
    stage = model.get_layer("stage")
    assert model.outputs[0].shape == (None, None, None, 4)
    assert model.outputs[1].shape == (None, None, None, 8)
    # classifier 8*4+4; attention as in its own test (C=8, D=4): 160 linear + 2*(5*4+8) BN.
    assert count_params(stage.trainable_weights) == 36 + 160 + 56
    # BN moving stats (56) + the bank (4*3*8).
    assert count_params(stage.non_trainable_weights) == 56 + 96
    assert any(w is stage.memory.prototypes for w in stage.non_trainable_weights)
    for _ in range(2):
        stage.push_classifier()
    features = rng.normal(size=(2, 5, 5, 8)).astype("float32")
    # The training step moves the classifier, the bank keeps its prototypes until a push.
    run_layer_test(stage, model, features, tmp_path, unchanged=[stage.memory.prototypes])


def test_bank_starts_from_the_classifier_and_receives_pushes(rng):
    model = stage_model()
    stage = model.get_layer("stage")
    kernel = stage.classifier.kernel.numpy().T
    np.testing.assert_array_equal(stage.memory.prototypes.numpy(), np.repeat(kernel[:, None], 3, 1))
    stage.classifier.kernel.assign(rng.normal(size=(8, 4)))
    stage.push_classifier()
    np.testing.assert_array_equal(
        stage.memory.prototypes.numpy()[:, -1], stage.classifier.kernel.numpy().T
    )
    np.testing.assert_array_equal(stage.memory.prototypes.numpy()[:, 0], kernel)


def test_logits_are_the_classifier_and_refined_uses_the_bank(rng):
    model = stage_model()
    stage = model.get_layer("stage")
    features = rng.normal(size=(1, 3, 3, 8)).astype("float32")
    logits, refined = model(features)
    expected = features @ stage.classifier.kernel.numpy() + stage.classifier.bias.numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    stage.memory.push(rng.normal(size=(4, 8)).astype("float32") * 5)
    _, refined_after = model(features)
    assert not np.allclose(refined, refined_after)


def test_without_attention_features_pass_through(rng):
    model = stage_model(use_attention=False)
    stage = model.get_layer("stage")
    assert stage.attention is None
    assert count_params(stage.trainable_weights) == 36
    features = rng.normal(size=(1, 3, 3, 8)).astype("float32")
    np.testing.assert_array_equal(model(features)[1], features)


def test_no_gradient_reaches_the_bank(rng):
    model = stage_model()
    stage = model.get_layer("stage")
    features = rng.normal(size=(1, 3, 3, 8)).astype("float32")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(stage.memory.prototypes.value)
        loss = tf.reduce_sum(model(features, training=True)[1])
    assert tape.gradient(loss, stage.memory.prototypes.value) is None
    grads = tape.gradient(loss, stage.attention.psi.trainable_weights)
    assert all(g is not None for g in grads)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1}, "num_classes=1"),
        ({"num_classes": 3, "memory_length": 0}, "memory_length=0"),
        ({"num_classes": 3, "key_channels": 0}, "key_channels=0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PPLStage(**kwargs)


def test_wrong_rank_input():
    with pytest.raises(ValueError, match=r"features.shape=\(8,\)"):
        PPLStage(3).build((8,))


def test_classifier_input_scale_scales_the_classifier_input_only(rng):
    plain, scaled = stage_model(), stage_model(classifier_input_scale=4.0)
    scaled.set_weights(plain.get_weights())
    stage = scaled.get_layer("stage")
    features = rng.normal(size=(1, 3, 3, 8)).astype("float32")
    logits, refined = scaled(features)
    expected = 4.0 * features @ stage.classifier.kernel.numpy() + stage.classifier.bias.numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    # The refined features (Eq. 3) and the bank do not depend on it.
    np.testing.assert_allclose(refined, plain(features)[1], rtol=1e-6, atol=1e-6)
    assert PPLStage.from_config(stage.get_config()).classifier_input_scale == 4.0
    with pytest.raises(ValueError, match="classifier_input_scale"):
        PPLStage(4, classifier_input_scale=0)
