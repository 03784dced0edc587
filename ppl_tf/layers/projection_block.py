import keras

from ppl_tf.layers._validation import check_int


@keras.saving.register_keras_serializable(package="ppl_tf")
class ProjectionBlock(keras.layers.Layer):
    """`depth` x [linear map + BatchNormalization + ReLU] on the last axis.

    This is the paper's "1x1 convolution + BN + ReLU" block (rho, psi, delta and g of
    Eq. 2-3). A 1x1 convolution is a per-vector linear map, so the block is written with
    `Dense` and acts on tensors of any rank: feature maps (B, H, W, C) and prototype sets
    (N, C) alike. The linear maps carry no bias (BatchNormalization supplies the shift).

    Args:
        units: output channels of every linear map.
        depth: number of [linear + BN + ReLU] units. Defaults to 1.
        bn_momentum: BatchNormalization momentum. Defaults to 0.9 (PyTorch's 0.1).
        bn_epsilon: BatchNormalization epsilon. Defaults to 1e-5.
        gamma_init: initial BatchNormalization scale of every unit. Defaults to 1.0.
    """

    def __init__(self, units, depth=1, bn_momentum=0.9, bn_epsilon=1e-5, gamma_init=1.0, **kwargs):
        super().__init__(**kwargs)
        check_int("units", units, minimum=1)
        check_int("depth", depth, minimum=1)
        self.units = units
        self.depth = depth
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.gamma_init = float(gamma_init)
        self.dense_layers = []
        self.norm_layers = []
        for i in range(depth):
            self.dense_layers.append(keras.layers.Dense(units, use_bias=False, name=f"linear_{i}"))
            self.norm_layers.append(
                keras.layers.BatchNormalization(
                    momentum=bn_momentum,
                    epsilon=bn_epsilon,
                    gamma_initializer=keras.initializers.Constant(self.gamma_init),
                    name=f"bn_{i}",
                )
            )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for dense, norm in zip(self.dense_layers, self.norm_layers, strict=True):
            dense.build(shape)
            shape = shape[:-1] + (self.units,)
            norm.build(shape)

    def call(self, inputs, training=None):
        x = inputs
        for dense, norm in zip(self.dense_layers, self.norm_layers, strict=True):
            x = keras.ops.relu(norm(dense(x), training=training))
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units,)

    def get_config(self):
        base_config = super().get_config()
        config = {
            "units": self.units,
            "depth": self.depth,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "gamma_init": self.gamma_init,
        }
        return {**base_config, **config}
