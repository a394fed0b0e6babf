"""Training-time augmentation, inside the training step on the training device: the standard CIFAR
recipe (random horizontal flip, then a random 32 x 32 crop of the image padded by 4 pixels of zeros).

Stateless random ops, seeded by (train.seed, the optimizer's step): the same params give the same
images at every step, in any process, and validation and test images are never touched.
"""

from __future__ import annotations

import tensorflow as tf

PAD = 4  # pixels of zeros on each side before the crop: offsets 0..8 in each direction


def flip_crop(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) images, each flipped left-right with probability 1/2, then cropped back to (H, W)
    from the zero-padded image at a uniform offset in [0, 2 * PAD]^2. seed: int64 (2,), a stateless seed."""
    size = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    flip_seed, row_seed, col_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    flip = tf.random.stateless_uniform([size], flip_seed) < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])  # (B, H + 8, W + 8, C)
    top = tf.random.stateless_uniform([size], row_seed, minval=0, maxval=2 * PAD + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([size], col_seed, minval=0, maxval=2 * PAD + 1, dtype=tf.int32)
    rows = top[:, None] + tf.range(height)[None, :]  # (B, H): the padded rows each image keeps
    cols = left[:, None] + tf.range(width)[None, :]  # (B, W)
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)  # (B, H, W + 8, C)
    return tf.gather(cropped, cols, axis=2, batch_dims=1)  # (B, H, W, C)
