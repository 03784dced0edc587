import functools

import keras
import tensorflow as tf


@functools.cache
def direct_dilated_gradients_supported(dtype="float32"):
    """Whether this machine's default device has gradients for TF's direct dilated Conv2D.

    The forward Conv2D op takes `dilations` everywhere, but its two gradient kernels do only
    where oneDNN or cuDNN runs them: on CPUs where TensorFlow uses Eigen (oneDNN off; or
    bfloat16 without AVX-512, seen on an AMD EPYC with AVX2) `Conv2DBackpropInput/Filter` fail
    with "Current CPU implementations do not yet support dilation rates larger than 1".
    Probed once per dtype, eagerly.
    """
    with tf.init_scope():  # eager, also when first called while tracing
        x, kernel, dy = (
            tf.zeros(shape, dtype) for shape in ([1, 5, 5, 1], [3, 3, 1, 1], [1, 1, 1, 1])
        )
        strides, dilations = [1, 1, 1, 1], [1, 2, 2, 1]
        try:
            tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x),
                filter=kernel,
                out_backprop=dy,
                strides=strides,
                padding="VALID",
                dilations=dilations,
            )
            tf.raw_ops.Conv2DBackpropFilter(
                input=x,
                filter_sizes=tf.shape(kernel),
                out_backprop=dy,
                strides=strides,
                padding="VALID",
                dilations=dilations,
            )
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            return False
    return True


def _direct_conv(inputs, kernel, rates):
    return tf.nn.conv2d(inputs, kernel, strides=1, padding="VALID", dilations=rates)


def _direct_conv_with_portable_gradient(inputs, kernel, rates):
    """The direct dilated convolution forward; its gradient through `tf.nn.convolution`'s
    SpaceToBatch formulation (the same linear map), which every device can differentiate."""

    @tf.custom_gradient
    def conv(x, k):
        def grad(upstream):
            with tf.GradientTape() as tape:
                tape.watch([x, k])
                y = tf.nn.convolution(x, k, strides=1, padding="VALID", dilations=rates)
            return tape.gradient(y, [x, k], output_gradients=upstream)

        return _direct_conv(x, k, rates), grad

    return conv(inputs, tf.convert_to_tensor(kernel))


def _center_taps_only(inputs, kernel, rates):
    """(kernel, rates) without the taps that can only ever read "same" padding's zeros.

    With an odd kernel and dilation `rate` along an axis of static size <= rate, every tap
    but the center one lands outside the map for every output pixel: the convolution along
    that axis is its center tap alone, exactly. DeepLabv3+'s ASPP meets this whenever the
    crop is small for its rates (the demo: rates 12-36 on an 8x8 map, where the full dilated
    kernels spent a sixth of a training step multiplying padding). Shapes unknown when the
    graph is traced (exported models, any image size) keep the full kernel.
    """
    kernel = tf.convert_to_tensor(kernel)
    for axis in (0, 1):
        size, taps = inputs.shape[1 + axis], kernel.shape[axis]
        if size is None or taps % 2 == 0 or taps == 1 or rates[axis] < size:
            continue
        center = taps // 2
        kernel = kernel[center : center + 1] if axis == 0 else kernel[:, center : center + 1]
        rates = [1, rates[1]] if axis == 0 else [rates[0], 1]
    return kernel, rates


@keras.saving.register_keras_serializable(package="ppl_tf")
class DilatedConv2D(keras.layers.Conv2D):
    """`Conv2D` whose dilated convolutions run on TF's direct dilated kernel.

    Keras' `Conv2D(dilation_rate>1)` goes through `tf.nn.convolution`, which wraps each call
    in SpaceToBatch/BatchToSpace: on CPU that costs DeepLabv3+ 12-46% more multiply-adds and
    many small ops. TF's Conv2D op takes `dilations` directly. "same" padding is applied as an
    explicit symmetric zero pad followed by a "valid" convolution, so that exported ONNX graphs
    carry explicit pads (ONNX Runtime refuses SAME_UPPER auto-padding with dilation > 1).
    Where the direct op has no gradient kernel (`direct_dilated_gradients_supported()`), the
    backward pass goes through the SpaceToBatch formulation; the forward pass stays direct.

    Same arguments, weights and results as `keras.layers.Conv2D` (channels-last only); with
    dilation 1 it is exactly `Conv2D`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError(
                "DilatedConv2D supports data_format='channels_last' only. "
                f"Received: data_format={self.data_format!r}"
            )
        if max(self.dilation_rate) > 1 and max(self.strides) > 1:
            raise ValueError(
                "DilatedConv2D takes strides > 1 or dilation_rate > 1, not both. Received: "
                f"strides={self.strides}, dilation_rate={self.dilation_rate}"
            )

    def convolution_op(self, inputs, kernel):
        if max(self.dilation_rate) == 1:
            return super().convolution_op(inputs, kernel)
        rates = list(self.dilation_rate)
        if self.padding == "same":
            kernel, rates = _center_taps_only(inputs, kernel, rates)
            if max(rates) == 1:
                return tf.nn.conv2d(inputs, kernel, strides=1, padding="SAME")
            pads = []
            for size, rate in zip(kernel.shape[:2], rates, strict=True):
                total = rate * (size - 1)
                pads.append([total // 2, total - total // 2])
            inputs = tf.pad(inputs, [[0, 0], pads[0], pads[1], [0, 0]])
        if direct_dilated_gradients_supported(inputs.dtype.name):
            return _direct_conv(inputs, kernel, rates)
        return _direct_conv_with_portable_gradient(inputs, kernel, rates)
