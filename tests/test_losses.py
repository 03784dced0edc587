import numpy as np
import pytest
import tensorflow as tf

from ppl_tf.losses import masked_cross_entropy, multi_prototype_contrastive_loss, ohem_cross_entropy


def eq1_reference(features, prototypes, labels, mask, gamma, margin):
    """Eq. (1) of the paper, written directly from the formula in float64."""
    f = features.astype(np.float64)
    cm = prototypes.astype(np.float64)
    num_classes, length, _ = cm.shape
    total = 0.0
    for b, h, w in zip(*np.nonzero(mask), strict=True):
        x = f[b, h, w]
        y = labels[b, h, w]
        phi = np.array(
            [
                [
                    x @ cm[k, t] / (np.linalg.norm(x) * np.linalg.norm(cm[k, t]))
                    for t in range(length)
                ]
                for k in range(num_classes)
            ]
        )
        positive = np.sum(np.exp(gamma * -phi[y]))
        negative = sum(
            np.exp(gamma * (phi[k, t] + margin))
            for k in range(num_classes)
            if k != y
            for t in range(length)
        )
        total += np.log(1.0 + positive * negative)
    return total / mask.sum()


@pytest.mark.parametrize(
    "batch, height, width, channels, num_classes, length, gamma, margin",
    [
        (2, 3, 4, 8, 3, 2, 32.0, 0.25),
        (1, 5, 5, 16, 5, 4, 16.0, 0.15),
        (3, 2, 7, 4, 2, 1, 8.0, 0.35),
    ],
)
def test_contrastive_loss_matches_eq1(
    batch, height, width, channels, num_classes, length, gamma, margin, rng
):
    features = rng.normal(size=(batch, height, width, channels)).astype("float32")
    prototypes = rng.normal(size=(num_classes, length, channels)).astype("float32")
    labels = rng.integers(0, num_classes, size=(batch, height, width))
    mask = (rng.random((batch, height, width)) > 0.3).astype("float32")
    mask[0, 0, 0] = 1.0
    expected = eq1_reference(features, prototypes, labels, mask, gamma, margin)
    actual = multi_prototype_contrastive_loss(
        features, prototypes, labels, mask, gamma=gamma, margin=margin
    )
    assert abs(float(actual) - expected) / abs(expected) < 1e-5


def test_unmasked_pixels_and_their_labels_do_not_count(rng):
    features = rng.normal(size=(1, 4, 4, 6)).astype("float32")
    prototypes = rng.normal(size=(3, 2, 6)).astype("float32")
    labels = rng.integers(0, 3, size=(1, 4, 4))
    mask = np.zeros((1, 4, 4), "float32")
    mask[0, :2] = 1.0
    base = multi_prototype_contrastive_loss(features, prototypes, labels, mask)
    labels2 = labels.copy()
    labels2[0, 2:] = 255  # an ignored label under the mask's zeros
    features2 = features.copy()
    features2[0, 2:] = 1e6
    changed = multi_prototype_contrastive_loss(features2, prototypes, labels2, mask)
    assert float(base) == pytest.approx(float(changed), rel=1e-6)


def test_normalizer_replaces_the_mask_count(rng):
    features = rng.normal(size=(1, 3, 3, 4)).astype("float32")
    prototypes = rng.normal(size=(2, 2, 4)).astype("float32")
    labels = rng.integers(0, 2, size=(1, 3, 3))
    mask = np.ones((1, 3, 3), "float32")
    mean = multi_prototype_contrastive_loss(features, prototypes, labels, mask)
    scaled = multi_prototype_contrastive_loss(features, prototypes, labels, mask, normalizer=18.0)
    assert float(scaled) == pytest.approx(float(mean) * 9 / 18, rel=1e-6)


@pytest.mark.parametrize("case", ["feature_equals_prototype", "zero_feature", "empty_mask"])
def test_finite_value_and_gradient(case, rng):
    prototypes = rng.normal(size=(3, 4, 8)).astype("float32")
    features = rng.normal(size=(2, 3, 3, 8)).astype("float32")
    labels = rng.integers(0, 3, size=(2, 3, 3))
    mask = np.ones((2, 3, 3), "float32")
    if case == "feature_equals_prototype":
        features[0, 0, 0] = prototypes[labels[0, 0, 0], 1]
        features[0, 0, 1] = prototypes[(labels[0, 0, 1] + 1) % 3, 0]
    elif case == "zero_feature":
        features[:, 1] = 0.0
    else:
        mask[:] = 0.0
    features = tf.constant(features)
    protos = tf.constant(prototypes)
    with tf.GradientTape() as tape:
        tape.watch([features, protos])
        loss = multi_prototype_contrastive_loss(features, protos, labels, mask)
    grads = tape.gradient(loss, [features, protos])
    assert np.isfinite(float(loss))
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))
    if case == "empty_mask":
        assert float(loss) == 0.0


def test_bad_shapes_name_the_argument(rng):
    f = np.zeros((1, 2, 2, 4), "float32")
    p = np.zeros((3, 2, 5), "float32")
    labels = np.zeros((1, 2, 2), "int32")
    with pytest.raises(ValueError, match="features.shape=.*prototypes.shape"):
        multi_prototype_contrastive_loss(f, p, labels, labels)
    with pytest.raises(ValueError, match="`features` must have rank 4"):
        multi_prototype_contrastive_loss(f[0], p, labels, labels)
    with pytest.raises(ValueError, match="`prototypes` must have rank 3"):
        multi_prototype_contrastive_loss(f, p[0], labels, labels)


def ce_reference(logits, labels, mask):
    logits = logits.astype(np.float64)
    logp = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
    valid = (labels != 255) & (mask > 0)
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return -(picked * valid).sum() / valid.sum()


def test_masked_cross_entropy_ignores_255_and_mask(rng):
    logits = rng.normal(size=(2, 5, 6, 4)).astype("float32") * 3
    labels = rng.integers(0, 4, size=(2, 5, 6))
    labels[0, 0] = 255
    mask = (rng.random((2, 5, 6)) > 0.4).astype("float32")
    actual = float(masked_cross_entropy(logits, labels, mask))
    assert actual == pytest.approx(ce_reference(logits, labels, mask), rel=1e-5)
    actual = float(masked_cross_entropy(logits, labels))
    assert actual == pytest.approx(ce_reference(logits, labels, np.ones_like(mask)), rel=1e-5)


def test_ohem_keeps_hard_pixels_and_at_least_min_kept(rng):
    logits = rng.normal(size=(1, 8, 8, 3)).astype("float32") * 4
    labels = rng.integers(0, 3, size=(1, 8, 8))
    logp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    prob = np.exp(-nll)
    hard = prob < 0.7
    loss, kept = ohem_cross_entropy(logits, labels, threshold=0.7, min_kept=1)
    assert int(kept) == hard.sum()
    assert float(loss) == pytest.approx(nll[hard].mean(), rel=1e-5)
    loss, kept = ohem_cross_entropy(logits, labels, threshold=0.7, min_kept=60)
    assert int(kept) == 60
    assert float(loss) == pytest.approx(np.sort(nll.ravel())[-60:].mean(), rel=1e-5)
