"""Side-by-side training benchmark: the seed article's loop against l2lab's train stage.

Runs each side in its own process, interleaved (seed, ours, seed, ours, ...), on the
same machine, model, batch size and images, and prints images/s, peak memory and
achieved GFLOP/s (also as a share of a float32 matmul peak measured in the same run).
Writes reports/bench.json. A benchmark, not a test: nothing here asserts a timing.

    python bench/train_speed.py [--pairs 3] [--epochs 4] [--images N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 64
L2 = 0.001


def load_arrays(images: int | None):
    """(x_train, y_train, x_val, y_val) uint8/int64: processed CIFAR-10 if present, else random of the same shape."""
    import numpy as np

    processed = Path(os.environ.get("BENCH_DATA_DIR", REPO / "data" / "processed"))
    if (processed / "train.npz").exists() and (processed / "val.npz").exists():
        with np.load(processed / "train.npz") as t, np.load(processed / "val.npz") as v:
            xt, yt, xv, yv = t["x"], t["y"], v["x"], v["y"]
        source = f"{processed} (processed CIFAR-10)"
    else:
        rng = np.random.default_rng(0)
        xt = rng.integers(0, 256, size=(45_000, 32, 32, 3), dtype=np.uint8)
        yt = rng.integers(0, 10, size=45_000)
        xv = rng.integers(0, 256, size=(5_000, 32, 32, 3), dtype=np.uint8)
        yv = rng.integers(0, 10, size=5_000)
        source = "generated arrays of CIFAR-10's shape"
    if images:
        xt, yt = xt[:images], yt[:images]
    return xt, yt, xv, yv, source


class EpochTimer:
    """A Keras callback recording each epoch's wall time."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.started)

        return _Timer()


def seed_side(epochs: int, images: int | None) -> dict:
    """The seed article's loop, faithfully: float64 x / 255.0, one-hot labels, fit on numpy arrays."""
    import keras
    from keras import layers, regularizers

    xt, yt, xv, yv, source = load_arrays(images)
    x_train = xt / 255.0  # float64, as the article's code does
    x_val = xv / 255.0
    y_train = keras.utils.to_categorical(yt, 10)
    y_val = keras.utils.to_categorical(yv, 10)
    model = keras.Sequential([
        keras.Input(shape=(32, 32, 3)),
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        # The article's regularized layer, placed before compile() so that it takes effect.
        layers.Dense(128, activation="relu", kernel_regularizer=regularizers.l2(L2)),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    model.fit(x_train, y_train, batch_size=BATCH, epochs=epochs, validation_data=(x_val, y_val),
              callbacks=[timer], verbose=0)
    return {"epoch_seconds": timer.seconds, "images": len(xt), "source": source, "params": model.count_params()}


def ours_side(epochs: int, images: int | None, precision: str = "float32") -> dict:
    """l2lab's training loop (fit.fit) on uint8 splits."""
    sys.path.insert(0, str(REPO / "src"))
    from l2lab.params import load_params, parse_params
    from l2lab.fit import fit, input_pipelines

    raw = load_params(REPO / "params.yaml").model_dump()
    raw["train"].update(l2=L2, batch_size=BATCH, epochs=epochs, precision=precision)
    params = parse_params(raw)
    xt, yt, xv, yv, source = load_arrays(images)
    count = len(xt)
    train, val = input_pipelines(params.train, (xt, yt), (xv, yv))
    seconds: list[float] = []
    model, _ = fit(params.train, train, val, lambda step, m: seconds.append(m["epoch_seconds"]))
    return {"epoch_seconds": seconds, "images": count, "source": source, "params": model.count_params()}


def train_flops_per_image() -> float:
    """Forward + backward FLOPs per training image, from the model's layers.

    Forward: 2 * multiply-adds. Backward: 2x forward (input and weight gradients),
    less the first conv's input gradient, which nothing needs.
    """
    sys.path.insert(0, str(REPO / "src"))
    from l2lab.model import build_model

    model = build_model(0.0, 0.0, seed=0)
    forward, first = 0.0, None
    for layer in model.layers:
        if not hasattr(layer, "kernel"):
            continue
        out = layer.output.shape[1:]
        macs = float(__import__("numpy").prod(layer.kernel.shape))
        if len(out) == 3:  # conv: every output position applies the whole kernel
            macs *= out[0] * out[1]
        flops = 2 * macs
        first = flops if first is None else first
        forward += flops
    return 3 * forward - first


def matmul_peak_gflops() -> float:
    """Best float32 2048x2048 matmul rate through TensorFlow (oneDNN), GFLOP/s."""
    import tensorflow as tf

    n = 2048
    a = tf.random.normal((n, n), dtype=tf.float32)
    b = tf.random.normal((n, n), dtype=tf.float32)
    mm = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    mm(a, b).numpy()
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        mm(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def worker(side: str, epochs: int, images: int | None, out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sides = {"seed": seed_side, "ours": ours_side,
             "ours_bf16": lambda e, i: ours_side(e, i, precision="mixed_bfloat16")}
    result = sides[side](epochs, images)
    out.write_text(json.dumps(result))


def run_side(side: str, epochs: int, images: int | None) -> dict:
    """One side in a fresh process; its peak RSS comes from the kernel (wait4)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--worker", side, "--epochs", str(epochs), "--out", str(out)]
        if images:
            cmd += ["--images", str(images)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=False)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{side} side failed:\n{proc.stderr.read().decode(errors='replace')[-3000:]}")
        result = json.loads(out.read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    timed = result["epoch_seconds"][1:] or result["epoch_seconds"]  # epoch 1 includes tracing
    result["images_per_s"] = [result["images"] / s for s in timed]
    return result


def summarize(runs: list[dict], flops: float, peak: float) -> dict:
    rates = [r for run in runs for r in run["images_per_s"]]
    median = statistics.median(rates)
    return {
        "images_per_s": {"median": median, "min": min(rates), "max": max(rates)},
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        "gflops": median * flops / 1e9,
        "share_of_matmul_peak": median * flops / 1e9 / peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first (graph tracing) is not timed")
    parser.add_argument("--images", type=int, default=None, help="training images per epoch (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench.json")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "processed",
                        help="folder with train.npz and val.npz (default: the pipeline's)")
    parser.add_argument("--bf16", action="store_true", help="also run ours with train.precision=mixed_bfloat16")
    parser.add_argument("--worker", choices=["seed", "ours", "ours_bf16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.epochs, args.images, args.out)
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["BENCH_DATA_DIR"] = str(args.data_dir)  # the worker processes read it
    peak = matmul_peak_gflops()
    flops = train_flops_per_image()
    order = ["seed", "ours"] + (["ours_bf16"] if args.bf16 else [])
    runs: dict[str, list[dict]] = {side: [] for side in order}
    for pair in range(args.pairs):
        for side in order:
            result = run_side(side, args.epochs, args.images)
            runs[side].append(result)
            print(f"pair {pair + 1}/{args.pairs} {side:>9}: "
                  f"{', '.join(f'{r:,.0f}' for r in result['images_per_s'])} images/s, "
                  f"peak RSS {result['peak_rss_mb']:,.0f} MB", flush=True)
    sides = {side: summarize(results, flops, peak) for side, results in runs.items()}
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "data": runs["ours"][0]["source"],
        "precision": "float32",
        "images_per_epoch": runs["ours"][0]["images"],
        "batch_size": BATCH,
        "pairs": args.pairs,
        "train_mflop_per_image": flops / 1e6,
        "matmul_peak_gflops": peak,
        "seed": sides["seed"],
        "ours": sides["ours"],
        "train_speedup_vs_seed": sides["ours"]["images_per_s"]["median"] / sides["seed"]["images_per_s"]["median"],
        "peak_rss_ratio_vs_seed": sides["ours"]["peak_rss_mb"] / sides["seed"]["peak_rss_mb"],
    }
    if "ours_bf16" in sides:
        report["ours_bf16"] = sides["ours_bf16"]
        report["bf16_speedup_vs_fp32"] = (sides["ours_bf16"]["images_per_s"]["median"]
                                          / sides["ours"]["images_per_s"]["median"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(r: dict) -> None:
    print(f"\n{r['images_per_epoch']:,} images/epoch from {r['data']}, batch {r['batch_size']}, "
          f"{r['pairs']} interleaved pairs; {r['train_mflop_per_image']:.1f} MFLOP per training image; "
          f"float32 matmul peak {r['matmul_peak_gflops']:.0f} GFLOP/s")
    print(f"{'':9} {'images/s (median, min-max)':>30} {'peak RSS':>10} {'GFLOP/s':>8} {'of peak':>8}")
    for side in ("seed", "ours", "ours_bf16"):
        if side not in r:
            continue
        s = r[side]
        ips = s["images_per_s"]
        print(f"{side:9} {ips['median']:>14,.0f} ({ips['min']:,.0f}-{ips['max']:,.0f}) "
              f"{s['peak_rss_mb']:>8,.0f} MB {s['gflops']:>8.1f} {s['share_of_matmul_peak']:>7.1%}")
    print(f"train_speedup_vs_seed {r['train_speedup_vs_seed']:.2f}x, peak_rss_ratio_vs_seed {r['peak_rss_ratio_vs_seed']:.2f}"
          + (f", bf16_speedup_vs_fp32 {r['bf16_speedup_vs_fp32']:.2f}x" if "bf16_speedup_vs_fp32" in r else ""))


if __name__ == "__main__":
    main()
