"""Where a training step's time goes: l2lab's loop with one part changed at a time.

Each variant trains the same network on the same generated images in a fresh process,
(default 12,800 images, batch 64, 3 epochs; the first is not timed) and prints images/s
and the ratio to the full loop, so the cost of each part shows as the speed gained
without it: the numpy gather through tf.numpy_function (against batches already in a
tensor), the accuracy metric, the L2 terms, op determinism, Adam (against plain SGD),
and, where PyTorch is installed, the same network in a plain PyTorch loop. A
benchmark, not a test: nothing asserts a timing.

    python bench/step_profile.py [--images N] [--epochs E] [--repeats R]
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
    "full": "l2lab's loop as the train stage runs it",
    "tensor_input": "batches sliced from tensors already in memory (no numpy_function gather)",
    "no_accuracy": "without the accuracy metric",
    "no_l2": "without the L2 terms (train.l2 = 0)",
    "no_determinism": "without enable_op_determinism",
    "sgd": "plain SGD instead of Adam",
}


def run_variant(name: str, images: int, epochs: int) -> list[float]:
    """Images/s of each timed epoch for one variant, in this process."""
    sys.path.insert(0, str(REPO / "src"))
    import keras
    import numpy as np
    import tensorflow as tf

    from l2lab import fit as fitmod
    from l2lab.model import build_model
    from l2lab.params import load_params, parse_params

    raw = load_params(REPO / "params.yaml").model_dump()
    raw["train"].update(batch_size=BATCH, epochs=epochs, l2=0.0 if name == "no_l2" else 0.001)
    train = parse_params(raw).train
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=images)
    xv, yv = x[:2048], y[:2048]
    if name == "no_determinism":
        keras.utils.set_random_seed(train.seed)
    else:
        fitmod.make_deterministic(train.seed)
    data, val = fitmod.input_pipelines(train, (x, y), (xv, yv))
    if name == "tensor_input":
        ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int64))).shuffle(images, seed=train.seed)
        data = fitmod.Batches(ds.batch(BATCH).repeat(epochs).prefetch(2), data.steps)
    model = build_model(train.l1, train.l2, train.seed)
    optimizer = keras.optimizers.SGD(0.01) if name == "sgd" else keras.optimizers.Adam(train.learning_rate)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=[] if name == "no_accuracy" else ["accuracy"],
                  steps_per_execution=fitmod.steps_per_execution(data.steps))
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    model.fit(data.dataset, steps_per_epoch=data.steps, validation_data=val.dataset, epochs=epochs,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12_800)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds over all variants")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
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
