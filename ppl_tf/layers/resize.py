import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="ppl_tf")
class ResizeLike(keras.layers.Layer):
    """Bilinear resize of `inputs` to the spatial size of `reference`.

    Written with `tf.image.resize` and `tf.shape`: Keras' resize ops fail in graph mode when
    the target height and width are only known at run time, which is the case for a model
    that takes images of any size.

    Call arguments:
        inputs: (B, h, w, C) tensor to resize.
        reference: (B, H, W, ...) tensor whose H and W are the target size.
    """

    def __init__(self, interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs, reference):
        size = tf.shape(reference)[1:3]
        outputs = tf.image.resize(inputs, size, method=self.interpolation)
        return tf.cast(outputs, inputs.dtype)

    def compute_output_shape(self, inputs_shape, reference_shape):
        return (inputs_shape[0], reference_shape[1], reference_shape[2], inputs_shape[-1])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}
