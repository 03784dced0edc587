import keras
from keras import ops

from ppl_tf.layers._validation import check_int
from ppl_tf.layers.memory_bank import ClassifierMemoryBank
from ppl_tf.layers.prototype_attention import PrototypeAttention


@keras.saving.register_keras_serializable(package="ppl_tf")
class PPLStage(keras.layers.Layer):
    """One Push-and-Pull stage (Fig. 2a): classifier, classifier memory bank, attention.

    The stage classifies its input features (the stage's logits, trained with cross-entropy),
    keeps the history of its classifier kernel in a `ClassifierMemoryBank` (the prototypes of
    the pushing loss, Eq. 1, and of the pulling attention), and refines the features by
    attending to those prototypes (Eq. 2-3). The refined features feed the next stage.

    The bank is filled with the initial classifier kernel when the stage is built, so no slot
    is ever zero; the trainer calls `push_classifier()` after every optimizer step.

    Args:
        num_classes: K.
        memory_length: T, prototypes kept per class. Defaults to 10 (Table 5a).
        key_channels: D of the attention. Defaults to 128 (C / 2 for C = 256).
        use_attention: the pulling interaction; with `False` the features pass through
            unchanged (the "push only" ablation of Table 3). Defaults to `True`.
        bn_momentum: BatchNormalization momentum of the attention blocks. Defaults to 0.9.
        attention_output_gamma: initial BatchNormalization scale of the attention's output
            block g (`PrototypeAttention`'s `output_gamma`). Defaults to 0.1.
        scaled_attention: the attention's scores times D^-0.5 (`PrototypeAttention`'s
            `scale_scores`). Defaults to False.
        classifier_input_scale: the classifier sees `features * classifier_input_scale`.
            Defaults to 1.0. `build_segmenter(rescale_heads=True)` sets 2^(i-1) at stage i to
            undo the halving of Eq. 3's average for the classifier (see there); the bank, the
            attention and Eq. 1 are unchanged by it (cosines and BatchNorm ignore the scale).

    Call arguments:
        features: (B, H, W, C) features: the input of this stage's classifier.
        training: passed to the attention's BatchNormalization layers.

    Returns:
        `(logits, refined_features)`: (B, H, W, K) and (B, H, W, C).
    """

    def __init__(
        self,
        num_classes,
        memory_length=10,
        key_channels=128,
        use_attention=True,
        bn_momentum=0.9,
        attention_output_gamma=0.1,
        classifier_input_scale=1.0,
        scaled_attention=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("num_classes", num_classes, minimum=2)
        check_int("memory_length", memory_length, minimum=1)
        check_int("key_channels", key_channels, minimum=1)
        self.num_classes = num_classes
        self.memory_length = memory_length
        self.key_channels = key_channels
        self.use_attention = use_attention
        self.bn_momentum = bn_momentum
        self.attention_output_gamma = float(attention_output_gamma)
        self.scaled_attention = bool(scaled_attention)
        if not classifier_input_scale > 0:
            raise ValueError(
                "`classifier_input_scale` must be > 0. "
                f"Received: classifier_input_scale={classifier_input_scale}"
            )
        self.classifier_input_scale = float(classifier_input_scale)

        # === Layers ===
        self.classifier = keras.layers.Dense(num_classes, name="classifier")
        self.attention = (
            PrototypeAttention(
                key_channels,
                bn_momentum=bn_momentum,
                output_gamma=attention_output_gamma,
                scale_scores=scaled_attention,
                name="attention",
            )
            if use_attention
            else None
        )
        self.memory = None

    def build(self, features_shape):
        features_shape = tuple(features_shape)
        if len(features_shape) < 2 or features_shape[-1] is None:
            raise ValueError(
                "`features` must have rank >= 2 and a known channel count. "
                f"Received: features.shape={features_shape}"
            )
        channels = features_shape[-1]
        self.classifier.build(features_shape)
        self.memory = ClassifierMemoryBank(
            self.num_classes, self.memory_length, channels, name="memory"
        )
        self.memory.reset(self.classifier_prototypes())
        if self.attention is not None:
            self.attention.build(features_shape, self.memory.prototypes.shape)

    def classifier_prototypes(self):
        """The classifier kernel as K prototypes: (K, C)."""
        return ops.transpose(self.classifier.kernel)

    def push_classifier(self):
        """Pushes the current classifier kernel into the memory bank."""
        self.memory.push(self.classifier_prototypes())

    def call(self, features, training=None):
        scale = self.classifier_input_scale
        logits = self.classifier(features if scale == 1.0 else features * scale)
        if self.attention is None:
            return logits, features
        refined = self.attention(features, self.memory.read(), training=training)
        return logits, refined

    def compute_output_shape(self, features_shape):
        features_shape = tuple(features_shape)
        return features_shape[:-1] + (self.num_classes,), features_shape

    def get_config(self):
        base_config = super().get_config()
        config = {
            "num_classes": self.num_classes,
            "memory_length": self.memory_length,
            "key_channels": self.key_channels,
            "use_attention": self.use_attention,
            "bn_momentum": self.bn_momentum,
            "attention_output_gamma": self.attention_output_gamma,
            "scaled_attention": self.scaled_attention,
            "classifier_input_scale": self.classifier_input_scale,
        }
        return {**base_config, **config}
