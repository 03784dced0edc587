import keras
from keras import ops

from ppl_tf.layers._validation import check_int


@keras.saving.register_keras_serializable(package="ppl_tf")
class ClassifierMemoryBank(keras.layers.Layer):
    """Classifier memory bank CM (Sec. 3.1): a FIFO of the last T classifier kernels.

    The bank holds `prototypes` of shape `(num_classes, length, channels)`: for every class
    the weight vectors of the last `length` classifiers, oldest at index 0 and newest at
    index -1. It is state, not a parameter: the weight is non-trainable, changes only through
    `reset` and `push`, and is a constant to the gradient. Under a distribution strategy the
    weight aggregates as `"only_first_replica"`, so every replica holds the same bank.

    Args:
        num_classes: K, the number of classes (at least 2).
        length: T, the number of prototypes kept per class (at least 1).
        channels: C, the dimension of each prototype.

    The layer is not called on inputs: the PPL stage reads the bank with `read()`.

    Example:
    >>> bank = ClassifierMemoryBank(num_classes=3, length=4, channels=8)
    >>> bank.reset(keras.ops.ones((3, 8)))
    >>> bank.push(keras.ops.zeros((3, 8)))
    >>> bank.prototypes.shape
    (3, 4, 8)
    """

    def __init__(self, num_classes, length, channels, **kwargs):
        super().__init__(**kwargs)
        check_int("num_classes", num_classes, minimum=2)
        check_int("length", length, minimum=1)
        check_int("channels", channels, minimum=1)
        self.num_classes = num_classes
        self.length = length
        self.channels = channels
        self.prototypes = self.add_weight(
            shape=(num_classes, length, channels),
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="prototypes",
        )
        self.built = True

    def _check_kernel(self, kernel, name):
        shape = tuple(kernel.shape)
        if shape != (self.num_classes, self.channels):
            raise ValueError(
                f"`{name}` must have shape (num_classes, channels) = "
                f"({self.num_classes}, {self.channels}). Received: {name}.shape={shape}"
            )
        return ops.stop_gradient(ops.cast(kernel, self.prototypes.dtype))

    def reset(self, prototypes):
        """Fills all T slots with `prototypes` (K, C)."""
        p = self._check_kernel(prototypes, "prototypes")
        self.prototypes.assign(
            ops.broadcast_to(p[:, None, :], (self.num_classes, self.length, self.channels))
        )

    def push(self, prototypes):
        """Appends `prototypes` (K, C) as the newest slot and drops the oldest."""
        p = self._check_kernel(prototypes, "prototypes")
        self.prototypes.assign(ops.concatenate([self.prototypes[:, 1:, :], p[:, None, :]], axis=1))

    def read(self):
        """The prototypes (K, T, C) as a tensor that no gradient flows through."""
        return ops.stop_gradient(ops.convert_to_tensor(self.prototypes))

    def get_config(self):
        base_config = super().get_config()
        config = {
            "num_classes": self.num_classes,
            "length": self.length,
            "channels": self.channels,
        }
        return {**base_config, **config}
