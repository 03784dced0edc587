import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_layer_test

from ppl_tf.layers import ClassifierMemoryBank


@keras.saving.register_keras_serializable(package="ppl_tf_tests")
class ScoresAgainstBank(keras.layers.Layer):
    """Scores features against a bank's newest prototypes, as a PPL stage's attention reads
    them: a bank has no inputs of its own, so the layer test runs it inside this one."""

    def __init__(self, num_classes, length, channels, **kwargs):
        super().__init__(**kwargs)
        self.bank = ClassifierMemoryBank(num_classes, length, channels, name="memory")

    def call(self, features):
        return keras.ops.matmul(features, keras.ops.transpose(self.bank.read()[:, -1]))

    def get_config(self):
        bank = self.bank
        sizes = {"num_classes": bank.num_classes, "length": bank.length, "channels": bank.channels}
        return {**super().get_config(), **sizes}


def test_holds_last_t_pushes_in_order(rng):
    bank = ClassifierMemoryBank(num_classes=3, length=4, channels=5)
    first = rng.normal(size=(3, 5)).astype("float32")
    bank.reset(first)
    np.testing.assert_array_equal(bank.prototypes.numpy(), np.repeat(first[:, None], 4, axis=1))
    pushes = [rng.normal(size=(3, 5)).astype("float32") for _ in range(7)]
    for p in pushes:
        bank.push(p)
    expected = np.stack(pushes[-4:], axis=1)  # oldest at 0, newest at -1
    np.testing.assert_array_equal(bank.prototypes.numpy(), expected)


def test_fewer_pushes_than_length_keep_reset_value_in_front(rng):
    bank = ClassifierMemoryBank(2, 3, 4)
    first, second = rng.normal(size=(2, 2, 4)).astype("float32")
    bank.reset(first)
    bank.push(second)
    np.testing.assert_array_equal(bank.prototypes.numpy()[:, :2], np.stack([first, first], 1))
    np.testing.assert_array_equal(bank.prototypes.numpy()[:, 2], second)


def test_no_gradient_reaches_the_bank(rng):
    bank = ClassifierMemoryBank(2, 3, 4)
    bank.reset(rng.normal(size=(2, 4)).astype("float32"))
    assert bank.trainable_weights == []
    assert bank.non_trainable_weights == [bank.prototypes]
    with tf.GradientTape() as tape:
        tape.watch(bank.prototypes.value)
        loss = tf.reduce_sum(bank.read() ** 2)
    assert tape.gradient(loss, bank.prototypes.value) is None


def test_standard_layer_checks(tmp_path, rng):
    inputs = keras.Input((5,))
    scores = ScoresAgainstBank(3, 4, 5, name="scores")
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(scores(inputs)))
    bank = scores.bank
    bank.reset(rng.normal(size=(3, 5)).astype("float32"))
    for _ in range(6):
        bank.push(rng.normal(size=(3, 5)).astype("float32"))
    features = rng.normal(size=(4, 5)).astype("float32")
    # The training step moves the head and leaves the bank as it was: no gradient reaches it.
    restored = run_layer_test(bank, model, features, tmp_path, unchanged=[bank.prototypes])
    restored_bank = restored.get_layer("scores").bank
    assert restored_bank.get_config() == bank.get_config()


def test_identical_on_both_replicas_after_push():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        bank = ClassifierMemoryBank(2, 3, 4)
        bank.reset(np.ones((2, 4), "float32"))

    @tf.function
    def push():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            value = tf.fill((2, 4), tf.cast(ctx.replica_id_in_sync_group, tf.float32) + 7.0)
            bank.push(value)

        strategy.run(replica_fn)

    push()
    push()
    values = [v.numpy() for v in strategy.experimental_local_results(bank.prototypes.value)]
    assert len(values) == 2
    np.testing.assert_array_equal(values[0], values[1])
    np.testing.assert_array_equal(values[0][:, 0], np.ones((2, 4)))
    np.testing.assert_array_equal(values[0][:, 1:], np.full((2, 2, 4), 7.0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1, "length": 3, "channels": 4}, "num_classes=1"),
        ({"num_classes": 3, "length": 0, "channels": 4}, "length=0"),
        ({"num_classes": 3, "length": 2, "channels": -1}, "channels=-1"),
        ({"num_classes": 3.0, "length": 2, "channels": 4}, "num_classes=3.0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassifierMemoryBank(**kwargs)


def test_push_with_wrong_shape_names_the_shapes():
    bank = ClassifierMemoryBank(3, 2, 4)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        bank.push(np.zeros((3, 5), "float32"))
