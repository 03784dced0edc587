import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ppl_tf.distribute import cpu_mirrored_strategy
from ppl_tf.models import build_segmenter, ppl_stages
from ppl_tf.training import PPLTrainer, ema_alpha, use_synchronized_batchnorm

NUM_CLASSES = 3
SIZE = 32


def make_trainer(seed=0, num_stages=2, **kwargs):
    keras.utils.set_random_seed(seed)
    student = build_segmenter(
        NUM_CLASSES,
        "tiny",
        num_stages=num_stages,
        memory_length=4,
        backbone_weights=None,
        decoder_channels=16,
    )
    kwargs.setdefault("total_steps", 20)
    kwargs.setdefault("backbone_lr_multiplier", 1.0)
    trainer = PPLTrainer(student, **kwargs)
    trainer.compile(base_lr=0.05)
    return trainer


def square_batch(seed, batch=2, pad=0):
    """Color squares on gray: class 1 = red square, class 2 = blue square, 0 = background."""
    rng = np.random.default_rng(seed)

    def scenes(n):
        images = np.full((n, SIZE, SIZE, 3), 120.0, np.float32) + rng.normal(
            0, 10, (n, SIZE, SIZE, 3)
        )
        masks = np.zeros((n, SIZE, SIZE), np.int32)
        for i in range(n):
            for cls, color in ((1, (230, 30, 30)), (2, (30, 30, 230))):
                y, x = rng.integers(0, SIZE - 12, 2)
                images[i, y : y + 12, x : x + 12] = color
                masks[i, y : y + 12, x : x + 12] = cls
        return images.astype(np.float32), masks

    labeled_images, labeled_masks = scenes(batch)
    weak, unlabeled_masks = scenes(batch)
    strong = np.clip(weak * 0.8 + 20, 0, 255).astype(np.float32)
    valid = np.ones((batch, SIZE, SIZE), bool)
    if pad:  # the bottom rows padded, as weak_geometry pads a downscaled image
        valid[:, SIZE - pad :] = False
        weak[:, SIZE - pad :] = strong[:, SIZE - pad :] = 0.0
        unlabeled_masks[:, SIZE - pad :] = 255
    out = {
        "labeled_images": labeled_images,
        "labeled_masks": labeled_masks,
        "unlabeled_weak": weak,
        "unlabeled_strong": strong,
        "unlabeled_valid": valid,
        "unlabeled_masks": unlabeled_masks,
    }
    return {k: tf.constant(v) for k, v in out.items()}


def weights_of(model):
    return [w.numpy().copy() for w in model.weights]


def test_alpha_schedule_values():
    assert float(ema_alpha(0, 100)) == pytest.approx(0.99)
    assert float(ema_alpha(50, 100)) == pytest.approx(0.995)
    assert float(ema_alpha(100, 100)) == pytest.approx(1.0)
    assert float(ema_alpha(25, 100)) == pytest.approx(0.99 + 0.01 * (1 - math.cos(math.pi / 4)) / 2)
    assert float(ema_alpha(500, 100)) == pytest.approx(1.0)
    # a schedule that stops short of 1 keeps the teacher moving
    assert float(ema_alpha(100, 100, 0.99, 0.999)) == pytest.approx(0.999)
    assert float(ema_alpha(50, 100, 0.99, 0.999)) == pytest.approx(0.9945)
    assert float(ema_alpha(70, 100, 0.99, 0.99)) == pytest.approx(0.99)
    with pytest.raises(ValueError, match="ema_start.*ema_end"):
        make_trainer(ema_start=0.999, ema_end=0.99)


def test_teacher_is_frozen_copy_and_not_in_optimizer():
    trainer = make_trainer()
    assert trainer.teacher.trainable_weights == []
    assert len(trainer.trainable_weights) == len(trainer.student.trainable_weights)
    for t, s in zip(trainer.teacher.weights, trainer.student.weights, strict=True):
        np.testing.assert_array_equal(t.numpy(), s.numpy())


def test_one_ema_update_equals_the_formula_on_every_teacher_weight():
    trainer = make_trainer()
    rng = np.random.default_rng(3)
    bank_ids = {id(s.memory.prototypes) for s in ppl_stages(trainer.teacher)}
    for w in trainer.teacher.weights:  # make teacher != student, BN statistics included
        if id(w) not in bank_ids:
            w.assign(w.numpy() + rng.normal(0, 0.1, w.shape).astype("float32"))
    teacher_before = weights_of(trainer.teacher)
    trainer.train_step(square_batch(0))
    alpha = float(ema_alpha(1, trainer.total_steps))
    checked = 0
    for t_before, t, s in zip(
        teacher_before, trainer.teacher.weights, trainer.student.weights, strict=True
    ):
        if id(t) in bank_ids:
            continue
        np.testing.assert_allclose(
            t.numpy(), alpha * t_before + (1 - alpha) * s.numpy(), rtol=1e-5, atol=1e-6
        )
        checked += 1
    moving = [w for w in trainer.teacher.weights if "moving" in w.name]
    assert moving and checked == len(trainer.teacher.weights) - len(bank_ids)
    # Banks: each network pushed its own (teacher: EMA) classifier.
    for network in (trainer.student, trainer.teacher):
        for stage in ppl_stages(network):
            np.testing.assert_array_equal(
                stage.memory.prototypes.numpy()[:, -1], stage.classifier.kernel.numpy().T
            )


def test_pseudo_label_mask_is_max_prob_above_tau():
    trainer = make_trainer()
    batch = square_batch(1)
    probs = tf.nn.softmax(trainer.teacher(batch["unlabeled_weak"]), -1).numpy()
    trainer.tau = float(np.median(probs.max(-1)))  # so that the threshold splits this batch
    labels, mask = trainer.pseudo_labels(batch)
    np.testing.assert_array_equal(labels.numpy(), probs.argmax(-1))
    np.testing.assert_array_equal(mask.numpy(), (probs.max(-1) > trainer.tau).astype("float32"))
    assert 0.3 < mask.numpy().mean() < 0.7


def test_padded_pixels_get_no_pseudo_label_and_do_not_count():
    trainer = make_trainer(tau=0.0)  # every real pixel passes
    batch = square_batch(1, pad=8)
    _, mask = trainer.pseudo_labels(batch)
    expected = batch["unlabeled_valid"].numpy().astype("float32")
    np.testing.assert_array_equal(mask.numpy(), expected)
    logs = trainer.train_step(batch)
    assert float(logs["mask_ratio"]) == pytest.approx(1.0)  # a share of the real pixels
    # without the map, the black padding would be pseudo-labeled with everything else
    unpadded = dict(batch, unlabeled_valid=tf.ones_like(batch["unlabeled_valid"]))
    _, mask_unpadded = trainer.pseudo_labels(unpadded)
    assert mask_unpadded.numpy()[~batch["unlabeled_valid"].numpy()].min() == 1.0


def test_cutmix_mixes_pseudo_labels_and_padding_like_the_strong_view():
    trainer = make_trainer(tau=0.0)
    batch = square_batch(2, batch=3, pad=6)
    box = np.zeros((3, SIZE, SIZE), bool)
    box[0, :, :10] = True  # image 0 takes image 2's left columns (its CutMix partner)
    box[1, SIZE - 8 :, :] = True  # image 1 takes image 0's bottom rows, padding included
    mixed = dict(batch, unlabeled_cutmix_box=tf.constant(box))
    labels, mask = trainer.pseudo_labels(mixed)
    plain_labels, plain_mask = trainer.pseudo_labels(batch)
    plain_labels, plain_mask = plain_labels.numpy(), plain_mask.numpy()
    partner = np.roll(np.arange(3), 1)
    expected_labels = np.where(box, plain_labels[partner], plain_labels)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    np.testing.assert_array_equal(mask.numpy(), np.where(box, plain_mask[partner], plain_mask))


@pytest.mark.parametrize(
    "kwargs, present, absent",
    [
        (
            {},
            [
                "loss_labeled",
                "loss_unlabeled_ce",
                "loss_contrast",
                "loss_contrast_1",
                "loss_contrast_2",
            ],
            [],
        ),
        (
            {"use_push": False},
            ["loss_labeled", "loss_unlabeled_ce"],
            ["loss_contrast", "loss_contrast_1"],
        ),
        (
            {"use_unlabeled": False},
            ["loss_labeled"],
            ["loss_unlabeled_ce", "loss_contrast", "mask_ratio"],
        ),
        ({"num_stages": 0}, ["loss_labeled", "loss_unlabeled_ce"], ["loss_contrast"]),
    ],
)
def test_loss_terms_on_and_off(kwargs, present, absent):
    trainer = make_trainer(tau=0.0, **kwargs)
    logs = trainer.train_step(square_batch(2))
    for name in present:
        assert float(logs[name]) > 0, name
    for name in absent:
        assert name not in logs, name
    expected = float(logs["loss_labeled"])
    if "loss_unlabeled_ce" in present:
        expected += 0.1 * (float(logs["loss_unlabeled_ce"]) + float(logs.get("loss_contrast", 0.0)))
    assert float(logs["loss"]) == pytest.approx(expected, rel=1e-5)


def test_contrast_weight_scales_the_contrastive_term_only():
    logs = make_trainer(tau=0.0, contrast_weight=0.25).train_step(square_batch(2))
    unlabeled = float(logs["loss_unlabeled_ce"]) + 0.25 * float(logs["loss_contrast"])
    expected = float(logs["loss_labeled"]) + 0.1 * unlabeled
    assert float(logs["loss_contrast"]) > 0
    assert float(logs["loss"]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="contrast_weight"):
        make_trainer(contrast_weight=-1.0)


def test_warmup_student_sees_the_labeled_images_alone():
    # During warm-up the step must equal a supervised-only step: same weights, BatchNorm
    # statistics included (before, the strong unlabeled views went through BatchNorm).
    batches = [square_batch(30 + i) for i in range(2)]
    warm = make_trainer(seed=4, tau=0.0, warmup_steps=2)
    supervised = make_trainer(seed=4, use_unlabeled=False)
    step_warm, step_supervised = tf.function(warm.train_step), tf.function(supervised.train_step)
    for b in batches:
        step_warm(b)
        step_supervised(b)
    for a, b in zip(warm.student.weights, supervised.student.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4, err_msg=a.path)
    # after warm-up the unlabeled images are in the student's batch again
    step_warm(batches[0])
    step_supervised(batches[0])
    # (the attention's psi and delta normalize prototypes, not images: those stay equal)
    images_bn = [
        i
        for i, w in enumerate(warm.student.weights)
        if "moving_mean" in w.path and "attention" not in w.path
    ]
    assert images_bn
    for i in images_bn:
        a, b = warm.student.weights[i].numpy(), supervised.student.weights[i].numpy()
        assert not np.allclose(a, b), warm.student.weights[i].path


def _fit_recording_variants(trainer, data):
    variants = []
    spy = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: variants.append(trainer._warmup_variant)
    )
    history = trainer.fit(data, epochs=1, verbose=0, callbacks=[spy])
    return variants, history


def _stacked_batches(count):
    batches = [square_batch(40 + i) for i in range(count)]
    return tf.data.Dataset.from_tensor_slices(
        {key: tf.stack([b[key] for b in batches]) for key in batches[0]}
    )


def test_fit_skips_the_strong_views_in_warmup_with_the_same_result():
    # fit's warm-up function leaves the strong views out (they contribute nothing there): the
    # same student, teacher, BatchNorm statistics, banks and logs as Keras' one function,
    # which runs them. Two steps: on these 32-px batches of 2, BatchNorm over a 2x2 map
    # amplifies the round-off of two different graphs (1e-8 here) chaotically after more.
    results = []
    for split in (True, False):
        trainer = make_trainer(seed=5, tau=0.0, warmup_steps=3)
        if not split:  # Keras' own single function (what every step ran before)
            keras.Model.make_train_function(trainer, force=True)
            trainer.make_train_function = lambda force=False, t=trainer: t.train_function
        variants, history = _fit_recording_variants(trainer, _stacked_batches(2))
        assert variants == [split, split]
        results.append((weights_of(trainer.student) + weights_of(trainer.teacher), history))
    (weights_a, history_a), (weights_b, history_b) = results
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for name, values in history_b.history.items():
        np.testing.assert_allclose(history_a.history[name], values, rtol=1e-5, atol=1e-6)


def test_fit_warmup_is_labeled_only_with_joint_batchnorm_too():
    # One BatchNorm batch would put the strong views into the labeled images' statistics;
    # fit's warm-up function leaves them out: the student equals a supervised-only one.
    students = []
    for kwargs in ({"joint_batchnorm": True, "warmup_steps": 3}, {"use_unlabeled": False}):
        trainer = make_trainer(seed=6, tau=0.0, **kwargs)
        _fit_recording_variants(trainer, _stacked_batches(2))
        students.append(weights_of(trainer.student))
    for a, b in zip(*students, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "steps_per_execution, expected", [(1, [True] * 3 + [False] * 2), (2, [True, False, False])]
)
def test_warmup_function_runs_only_where_every_step_of_a_call_is_warmup(
    steps_per_execution, expected
):
    trainer = make_trainer(tau=0.0, warmup_steps=3)
    trainer.compile(base_lr=0.05, steps_per_execution=steps_per_execution)
    variants, history = _fit_recording_variants(trainer, _stacked_batches(5))
    assert variants == expected
    assert int(trainer.optimizer.iterations.numpy()) == 5
    assert history.history["loss_contrast"][-1] > 0  # the last steps had the strong views


def test_warmup_steps_have_no_unlabeled_terms():
    trainer = make_trainer(tau=0.0, warmup_steps=2)
    for step in range(3):
        trainer.reset_metrics()
        logs = trainer.train_step(square_batch(step))
        if step < 2:
            assert float(logs["loss_unlabeled_ce"]) == 0.0 and float(logs["loss_contrast"]) == 0.0
            assert float(logs["loss"]) == pytest.approx(float(logs["loss_labeled"]), rel=1e-6)
        else:
            assert float(logs["loss_unlabeled_ce"]) > 0 and float(logs["loss_contrast"]) > 0


def test_unlabeled_ground_truth_does_not_leak_into_the_update():
    batch = square_batch(4)
    other = dict(batch, unlabeled_masks=tf.zeros_like(batch["unlabeled_masks"]))
    results = []
    for b in (batch, other):
        trainer = make_trainer(seed=7, tau=0.3)
        trainer.train_step(b)
        results.append(weights_of(trainer.student))
    for a, b in zip(*results, strict=True):
        assert a.tobytes() == b.tobytes()


def test_noise_study_uses_ground_truth_with_the_given_noise():
    trainer = make_trainer(noise_ratio=0.4)
    batch = square_batch(5)
    labels, mask = trainer.pseudo_labels(batch)
    truth = batch["unlabeled_masks"].numpy()
    assert mask.numpy().min() == 1.0  # every valid ground-truth pixel counts
    changed = labels.numpy() != truth
    # 40% of pixels get the 2nd or 3rd class; some of those happen to equal the truth.
    assert 0.2 < changed.mean() <= 0.4
    probs = tf.nn.softmax(trainer.teacher(batch["unlabeled_weak"]), -1).numpy()
    ranked = np.argsort(-probs, axis=-1)
    second_or_third = (labels.numpy() == ranked[..., 1]) | (labels.numpy() == ranked[..., 2])
    assert np.all(second_or_third[changed])


@pytest.mark.slow
def test_learning_lowers_every_loss_and_raises_miou():
    # Targets are the unlabeled ground truth (the noise study at 0%): in 136 steps the EMA
    # teacher is still background-only, and the student must not fit its pseudo-labels on
    # the strong views while it learns the squares on the labeled ones. (With one shared
    # BatchNorm batch it did, by telling the dimmer strong views apart through the batch
    # statistics: a cheat the separate batches remove.)
    trainer = make_trainer(tau=0.0, total_steps=150, unsupervised_weight=0.5, noise_ratio=0.0)
    batches = [square_batch(100 + i, batch=4) for i in range(8)]
    val = [(b["unlabeled_weak"], b["unlabeled_masks"]) for b in batches[:2]]

    # Compiled as fit() compiles them: eagerly the 136 steps took minutes on 2 cores.
    train_step, test_step = tf.function(trainer.train_step), tf.function(trainer.test_step)

    def epoch_logs(epoch_batches):
        trainer.reset_metrics()
        for b in epoch_batches:
            logs = train_step(b)
        return {k: float(v) for k, v in logs.items()}

    def miou():
        trainer.reset_metrics()
        for images, masks in val:
            logs = test_step((images, masks))
        return float(logs["student_miou"])

    miou_before = miou()
    first = epoch_logs(batches)
    for _ in range(16):
        last = epoch_logs(batches)
    for name in ("loss", "loss_labeled", "loss_unlabeled_ce", "loss_contrast"):
        assert last[name] < first[name], (name, first[name], last[name])
    assert miou() > miou_before + 0.15


def test_resume_gives_the_same_steps(tmp_path):
    batches = [square_batch(10 + i) for i in range(4)]
    reference = make_trainer(seed=1, tau=0.3)
    for b in batches[:2]:
        reference.train_step(b)
    reference.save_weights(tmp_path / "ckpt.weights.h5")
    expected_logs = []
    for b in batches[2:]:
        reference.reset_metrics()
        expected_logs.append(reference.train_step(b))
    expected_weights = weights_of(reference)

    resumed = make_trainer(seed=99, tau=0.3)  # other seed: everything must come from the file
    resumed.load_weights(tmp_path / "ckpt.weights.h5")
    assert int(resumed.optimizer.iterations) == 2
    logs = []
    for b in batches[2:]:
        resumed.reset_metrics()
        logs.append(resumed.train_step(b))
    for a, b in zip(weights_of(resumed), expected_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert float(logs[-1]["loss_labeled"]) == pytest.approx(
        float(expected_logs[-1]["loss_labeled"]), rel=1e-5
    )
    for s_a, s_b in zip(ppl_stages(resumed.teacher), ppl_stages(reference.teacher), strict=True):
        np.testing.assert_array_equal(s_a.memory.prototypes.numpy(), s_b.memory.prototypes.numpy())


def test_mirrored_step_equals_single_device_step():
    # The single-device reference uses the same BatchNormalization formula as the replicas:
    # Keras' synchronized BN computes var = E[x^2] - E[x]^2, whose round-off alone moves some
    # kernels by ~4e-4 (relative) after one step compared with the two-pass formula.
    batch = square_batch(20, batch=4)
    single = make_trainer(seed=5, tau=0.3)
    use_synchronized_batchnorm(single.student)
    use_synchronized_batchnorm(single.teacher)
    single.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)

    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    strategy = cpu_mirrored_strategy(devices)  # see ppl_tf.distribute on collectives
    with strategy.scope():
        mirrored = make_trainer(seed=5, tau=0.3)
    bn = [
        layer
        for layer in mirrored.student._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bn and all(layer.synchronized for layer in bn)
    mirrored.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)

    worst, worst_name = 0.0, None
    for a, b in zip(mirrored.weights, single.weights, strict=True):
        replicas = [v.numpy() for v in strategy.experimental_local_results(a.value)]
        for r in replicas[1:]:
            np.testing.assert_array_equal(r, replicas[0])
        scale = max(np.abs(b.numpy()).max(), 1.0)
        difference = np.abs(replicas[0] - b.numpy()).max() / scale
        if difference > worst:
            worst, worst_name = difference, b.path
    assert worst < 1e-5, (worst, worst_name)


def test_mixed_bfloat16_step_keeps_float32_losses_and_weights():
    batch = square_batch(9)
    logs = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            trainer = make_trainer(seed=3, tau=0.0)
            logs[policy] = trainer.train_step(batch)
            logs[policy] = trainer.train_step(batch)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        if policy == "mixed_bfloat16":
            assert trainer.student.compute_dtype == "bfloat16"
            assert {w.dtype for w in trainer.student.weights} == {"float32"}
            assert {w.dtype for w in trainer.teacher.weights} == {"float32"}
            # the body computes in bfloat16; the final resize hands float32 logits to the losses
            body = keras.Model(
                trainer.student.input, trainer.student.get_layer("upsample_logits").input[0]
            )
            assert body(batch["labeled_images"]).dtype == tf.bfloat16
            assert trainer.student(batch["labeled_images"]).dtype == tf.float32
    names = ("loss", "loss_labeled", "loss_unlabeled_ce", "loss_contrast")
    for name in names:
        value = logs["mixed_bfloat16"][name]
        assert value.dtype == tf.float32 and np.isfinite(float(value)), name
        # bfloat16 keeps 8 bits of mantissa: the same step agrees to a few percent
        assert float(value) == pytest.approx(float(logs["float32"][name]), rel=0.05), name


def test_adamw_decays_kernels_decoupled_and_not_bn_or_biases():
    # Two AdamW steps from the same weights and batch, with and without weight decay: Adam's
    # update is the same (no decay in the gradient), so they differ by lr * wd * w exactly on
    # decaying weights and not at all on BatchNorm parameters and biases.
    batch = square_batch(7)
    trainers = {}
    for wd in (0.0, 0.5):
        keras.utils.set_random_seed(2)
        student = build_segmenter(
            NUM_CLASSES,
            "tiny",
            num_stages=1,
            memory_length=2,
            backbone_weights=None,
            decoder_channels=16,
        )
        trainer = PPLTrainer(student, total_steps=20, weight_decay=wd, backbone_lr_multiplier=1.0)
        trainer.compile(optimizer="adamw", base_lr=0.01)
        assert trainer._coupled_weight_decay == 0.0
        before = [v.numpy().copy() for v in trainer.student.trainable_weights]
        trainer.train_step(batch)
        trainers[wd] = trainer
    lr = 0.01  # the poly schedule at step 0
    checked = {"kernel": 0, "other": 0}
    for v0, v1, w, decays in zip(
        trainers[0.0].student.trainable_weights,
        trainers[0.5].student.trainable_weights,
        before,
        trainers[0.5]._decays,
        strict=True,
    ):
        difference = v1.numpy() - v0.numpy()
        if decays:
            np.testing.assert_allclose(difference, -lr * 0.5 * w, rtol=1e-3, atol=1e-7)
            checked["kernel"] += 1
        else:
            np.testing.assert_array_equal(difference, 0.0)
            checked["other"] += 1
    assert checked["kernel"] > 10 and checked["other"] > 10


def test_class_histograms_count_labeled_and_passing_pseudo_labels():
    trainer = make_trainer(tau=0.0)
    batch = square_batch(8, pad=4)
    trainer.reset_metrics()
    trainer.train_step(batch)
    labeled = np.bincount(batch["labeled_masks"].numpy().ravel(), minlength=NUM_CLASSES)
    np.testing.assert_allclose(trainer.labeled_classes.counts().numpy(), labeled)
    np.testing.assert_allclose(trainer.labeled_classes.result().numpy(), labeled / labeled.sum())
    pseudo, mask = trainer.pseudo_labels(batch)  # the step did not change the teacher's argmax
    counted = np.bincount(pseudo.numpy()[mask.numpy() > 0], minlength=NUM_CLASSES)
    assert trainer.pseudo_classes.counts().numpy().sum() == counted.sum() == 2 * SIZE * (SIZE - 4)
    trainer.reset_metrics()
    assert trainer.pseudo_classes.counts().numpy().sum() == 0
