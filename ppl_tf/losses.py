"""Losses of PPL: the multi-prototype contrastive loss (Eq. 1) and masked cross-entropy (Eq. 5-6).

Every loss returns a *sum* divided by a normalizer. By default the normalizer is the number of
pixels that count on this device; the trainer passes the count over all replicas instead, so
that summing the replicas' gradients gives the gradient of the global mean.
"""

import keras
from keras import ops

from ppl_tf.data.classes import IGNORE_LABEL

_EPSILON = 1e-12


def _l2_normalize(x):
    # rsqrt(max(|x|^2, eps)) keeps value and gradient finite for an all-zero vector.
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), _EPSILON))


def _normalize(total, count, normalizer):
    if normalizer is None:
        normalizer = count
    return total / ops.maximum(ops.cast(normalizer, total.dtype), 1.0)


def multi_prototype_contrastive_loss(
    features, prototypes, labels, mask, gamma=32.0, margin=0.25, normalizer=None
):
    """Multi-prototype contrastive loss, Eq. (1): the pushing interaction.

    For every masked pixel with (pseudo-)label y:

        log(1 + sum_t exp(-gamma * cos(f, CM[y, t]))
              * sum_{k != y, t} exp(gamma * (cos(f, CM[k, t]) + m)))

    computed in log space as softplus(logsumexp(positive) + logsumexp(negative)), so value and
    gradient stay finite for a feature equal to a prototype, an all-zero feature or an empty
    mask. The result is the masked sum divided by `normalizer` (default: the mask's sum; an
    empty mask gives 0).

    Args:
        features: (B, H, W, C) features fed to the stage's classifier.
        prototypes: (K, T, C) classifier memory bank.
        labels: (B, H, W) integer (pseudo-)labels; values at unmasked pixels are ignored.
        mask: (B, H, W) 0/1 or boolean mask of the pixels that count.
        gamma: the scale factor. Defaults to 32.
        margin: the margin m. Defaults to 0.25.
        normalizer: optional count to divide by (the trainer passes the global masked count).

    Returns:
        A float32 scalar.
    """
    if len(features.shape) != 4:
        raise ValueError(f"`features` must have rank 4 (B, H, W, C). Received: {features.shape}")
    if len(prototypes.shape) != 3:
        raise ValueError(f"`prototypes` must have rank 3 (K, T, C). Received: {prototypes.shape}")
    if features.shape[-1] != prototypes.shape[-1]:
        raise ValueError(
            "The channels of `features` and `prototypes` must match. Received: "
            f"features.shape={features.shape}, prototypes.shape={prototypes.shape}"
        )
    if len(labels.shape) != 3 or len(mask.shape) != 3:
        raise ValueError(
            "`labels` and `mask` must have rank 3 (B, H, W). Received: "
            f"labels.shape={labels.shape}, mask.shape={mask.shape}"
        )
    num_classes, length, channels = prototypes.shape
    features = ops.cast(features, "float32")
    mask = ops.cast(mask, "float32")
    labels = ops.where(mask > 0, ops.cast(labels, "int32"), 0)

    f = _l2_normalize(features)
    flat_prototypes = ops.reshape(prototypes, (num_classes * length, channels))
    p = _l2_normalize(ops.cast(flat_prototypes, "float32"))
    cosine = ops.matmul(f, ops.transpose(p))  # (B, H, W, K*T), index k*T + t
    # (B, H, W, K*T): True on the T prototypes of the pixel's own class.
    positive = ops.repeat(ops.one_hot(labels, num_classes, dtype="bool"), length, axis=-1)
    very_negative = ops.cast(-1e9, "float32")
    pos_lse = ops.logsumexp(ops.where(positive, -gamma * cosine, very_negative), axis=-1)
    neg_lse = ops.logsumexp(ops.where(positive, very_negative, gamma * (cosine + margin)), axis=-1)
    per_pixel = ops.softplus(pos_lse + neg_lse)
    total = ops.sum(ops.where(mask > 0, per_pixel, 0.0))
    return _normalize(total, ops.sum(mask), normalizer)


def masked_cross_entropy(logits, labels, mask=None, normalizer=None, ignore_label=IGNORE_LABEL):
    """Pixel-wise softmax cross-entropy, summed over counted pixels and normalized.

    Pixels whose label equals `ignore_label` never count; with `mask` only pixels where the
    mask is non-zero count (Eq. 6). The sum is divided by `normalizer` (default: the count).

    Args:
        logits: (B, H, W, K) logits.
        labels: (B, H, W) integer labels, `ignore_label` for "no label".
        mask: optional (B, H, W) 0/1 mask.
        normalizer: optional count to divide by.
    """
    labels = ops.cast(labels, "int32")
    valid = ops.not_equal(labels, ignore_label)
    if mask is not None:
        valid = ops.logical_and(valid, ops.cast(mask, "float32") > 0)
    safe_labels = ops.where(valid, labels, 0)
    per_pixel = keras.losses.sparse_categorical_crossentropy(
        safe_labels, ops.cast(logits, "float32"), from_logits=True
    )
    total = ops.sum(ops.where(valid, per_pixel, 0.0))
    return _normalize(total, ops.sum(ops.cast(valid, "float32")), normalizer)


def ohem_cross_entropy(
    logits, labels, threshold=0.7, min_kept=100_000, normalizer=None, ignore_label=IGNORE_LABEL
):
    """Online hard example mining cross-entropy (the Cityscapes labeled loss).

    Keeps the pixels whose probability of the true class is below `threshold`; when fewer than
    `min_kept` pixels qualify, keeps the `min_kept` hardest instead (all valid pixels if fewer).
    Returns the sum over kept pixels divided by `normalizer` (default: the kept count) and the
    kept count, so a distributed caller can normalize globally.
    """
    labels = ops.cast(labels, "int32")
    valid = ops.not_equal(labels, ignore_label)
    safe_labels = ops.where(valid, labels, 0)
    logits = ops.cast(logits, "float32")
    per_pixel = keras.losses.sparse_categorical_crossentropy(safe_labels, logits, from_logits=True)
    true_prob = ops.exp(-per_pixel)
    flat_prob = ops.reshape(ops.where(valid, true_prob, 2.0), (-1,))
    num_valid = ops.sum(ops.cast(valid, "int32"))
    k = ops.minimum(ops.cast(min_kept, "int32"), num_valid)
    sorted_prob = ops.sort(flat_prob)
    # The k-th smallest true-class probability; the threshold rises to it when needed.
    kth = ops.take(sorted_prob, ops.maximum(k - 1, 0))
    cut = ops.where(k > 0, ops.maximum(kth, threshold), threshold)
    kept = ops.logical_and(valid, true_prob <= cut)
    kept_count = ops.sum(ops.cast(kept, "float32"))
    total = ops.sum(ops.where(kept, per_pixel, 0.0))
    return _normalize(total, kept_count, normalizer), kept_count
