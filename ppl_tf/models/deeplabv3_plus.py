"""The DeepLabv3+ encoder (backbone, ASPP, decoder) without its classifier: the paper's "encoder".

Built functionally from standard Keras layers plus `DilatedConv2D` and `ResizeLike`.
"""

import keras

from ppl_tf.layers import ResizeLike
from ppl_tf.models.backbones import conv_bn_relu


def aspp(x, channels=256, rates=(6, 12, 18)):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, image pooling, 1x1 projection."""
    branches = [conv_bn_relu(x, channels, 1, name="aspp_1x1")]
    for rate in rates:
        branches.append(conv_bn_relu(x, channels, 3, dilation=rate, name=f"aspp_rate{rate}"))
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = conv_bn_relu(pooled, channels, 1, name="aspp_pool_proj")
    branches.append(ResizeLike(name="aspp_pool_upsample")(pooled, x))
    x = keras.layers.Concatenate(name="aspp_concat")(branches)
    return conv_bn_relu(x, channels, 1, name="aspp_projection")


def decoder(high, low, channels=256, low_level_channels=48):
    """DeepLabv3+ decoder: stride-4 features f with `channels` channels."""
    low = conv_bn_relu(low, low_level_channels, 1, name="decoder_low_level")
    high = ResizeLike(name="decoder_upsample")(high, low)
    x = keras.layers.Concatenate(name="decoder_concat")([high, low])
    x = conv_bn_relu(x, channels, 3, name="decoder_conv1")
    return conv_bn_relu(x, channels, 3, name="decoder_conv2")


def default_aspp_rates(output_stride):
    """DeepLabv3+'s rates: (6, 12, 18) at output stride 16, doubled at 8. They were chosen for
    crops of about 512 px (a 32x32 or 64x64 feature map); on a small map a rate larger than
    the map leaves a dilated 3x3 branch with its center tap only (a 1x1 convolution)."""
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)


def encoder(images, backbone, output_stride, channels, low_level_channels, aspp_rates=None):
    """Normalized images -> stride-4 features f (B, H/4, W/4, channels)."""
    low, high = backbone(images)
    rates = tuple(aspp_rates) if aspp_rates else default_aspp_rates(output_stride)
    return decoder(aspp(high, channels, rates), low, channels, low_level_channels)
