import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="ppl_tf")
class Normalize(keras.layers.Layer):
    """(x - mean) / std per channel, with mean and std as constants of the graph.

    `keras.layers.Normalization` does the same arithmetic but keeps mean and variance as eager
    tensors that an exported tf.function captures as extra inputs (tf2onnx then asks ONNX
    users to feed them). Here they are created inside `call`, so exports carry them inline.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def call(self, inputs):
        mean = tf.constant(self.mean, dtype=inputs.dtype)
        std = tf.constant(self.std, dtype=inputs.dtype)
        return (inputs - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}
