"""The training loop in process, on tiny arrays: an epoch is one pass over the data, whatever N and batch size."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2lab import fit as fit_module
from l2lab.fit import DivergedError, batches, fit, input_pipelines, steps_per_execution
from l2lab.params import TrainParams
from l2lab.synthetic import draw_images

TRAIN = dict(seed=3, l2=0.001, l1=0.0, weight_decay=0.0, learning_rate=0.001, batch_size=64, epochs=3,
             precision="float32")


def test_steps_per_execution_divides_every_epoch() -> None:
    for steps in range(1, 800):
        chunk = steps_per_execution(steps)
        assert steps % chunk == 0 and 1 <= chunk <= fit_module.MAX_STEPS_PER_EXECUTION
    assert [steps_per_execution(s) for s in (704, 71, 5, 450, 352)] == [32, 1, 5, 30, 32]


@pytest.mark.parametrize(("n", "batch_size"), [(70, 16), (71, 8), (64, 64)])
def test_each_pass_holds_every_image_once_and_reshuffles(n: int, batch_size: int) -> None:
    x = np.zeros((n, 32, 32, 3), np.uint8)
    y = np.arange(n)
    data = batches(x, y, batch_size, "/CPU:0", seed=5, passes=3)
    seen = [index.numpy() for index in data.dataset]
    assert len(seen) == 3 * data.steps and data.steps == -(-n // batch_size)
    passes = [np.concatenate(seen[i * data.steps : (i + 1) * data.steps]) for i in range(3)]
    for order in passes:
        assert sorted(order) == list(range(n))
    assert not np.array_equal(passes[0], passes[1])  # reshuffled each epoch


def test_on_the_cpu_the_table_is_the_arrays_own_memory_when_aligned(tmp_path) -> None:  # noqa: ANN001
    from l2lab.data import aligned_empty, load_split, save_split

    rng = np.random.default_rng(0)
    save_split(tmp_path / "s.npz", rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 50))
    x, y = load_split(tmp_path / "s.npz")  # read into aligned memory
    images, labels = batches(x, y, 16, "/CPU:0").table
    x[7, 1, 2, 0] = 255 - x[7, 1, 2, 0]
    y[3] = 11
    assert images.numpy()[7, 1, 2, 0] == x[7, 1, 2, 0] and labels.numpy()[3] == 11  # shared, not copied
    unaligned = np.frombuffer(b"\0" + x.tobytes(), np.uint8, offset=1).reshape(x.shape)
    copied, _ = batches(unaligned, y, 16, "/CPU:0").table
    assert np.array_equal(copied.numpy(), x)  # an array TensorFlow cannot share is copied, same values
    read_only = aligned_empty(x.shape, np.uint8)
    read_only[...] = x
    read_only.flags.writeable = False  # aligned, but DLPack does not export it: copied too
    assert np.array_equal(batches(read_only, y, 16, "/CPU:0").table[0].numpy(), x)


class Steps(keras.callbacks.Callback):
    """The optimizer's step count at each epoch's end."""

    def __init__(self) -> None:
        super().__init__()
        self.at_end: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.at_end.append(int(self.model.optimizer.iterations.numpy()))


def learnable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-coloured shapes over noise (the demo's images): a small CNN learns them in a few epochs."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    return draw_images(y, rng), y.astype(np.int64)


# (N, batch): 71 steps of 8 is prime (one step per execution), 300/64 ends on a short batch,
# 320/32 divides evenly. Under the old fixed 32-step executions 71 steps ran epochs of 96, 96 and 21.
@pytest.mark.parametrize(("n", "batch_size"), [(568, 8), (300, 64), (320, 32)])
def test_every_epoch_trains_on_every_image_once(monkeypatch: pytest.MonkeyPatch, n: int, batch_size: int) -> None:
    train = TrainParams(**{**TRAIN, "batch_size": batch_size})
    x, y = learnable(n, seed=0)
    gathered = []
    real_batches = fit_module.batches

    def counting(*args: object, **kwargs: object) -> fit_module.Batches:
        """The same batches, counting the indices each one hands to the training step."""
        made = real_batches(*args, **kwargs)

        def count(index: np.ndarray) -> np.ndarray:
            gathered.append(len(index))
            return index

        counted = made.dataset.map(lambda index: tf.ensure_shape(tf.numpy_function(count, [index], tf.int64), (None,)))
        return fit_module.Batches(counted, made.steps, made.table)

    monkeypatch.setattr(fit_module, "batches", counting)
    data, val = input_pipelines(train, (x, y), learnable(40, seed=1))
    rows: list[tuple[int, dict[str, float]]] = []
    steps = Steps()
    model, history = fit(train, data, val, lambda epoch, logs: rows.append((epoch, logs)), [steps])

    per_epoch = -(-n // batch_size)
    assert steps.at_end == [per_epoch * e for e in (1, 2, 3)]  # every epoch is exactly one pass of steps
    assert sum(gathered) == 3 * n + 40 * 3  # 3 passes over train, one val pass per epoch: nothing more
    assert history["epoch"] == [1, 2, 3] and [epoch for epoch, _ in rows] == [1, 2, 3]
    assert history["loss"][2] < history["loss"][0]  # it learns
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "penalty", "weight_norm.total", "epoch_seconds"):
        assert len(history[key]) == 3, key
        assert [logs[key] for _, logs in rows] == history[key], key  # the sink and the history: one dict
    assert history["penalty"][-1] == pytest.approx(float(sum(float(t) for t in model.losses)), rel=1e-6)


@pytest.mark.fault
def test_an_exploding_loss_ends_the_run_as_diverged() -> None:
    """learning_rate = 10 gave loss 1.96e9 and a FINISHED run that looked like a result."""
    train = TrainParams(**{**TRAIN, "learning_rate": 10.0, "batch_size": 16, "epochs": 3})
    data, val = input_pipelines(train, learnable(320, seed=0), learnable(40, seed=1))
    with pytest.raises(DivergedError, match=r"^training diverged at epoch 1: loss [0-9.]+e\+[0-9]+ without the "
                                            r"penalty, far above chance \(2.30\); lower train.learning_rate$"):
        fit(train, data, val, lambda epoch, logs: None)


def test_weight_histograms_cover_every_kernel_weight_each_epoch() -> None:
    from l2lab.fit import WeightHistograms
    from l2lab.norms import ABS_EDGES

    train = TrainParams(**{**TRAIN, "epochs": 2, "l1": 1e-3})
    data, val = input_pipelines(train, learnable(128, seed=0), learnable(20, seed=1))
    histograms = WeightHistograms()
    model, history = fit(train, data, val, lambda epoch, logs: None, [histograms])
    rows = histograms.rows
    sizes = {layer.name: int(np.prod(layer.kernel.shape)) for layer in model.layers if hasattr(layer, "kernel")}
    assert {r["epoch"] for r in rows} == {0, 1, 2}  # before training, then after each epoch
    for epoch in (0, 1, 2):
        for layer, size in sizes.items():
            counts = [r["count"] for r in rows if r["epoch"] == epoch and r["layer"] == layer]
            assert len(counts) == len(ABS_EDGES) - 1 and sum(counts) == size
    assert {"weight_abs.p10", "weight_abs.p50", "weight_abs.p90"} <= set(history)
    assert history["weight_abs.p10"][-1] <= history["weight_abs.p50"][-1] <= history["weight_abs.p90"][-1]


def test_mixed_float16_trains_with_loss_scaling_and_float32_outputs() -> None:
    from keras.src.optimizers.loss_scale_optimizer import LossScaleOptimizer

    from l2lab.devices import prepare_device

    device, gpus = prepare_device(), tf.config.list_physical_devices("GPU")  # the device TensorFlow trains on
    assert (device.name, device.label) == ("/CPU:0", "CPU") if not gpus else device.label.startswith("GPU:0 (")
    train = TrainParams(**{**TRAIN, "epochs": 1, "precision": "mixed_float16"})
    x, y = learnable(128, seed=1)
    data, val = input_pipelines(train, (x, y), (x[:64], y[:64]))
    try:
        model, history = fit(train, data, val, lambda epoch, logs: None)
        assert isinstance(model.optimizer, LossScaleOptimizer)  # float16 gradients are scaled, not lost
        assert model.get_layer("conv1").compute_dtype == "float16"
        assert model.get_layer("conv1").kernel.dtype == "float32"  # variables stay float32
        assert model.output.dtype == "float32"  # the softmax too
        assert np.isfinite(history["loss"][0]) and np.isfinite(history["val_loss"][0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def host_gather_fit(train: TrainParams, train_xy: tuple[np.ndarray, np.ndarray],
                    val_xy: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, list[float]], list[np.ndarray]]:
    """The reference: the plain network fitted on batches gathered from the numpy arrays by tf.data (l2lab's
    own pipeline before the splits became device-resident tables), the same seeded shuffle and settings."""
    from l2lab.model import build_model, compile_model

    def host_batches(x: np.ndarray, y: np.ndarray, size: int, seed: int | None, passes: int) -> tf.data.Dataset:
        def gather(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return x[index], y.astype(np.int64)[index]

        def load(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            images, targets = tf.numpy_function(gather, [index], (tf.uint8, tf.int64), stateful=False)
            return tf.ensure_shape(images, (None, *x.shape[1:])), tf.ensure_shape(targets, (None,))

        order = tf.data.Dataset.range(len(x))
        if seed is not None:
            with fit_module.no_global_seed():  # as the train stage makes it: before any global seed is set
                order = order.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        return order.batch(size).repeat(passes).map(load).prefetch(2).with_options(fit_module.pipeline_options())

    data = host_batches(*train_xy, train.batch_size, train.seed, train.epochs)
    val = host_batches(*val_xy, fit_module.VAL_BATCH, None, 1)
    steps = -(-len(train_xy[0]) // train.batch_size)
    fit_module.make_deterministic(train.seed)
    network = compile_model(train, steps_per_execution(steps), build_model(train))
    history = network.fit(data, steps_per_epoch=steps, validation_data=val, epochs=train.epochs, shuffle=False,
                          verbose=0)
    return history.history, [w.numpy() for w in network.weights]


def test_the_device_resident_pipeline_trains_the_same_model_as_a_host_side_gather() -> None:
    """The splits are tables on the training device and batches are gathered inside the step (on a GPU and,
    sharing the arrays' memory, on the CPU): it must train the very same model as gathering each batch on
    the host from the arrays, with the same images in the same order."""
    train = TrainParams(**{**TRAIN, "epochs": 2, "batch_size": 32})
    train_xy, val_xy = learnable(200, seed=0), learnable(48, seed=1)
    keras.utils.set_random_seed(0)  # whatever global seed an earlier fit left: the shuffles do not follow it
    host, host_weights = host_gather_fit(train, train_xy, val_xy)
    keras.utils.set_random_seed(123)
    data, val = input_pipelines(train, train_xy, val_xy)
    model, history = fit(train, data, val, lambda epoch, logs: None)
    assert model.name == "seed_cnn"  # the network itself, as the train stage saves it
    for key, values in host.items():
        assert history[key] == [float(v) for v in values], key  # every epoch, exactly
    assert all(np.array_equal(a, b) for a, b in zip(host_weights, [w.numpy() for w in model.weights]))


TWICE = r"""
import hashlib, json, sys
import numpy as np
from l2lab.imports import quiet_tensorflow
quiet_tensorflow()
from l2lab.fit import fit, input_pipelines
from l2lab.params import TrainParams
from l2lab.synthetic import draw_images

def learnable(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    return draw_images(y, rng), y.astype(np.int64)

train = TrainParams(**{**dict(seed=3, l2=1e-3, l1=0.0, weight_decay=0.0, learning_rate=1e-3, batch_size=32,
                               epochs=2, precision="float32"), **json.loads(sys.argv[2])})
out = []
for _ in range(int(sys.argv[1])):  # as the train stage does: the splits' batches first, then fit
    data, val = input_pipelines(train, learnable(256, 0), learnable(64, 1))
    model, history = fit(train, data, val, lambda epoch, logs: None)
    weights = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
    out.append({"loss": history["loss"], "val_accuracy": history["val_accuracy"], "weights": weights})
print(json.dumps(out))
"""


# Adam at a constant rate (the default), and SGD with Nesterov momentum, decoupled decay (SGDW), a cosine
# schedule with warm-up and flip-and-crop augmentation: each the same, bit for bit, in a fresh process.
@pytest.mark.parametrize("overrides", [{}, {"optimizer": "sgd", "learning_rate": 0.05, "weight_decay": 5e-4,
                                            "schedule": "cosine", "warmup_epochs": 1, "augment": "flip_crop"}])
def test_a_second_fit_in_one_process_gives_what_a_fresh_process_gives(overrides: dict) -> None:
    """The second fit's shuffle was seeded by the global seed the first had set (lambda 1e-4: val_accuracy
    0.4758 after another fit, 0.4814 in a fresh process). Subprocesses: pytest has trained already."""
    import json
    import subprocess
    import sys

    def runs(count: int) -> list[dict]:
        proc = subprocess.run([sys.executable, "-c", TWICE, str(count), json.dumps(overrides)], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first, second = runs(2)
    (fresh,) = runs(1)
    assert first == fresh and second == fresh  # history and weights, bit for bit


def test_flip_crop_gives_each_image_a_flipped_or_not_and_shifted_copy_of_itself() -> None:
    from l2lab.augment import PAD, flip_crop

    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (16, 32, 32, 3), dtype=np.uint8)  # no zeros: padding shows as 0
    out = flip_crop(tf.constant(images), tf.constant([7, 3], tf.int64)).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    shapes = set()
    for image, got in zip(images, out):
        matches = [(flipped, top, left)
                   for flipped, source in ((False, image), (True, image[:, ::-1]))
                   for top in range(2 * PAD + 1) for left in range(2 * PAD + 1)
                   if np.array_equal(np.pad(source, ((PAD, PAD), (PAD, PAD), (0, 0)))[top:top + 32, left:left + 32],
                                     got)]
        assert matches, "not a flip and crop of its own image"
        shapes.add(matches[0])
    assert len(shapes) > 4  # the offsets and flips vary from image to image
    again = flip_crop(tf.constant(images), tf.constant([7, 3], tf.int64)).numpy()
    other = flip_crop(tf.constant(images), tf.constant([7, 4], tf.int64)).numpy()
    assert np.array_equal(out, again) and not np.array_equal(out, other)  # the seed decides, and only it


def test_augmentation_changes_training_but_never_the_validation_images() -> None:
    x, y = learnable(256, 0)
    val = learnable(64, 1)
    histories = {}
    for augment in ("none", "flip_crop"):
        train = TrainParams(**{**TRAIN, "epochs": 2, "batch_size": 32, "augment": augment})
        data, val_batches = input_pipelines(train, (x, y), val)
        model, history = fit(train, data, val_batches, lambda epoch, logs: None)
        histories[augment] = history
        # val_accuracy is the trained network's accuracy on the raw validation images
        predicted = model.predict(val[0], verbose=0).argmax(axis=1)
        assert history["val_accuracy"][-1] == pytest.approx(float(np.mean(predicted == val[1])), abs=1e-6)
    assert histories["none"]["loss"] != histories["flip_crop"]["loss"]


def test_a_refit_without_validation_trains_the_same_model_as_one_that_validates(caplog) -> None:  # noqa: ANN001
    """data.fold all validates on nothing: the epochs' lines and history leave val out, and the weights are those
    of the same training with a validation split (validating never touches them)."""
    train = TrainParams(**{**TRAIN, "epochs": 2})
    x, y = learnable(200, seed=0)
    empty = (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64))
    data, val = input_pipelines(train, (x, y), empty)
    assert val is None
    refit, history = fit(train, data, val, lambda epoch, logs: None)
    assert "val_accuracy" not in history and len(history["accuracy"]) == 2
    assert "epoch 2/2: loss" in caplog.text and "val_loss" not in caplog.text
    data, val = input_pipelines(train, (x, y), learnable(40, seed=1))
    validated, _ = fit(train, data, val, lambda epoch, logs: None)
    for a, b in zip(refit.get_weights(), validated.get_weights()):
        assert np.array_equal(a, b)
