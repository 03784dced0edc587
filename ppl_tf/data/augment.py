"""Paired image/mask augmentation in TensorFlow, reproducible from a seed.

Weak view: random scale (0.5-2.0), random crop (labels padded with 255), horizontal flip; the
image is resized bilinearly, the mask only ever by nearest neighbor. Strong view: the weak view
plus color jitter, grayscale and Gaussian blur: the same geometry, other colors. CutMix pastes
a box of the partner image (`cutmix_partner`: the previous image of the batch) into the strong
view; the box travels with the batch so the trainer mixes the pseudo-labels identically.

Every function takes a `seed` of shape (2,) for TensorFlow's stateless random ops.
"""

import tensorflow as tf

from ppl_tf.data.classes import IGNORE_LABEL


def _uniform(seed, minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform([], seed, minval, maxval)


def weak_geometry(
    image, mask, seed, crop_size, scale_range=(0.5, 2.0), flip=True, with_valid=False
):
    """Scale, pad, crop and flip `image` (H, W, 3) and `mask` (H, W) together.

    Returns a float32 image (crop, crop, 3) in [0, 255] and an int32 mask (crop, crop) whose
    values are the original mask's values plus IGNORE_LABEL in padded areas. With
    `with_valid`, also a bool map (crop, crop) that is False on padded pixels: an unlabeled
    image has no mask to mark them, and padding must not receive pseudo-labels.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    image = tf.cast(image, tf.float32)
    mask = tf.cast(mask, tf.int32)[..., None]
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    if scale_range is not None:
        scale = _uniform(seeds[0], *scale_range)
        new_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)
        image = tf.image.resize(image, new_size, method="bilinear")
        mask = tf.image.resize(mask, new_size, method="nearest")
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    valid = tf.ones([height, width, 1], tf.int32)
    pad_h = tf.maximum(crop_size - height, 0)
    pad_w = tf.maximum(crop_size - width, 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    mask = tf.pad(mask, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=IGNORE_LABEL)
    valid = tf.pad(valid, [[0, pad_h], [0, pad_w], [0, 0]])
    height, width = height + pad_h, width + pad_w
    top = tf.random.stateless_uniform([], seeds[1], 0, height - crop_size + 1, tf.int32)
    left = tf.random.stateless_uniform([], seeds[2], 0, width - crop_size + 1, tf.int32)
    image = image[top : top + crop_size, left : left + crop_size]
    mask = mask[top : top + crop_size, left : left + crop_size]
    valid = valid[top : top + crop_size, left : left + crop_size]
    if flip:
        do_flip = _uniform(seeds[3]) < 0.5
        image, mask, valid = (
            tf.cond(do_flip, lambda x=x: tf.reverse(x, [1]), lambda x=x: x)
            for x in (image, mask, valid)
        )
    image = tf.ensure_shape(image, [crop_size, crop_size, 3])
    mask = tf.ensure_shape(mask[..., 0], [crop_size, crop_size])
    if with_valid:
        return image, mask, tf.ensure_shape(valid[..., 0] > 0, [crop_size, crop_size])
    return image, mask


def _gray(image):
    return tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def color_jitter(image, seed, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25):
    """torchvision-style ColorJitter on a float image in [0, 255] (fixed order)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    image = image * _uniform(seeds[0], 1 - brightness, 1 + brightness)
    image = tf.clip_by_value(image, 0.0, 255.0)
    mean = tf.reduce_mean(_gray(image))
    image = tf.clip_by_value(
        (image - mean) * _uniform(seeds[1], 1 - contrast, 1 + contrast) + mean, 0.0, 255.0
    )
    gray = _gray(image)
    image = tf.clip_by_value(
        gray + (image - gray) * _uniform(seeds[2], 1 - saturation, 1 + saturation), 0.0, 255.0
    )
    image = tf.image.adjust_hue(image / 255.0, _uniform(seeds[3], -hue, hue)) * 255.0
    return tf.clip_by_value(image, 0.0, 255.0)


def gaussian_blur(image, sigma, radius=6):
    """Separable Gaussian blur with reflect padding; `sigma` is a scalar tensor."""
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(x / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    k_h = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, 3, 1])
    k_w = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(padded, k_h, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, k_w, [1, 1, 1, 1], "VALID")
    return out[0]


# Blur sigma of the strong view in pixels of a 512-pixel crop (the paper's VOC crop and
# torchvision's usual 0.1-2.0): it is scaled with the crop, so that a 64-pixel crop is blurred
# as much relative to its content as a 512-pixel one, not eight times as much.
BLUR_SIGMA_AT_512 = (0.1, 2.0)


def blur_sigma_range(crop_size):
    scale = crop_size / 512.0
    return BLUR_SIGMA_AT_512[0] * scale, BLUR_SIGMA_AT_512[1] * scale


def strong_photometric(image, seed, p_jitter=0.8, p_gray=0.2, p_blur=0.5, blur_sigma=(0.1, 2.0)):
    """The strong view's photometric part: color jitter, grayscale, Gaussian blur (`blur_sigma`
    in pixels; see `blur_sigma_range`)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)
    image = tf.cond(
        _uniform(seeds[0]) < p_jitter, lambda: color_jitter(image, seeds[1]), lambda: image
    )
    image = tf.cond(
        _uniform(seeds[2]) < p_gray, lambda: tf.tile(_gray(image), [1, 1, 3]), lambda: image
    )
    sigma = _uniform(seeds[4], *blur_sigma)
    image = tf.cond(_uniform(seeds[3]) < p_blur, lambda: gaussian_blur(image, sigma), lambda: image)
    return tf.ensure_shape(image, image.shape)


def cutmix_boxes(batch_size, height, width, seed, p=0.5, area=(0.02, 0.4), ratio=(0.3, 1 / 0.3)):
    """(B, H, W) bool boxes: True where an image takes the pixels of its `cutmix_partner`."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)
    apply = tf.random.stateless_uniform([batch_size], seeds[0]) < p
    box_area = tf.random.stateless_uniform([batch_size], seeds[1], *area) * tf.cast(
        height * width, tf.float32
    )
    aspect = tf.exp(
        tf.random.stateless_uniform(
            [batch_size], seeds[2], tf.math.log(ratio[0]), tf.math.log(ratio[1])
        )
    )
    box_h = tf.minimum(tf.cast(tf.sqrt(box_area / aspect), tf.int32), height)
    box_w = tf.minimum(tf.cast(tf.sqrt(box_area * aspect), tf.int32), width)
    top = tf.cast(
        tf.random.stateless_uniform([batch_size], seeds[3])
        * tf.cast(height - box_h + 1, tf.float32),
        tf.int32,
    )
    left = tf.cast(
        tf.random.stateless_uniform([batch_size], seeds[4])
        * tf.cast(width - box_w + 1, tf.float32),
        tf.int32,
    )
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + box_h)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + box_w)[:, None, None])
    )
    return inside & apply[:, None, None]


def cutmix_partner(values):
    """The image (or pseudo-label, mask...) whose pixels each batch element takes inside its
    CutMix box: the previous element of the batch, the first taking the last's."""
    return tf.roll(values, shift=1, axis=0)


def apply_cutmix(values, boxes):
    """`values` (B, H, W, ...) with each box filled from the `cutmix_partner`. The pipeline
    mixes the strong images with it and the trainer the pseudo-labels, masks and truths."""
    boxes = tf.reshape(
        boxes, tf.concat([tf.shape(boxes), tf.ones([tf.rank(values) - 3], tf.int32)], 0)
    )
    return tf.where(boxes, cutmix_partner(values), values)
