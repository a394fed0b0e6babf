"""The seed article's CNN, with L1/L2 penalties on every kernel (biases excluded)."""

from __future__ import annotations

import keras
from keras import layers

from l2lab.data import NUM_CLASSES
from l2lab.params import TrainParams

def kernel_regularizer(l1: float, l2: float) -> keras.regularizers.Regularizer | None:
    """Keras adds l1 * sum(|W|) + l2 * sum(W**2) per kernel to the loss; None when both are 0."""
    if l1 == 0 and l2 == 0:
        return None
    return keras.regularizers.L1L2(l1=l1, l2=l2)


def build_model(train: TrainParams) -> keras.Model:
    """Conv(32)-Pool-Conv(64)-Pool-Dense(128)-Dense(10, softmax) on raw uint8 images, initialised from
    train.seed, with train.l1 and train.l2 on every kernel."""
    reg, seed = kernel_regularizer(train.l1, train.l2), train.seed
    init = keras.initializers.GlorotUniform

    def kernel_args(offset: int) -> dict:
        return {"kernel_regularizer": reg, "kernel_initializer": init(seed=seed + offset)}

    inputs = keras.Input(shape=(32, 32, 3), dtype="uint8", name="image")  # (B, 32, 32, 3) uint8
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)  # -> float32 in [0, 1]
    x = layers.Conv2D(32, 3, activation="relu", name="conv1", **kernel_args(1))(x)  # (B, 30, 30, 32)
    x = layers.MaxPooling2D(2, name="pool1")(x)  # (B, 15, 15, 32)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2", **kernel_args(2))(x)  # (B, 13, 13, 64)
    x = layers.MaxPooling2D(2, name="pool2")(x)  # (B, 6, 6, 64)
    x = layers.Flatten(name="flatten")(x)  # (B, 2304)
    x = layers.Dense(128, activation="relu", name="dense1", **kernel_args(3))(x)
    # float32 softmax whatever the compute precision: probabilities and the loss stay exact enough.
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="dense2", dtype="float32", **kernel_args(4))(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def build_optimizer(train: TrainParams) -> keras.optimizers.Optimizer:
    """Adam, or AdamW when weight_decay > 0 (decoupled decay on kernels only)."""
    if train.weight_decay == 0:
        return keras.optimizers.Adam(learning_rate=train.learning_rate)
    optimizer = keras.optimizers.AdamW(learning_rate=train.learning_rate, weight_decay=train.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def compile_model(train: TrainParams, steps_per_execution: int = 1, model: keras.Model | None = None,
                  optimizer: keras.optimizers.Optimizer | None = None) -> keras.Model:
    """model (default: a freshly initialised network, train.seed), compiled for these training params
    (with optimizer, where given: one that has trained it already)."""
    model = model if model is not None else build_model(train)
    model.compile(
        optimizer=optimizer if optimizer is not None else build_optimizer(train),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model
