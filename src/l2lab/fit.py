"""The training loop: seeded index batches into the splits (resident on the training device), Keras fit,
one log line and history row per epoch."""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context

from l2lab.augment import flip_crop
from l2lab.data import TENSOR_ALIGNMENT
from l2lab.devices import prepare_device
from l2lab.errors import L2labError
from l2lab.model import build_model, compile_model
from l2lab.norms import ABS_EDGES, abs_histogram, abs_quantiles, kernels, weight_norms
from l2lab.params import TrainParams
from l2lab.process import raise_if_stopped

log = logging.getLogger(__name__)

EpochSink = Callable[[int, dict[str, float]], None]  # (epoch, that epoch's logs) -> None
PREFETCH = 2  # index batches made ahead of the one training uses
VAL_BATCH = 256  # images per validation step: results do not depend on it; 1024 cost 240 MB more peak memory
MAX_STEPS_PER_EXECUTION = 32  # training steps per call into the compiled graph: less Python per step
CHANCE_LOSS = math.log(10)  # cross-entropy of guessing uniformly among 10 classes
EXPLODED_LOSS = 100.0  # a data loss this far above chance (43x) is no result but a diverged run


class DivergedError(L2labError):
    """The loss became NaN or infinite."""


def make_deterministic(seed: int) -> None:
    """Seed Python, numpy and TensorFlow, and ask TensorFlow for deterministic kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


@dataclass(frozen=True)
class Batches:
    """Index batches into one split's table, and how many batches make one pass over the split.

    The table (images, labels) lives on the training device; the gather happens there, inside
    the training step (DeviceResident), so the input pipeline only shuffles indices.
    """

    dataset: tf.data.Dataset
    steps: int
    table: tuple[tf.Tensor, tf.Tensor]


def host_table(x: np.ndarray) -> tf.Tensor:
    """x as a CPU tensor: the array's own memory where it is C-ordered, writable (DLPack exports no
    read-only arrays) and 64-byte aligned (as data.load_split reads it; TensorFlow requires that
    alignment), else a copy."""
    if x.flags.c_contiguous and x.flags.writeable and x.ctypes.data % TENSOR_ALIGNMENT == 0 and x.size:
        return tf.experimental.dlpack.from_dlpack(x.__dlpack__())  # shares x's memory, keeps x alive
    return tf.constant(x)


def split_table(x: np.ndarray, y: np.ndarray, device: str) -> tuple[tf.Tensor, tf.Tensor]:
    """(images, int64 labels) of one split on device: on the CPU the arrays' own memory, elsewhere one copy."""
    labels = y.astype(np.int64, copy=False)
    if tf.DeviceSpec.from_string(device).device_type == "CPU":
        return host_table(x), host_table(labels)
    with tf.device(device):
        return tf.identity(tf.constant(x)), tf.identity(tf.constant(labels))


@contextmanager
def no_global_seed() -> Iterator[None]:
    """TensorFlow's global seed unset within the block, as in a fresh process, and put back after.

    A shuffle's seeds are fixed when the dataset is made: (global seed, seed) once a global seed
    is set, (DEFAULT_GRAPH_SEED, seed) before. The train stage makes its datasets before fit
    seeds TensorFlow; a fit earlier in the same process must not change the order.
    """
    saved = context.global_seed()
    tf.random.set_seed(None)
    try:
        yield
    finally:
        if saved is not None:
            tf.random.set_seed(saved)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, device: str, seed: int | None = None,
            passes: int = 1) -> Batches:
    """`passes` passes over (x, y) as index batches, each pass reshuffled (seeded) when seed is given,
    else in order; the last batch of each pass may be smaller.

    Training reads all its epochs from one dataset (fit is given steps_per_epoch): Keras
    then keeps one iterator for the whole run instead of building a new one each epoch,
    whose start can stall an epoch (docs/performance.md has the figures).
    """
    order = tf.data.Dataset.range(len(x))
    if seed is not None:
        with no_global_seed():
            order = order.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    dataset = order.batch(batch_size).repeat(passes).prefetch(PREFETCH).with_options(pipeline_options())
    return Batches(dataset, math.ceil(len(x) / batch_size), split_table(x, y, device))


def pipeline_options() -> tf.data.Options:
    """No autotuning: its background thread makes a run wait when the iterator is freed after the last
    epoch (docs/performance.md), and a fixed 2-batch prefetch keeps up."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


class DeviceResident(keras.Model):
    """Trains network on index batches, gathering images and labels from the split's table on the device
    (and augmenting the training images there, when train.augment asks)."""

    def __init__(self, network: keras.Model, train_table: tuple[tf.Tensor, tf.Tensor],
                 val_table: tuple[tf.Tensor, tf.Tensor] | None, augment: str = "none", seed: int = 0) -> None:
        super().__init__(name=f"{network.name}_on_device")
        self.network, self.train_table, self.val_table = network, train_table, val_table
        self.augment, self.seed = augment, seed

    def call(self, inputs, training=False):  # noqa: ANN001
        return self.network(inputs, training=training)

    @staticmethod
    def _gather(table, index):  # noqa: ANN001, ANN205
        images, labels = table
        return tf.gather(images, index), tf.gather(labels, index)

    def train_step(self, index):  # noqa: ANN001
        images, labels = self._gather(self.train_table, index)
        if self.augment == "flip_crop":  # seeded by (train.seed, this step's number): same params, same images
            step = tf.cast(self.optimizer.iterations, tf.int64)
            images = flip_crop(images, tf.stack([tf.constant(self.seed, tf.int64), step]))
        return super().train_step((images, labels))

    def test_step(self, index):  # noqa: ANN001
        return super().test_step(self._gather(self.val_table, index))


def steps_per_execution(steps: int, limit: int = MAX_STEPS_PER_EXECUTION) -> int:
    """The largest divisor of an epoch's steps that is at most limit.

    Keras runs whole chunks of steps_per_execution steps; a chunk that straddles two
    epochs would move the epoch boundary (71 steps in chunks of 32 ran epochs of 96,
    96 and 21 steps), so the chunk must divide the epoch.
    """
    return max(d for d in range(1, min(steps, limit) + 1) if steps % d == 0)


class EpochReport(keras.callbacks.Callback):
    """Adds the penalty, kernel norms and timing to Keras's epoch logs, logs one line, hands them to sink.

    Keras passes the same logs dict on to its History callback, so the history and
    the sink (MLflow) see the same numbers.
    """

    def __init__(self, epochs: int, sink: EpochSink) -> None:
        super().__init__()
        self.epochs, self.sink = epochs, sink
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        raise_if_stopped()  # Ctrl-C or a guard's SIGINT that TensorFlow's tracing swallowed: stop here
        logs = logs if logs is not None else {}
        logs.update(weight_terms(self.model))
        logs["epoch_seconds"] = time.perf_counter() - self.started
        step = epoch + 1
        val = (f" val_loss {logs['val_loss']:.4f} val_accuracy {logs['val_accuracy']:.4f}" if "val_loss" in logs
               else "")  # a refit validates on nothing
        log.info("epoch %d/%d: loss %.4f accuracy %.4f%s weight_norm %.3f (%.1f s)", step, self.epochs, logs["loss"],
                 logs["accuracy"], val, logs["weight_norm.total"], logs["epoch_seconds"])
        if not math.isfinite(logs["loss"]):
            raise DivergedError(
                f"training diverged at epoch {step}: loss is {logs['loss']}; "
                "lower train.learning_rate or the penalty (train.l2, train.l1)"
            )
        data_loss = logs["loss"] - logs["penalty"]  # cross-entropy part (the penalty as at the epoch's end)
        if data_loss > EXPLODED_LOSS:
            raise DivergedError(
                f"training diverged at epoch {step}: loss {data_loss:.3g} without the penalty, far above "
                f"chance ({CHANCE_LOSS:.2f}); lower train.learning_rate"
            )
        self.sink(step, {k: float(v) for k, v in logs.items()})


class StopWhen(keras.callbacks.Callback):
    """Ends training after an epoch when should_stop(epoch, val_accuracy) says so (a tune trial's pruner),
    before the last one; every epoch is asked, the last too (a pruner learns from it). stopped_at: the last
    epoch trained, counted from 1, when it stopped early (None: it trained every epoch)."""

    def __init__(self, should_stop: Callable[[int, float], bool], epochs: int) -> None:
        super().__init__()
        self.should_stop, self.epochs, self.stopped_at = should_stop, epochs, None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        step = epoch + 1
        if self.should_stop(step, float((logs or {})["val_accuracy"])) and step < self.epochs:
            self.model.stop_training = True
            self.stopped_at = step
            log.info("epoch %d/%d: the tune's pruner stopped this trial", step, self.epochs)


def weight_terms(model: keras.Model) -> dict[str, float]:
    """The penalty Keras adds to the loss (model.losses: l2 * sum(W**2) + l1 * sum(|W|)), kernel norms, |w|
    quantiles."""
    ks = kernels(model)
    penalty = float(sum(float(term) for term in model.losses))
    return {"penalty": penalty, **{f"weight_norm.{name}": v for name, v in weight_norms(ks).items()},
            **{f"weight_abs.{name}": v for name, v in abs_quantiles(ks).items()}}


class WeightHistograms(keras.callbacks.Callback):
    """Per layer, a histogram of |w| (norms.ABS_EDGES) before training (epoch 0) and after every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float | int | str]] = []  # epoch, layer, bin_low, bin_high, count

    def record(self, epoch: int) -> None:
        for layer, kernel in kernels(self.model).items():
            for low, high, count in zip(ABS_EDGES[:-1], ABS_EDGES[1:], abs_histogram(kernel)):
                self.rows.append({"epoch": epoch, "layer": layer, "bin_low": float(low), "bin_high": float(high),
                                  "count": int(count)})

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.record(0)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.record(epoch + 1)


def input_pipelines(train: TrainParams, train_xy: tuple[np.ndarray, np.ndarray], val_xy: tuple[np.ndarray, np.ndarray],
                    device: str | None = None) -> tuple[Batches, Batches | None]:
    """(train, val) batches with both splits resident on the training device (default: the one
    devices.prepare_device chooses): one copy on a GPU; on the CPU the tables are the arrays themselves.
    val is None for a split without images (a refit: the whole pool trains)."""
    if device is None:
        device = prepare_device().name
    return (batches(*train_xy, train.batch_size, device, seed=train.seed, passes=train.epochs),
            batches(*val_xy, VAL_BATCH, device) if len(val_xy[1]) else None)


def fit(train: TrainParams, data: Batches, val: Batches | None, sink: EpochSink,
        callbacks: Sequence[keras.callbacks.Callback] = ()) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train a fresh model; return it and its history: one row per epoch, "epoch" counted from 1.

    callbacks run after the project's own (which stop on NaN and report each epoch).
    """
    make_deterministic(train.seed)
    # mixed_float16: compile wraps the optimizer in Keras's LossScaleOptimizer (dynamic loss scaling).
    keras.mixed_precision.set_global_policy(train.precision)
    network = build_model(train)
    model = DeviceResident(network, data.table, val.table if val else None, train.augment, train.seed)
    model = compile_model(train, steps_per_execution(data.steps), model, steps_per_epoch=data.steps)
    history = model.fit(
        data.dataset,
        steps_per_epoch=data.steps,
        validation_data=val.dataset if val else None,
        epochs=train.epochs,
        callbacks=[keras.callbacks.TerminateOnNaN(), EpochReport(train.epochs, sink), *callbacks],
        shuffle=False,  # the dataset reshuffles itself, seeded
        verbose=0,
    )
    # Keras trains the wrapper (its compiled state drives fit; a nested model's own is ignored), and saves the
    # network: handing the network the trained optimizer is a compile call, which traces nothing.
    compile_model(train, model=network, optimizer=model.optimizer)  # saved with it: state and settings, as trained
    rows = {"epoch": [e + 1 for e in history.epoch]}
    return network, rows | {k: [float(v) for v in values] for k, values in history.history.items()}
