import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import keras_round_trip, relative_error

from ppl_tf.layers import DilatedConv2D, dilated_conv


@pytest.mark.parametrize(
    "shape, kernel_size, rate, padding",
    [
        ((2, 17, 23, 5), 3, 2, "same"),
        ((1, 32, 32, 4), 3, 6, "same"),
        ((1, 40, 37, 3), 3, 18, "same"),
        ((2, 20, 20, 3), 3, 4, "valid"),
        ((1, 16, 16, 2), (3, 5), (2, 3), "same"),
        ((1, 9, 9, 2), 3, 1, "same"),
        # rate >= the map: only the center tap reads the image (both axes, one axis, equal)
        ((2, 8, 8, 4), 3, 12, "same"),
        ((2, 8, 30, 4), 3, (8, 6), "same"),
        ((1, 6, 7, 3), (3, 5), (2, 7), "same"),
    ],
)
@pytest.mark.parametrize("gradient", ["direct", "portable"])
def test_matches_keras_conv2d_in_output_and_gradient(
    shape, kernel_size, rate, padding, gradient, rng, monkeypatch
):
    # Both backward paths are checked on every machine that can run them: "portable" (the
    # SpaceToBatch gradient) everywhere, "direct" where the device has dilated gradient kernels.
    if gradient == "direct" and not dilated_conv.direct_dilated_gradients_supported():
        pytest.skip("this device has no gradient kernel for the direct dilated Conv2D")
    monkeypatch.setattr(
        dilated_conv, "direct_dilated_gradients_supported", lambda dtype: gradient == "direct"
    )
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    kwargs = dict(kernel_size=kernel_size, dilation_rate=rate, padding=padding, filters=6)
    reference = keras.layers.Conv2D(**kwargs)
    ours = DilatedConv2D(**kwargs)
    reference.build(shape)
    ours.build(shape)
    ours.set_weights(reference.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ref = reference(x)
        y = ours(x)
        target = tf.constant(rng.normal(size=y_ref.shape).astype("float32"))
        loss_ref = tf.reduce_sum(y_ref * target)
        loss = tf.reduce_sum(y * target)
    assert y.shape == y_ref.shape
    assert relative_error(y, y_ref) < 1e-5
    for g, g_ref in zip(
        tape.gradient(loss, [x, ours.kernel.value, ours.bias.value]),
        tape.gradient(loss_ref, [x, reference.kernel.value, reference.bias.value]),
        strict=True,
    ):
        assert relative_error(g, g_ref) < 1e-5


@pytest.mark.parametrize("direct", [True, False])
def test_graph_uses_direct_dilation_without_space_to_batch(direct, monkeypatch):
    monkeypatch.setattr(dilated_conv, "direct_dilated_gradients_supported", lambda dtype: direct)
    layer = DilatedConv2D(4, 3, dilation_rate=6, padding="same")
    layer.build((None, None, None, 3))
    fn = tf.function(lambda x: layer(x)).get_concrete_function(
        tf.TensorSpec((None, None, None, 3), tf.float32)
    )
    ops_used = {op.type for op in fn.graph.get_operations()}
    assert "Conv2D" in ops_used
    assert "SpaceToBatchND" not in ops_used
    conv = next(op for op in fn.graph.get_operations() if op.type == "Conv2D")
    assert list(conv.get_attr("dilations")) == [1, 6, 6, 1]
    assert conv.get_attr("padding") == b"VALID"


def test_rate_beyond_a_static_map_runs_the_center_tap_without_padding():
    # An 8x8 map at rate 12 (the demo's ASPP): a 1x1 convolution, no Pad op; an unknown size
    # (exported graphs) keeps the full dilated kernel.
    layer = DilatedConv2D(4, 3, dilation_rate=12, padding="same")
    layer.build((None, None, None, 3))

    def ops_for(shape):
        fn = tf.function(lambda x: layer(x)).get_concrete_function(tf.TensorSpec(shape))
        return [op for op in fn.graph.get_operations() if op.type in ("Conv2D", "Pad")]

    static = ops_for((2, 8, 8, 3))
    assert [op.type for op in static] == ["Conv2D"]
    assert list(static[0].get_attr("dilations")) == [1, 1, 1, 1]
    assert static[0].inputs[1].shape[:2] == (1, 1)
    assert sorted(op.type for op in ops_for((None, None, None, 3))) == ["Conv2D", "Pad"]
    assert sorted(op.type for op in ops_for((2, 13, 13, 3))) == ["Conv2D", "Pad"]


def test_round_trip_and_bad_arguments(tmp_path, rng):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, DilatedConv2D(2, 3, dilation_rate=2, padding="same")(inputs))
    x = rng.normal(size=(1, 9, 9, 3)).astype("float32")
    np.testing.assert_array_equal(keras_round_trip(model, tmp_path)(x), model(x))
    with pytest.raises(ValueError, match="strides=.*dilation_rate="):
        DilatedConv2D(2, 3, strides=2, dilation_rate=2)
