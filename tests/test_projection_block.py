import keras
import numpy as np
import pytest
from helpers import count_params, run_layer_test

from ppl_tf.layers import ProjectionBlock


def test_standard_layer_checks(tmp_path, rng):
    layer = ProjectionBlock(4, depth=2, name="block")
    inputs = keras.Input((None, None, 6))
    model = keras.Model(inputs, layer(inputs))
    assert model.output.shape == (None, None, None, 4)
    # linear 6*4 and 4*4 without bias; BN gamma and beta (trainable), mean and variance of 4 each
    assert count_params(layer.trainable_weights) == 24 + 16 + 2 * 2 * 4
    assert count_params(layer.non_trainable_weights) == 2 * 2 * 4
    features = rng.normal(size=(2, 3, 5, 6)).astype("float32")
    run_layer_test(layer, model, features, tmp_path)


@pytest.mark.parametrize("shape", [(7, 5), (1, 7, 2, 5)])
def test_maps_the_last_axis_of_features_and_prototype_sets(shape, rng):
    layer = ProjectionBlock(3)
    x = rng.normal(size=shape).astype("float32")
    y = layer(x)
    assert y.shape == shape[:-1] + (3,) == layer.compute_output_shape(shape)
    # Fresh BatchNorm in inference: relu(x W / sqrt(1 + eps)).
    expected = np.maximum(x @ layer.dense_layers[0].kernel.numpy() / np.sqrt(1 + 1e-5), 0)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message", [({"units": 0}, "units=0"), ({"units": 4, "depth": 0}, "depth=0")]
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProjectionBlock(**kwargs)
