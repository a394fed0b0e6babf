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


def learning_rate(train: TrainParams, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """train.learning_rate, constant; or, for schedule cosine, a cosine decay from it to 0 over every
    step of the run (epochs x steps_per_epoch), after warmup_epochs of linear ramp from 0 to it."""
    if train.schedule == "constant":
        return train.learning_rate
    total, warmup = train.epochs * steps_per_epoch, train.warmup_epochs * steps_per_epoch
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(train.learning_rate, decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total - warmup, warmup_target=train.learning_rate,
                                                  warmup_steps=warmup)


def build_optimizer(train: TrainParams, steps_per_epoch: int = 1) -> keras.optimizers.Optimizer:
    """Adam, or SGD with momentum (Nesterov where asked); weight_decay > 0 adds Keras's decoupled decay,
    w -= lr_t * weight_decay * w each step, on kernels only: AdamW and SGDW. The penalty train.l2 is
    in the loss (model.py's regularizers), so its gradient goes through the optimizer (and, under
    Adam, through its per-weight scaling), which decoupled decay does not."""
    lr = learning_rate(train, steps_per_epoch)
    decay = train.weight_decay if train.weight_decay > 0 else None
    if train.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=train.momentum, nesterov=train.nesterov,
                                         weight_decay=decay)
    elif decay is None:
        return keras.optimizers.Adam(learning_rate=lr)
    else:
        optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=decay)
    if decay is not None:
        optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def compile_model(train: TrainParams, steps_per_execution: int = 1, model: keras.Model | None = None,
                  optimizer: keras.optimizers.Optimizer | None = None, steps_per_epoch: int = 1) -> keras.Model:
    """model (default: a freshly initialised network, train.seed), compiled for these training params
    (with optimizer, where given: one that has trained it already; else a new one, its schedule over
    steps_per_epoch steps an epoch)."""
    model = model if model is not None else build_model(train)
    model.compile(
        optimizer=optimizer if optimizer is not None else build_optimizer(train, steps_per_epoch),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model
