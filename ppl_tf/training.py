"""`PPLTrainer`: the semi-supervised teacher-student trainer of PPL (Sec. 3.3, Eq. 4-7).

One training step, in the paper's order (each phase a method of `PPLTrainer`):
  1. targets: the teacher on the weak view -> pseudo-labels and mask (max prob > tau; padded
     pixels excluded; CutMix-mixed like the strong view)
  2. losses: the student on the labeled images and on the strong views (two BatchNorm
     batches) under the tape -> L = L_l + lambda * L_u (Eq. 5-7, L_u with Eq. 1 per stage);
     during warm-up the labeled images alone
  3. update: the optimizer step
  4. teacher: EMA of the student (Eq. 4)
  5. banks: every network pushes its classifiers into its memory banks
  6. metrics

Distribution: every loss is a sum divided by a count all-reduced over replicas, so the sum of
the replicas' gradients (Keras' optimizer all-reduces them) is the gradient of the global mean.
"""

import contextlib
import math

import keras
import tensorflow as tf

from ppl_tf.choices import OPTIMIZERS
from ppl_tf.data.augment import apply_cutmix
from ppl_tf.data.classes import IGNORE_LABEL
from ppl_tf.losses import (
    masked_cross_entropy,
    multi_prototype_contrastive_loss,
    ohem_cross_entropy,
)
from ppl_tf.metrics import ClassHistogram, ConfusionMatrixIoU
from ppl_tf.models import build_training_view, ppl_stages

NO_DECAY_NAMES = ("bias", "gamma", "beta")


def ema_alpha(step, total_steps, start=0.99, end=1.0):
    """The teacher's EMA rate: start + (end - start) * (1 - cos(pi * step / total_steps)) / 2.

    The paper's schedule is 0.99 -> 1.0 (Sec. 4.2); `end` < 1 keeps the teacher moving to the
    end of short runs.
    """
    progress = tf.minimum(tf.cast(step, tf.float32) / float(max(total_steps, 1)), 1.0)
    return start + (end - start) * (1.0 - tf.cos(math.pi * progress)) / 2.0


def make_optimizer(base_lr, total_steps, momentum=0.9, power=0.9, name="sgd", weight_decay=0.0):
    """The poly learning rate (1 - step / total_steps) ** power with SGD + momentum (the
    paper's) or AdamW (for backbones trained from scratch, like the demo's tiny one).

    SGD carries no weight decay here: the trainer adds it to the gradients (coupled L2, as
    PyTorch's SGD does). AdamW gets `weight_decay` as its own decoupled decay.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}. Received: {name!r}")
    schedule = keras.optimizers.schedules.PolynomialDecay(
        base_lr, decay_steps=max(total_steps, 1), end_learning_rate=0.0, power=power
    )
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay)
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
        warmup_steps: first steps on labeled data only: the student's batch holds the labeled
            images alone (Sec. 4.2), so BatchNorm never sees an unlabeled image before the
            unlabeled losses start; banks and EMA still run.
        tau: pseudo-label confidence threshold. Defaults to 0.8.
        unsupervised_weight: lambda of Eq. 7. Defaults to 0.1 (VOC; 0.5 for Cityscapes).
        gamma, margin: scale and margin of Eq. 1. Default to 32 and 0.25.
        contrast_weight: factor of the contrastive losses inside L_u (Eq. 6 has 1, the
            default). Not in the paper: an opt-in weight, measured in the README.
        use_push: the multi-prototype contrastive loss (pushing); `use_attention` of the
            segmenter is the pulling interaction.
        use_unlabeled: False trains on labeled data only (the "supervised-only" baseline).
        weight_decay: decay of kernels (not of BN and biases). Defaults to 1e-4. With SGD it
            is L2 added to the gradient (PyTorch's SGD, the paper's); with AdamW it is
            AdamW's decoupled decay (`compile(optimizer="adamw")`).
        backbone_lr_multiplier: learning-rate factor of the backbone. Defaults to 0.1.
        ohem: OHEM cross-entropy for labeled images (Cityscapes); threshold and min_kept.
        noise_ratio: the Appendix-A noise study: pseudo-labels are `unlabeled_masks` with
            this fraction of pixels replaced by the teacher's 2nd or 3rd most likely class.
        ema_start, ema_end: the EMA rate's cosine schedule (`ema_alpha`). Default to the
            paper's 0.99 -> 1.0.
        joint_batchnorm: False (default): the student runs on the labeled images and on the
            strong views as two batches, each normalized by its own BatchNorm statistics
            (as UniMatch and CPS do). True: one concatenated batch (as U2PL does). The paper
            does not say. Measured on the digit scenes (README): with one batch, even
            unlabeled images that no loss reaches lowered val mIoU from 27 to 16-20%: the
            labeled loss reaches them through the shared batch statistics and fits to them.
            Warm-up steps that `fit` runs are labeled-only either way (the warm-up train
            function); a full step during warm-up (a `steps_per_execution` call crossing its
            end, or `train_step` called directly) with True puts the strong views through the
            labeled images' BatchNorm batch.
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
        contrast_weight=1.0,
        use_push=True,
        use_unlabeled=True,
        weight_decay=1e-4,
        backbone_lr_multiplier=0.1,
        ohem=False,
        ohem_threshold=0.7,
        ohem_min_kept=100_000,
        noise_ratio=None,
        ema_start=0.99,
        ema_end=1.0,
        joint_batchnorm=False,
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
        if not 0.0 <= ema_start <= ema_end <= 1.0:
            raise ValueError(
                "Need 0 <= `ema_start` <= `ema_end` <= 1. Received: "
                f"ema_start={ema_start}, ema_end={ema_end}"
            )
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.tau = float(tau)
        self.unsupervised_weight = float(unsupervised_weight)
        self.gamma = float(gamma)
        self.margin = float(margin)
        if not contrast_weight >= 0:
            raise ValueError(
                f"`contrast_weight` must be >= 0. Received: contrast_weight={contrast_weight}"
            )
        self.contrast_weight = float(contrast_weight)
        self.use_push = bool(use_push)
        self.use_unlabeled = bool(use_unlabeled)
        self.weight_decay = float(weight_decay)
        self.backbone_lr_multiplier = float(backbone_lr_multiplier)
        self.ohem = bool(ohem)
        self.ohem_threshold = float(ohem_threshold)
        self.ohem_min_kept = int(ohem_min_kept)
        self.noise_ratio = noise_ratio
        self.ema_start = float(ema_start)
        self.ema_end = float(ema_end)
        self.joint_batchnorm = bool(joint_batchnorm)

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
        names = [
            "loss",
            "loss_labeled",
            "loss_unlabeled_ce",
            "loss_contrast",
            "mask_ratio",
            "ema_alpha",
            "lr_head",
            "lr_backbone",
        ]
        names += [f"loss_contrast_{i + 1}" for i in range(len(self.student_stages))]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.pseudo_iou = ConfusionMatrixIoU(self.num_classes, name="pseudo_miou")
        self.pseudo_coverage = ConfusionMatrixIoU(self.num_classes + 1, name="pseudo_recall")
        self.student_iou = ConfusionMatrixIoU(self.num_classes, name="student_miou")
        self.teacher_iou = ConfusionMatrixIoU(self.num_classes, name="teacher_miou")
        # Pixel counts per class of the pseudo-labels that pass tau and of the labeled masks:
        # vectors, so not among `metrics` (whose results become scalar logs); reset with them.
        # `ppl_tf.visualize.PseudoLabelLog` reads them after each epoch's last step.
        self.pseudo_classes = ClassHistogram(self.num_classes, name="pseudo_classes")
        self.labeled_classes = ClassHistogram(self.num_classes, name="labeled_classes")
        self._warmup_variant = False  # set by the train function's dispatcher
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
        "adamw" (AdamW + poly LR, decoupled weight decay) or an optimizer instance."""
        if optimizer is None or isinstance(optimizer, str):
            name = optimizer or "sgd"
            if name != "sgd" and self.backbone_lr_multiplier != 1.0:
                raise ValueError(
                    "backbone_lr_multiplier scales gradients, which is a learning-rate factor "
                    f"for SGD only; use it with optimizer='sgd' or set it to 1. Received: "
                    f"optimizer={name!r}, backbone_lr_multiplier={self.backbone_lr_multiplier}"
                )
            optimizer = make_optimizer(
                base_lr, self.total_steps, name=name, weight_decay=self.weight_decay
            )
        if isinstance(optimizer, keras.optimizers.AdamW):
            variables = self.student.trainable_weights
            optimizer.exclude_from_weight_decay(
                var_list=[v for v, decay in zip(variables, self._decays, strict=True) if not decay]
            )
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.student.trainable_weights)

    @property
    def _coupled_weight_decay(self):
        """L2 added to the gradients: for optimizers without a decay of their own (SGD)."""
        return 0.0 if isinstance(self.optimizer, keras.optimizers.AdamW) else self.weight_decay

    # --------------------------------------------------------- distribution workarounds
    # keras-team/keras#20585: under a distribution strategy, `fit` first reduces one
    # distributed batch with `strategy.reduce("MEAN", ..., axis=None)` to build the model
    # symbolically, which fails for dict batches under MultiWorkerMirroredStrategy and, under
    # MirroredStrategy, for the bool `unlabeled_valid` (AddN has no bool kernel). This trainer
    # builds everything itself (networks in __init__, the optimizer in compile), so the
    # symbolic build has nothing to do: skip it.
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
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
    def make_train_function(self, force=False):
        """Two compiled train functions, one for warm-up steps and one for the rest, and a
        dispatcher that picks by the optimizer's step count.

        During warm-up the unlabeled terms are multiplied by 0 and the strong views' BatchNorm
        statistics are put back, so the student's pass over the strong views changes nothing
        but costs about 40% of a step; the warm-up function leaves it out (same weights,
        same logs; the teacher still labels the weak view for the pseudo-label metrics). A
        call whose `steps_per_execution` steps would cross the end of warm-up runs the full
        function, which is exact during warm-up too.
        """
        if self.train_function is not None and not force:
            return self.train_function
        if not (self.use_unlabeled and self.warmup_steps > 0):
            self._warmup_variant = False
            super().make_train_function(force=True)
            return self.train_function
        functions = {}
        for warm in (True, False):
            super().make_train_function(force=True)
            functions[warm] = self.train_function

        def train_function(iterator):
            step = int(self.optimizer.iterations.numpy())
            # Read when a function is traced (on its first call, or on a retrace).
            self._warmup_variant = step + self.steps_per_execution <= self.warmup_steps
            return functions[self._warmup_variant](iterator)

        self.train_function = train_function
        return train_function

    def train_step(self, data):
        batch = data
        targets = self.pseudo_labels(batch) if self.use_unlabeled else None
        terms, grads = self._terms_and_gradients(batch, targets, not self._warmup_variant)
        self._update(grads)
        alpha = self._update_teacher()
        self._push_banks()
        self._update_metrics(batch, targets, terms, alpha)
        return self._train_logs()

    def pseudo_labels(self, batch):
        """Phase 1, the targets of the strong view: the teacher on the weak view ->
        (pseudo-labels, mask) at input resolution.

        mask = max prob > tau, and 0 on padded pixels (`unlabeled_valid`). When the strong
        view was CutMix-mixed in the pipeline, labels and mask are mixed with the same boxes.
        """
        probs = tf.nn.softmax(self.teacher(batch["unlabeled_weak"], training=False), axis=-1)
        labels = tf.argmax(probs, axis=-1, output_type=tf.int32)
        mask = tf.cast(tf.reduce_max(probs, axis=-1) > self.tau, tf.float32)
        if "unlabeled_valid" in batch:
            mask *= tf.cast(batch["unlabeled_valid"], tf.float32)
        if self.noise_ratio is not None:
            labels, mask = self._noisy_ground_truth(batch, probs)
        if "unlabeled_cutmix_box" in batch:
            box = batch["unlabeled_cutmix_box"]
            labels, mask = apply_cutmix(labels, box), apply_cutmix(mask, box)
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

    def _terms_and_gradients(self, batch, targets, strong_views=True):
        """Phase 2: the loss terms (a dict) and the student's gradients."""
        variables = self.student.trainable_weights
        with tf.GradientTape() as tape:
            terms = self.losses_of(batch, targets, strong_views)
        grads = tape.gradient(terms["loss"], variables)
        # A weight that no loss reached (possible in ablations) gets a zero gradient.
        grads = [
            tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables, strict=True)
        ]
        return terms, grads

    def _in_warmup(self):
        return self.optimizer.iterations < self.warmup_steps

    def losses_of(self, batch, targets, strong_views=True):
        """L = L_l + lambda * L_u (Eq. 5-7) of the student on this batch, with every term.

        `targets` (pseudo-labels, mask) switch the unlabeled terms on; with None, or with
        `strong_views` False (the warm-up function), the student runs on the labeled images
        alone and the unlabeled terms are 0. During warm-up the unlabeled terms are 0 and the
        strong views leave no trace in the student: their batch is separate and its BatchNorm
        statistics are put back (no `tf.cond`, whose branches would hide synchronized
        BatchNorm's collectives from some replicas).
        """
        strong_views = strong_views and targets is not None
        labeled_masks = tf.cast(batch["labeled_masks"], tf.int32)
        labeled_logits, unlabeled_logits, unlabeled_features = self._student_outputs(
            batch, strong_views=strong_views
        )
        terms = {"loss_labeled": self._labeled_loss(labeled_logits, labeled_masks)}
        cross_entropy, contrast = self._unlabeled_losses(
            unlabeled_logits, unlabeled_features, targets if strong_views else None
        )
        on = 1.0 if self.warmup_steps <= 0 else 1.0 - tf.cast(self._in_warmup(), tf.float32)
        terms["loss_unlabeled_ce"] = cross_entropy * on
        contrast = [value * on for value in contrast]
        for i, value in enumerate(contrast):
            terms[f"loss_contrast_{i + 1}"] = value
        terms["loss_contrast"] = tf.add_n(contrast) if contrast else tf.constant(0.0)
        loss_unlabeled = terms["loss_unlabeled_ce"] + self.contrast_weight * terms["loss_contrast"]
        terms["loss"] = terms["loss_labeled"] + self.unsupervised_weight * loss_unlabeled
        return terms

    def _student_outputs(self, batch, strong_views):
        """The student's heads on the labeled images and (with `strong_views`) on the strong
        views: (labeled logits, unlabeled logits, unlabeled features), one entry per head (per
        stage for the features), at stride 4. Two BatchNorm batches, or one with
        `joint_batchnorm`."""
        labeled_images = batch["labeled_images"]
        if not strong_views:
            return self._student_heads(labeled_images, training=True)["logits"], [], []
        if self.joint_batchnorm:
            num_labeled = tf.shape(labeled_images)[0]
            images = tf.concat([labeled_images, batch["unlabeled_strong"]], axis=0)
            out = self._student_heads(images, training=True)
            return (
                [h[:num_labeled] for h in out["logits"]],
                [h[num_labeled:] for h in out["logits"]],
                [f[num_labeled:] for f in out["features"]],
            )
        labeled_logits = self._student_heads(labeled_images, training=True)["logits"]
        with self._batchnorm_statistics_restored_during_warmup():
            out = self._student_heads(batch["unlabeled_strong"], training=True)
        return labeled_logits, out["logits"], out["features"]

    @contextlib.contextmanager
    def _batchnorm_statistics_restored_during_warmup(self):
        """BatchNorm's moving statistics after the block are the ones before it while the
        warm-up lasts (the paper's warm-up uses labeled data only)."""
        if self.warmup_steps <= 0:
            yield
            return
        statistics = [
            v
            for layer in self.student._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)
        ]
        before = [tf.identity(v.value) for v in statistics]
        yield
        warm = self._in_warmup()
        for v, value in zip(statistics, before, strict=True):
            v.assign(tf.where(warm, value, v.value))

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

    def _unlabeled_losses(self, logits, features, targets):
        """(cross-entropy of every head, [Eq. 1 per stage]) on the strong views against the
        pseudo-labels where the mask is on (Eq. 6); zeros without `targets`."""
        zero = tf.constant(0.0)
        if targets is None:
            return zero, [zero for _ in self.student_stages]
        pseudo, mask = targets
        masked = _all_reduce_sum(tf.reduce_sum(mask))
        cross_entropy = tf.add_n(
            [
                masked_cross_entropy(
                    _resize_like(head, mask[..., None], "bilinear"), pseudo, mask, normalizer=masked
                )
                for head in logits
            ]
        )
        if not (self.use_push and features):
            return cross_entropy, [zero for _ in self.student_stages]
        return cross_entropy, self._contrast_losses(features, pseudo, mask)

    def _contrast_losses(self, features, pseudo, mask):
        """Eq. 1 per stage, at feature resolution (labels and mask by nearest neighbor)."""
        size = tf.shape(features[0])[1:3]
        pseudo_small = _downsample_labels(pseudo, size)
        mask_small = _downsample_labels(mask, size)
        masked_small = _all_reduce_sum(tf.reduce_sum(mask_small))
        return [
            multi_prototype_contrastive_loss(
                f,
                stage.memory.read(),
                pseudo_small,
                mask_small,
                self.gamma,
                self.margin,
                normalizer=masked_small,
            )
            for f, stage in zip(features, self.student_stages, strict=True)
        ]

    def _update(self, grads):
        """Phase 3: the optimizer step. SGD's L2 decay (as PyTorch's SGD) and the backbone's
        smaller LR are written into the gradient, so SGD's own state is all it carries."""
        variables = self.student.trainable_weights
        # The optimizer sums the replicas' gradients: each replica adds its share of the decay.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        weight_decay = self._coupled_weight_decay / replicas
        grads = [
            scale * (g + weight_decay * v if decay and weight_decay else g)
            for g, v, scale, decay in zip(
                grads, variables, self._lr_scale, self._decays, strict=True
            )
        ]
        self.optimizer.apply(grads, variables)

    def _update_teacher(self):
        """Phase 4: teacher = EMA of the student (Eq. 4), BN statistics included."""
        alpha = ema_alpha(self.optimizer.iterations, self.total_steps, self.ema_start, self.ema_end)
        for t, s in self._ema_pairs:
            t.assign(alpha * t + (1.0 - alpha) * s)
        return alpha

    def _push_banks(self):
        """Phase 5: each network pushes its own classifiers (the teacher's are EMAs)."""
        for stage in self.student_stages + self.teacher_stages:
            stage.push_classifier()

    def _update_metrics(self, batch, targets, terms, alpha):
        """Phase 6: every value is the global one, the same on every replica."""
        for name, value in terms.items():
            self.trackers[name].update_state(_all_reduce_sum(value))
        lr = self.optimizer.learning_rate
        self.trackers["ema_alpha"].update_state(alpha)
        self.trackers["lr_head"].update_state(lr)
        self.trackers["lr_backbone"].update_state(lr * self.backbone_lr_multiplier)
        labeled_masks = tf.cast(batch["labeled_masks"], tf.int32)
        self.labeled_classes.add_increment(
            _all_reduce_sum(self.labeled_classes.increment(labeled_masks))
        )
        if targets is None:
            return
        pseudo, mask = targets
        global_masked = _all_reduce_sum(tf.reduce_sum(mask))
        pixels = tf.cast(tf.size(mask), tf.float32)
        if "unlabeled_valid" in batch:
            pixels = tf.reduce_sum(tf.cast(batch["unlabeled_valid"], tf.float32))
        self.trackers["mask_ratio"].update_state(global_masked / _all_reduce_sum(pixels))
        self.pseudo_classes.add_increment(
            _all_reduce_sum(self.pseudo_classes.increment(pseudo, mask))
        )
        if "unlabeled_masks" in batch:
            truth = tf.cast(batch["unlabeled_masks"], tf.int32)
            if "unlabeled_cutmix_box" in batch:
                truth = apply_cutmix(truth, batch["unlabeled_cutmix_box"])
            self.pseudo_iou.add_increment(
                _all_reduce_sum(self.pseudo_iou.increment(truth, pseudo, mask))
            )
            covered = tf.where(mask > 0, pseudo, self.num_classes)
            self.pseudo_coverage.add_increment(
                _all_reduce_sum(self.pseudo_coverage.increment(truth, covered))
            )

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
        return self._distributed_logs(
            {
                "student_miou": self.student_iou.result(),
                "teacher_miou": self.teacher_iou.result(),
            }
        )

    def per_class_iou(self, network="teacher"):
        """Per-class IoU of the last evaluation (NaN: class in neither truth nor prediction)."""
        metric = {"teacher": self.teacher_iou, "student": self.student_iou}[network]
        return keras.ops.convert_to_numpy(metric.per_class_iou())

    @property
    def metrics(self):
        return [
            *self.trackers.values(),
            self.pseudo_iou,
            self.pseudo_coverage,
            self.student_iou,
            self.teacher_iou,
        ]

    def reset_metrics(self):
        super().reset_metrics()
        self.pseudo_classes.reset_state()
        self.labeled_classes.reset_state()

    def get_config(self):
        config = {
            "student": keras.saving.serialize_keras_object(self.student),
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "tau": self.tau,
            "unsupervised_weight": self.unsupervised_weight,
            "gamma": self.gamma,
            "margin": self.margin,
            "contrast_weight": self.contrast_weight,
            "use_push": self.use_push,
            "use_unlabeled": self.use_unlabeled,
            "weight_decay": self.weight_decay,
            "backbone_lr_multiplier": self.backbone_lr_multiplier,
            "ohem": self.ohem,
            "ohem_threshold": self.ohem_threshold,
            "ohem_min_kept": self.ohem_min_kept,
            "noise_ratio": self.noise_ratio,
            "ema_start": self.ema_start,
            "ema_end": self.ema_end,
            "joint_batchnorm": self.joint_batchnorm,
        }
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        return cls(**config)
