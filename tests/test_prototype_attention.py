import keras
import numpy as np
import pytest
from helpers import count_params, relative_error, run_layer_test

from ppl_tf.layers import PrototypeAttention


def randomize_batchnorm(layer, rng):
    for sub in layer._flatten_layers():
        if isinstance(sub, keras.layers.BatchNormalization):
            n = sub.gamma.shape[0]
            sub.gamma.assign(rng.uniform(0.5, 1.5, n))
            sub.beta.assign(rng.normal(0, 0.2, n))
            sub.moving_mean.assign(rng.normal(0, 0.2, n))
            sub.moving_variance.assign(rng.uniform(0.5, 1.5, n))


def block_reference(block, x, training):
    """[linear + BN + ReLU] x depth in float64, from the block's weights."""
    for dense, bn in zip(block.dense_layers, block.norm_layers, strict=True):
        x = x @ dense.kernel.numpy().astype(np.float64)
        if training:
            axes = tuple(range(x.ndim - 1))
            mean, var = x.mean(axes), x.var(axes)
        else:
            mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
        x = (x - mean) / np.sqrt(var + bn.epsilon) * bn.gamma.numpy() + bn.beta.numpy()
        x = np.maximum(x, 0.0)
    return x


def eq23_reference(layer, features, prototypes, training, scale=1.0):
    f = features.astype(np.float64)
    cm = prototypes.astype(np.float64).reshape(-1, prototypes.shape[-1])  # index k*T + t
    scores = block_reference(layer.rho, f, training) @ block_reference(layer.psi, cm, training).T
    scores *= scale
    scores -= scores.max(-1, keepdims=True)
    w = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)  # Eq. (2)
    context = w @ block_reference(layer.delta, cm, training)
    refined = (block_reference(layer.g, context, training) + f) / 2.0  # Eq. (3)
    return w, refined


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize(
    "feature_shape, num_classes, length, key_channels",
    [((2, 4, 5, 16), 3, 4, 8), ((1, 7, 3, 8), 5, 2, 4), ((3, 2, 2, 32), 2, 10, 16)],
)
def test_matches_eq2_eq3(feature_shape, num_classes, length, key_channels, training, rng):
    channels = feature_shape[-1]
    features = rng.normal(size=feature_shape).astype("float32")
    prototypes = rng.normal(size=(num_classes, length, channels)).astype("float32")
    layer = PrototypeAttention(key_channels)
    layer.build(features.shape, prototypes.shape)
    randomize_batchnorm(layer, rng)
    w_ref, refined_ref = eq23_reference(layer, features, prototypes, training)
    w = layer.affinity(features, prototypes, training=training)
    assert w.shape == feature_shape[:-1] + (num_classes * length,)
    assert relative_error(w, w_ref) < 1e-5
    refined = layer(features, prototypes, training=training)
    assert relative_error(refined, refined_ref) < 1e-5


@pytest.mark.parametrize("training", [False, True])
def test_scaled_scores_divide_by_the_square_root_of_the_key_channels(training, rng):
    features = rng.normal(size=(2, 4, 5, 16)).astype("float32")
    prototypes = rng.normal(size=(3, 4, 16)).astype("float32")
    weights = {}
    for scaled in (False, True):  # the same weights, with and without the scale
        keras.utils.set_random_seed(1)
        layer = PrototypeAttention(8, scale_scores=scaled)
        layer.build(features.shape, prototypes.shape)
        randomize_batchnorm(layer, np.random.default_rng(1))
        w_ref, refined_ref = eq23_reference(
            layer, features, prototypes, training, scale=8**-0.5 if scaled else 1.0
        )
        weights[scaled] = layer.affinity(features, prototypes, training=training)
        assert relative_error(weights[scaled], w_ref) < 1e-5
        assert relative_error(layer(features, prototypes, training=training), refined_ref) < 1e-5
    # softer: the largest weight is lower on average
    assert float(np.max(weights[True], -1).mean()) < float(np.max(weights[False], -1).mean())
    assert PrototypeAttention.from_config(layer.get_config()).scale_scores is True


def test_standard_layer_checks(tmp_path, rng):
    layer = PrototypeAttention(4, name="attention")
    # Symbolic call.
    f_in = keras.Input((None, None, 8))
    p_in = keras.Input((3, 8), batch_size=5)  # (K, T, C) = (5, 3, 8)
    out = layer(f_in, p_in)
    assert out.shape == (None, None, None, 8)
    # rho 8*4 + 4*4, psi 8*4 + 4*4, delta 8*4, g 4*8 linear weights; BN: 5 of width 4, 1 of 8.
    linear = 2 * (32 + 16) + 32 + 32
    assert count_params(layer.trainable_weights) == linear + 2 * (5 * 4 + 8)
    assert count_params(layer.non_trainable_weights) == 2 * (5 * 4 + 8)
    assert all(hasattr(layer, name) for name in ("rho", "psi", "delta", "g"))
    features = rng.normal(size=(2, 3, 3, 8)).astype("float32")
    prototypes = rng.normal(size=(5, 3, 8)).astype("float32")
    run_layer_test(layer, keras.Model([f_in, p_in], out), [features, prototypes], tmp_path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="key_channels=0"):
        PrototypeAttention(0)
    layer = PrototypeAttention(4)
    with pytest.raises(
        ValueError, match=r"features.shape=\(1, 2, 2, 8\), prototypes.shape=\(3, 2, 6\)"
    ):
        layer(np.zeros((1, 2, 2, 8), "float32"), np.zeros((3, 2, 6), "float32"))
    with pytest.raises(ValueError, match=r"`prototypes` must have rank 3.*\(6, 8\)"):
        PrototypeAttention(4)(np.zeros((1, 2, 2, 8), "float32"), np.zeros((6, 8), "float32"))


@pytest.mark.parametrize("output_gamma", [0.1, 1.0])
def test_g_starts_with_the_given_batchnorm_scale_and_the_others_with_one(output_gamma, rng):
    """g's scale sets how large g(.) starts against f in Eq. 3; rho, psi and delta keep 1."""
    layer = PrototypeAttention(4, output_gamma=output_gamma)
    features = rng.normal(size=(2, 3, 3, 8)).astype("float32")
    prototypes = rng.normal(size=(5, 3, 8)).astype("float32")
    layer(features, prototypes)
    np.testing.assert_array_equal(
        layer.g.norm_layers[0].gamma.numpy(), np.full(8, output_gamma, "float32")
    )
    for block in (layer.rho, layer.psi, layer.delta):
        for norm in block.norm_layers:
            np.testing.assert_array_equal(norm.gamma.numpy(), np.ones(4))
    # In training mode BN's output is gamma * (normalized) + beta with beta = 0, so g(.) after
    # the ReLU scales with gamma: the 0.1 start is a tenth of the 1.0 start.
    reference = PrototypeAttention(4, output_gamma=1.0)
    reference(features, prototypes)
    reference.set_weights(layer.get_weights())
    for norm in reference.g.norm_layers:
        norm.gamma.assign(np.ones(8, "float32"))
    g_out = layer(features, prototypes, training=True) * 2 - features
    g_ref = reference(features, prototypes, training=True) * 2 - features
    np.testing.assert_allclose(g_out.numpy(), output_gamma * g_ref.numpy(), rtol=1e-4, atol=1e-5)
    assert float(np.abs(g_ref.numpy()).max()) > 0.1
    with pytest.raises(ValueError, match="output_gamma=0"):
        PrototypeAttention(4, output_gamma=0)
