"""Where a training step's time goes: l2lab's loop with one part changed at a time.

Each variant trains the same network on the same generated images in a fresh process,
(default 12,800 images, batch 64, 3 epochs; the first is not timed) and prints images/s
and the ratio to the full loop, so the cost of each part shows as the speed gained
without it: the input pipeline (against gathering each batch from the numpy arrays through
tf.numpy_function, as l2lab did before, and slicing a tensor copy in tf.data), the accuracy
metric, the L2 terms, op determinism, Adam (against plain SGD), and two other ways to
run the same step (XLA; one op at a time), and, where PyTorch is installed, the same
network in a plain PyTorch loop. A benchmark, not a test: nothing asserts a timing.

With --ops, a per-op profile instead: where one epoch of l2lab's training step spends its
time in TensorFlow (TensorFlow's profiler, self time by op type), next to the same network's
step in the PyTorch loop (torch.profiler, self time by op). Run it again under
`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` for the kernels of a CPU without AVX-512.

    python bench/step_profile.py [--images N] [--epochs E] [--repeats R] [--ops]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 64
VARIANTS = {
    "full": "l2lab's loop as the train stage runs it (batches gathered inside the step)",
    "host_gather": "batches gathered from the numpy arrays by tf.data (numpy_function), as before",
    "tensor_input": "batches sliced by tf.data from a tensor copy of the split",
    "no_accuracy": "without the accuracy metric",
    "no_l2": "without the L2 terms (train.l2 = 0)",
    "no_determinism": "without enable_op_determinism",
    "sgd": "plain SGD instead of Adam",
    "xla": "the training step compiled with XLA (jit_compile=True)",
    "one_op_at_a_time": "TensorFlow running one op at a time (inter_op_parallelism_threads=1)",
}


def generated(images: int):
    """Random uint8 images and int64 labels, the images in aligned memory as the train stage reads its splits."""
    import numpy as np

    from l2lab.data import aligned_empty

    rng = np.random.default_rng(0)
    x = aligned_empty((images, 32, 32, 3), np.uint8)
    x[...] = rng.integers(0, 256, size=x.shape, dtype=np.uint8)
    return x, rng.integers(0, 10, size=images).astype(np.int64)


def host_gather(x, y, seed: int | None, passes: int):
    """l2lab's input pipeline before the splits became tables in the training step: tf.data shuffles
    indices and gathers each batch from the numpy arrays (tf.numpy_function)."""
    import tensorflow as tf

    from l2lab.fit import PREFETCH, pipeline_options

    def load(index):
        images, labels = tf.numpy_function(lambda i: (x[i], y[i]), [index], (tf.uint8, tf.int64), stateful=False)
        return tf.ensure_shape(images, (None, *x.shape[1:])), tf.ensure_shape(labels, (None,))

    order = tf.data.Dataset.range(len(x))
    if seed is not None:
        order = order.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return order.batch(BATCH).repeat(passes).map(load).prefetch(PREFETCH).with_options(pipeline_options())


def run_variant(name: str, images: int, epochs: int) -> list[float]:
    """Images/s of each timed epoch for one variant, in this process."""
    sys.path.insert(0, str(REPO / "src"))
    import keras
    import tensorflow as tf

    from l2lab import fit as fitmod
    from l2lab.model import build_model
    from l2lab.params import load_params, parse_params

    if name == "one_op_at_a_time":
        tf.config.threading.set_inter_op_parallelism_threads(1)
    raw = load_params(REPO / "params.yaml").model_dump()
    raw["train"].update(batch_size=BATCH, epochs=epochs, l2=0.0 if name == "no_l2" else 0.001)
    train = parse_params(raw).train
    x, y = generated(images)
    xv, yv = x[:2048], y[:2048]
    if name == "no_determinism":
        keras.utils.set_random_seed(train.seed)
    else:
        fitmod.make_deterministic(train.seed)
    data, val = fitmod.input_pipelines(train, (x, y), (xv, yv))
    model = build_model(train)
    train_ds, val_ds = data.dataset, val.dataset
    if name == "host_gather":
        train_ds, val_ds = host_gather(x, y, train.seed, epochs), host_gather(xv, yv, None, 1)
    elif name == "tensor_input":
        train_ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(images, seed=train.seed).batch(BATCH)
        train_ds, val_ds = train_ds.repeat(epochs).prefetch(2), host_gather(xv, yv, None, 1)
    else:
        model = fitmod.DeviceResident(model, data.table, val.table)
    optimizer = keras.optimizers.SGD(0.01) if name == "sgd" else keras.optimizers.Adam(train.learning_rate)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=[] if name == "no_accuracy" else ["accuracy"],
                  steps_per_execution=fitmod.steps_per_execution(data.steps), jit_compile=name == "xla")
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    model.fit(train_ds, steps_per_epoch=data.steps, validation_data=val_ds, epochs=epochs,
              callbacks=[Timer()], verbose=0, shuffle=False)
    return [images / s for s in seconds[1:]]


def torch_variant(images: int, epochs: int) -> list[float]:
    sys.path.insert(0, str(Path(__file__).parent))
    import numpy as np

    import train_speed

    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, size=(images, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, size=images))
    train_speed.load_arrays = lambda _: (*arrays, arrays[0][:2048], arrays[1][:2048], "generated")
    result = train_speed.torch_side(epochs, None)
    return [images / s for s in result["epoch_seconds"][1:]]


def tf_op_profile(images: int, one_op_at_a_time: bool = False) -> list[tuple[str, float]]:
    """(op type, self milliseconds per training step) over l2lab's second epoch (the first traces the
    graph); validation on one batch, so that it does not count."""
    import glob
    import tempfile

    sys.path.insert(0, str(REPO / "src"))

    from l2lab.imports import quiet_tensorflow

    quiet_tensorflow()
    import keras
    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin

    from l2lab import fit as fitmod
    from l2lab.params import load_params, parse_params

    if one_op_at_a_time:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    raw = load_params(REPO / "params.yaml").model_dump()
    raw["train"].update(batch_size=BATCH, epochs=2, l2=0.001)
    train = parse_params(raw).train
    x, y = generated(images)
    data, val = fitmod.input_pipelines(train, (x, y), (x[:BATCH], y[:BATCH]))
    logdir = tempfile.mkdtemp()

    class Profile(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                tf.profiler.experimental.start(logdir)

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                tf.profiler.experimental.stop()

    fitmod.fit(train, data, val, lambda epoch, logs: None, [Profile()])
    xplane = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    table, ok = _pywrap_profiler_plugin.xspace_to_tools_data(xplane, "framework_op_stats", {})
    if not ok:
        raise SystemExit("TensorFlow's profiler gave no op statistics")
    table = json.loads(table)
    table = table[0] if isinstance(table, list) else table
    columns = [c["id"] for c in table["cols"]]
    kind, self_time = columns.index("type"), columns.index("total_self_time")
    device = columns.index("host_or_device")
    totals: dict[str, float] = {}
    for row in table["rows"]:
        cells = [c.get("v") if isinstance(c, dict) else c for c in row["c"]]
        if cells[device] != "Host" or cells[kind] == "IDLE":  # IDLE: threads waiting, not an op
            continue
        totals[cells[kind]] = totals.get(cells[kind], 0.0) + float(cells[self_time])  # microseconds
    return sorted(((name, t / 1e3 / data.steps) for name, t in totals.items()), key=lambda item: -item[1])


def torch_op_profile(steps: int = 200) -> list[tuple[str, float]]:
    """(op, self CPU milliseconds per training step) over `steps` steps of the PyTorch peer's loop."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 6 * 6, 128), nn.ReLU(), nn.Linear(128, 10),
    ).to(memory_format=torch.channels_last)
    kernels = [m.weight for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, size=(BATCH * 20, 32, 32, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    y = torch.from_numpy(rng.integers(0, 10, size=BATCH * 20))

    def step(i: int) -> None:
        idx = torch.arange(i % 20 * BATCH, (i % 20 + 1) * BATCH)
        images = x[idx].float().div_(255.0).contiguous(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(model(images), y[idx]) + 0.001 * sum((w * w).sum() for w in kernels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(20):
        step(i)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(i)
    totals = {e.key: e.self_cpu_time_total for e in prof.key_averages()}  # microseconds
    return sorted(((name, t / 1e3 / steps) for name, t in totals.items()), key=lambda item: -item[1])


def print_ops(title: str, ms: list[tuple[str, float]], top: int = 14) -> None:
    total = sum(t for _, t in ms)
    print(f"\n{title}: {total:.2f} ms of op time per step")
    for name, t in ms[:top]:
        print(f"  {t:6.3f} ms {t / total:6.1%}  {name}")
    rest = sum(t for _, t in ms[top:])
    print(f"  {rest:6.3f} ms {rest / total:6.1%}  the other {max(len(ms) - top, 0)} ops")


def print_primitives(verbose_log: str, steps: int, top: int = 8) -> None:
    """oneDNN's verbose lines summed by (primitive, implementation, direction, shape), per step. TensorFlow
    runs one op at a time for this (inter_op_parallelism_threads=1), as PyTorch does, so times do not overlap."""
    totals: dict[tuple[str, ...], float] = {}
    for line in verbose_log.splitlines():
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or len(fields) < 12 or fields[3] != "exec":
            continue
        # onednn_verbose,v1,primitive,exec,cpu,<kind>,<implementation>,<direction>,...,<shape>,<ms>
        key = (fields[5], fields[6], fields[7], fields[-2])
        totals[key] = totals.get(key, 0.0) + float(fields[-1])
    print(f"  oneDNN primitives, ms per step (every epoch's steps, warm-up included), "
          f"{sum(totals.values()) / steps:.2f} ms in all:")
    for (kind, impl, direction, shape), ms in sorted(totals.items(), key=lambda item: -item[1])[:top]:
        print(f"  {ms / steps:6.3f} ms  {kind} {direction} {impl or '-'}  {shape}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12_800)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds over all variants")
    parser.add_argument("--ops", action="store_true", help="per-op profile of a step, TensorFlow and PyTorch")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ops and args.variant:
        shares = torch_op_profile() if args.variant == "torch" else \
            tf_op_profile(args.images, one_op_at_a_time=args.variant == "tensorflow_one_op")
        print(json.dumps(shares))
        return
    if args.ops:
        import importlib.util

        isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or "none"
        for name in ["tensorflow"] + (["torch"] if importlib.util.find_spec("torch") else []):
            out = subprocess.run([sys.executable, __file__, "--ops", "--variant", name, "--images", str(args.images)],
                                 capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            if out.returncode != 0:
                raise SystemExit(f"{name} profile failed:\n{out.stderr[-2000:]}")
            ms = json.loads(out.stdout.strip().splitlines()[-1])
            what = (f"l2lab's training step (TensorFlow), one epoch of {args.images:,} images" if name == "tensorflow"
                    else "the PyTorch peer's step, 200 steps")
            print_ops(f"{what}, self time by op, kernel ISA cap {isa}", ms)
            # Again with oneDNN's own log: which implementation each convolution, pooling and matmul got.
            one_op = "tensorflow_one_op" if name == "tensorflow" else name
            out = subprocess.run([sys.executable, __file__, "--ops", "--variant", one_op, "--images", str(args.images)],
                                 capture_output=True, text=True,
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "ONEDNN_VERBOSE": "1"})
            steps = 2 * (args.images // BATCH) if name == "tensorflow" else 220  # both epochs; 20 + 200 steps
            print_primitives(out.stdout, steps)
        return
    if args.variant:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        rates = torch_variant(args.images, args.epochs) if args.variant == "torch" else \
            run_variant(args.variant, args.images, args.epochs)
        print(json.dumps(rates))
        return
    import importlib.util

    names = list(VARIANTS) + (["torch"] if importlib.util.find_spec("torch") else [])
    rates: dict[str, list[float]] = {n: [] for n in names}
    for round_ in range(args.repeats):
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--variant", name, "--images", str(args.images),
                                  "--epochs", str(args.epochs)], capture_output=True, text=True,
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            if out.returncode != 0:
                raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
            rates[name] += json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {round_ + 1} {name:>15}: {statistics.median(rates[name]):,.0f} images/s", flush=True)
    base = statistics.median(rates["full"])
    print(f"\n{args.images:,} generated images, batch {BATCH}, {args.epochs} epochs (first not timed), "
          f"{args.repeats} interleaved rounds; median images/s and ratio to the full loop")
    for name in names:
        median = statistics.median(rates[name])
        what = VARIANTS.get(name, "the same network in a plain PyTorch loop (bench/train_speed.py)")
        print(f"{name:>15} {median:>8,.0f} {median / base:>6.2f}x  {what}")


if __name__ == "__main__":
    main()
