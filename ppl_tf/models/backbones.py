"""Backbones of the segmenter: ResNet-50/101 from `keras.applications` and a tiny ResNet.

A backbone is a `keras.Model` from a normalized image (B, H, W, 3) to two feature maps: the
stride-4 low-level features of the DeepLabv3+ decoder and the stride-16 (or 8) features of ASPP.
"""

import keras

from ppl_tf.choices import BACKBONES, OUTPUT_STRIDES
from ppl_tf.layers import DilatedConv2D

# BatchNorm as in PyTorch, with whose defaults the paper's networks (and the numbers it reports)
# were trained. Keras' momentum is the weight of the old moving average, PyTorch's the weight of
# the new batch: PyTorch's 0.1 is Keras' 0.9 (Keras' own default, 0.99, averages over about ten
# times as many steps). The epsilon is PyTorch's 1e-5 (Keras' default: 1e-3).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# keras.applications ResNets were trained on BGR images minus this mean, without scaling. The
# first convolution's kernel is flipped to take RGB, so the model normalizes with RGB means.
RESNET_MEAN_RGB = (123.68, 116.779, 103.939)
RESNET_STD_RGB = (1.0, 1.0, 1.0)
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)

_RESNETS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
}


def normalization(backbone):
    """(mean, std) per RGB channel that `backbone` expects of [0, 255] inputs."""
    if backbone in _RESNETS:
        return RESNET_MEAN_RGB, RESNET_STD_RGB
    return IMAGENET_MEAN_RGB, IMAGENET_STD_RGB


def build_backbone(name, output_stride=16, weights=None):
    """Returns (backbone model, low-level channels, high-level channels)."""
    if name not in BACKBONES:
        raise ValueError(f"`backbone` must be one of {BACKBONES}. Received: backbone={name!r}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(
            f"`output_stride` must be one of {OUTPUT_STRIDES}. "
            f"Received: output_stride={output_stride!r}"
        )
    if name == "tiny":
        if weights is not None:
            raise ValueError(
                "The tiny backbone has no pretrained weights; use backbone_weights=None. "
                f"Received: backbone_weights={weights!r}"
            )
        return tiny_backbone(output_stride), 32, 128
    return resnet_backbone(name, output_stride, weights), 256, 2048


def _dilation_plan(output_stride):
    # Stage name -> dilation. The stage's first block keeps its weights but loses its stride.
    return {"conv5": 2} if output_stride == 16 else {"conv4": 2, "conv5": 4}


def resnet_backbone(name, output_stride=16, weights=None):
    """ResNet-50/101 of keras.applications, dilated to `output_stride`, BN set to PyTorch's.

    `weights` is None (random), "imagenet" (downloaded by Keras on first use) or the path of a
    weights file for the keras.applications model.
    """
    base = _RESNETS[name](include_top=False, weights=weights, input_shape=(None, None, 3))
    plan = _dilation_plan(output_stride)

    def clone_layer(layer):
        config = layer.get_config()
        stage = layer.name.split("_")[0]
        if isinstance(layer, keras.layers.BatchNormalization):
            config.update(momentum=BN_MOMENTUM, epsilon=BN_EPSILON)
            return keras.layers.BatchNormalization.from_config(config)
        if isinstance(layer, keras.layers.Conv2D) and stage in plan:
            if layer.name.endswith("_2_conv"):
                config.update(dilation_rate=(plan[stage], plan[stage]))
            config.update(strides=(1, 1))
            return DilatedConv2D.from_config(config)
        return layer.__class__.from_config(config)

    dilated = keras.models.clone_model(base, clone_function=clone_layer)
    dilated.set_weights(base.get_weights())
    if weights is not None:
        conv1 = dilated.get_layer("conv1_conv")
        conv1.kernel.assign(keras.ops.flip(conv1.kernel, axis=2))  # BGR -> RGB input
    outputs = [
        dilated.get_layer("conv2_block3_out").output,
        dilated.get_layer("conv5_block3_out").output,
    ]
    return keras.Model(dilated.inputs[0], outputs, name=f"{name}_backbone")


def conv_bn_relu(x, filters, kernel_size=1, strides=1, dilation=1, name=None, relu=True):
    """DilatedConv2D (no bias) + BatchNormalization (PyTorch's settings) + optional ReLU."""
    x = DilatedConv2D(
        filters,
        kernel_size,
        strides=strides,
        dilation_rate=dilation,
        padding="same",
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn"
    )(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _basic_block(x, filters, strides, dilation, name):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn_relu(x, filters, 1, strides, name=f"{name}_short", relu=False)
    x = conv_bn_relu(x, filters, 3, strides, dilation if strides == 1 else 1, name=f"{name}_a")
    x = conv_bn_relu(x, filters, 3, 1, dilation, name=f"{name}_b", relu=False)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def tiny_backbone(output_stride=16):
    """A small ResNet-like encoder (about 0.5M parameters) that trains in seconds on a CPU."""
    inputs = keras.Input((None, None, 3), name="image")
    x = conv_bn_relu(inputs, 24, 3, strides=2, name="stem1")
    x = conv_bn_relu(x, 32, 3, strides=2, name="stem2")
    low = _basic_block(x, 32, 1, 1, name="stage1")
    x = _basic_block(low, 64, 2, 1, name="stage2")
    if output_stride == 16:
        high = _basic_block(x, 128, 2, 1, name="stage3")
    else:
        high = _basic_block(x, 128, 1, 2, name="stage3")
    return keras.Model(inputs, [low, high], name="tiny_backbone")
