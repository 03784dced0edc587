"""`PPLTrainer`: the semi-supervised teacher-student trainer of PPL (Sec. 3.3, Eq. 4-7).

One training step, in the paper's order:
  unpack -> teacher on the weak view -> pseudo-labels and mask (max prob > tau) -> student on
  labeled + strong views under the tape -> L = L_l + lambda * L_u (Eq. 5-7, L_u with Eq. 1 per
  stage) -> SGD update -> EMA teacher (Eq. 4) -> memory bank pushes -> metrics.

Distribution: every loss is a sum divided by a count all-reduced over replicas, so the sum of
the replicas' gradients (Keras' optimizer all-reduces them) is the gradient of the global mean.
"""

import math

import keras
import tensorflow as tf

from ppl_tf.losses import (
    IGNORE_LABEL,
    masked_cross_entropy,
    multi_prototype_contrastive_loss,
    ohem_cross_entropy,
)
from ppl_tf.metrics import ConfusionMatrixIoU
from ppl_tf.models import build_training_view, ppl_stages

NO_DECAY_NAMES = ("bias", "gamma", "beta")


def ema_alpha(step, total_steps, start=0.99):
    """alpha = 0.99 + 0.01 * (1 - cos(pi * step / total_steps)) / 2: 0.99 -> 1.0."""
    progress = tf.minimum(tf.cast(step, tf.float32) / float(max(total_steps, 1)), 1.0)
    return start + (1.0 - start) * (1.0 - tf.cos(math.pi * progress)) / 2.0


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(base_lr, total_steps, momentum=0.9, power=0.9, name="sgd"):
    """The poly learning rate (1 - step / total_steps) ** power with SGD + momentum (the
    paper's) or AdamW (for backbones trained from scratch, like the demo's tiny one).

    Weight decay is not part of either: the trainer adds it to the gradients (coupled L2).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}. Received: {name!r}")
    schedule = keras.optimizers.schedules.PolynomialDecay(
        base_lr, decay_steps=max(total_steps, 1), end_learning_rate=0.0, power=power
    )
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.0)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=momentum)


def _all_reduce_sum(value):
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _resize_like(x, reference, method):
    return tf.image.resize(x, tf.shape(reference)[1:3], method=method)


def _downsample_labels(labels, size):
    return tf.cast(tf.image.resize(labels[..., None], size, method="nearest")[..., 0], labels.dtype)


def use_synchronized_batchnorm(model, enabled=True):
    """Makes every BatchNormalization layer of `model` compute statistics over all replicas."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = enabled


@keras.saving.register_keras_serializable(package="ppl_tf")
class PPLTrainer(keras.Model):
    """Teacher-student trainer with PPL's pushing and pulling losses.

    Holds the student (a `build_segmenter` model) and its EMA teacher (same architecture).
    `fit` takes the dict batches of `ppl_tf.data.semi_supervised_dataset`; `evaluate` takes
    (images, masks) batches and reports the mIoU of teacher and student.

    Args:
        student: the segmenter to train.
        total_steps: optimizer steps of the whole run (poly LR and alpha schedule).
        warmup_steps: first steps with labeled data only (banks and EMA still run).
        tau: pseudo-label confidence threshold. Defaults to 0.8.
        unsupervised_weight: lambda of Eq. 7. Defaults to 0.1 (VOC; 0.5 for Cityscapes).
        gamma, margin: scale and margin of Eq. 1. Default to 32 and 0.25.
        use_push: the multi-prototype contrastive loss (pushing); `use_attention` of the
            segmenter is the pulling interaction.
        use_unlabeled: False trains on labeled data only (the "supervised-only" baseline).
        weight_decay: L2 weight decay on kernels (not on BN and biases). Defaults to 1e-4.
        backbone_lr_multiplier: learning-rate factor of the backbone. Defaults to 0.1.
        ohem: OHEM cross-entropy for labeled images (Cityscapes); threshold and min_kept.
        noise_ratio: the Appendix-A noise study: pseudo-labels are `unlabeled_masks` with
            this fraction of pixels replaced by the teacher's 2nd or 3rd most likely class.
        teacher: an existing teacher (when restoring); by default a copy of the student.
    """

    def __init__(
        self,
        student,
        total_steps,
        warmup_steps=0,
        tau=0.8,
        unsupervised_weight=0.1,
        gamma=32.0,
        margin=0.25,
        use_push=True,
        use_unlabeled=True,
        weight_decay=1e-4,
        backbone_lr_multiplier=0.1,
        ohem=False,
        ohem_threshold=0.7,
        ohem_min_kept=100_000,
        noise_ratio=None,
        teacher=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if total_steps < 1:
            raise ValueError(f"`total_steps` must be >= 1. Received: total_steps={total_steps}")
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"`tau` must be in [0, 1). Received: tau={tau}")
        if noise_ratio is not None and not 0.0 <= noise_ratio <= 1.0:
            raise ValueError(
                f"`noise_ratio` must be in [0, 1]. Received: noise_ratio={noise_ratio}"
            )
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.tau = float(tau)
        self.unsupervised_weight = float(unsupervised_weight)
        self.gamma = float(gamma)
        self.margin = float(margin)
        self.use_push = bool(use_push)
        self.use_unlabeled = bool(use_unlabeled)
        self.weight_decay = float(weight_decay)
        self.backbone_lr_multiplier = float(backbone_lr_multiplier)
        self.ohem = bool(ohem)
        self.ohem_threshold = float(ohem_threshold)
        self.ohem_min_kept = int(ohem_min_kept)
        self.noise_ratio = noise_ratio

        # === Networks ===
        self.student = student
        if teacher is None:
            teacher = keras.models.clone_model(student)
            teacher.set_weights(student.get_weights())
        teacher.trainable = False
        self.teacher = teacher
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            for network in (student, teacher):
                use_synchronized_batchnorm(network)
        self.num_classes = int(student.output.shape[-1])
        # Views that share the networks' layers; kept out of Keras' tracking so that weights
        # are saved once, under `student` and `teacher`.
        object.__setattr__(self, "_student_heads", build_training_view(student))
        self._pair_ema_weights()
        self._group_variables()

        # === Metrics ===
        names = ["loss", "loss_labeled", "loss_unlabeled_ce", "loss_contrast", "mask_ratio",
                 "ema_alpha", "lr_head", "lr_backbone"]  # fmt: skip
        names += [f"loss_contrast_{i + 1}" for i in range(len(self.student_stages))]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.pseudo_iou = ConfusionMatrixIoU(self.num_classes, name="pseudo_miou")
        self.pseudo_coverage = ConfusionMatrixIoU(self.num_classes + 1, name="pseudo_recall")
        self.student_iou = ConfusionMatrixIoU(self.num_classes, name="student_miou")
        self.teacher_iou = ConfusionMatrixIoU(self.num_classes, name="teacher_miou")
        self.built = True

    # ------------------------------------------------------------------ setup
    @property
    def student_stages(self):
        return ppl_stages(self.student)

    @property
    def teacher_stages(self):
        return ppl_stages(self.teacher)

    def _pair_ema_weights(self):
        banks = {id(stage.memory.prototypes) for stage in self.student_stages + self.teacher_stages}
        pairs = []
        student_weights, teacher_weights = self.student.weights, self.teacher.weights
        if len(student_weights) != len(teacher_weights):
            raise ValueError("teacher and student have different numbers of weights")
        for t, s in zip(teacher_weights, student_weights, strict=True):
            if tuple(t.shape) != tuple(s.shape):
                raise ValueError(f"teacher weight {t.path} {t.shape} != student {s.path} {s.shape}")
            if id(t) in banks or id(s) in banks:
                continue  # each network keeps its own banks
            pairs.append((t, s))
        self._ema_pairs = pairs

    def _group_variables(self):
        backbone = next(
            (layer for layer in self.student.layers if layer.name.endswith("_backbone")), None
        )
        backbone_ids = {id(v) for v in backbone.trainable_weights} if backbone else set()
        self._lr_scale = [
            self.backbone_lr_multiplier if id(v) in backbone_ids else 1.0
            for v in self.student.trainable_weights
        ]
        self._decays = [v.name not in NO_DECAY_NAMES for v in self.student.trainable_weights]

    def compile(self, optimizer="sgd", base_lr=0.01, **kwargs):
        """Compiles with `optimizer`: "sgd" (SGD 0.9 + poly LR from `base_lr`, the paper's),
        "adamw" (AdamW + poly LR) or an optimizer instance."""
        if optimizer is None or isinstance(optimizer, str):
            name = optimizer or "sgd"
            if name != "sgd" and self.backbone_lr_multiplier != 1.0:
                raise ValueError(
                    "backbone_lr_multiplier scales gradients, which is a learning-rate factor "
                    f"for SGD only; use it with optimizer='sgd' or set it to 1. Received: "
                    f"optimizer={name!r}, backbone_lr_multiplier={self.backbone_lr_multiplier}"
                )
            optimizer = make_optimizer(base_lr, self.total_steps, name=name)
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.student.trainable_weights)

    # --------------------------------------------------------- distribution workarounds
    # keras-team/keras#20585: under MultiWorkerMirroredStrategy, `fit` first reduces one
    # distributed batch with `strategy.reduce(..., axis=None)` to build the model symbolically,
    # which fails for dict batches. This trainer builds everything itself (networks in
    # __init__, the optimizer in compile), so the symbolic build has nothing to do: skip it.
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            layers_built = all(layer.built for layer in self._flatten_layers())
            if layers_built and (self.optimizer is None or self.optimizer.built):
                return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # Second part of #20585: under MultiWorkerMirroredStrategy, Keras reduces the per-replica
    # logs with `strategy.reduce("MEAN", v, axis=0)`, which fails for scalars. Logs of shape
    # (1,) reduce to the same mean (every replica has the same batch size).
    def _distributed_logs(self, logs):
        if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def call(self, images, training=False):
        return self.student(images, training=training)

    # ------------------------------------------------------------------ train
    def _pseudo_labels(self, batch):
        """Teacher on the weak view -> (pseudo-labels, mask) at input resolution."""
        probs = tf.nn.softmax(self.teacher(batch["unlabeled_weak"], training=False), axis=-1)
        confidence = tf.reduce_max(probs, axis=-1)
        labels = tf.argmax(probs, axis=-1, output_type=tf.int32)
        mask = tf.cast(confidence > self.tau, tf.float32)
        if self.noise_ratio is not None:
            labels, mask = self._noisy_ground_truth(batch, probs)
        return labels, mask

    def _noisy_ground_truth(self, batch, probs):
        """Appendix A: ground truth with a fraction replaced by the 2nd or 3rd teacher class."""
        truth = tf.cast(batch["unlabeled_masks"], tf.int32)
        valid = tf.not_equal(truth, IGNORE_LABEL)
        top3 = tf.math.top_k(probs, k=min(3, self.num_classes)).indices
        rank = tf.random.uniform(tf.shape(truth), 1, top3.shape[-1], dtype=tf.int32)
        confusing = tf.gather(top3, rank[..., None], batch_dims=3)[..., 0]
        noisy = tf.random.uniform(tf.shape(truth)) < self.noise_ratio
        labels = tf.where(valid & noisy, confusing, tf.where(valid, truth, 0))
        return labels, tf.cast(valid, tf.float32)

    def _labeled_loss(self, head_logits, masks):
        total = 0.0
        for logits in head_logits:
            logits = _resize_like(logits, masks[..., None], "bilinear")
            if self.ohem:
                loss_sum, kept = ohem_cross_entropy(
                    logits, masks, self.ohem_threshold, self.ohem_min_kept, normalizer=1.0
                )
                total += loss_sum / tf.maximum(_all_reduce_sum(kept), 1.0)
            else:
                count = _all_reduce_sum(tf.reduce_sum(tf.cast(masks != IGNORE_LABEL, tf.float32)))
                total += masked_cross_entropy(logits, masks, normalizer=count)
        return total

    def train_step(self, data):
        batch = data
        labeled_images = batch["labeled_images"]
        labeled_masks = tf.cast(batch["labeled_masks"], tf.int32)
        num_labeled = tf.shape(labeled_images)[0]
        step = tf.cast(self.optimizer.iterations, tf.float32)
        # 0.0 during warm-up (labeled data only), 1.0 after.
        unlabeled_on = tf.cast(step >= float(self.warmup_steps), tf.float32)

        # Teacher on the weak view -> pseudo-labels and mask.
        if self.use_unlabeled:
            pseudo, mask = self._pseudo_labels(batch)
            if "unlabeled_cutmix_box" in batch:  # the strong view was mixed in the pipeline
                box = tf.cast(batch["unlabeled_cutmix_box"], tf.bool)
                pseudo = tf.where(box, tf.roll(pseudo, 1, axis=0), pseudo)
                mask = tf.where(box, tf.roll(mask, 1, axis=0), mask)
            images = tf.concat([labeled_images, batch["unlabeled_strong"]], axis=0)
            global_masked = _all_reduce_sum(tf.reduce_sum(mask))
            global_pixels = _all_reduce_sum(tf.cast(tf.size(mask), tf.float32))
        else:
            images = labeled_images

        # Student under the tape; losses.
        with tf.GradientTape() as tape:
            out = self._student_heads(images, training=True)
            head_logits, features = out["logits"], out["features"]
            loss_labeled = self._labeled_loss([h[:num_labeled] for h in head_logits], labeled_masks)
            loss_ce_u = tf.constant(0.0)
            contrast = [tf.constant(0.0) for _ in features]
            if self.use_unlabeled:
                for logits in head_logits:
                    logits_u = _resize_like(logits[num_labeled:], mask[..., None], "bilinear")
                    loss_ce_u += masked_cross_entropy(
                        logits_u, pseudo, mask, normalizer=global_masked
                    )
                if self.use_push and features:
                    size = tf.shape(features[0])[1:3]
                    pseudo_small = _downsample_labels(pseudo, size)
                    mask_small = _downsample_labels(mask, size)
                    masked_small = _all_reduce_sum(tf.reduce_sum(mask_small))
                    for i, (f, stage) in enumerate(zip(features, self.student_stages, strict=True)):
                        contrast[i] = multi_prototype_contrastive_loss(
                            f[num_labeled:], stage.memory.read(), pseudo_small, mask_small,
                            self.gamma, self.margin, normalizer=masked_small,
                        )  # fmt: skip
            loss_unlabeled = loss_ce_u + tf.add_n(contrast) if contrast else loss_ce_u
            loss = loss_labeled + unlabeled_on * self.unsupervised_weight * loss_unlabeled

        # Update: coupled L2 decay (as PyTorch's SGD) and the backbone's smaller LR, both
        # written into the gradient so SGD's own state is all the optimizer carries.
        variables = self.student.trainable_weights
        grads = tape.gradient(loss, variables)
        # The optimizer sums the replicas' gradients: each replica adds its share of the decay.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        weight_decay = self.weight_decay / replicas
        grads = [
            scale * (g + weight_decay * v if decay else g)
            for g, v, scale, decay in zip(
                grads, variables, self._lr_scale, self._decays, strict=True
            )
        ]
        self.optimizer.apply(grads, variables)

        # EMA teacher (Eq. 4), then each network pushes its own classifiers into its banks.
        alpha = ema_alpha(self.optimizer.iterations, self.total_steps)
        for t, s in self._ema_pairs:
            t.assign(alpha * t + (1.0 - alpha) * s)
        for stage in self.student_stages + self.teacher_stages:
            stage.push_classifier()

        # Metrics: every value is the global one, the same on every replica.
        lr = self.optimizer.learning_rate
        logs = {
            "loss": loss,
            "loss_labeled": loss_labeled,
            "loss_unlabeled_ce": loss_ce_u * unlabeled_on,
            "loss_contrast": tf.add_n(contrast) * unlabeled_on if contrast else tf.constant(0.0),
        }
        for i, value in enumerate(contrast):
            logs[f"loss_contrast_{i + 1}"] = value * unlabeled_on
        for name, value in logs.items():
            self.trackers[name].update_state(_all_reduce_sum(value))
        self.trackers["ema_alpha"].update_state(alpha)
        self.trackers["lr_head"].update_state(lr)
        self.trackers["lr_backbone"].update_state(lr * self.backbone_lr_multiplier)
        if self.use_unlabeled:
            self.trackers["mask_ratio"].update_state(global_masked / global_pixels)
            if "unlabeled_masks" in batch:
                truth = tf.cast(batch["unlabeled_masks"], tf.int32)
                if "unlabeled_cutmix_box" in batch:
                    truth = tf.where(box, tf.roll(truth, 1, axis=0), truth)
                self.pseudo_iou.add_increment(
                    _all_reduce_sum(self.pseudo_iou.increment(truth, pseudo, mask))
                )
                covered = tf.where(mask > 0, pseudo, self.num_classes)
                self.pseudo_coverage.add_increment(
                    _all_reduce_sum(self.pseudo_coverage.increment(truth, covered))
                )
        return self._train_logs()

    def _train_logs(self):
        logs = {name: tracker.result() for name, tracker in self.trackers.items()}
        # A term that is switched off is absent from the logs, not logged as zero.
        if not self.use_unlabeled:
            for name in ("mask_ratio", "loss_unlabeled_ce"):
                logs.pop(name)
        if not (self.use_unlabeled and self.use_push and self.student_stages):
            for name in [n for n in logs if n.startswith("loss_contrast")]:
                logs.pop(name)
        if self.use_unlabeled:
            logs["pseudo_miou"] = self.pseudo_iou.result()
            logs["pseudo_recall"] = self.pseudo_coverage.recall()
        return self._distributed_logs(logs)

    # ------------------------------------------------------------------ eval
    def test_step(self, data):
        images, masks = data[0], tf.cast(data[1], tf.int32)
        for network, metric in ((self.student, self.student_iou), (self.teacher, self.teacher_iou)):
            prediction = tf.argmax(network(images, training=False), axis=-1, output_type=tf.int32)
            metric.add_increment(_all_reduce_sum(metric.increment(masks, prediction)))
        return self._distributed_logs({
            "student_miou": self.student_iou.result(),
            "teacher_miou": self.teacher_iou.result(),
        })  # fmt: skip

    def per_class_iou(self, network="teacher"):
        """Per-class IoU of the last evaluation (NaN: class in neither truth nor prediction)."""
        metric = {"teacher": self.teacher_iou, "student": self.student_iou}[network]
        return keras.ops.convert_to_numpy(metric.per_class_iou())

    @property
    def metrics(self):
        return [*self.trackers.values(), self.pseudo_iou, self.pseudo_coverage,
                self.student_iou, self.teacher_iou]  # fmt: skip

    def get_config(self):
        config = {
            "student": keras.saving.serialize_keras_object(self.student),
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "tau": self.tau,
            "unsupervised_weight": self.unsupervised_weight,
            "gamma": self.gamma,
            "margin": self.margin,
            "use_push": self.use_push,
            "use_unlabeled": self.use_unlabeled,
            "weight_decay": self.weight_decay,
            "backbone_lr_multiplier": self.backbone_lr_multiplier,
            "ohem": self.ohem,
            "ohem_threshold": self.ohem_threshold,
            "ohem_min_kept": self.ohem_min_kept,
            "noise_ratio": self.noise_ratio,
        }
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        return cls(**config)
