"""`build_segmenter`: DeepLabv3+ with n cascaded PPL stages and a final classifier (Fig. 3)."""

import keras

from ppl_tf.layers import Normalize, PPLStage, ResizeLike
from ppl_tf.layers._validation import check_int
from ppl_tf.models.backbones import build_backbone, normalization
from ppl_tf.models.deeplabv3_plus import encoder

_DEFAULT_CHANNELS = {"resnet50": (256, 48), "resnet101": (256, 48), "tiny": (64, 16)}


def build_segmenter(
    num_classes,
    backbone="resnet50",
    num_stages=2,
    memory_length=10,
    output_stride=16,
    backbone_weights="imagenet",
    use_attention=True,
    decoder_channels=None,
    aspp_rates=None,
    attention_output_gamma=0.1,
    rescale_heads=False,
    scaled_attention=False,
    name=None,
):
    """Builds the PPL segmenter of Fig. 3 as a functional `keras.Model`.

    float32 RGB images (B, H, W, 3) in [0, 255], of any size -> final logits (B, H, W, K).
    Normalization happens inside the model. The encoder is DeepLabv3+ (backbone, ASPP,
    decoder); its stride-4 features pass through `num_stages` PPL stages, each with its own
    classifier and memory bank, and then one more "final" classifier. Logits are upsampled
    bilinearly to the input size.

    Args:
        num_classes: K (at least 2).
        backbone: "resnet50", "resnet101" or "tiny" (a small encoder for CPUs and tests).
        num_stages: n, the number of PPL stages; 0 is the plain DeepLabv3+ baseline.
        memory_length: T, prototypes kept per class in every memory bank.
        output_stride: 16 or 8 (dilation in the last one or two ResNet stages).
        backbone_weights: "imagenet" (ResNets only; downloaded by Keras on first use), None
            (random initialization), or a path to a keras.applications weights file.
        use_attention: the pulling interaction; False keeps the stages' classifiers and banks
            but leaves the features unrefined ("push only" in Table 3).
        decoder_channels: C of the features f. Defaults to 256 (ResNets) or 64 (tiny).
        aspp_rates: the three dilation rates of ASPP. Defaults to DeepLabv3+'s (6, 12, 18)
            at output stride 16 and (12, 24, 36) at 8, made for ~512-px crops; small crops
            need smaller rates (`default_aspp_rates`).
        attention_output_gamma: initial BatchNormalization scale of every stage's attention
            output block g (see `PrototypeAttention`). Defaults to 0.1.
        rescale_heads: every classifier sees its features times 2^(i-1) (stage i's) and
            2^n (the final one). Eq. 3 averages, f' = (g(.) + f) / 2, so the final classifier
            sees f at a quarter of its scale after two stages; with Adam, whose steps have a
            fixed size in weight space, a linear classifier on features scaled by s moves its
            logits s times as fast, and its gradient into f is scaled by s too. The factors
            undo that for the classifiers only: what Eq. 1-3 compute is unchanged (Eq. 1 uses
            cosines; rho, psi and delta start with a linear map and BatchNormalization, which
            ignore the scale of their input), the classifiers' kernels just come out 2^i
            times smaller. Defaults to False (the plain Eq. 3 network).
        scaled_attention: every stage's attention scores times D^-0.5 (see
            `PrototypeAttention`). Defaults to False (Eq. 2 as printed).
        name: model name. Defaults to "ppl_<backbone>_n<num_stages>".

    Example:
    >>> model = build_segmenter(21, backbone="tiny", num_stages=2, backbone_weights=None)
    >>> model(keras.ops.zeros((1, 65, 97, 3))).shape
    TensorShape([1, 65, 97, 21])
    """
    check_int("num_classes", num_classes, minimum=2)
    check_int("num_stages", num_stages, minimum=0)
    check_int("memory_length", memory_length, minimum=1)
    backbone_model, _, _ = build_backbone(backbone, output_stride, backbone_weights)
    channels, low_level_channels = _DEFAULT_CHANNELS[backbone]
    if decoder_channels is not None:
        check_int("decoder_channels", decoder_channels, minimum=2)
        channels = decoder_channels
    mean, std = normalization(backbone)

    images = keras.Input((None, None, 3), name="images")
    x = Normalize(mean, std, name="normalize")(images)
    if aspp_rates is not None:
        if len(aspp_rates) != 3 or len(set(aspp_rates)) != 3:
            raise ValueError(
                f"`aspp_rates` must be three different rates. Received: aspp_rates={aspp_rates!r}"
            )
        for rate in aspp_rates:
            check_int("aspp_rates", rate, minimum=1)
    features = encoder(x, backbone_model, output_stride, channels, low_level_channels, aspp_rates)
    for i in range(1, num_stages + 1):
        _, features = PPLStage(
            num_classes,
            memory_length=memory_length,
            key_channels=channels // 2,
            use_attention=use_attention,
            attention_output_gamma=attention_output_gamma,
            classifier_input_scale=2.0 ** (i - 1) if rescale_heads else 1.0,
            scaled_attention=scaled_attention,
            name=f"ppl_stage_{i}",
        )(features)
    if rescale_heads and num_stages > 0:
        features = keras.layers.Rescaling(2.0**num_stages, name="final_classifier_scale")(features)
    logits = keras.layers.Dense(num_classes, name="final_classifier")(features)
    logits = ResizeLike(name="upsample_logits", dtype="float32")(logits, images)
    return keras.Model(images, logits, name=name or f"ppl_{backbone}_n{num_stages}")


def ppl_stages(model):
    """The PPL stages of a segmenter, in order."""
    stages = [layer for layer in model.layers if isinstance(layer, PPLStage)]
    return sorted(stages, key=lambda layer: int(layer.name.rsplit("_", 1)[-1]))


def build_training_view(model):
    """A model sharing `model`'s layers that returns what the trainer needs.

    Outputs a dict: "logits", the n+1 heads' logits at stride 4 (stages first, final last);
    "features", the n inputs of the stages' classifiers (f_{u,i} of Eq. 6).
    """
    stages = ppl_stages(model)
    head_logits = [stage.output[0] for stage in stages]
    head_logits.append(model.get_layer("final_classifier").output)
    features = [stage.input for stage in stages]
    return keras.Model(
        model.inputs[0],
        {"logits": head_logits, "features": features},
        name=f"{model.name}_heads",
    )
