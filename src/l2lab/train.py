"""Train the CNN on the train split, validating on the val split every epoch."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from l2lab.errors import L2labError
from l2lab.model import compile_model
from l2lab.norms import kernels, l1_penalty, l2_penalty, weight_norms
from l2lab.params import Params, TrainParams

log = logging.getLogger(__name__)

EpochSink = Callable[[int, dict[str, float]], None]  # (epoch, metrics) -> None
PREFETCH = 2  # batches gathered ahead of the one training uses
VAL_BATCH = 256  # images per validation step: results do not depend on it; 1024 cost 240 MB more peak memory


class DivergedError(L2labError):
    """The loss became NaN or infinite."""


def make_deterministic(seed: int) -> None:
    """Seed Python, numpy and TensorFlow, and ask TensorFlow for deterministic kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


@dataclass(frozen=True)
class Batches:
    """A dataset of (uint8 images, int64 labels) batches and how many make one pass over the split."""

    dataset: tf.data.Dataset
    steps: int


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None = None, passes: int = 1) -> Batches:
    """`passes` passes over (x, y), each reshuffled (seeded) when seed is given, else in order.

    The pipeline shuffles indices and gathers a whole batch from the numpy arrays at
    once: its cost is per batch, not per image (on 2 cores every cycle it takes is
    one training does not get), and the images are never copied into a tensor, so
    the stage holds one 138 MB copy of CIFAR-10's training split, not two.

    Training reads all its epochs from one dataset (fit is given steps_per_epoch): Keras
    then keeps one iterator for the whole run instead of building a new one each epoch,
    which stalled some epochs by 3-5 s here (a third of a CIFAR-10 epoch). It ends
    exactly after the last epoch, so no gather is in flight when the iterator goes.
    """
    labels = y.astype(np.int64, copy=False)

    def gather(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[index], labels[index]  # (B, 32, 32, 3) uint8, (B,) int64

    def load(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images, targets = tf.numpy_function(gather, [index], (tf.uint8, tf.int64), stateful=False)
        return tf.ensure_shape(images, (None, *x.shape[1:])), tf.ensure_shape(targets, (None,))

    order = tf.data.Dataset.range(len(x))
    if seed is not None:
        order = order.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    order = order.batch(batch_size).repeat(passes)  # the last batch of each pass may be smaller
    steps = math.ceil(len(x) / batch_size)
    # No autotuning: its background thread made every training run wait 15-20 s here when
    # the iterator was freed (after the last epoch), and a fixed 2-batch prefetch keeps up.
    options = tf.data.Options()
    options.autotune.enabled = False
    return Batches(order.map(load).prefetch(PREFETCH).with_options(options), steps)


class EpochReport(keras.callbacks.Callback):
    """Adds penalties, kernel norms and timing to each epoch's logs, logs one line, calls sink."""

    def __init__(self, train: TrainParams, sink: EpochSink) -> None:
        super().__init__()
        self.train, self.sink = train, sink
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = epoch_metrics(self.model, self.train, logs or {})
        metrics["epoch_seconds"] = time.perf_counter() - self.started
        step = epoch + 1
        log.info(
            "epoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f weight_norm %.3f (%.1f s)",
            step, self.train.epochs, metrics["loss"], metrics["accuracy"], metrics["val_loss"],
            metrics["val_accuracy"], metrics["weight_norm.total"], metrics["epoch_seconds"],
        )
        if not math.isfinite(metrics["loss"]):
            raise DivergedError(
                f"training diverged at epoch {step}: loss is {metrics['loss']}; "
                "lower train.learning_rate or the penalty (train.l2, train.l1)"
            )
        self.sink(step, metrics)


def epoch_metrics(model: keras.Model, train: TrainParams, logs: dict) -> dict[str, float]:
    """Keras's epoch logs plus the penalty terms and per-layer kernel norms."""
    ks = kernels(model)
    metrics = {k: float(v) for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    metrics["l2_penalty"] = l2_penalty(ks, train.l2)
    if train.l1:
        metrics["l1_penalty"] = l1_penalty(ks, train.l1)
    metrics.update({f"weight_norm.{name}": v for name, v in weight_norms(ks).items()})
    return metrics


def input_pipelines(params: Params, train_xy: tuple[np.ndarray, np.ndarray],
                    val_xy: tuple[np.ndarray, np.ndarray]) -> tuple[Batches, Batches]:
    """(train, val) batches reading from the arrays given (no copies)."""
    train = batches(*train_xy, params.train.batch_size, seed=params.seed, passes=params.train.epochs)
    return train, batches(*val_xy, VAL_BATCH)


def fit(params: Params, train: Batches, val: Batches, sink: EpochSink) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train a fresh model; return it and its per-epoch history (what sink was given)."""
    make_deterministic(params.seed)
    keras.mixed_precision.set_global_policy(params.train.precision)
    model = compile_model(params.train, params.seed)
    history: dict[str, list[float]] = {}

    def record(step: int, metrics: dict[str, float]) -> None:
        for key, value in {"epoch": step, **metrics}.items():
            history.setdefault(key, []).append(value)
        sink(step, metrics)

    model.fit(
        train.dataset,
        steps_per_epoch=train.steps,
        validation_data=val.dataset,
        epochs=params.train.epochs,
        callbacks=[keras.callbacks.TerminateOnNaN(), EpochReport(params.train, record)],
        shuffle=False,  # the dataset reshuffles itself, seeded
        verbose=0,
    )
    return model, history
