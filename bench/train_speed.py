"""Side-by-side training benchmark: the seed article's loop, l2lab's train stage and, where
PyTorch is installed, a PyTorch loop for the same network as its engineers would write it
(`pip install torch`, optional): eager, and compiled with `torch.compile` where that works
on this machine.

Runs each side in its own process, interleaved (seed, ours, torch, torch_compile, seed, ...),
on the same machine, model, batch size and images, and prints images/s, each process's own
peak memory (its VmHWM, read before it exits: a child's kernel-reported maximum RSS starts
at its parent's, which holds TensorFlow here) and achieved GFLOP/s (also as a share of a
float32 matmul peak measured in the same run). A side whose timed epochs differ by more
than 2x is flagged: its median would hide a cliff. Writes reports/bench.json, with the
CPU's vector ISA flags. A benchmark, not a test: nothing here asserts a timing.

    python bench/train_speed.py [--pairs 3] [--epochs 4] [--images N] [--max-isa avx2]

`--max-isa avx2` runs every leg (and the matmul peak) with the kernels an AVX2-only CPU
gets, on a CPU that has AVX-512: it caps the runtime kernel dispatch of oneDNN (which
TensorFlow's and PyTorch's convolutions and matmuls go through), of PyTorch's own ATen
kernels and of MKL. Code compiled for a fixed ISA (TensorFlow's Eigen kernels) is the same
on both kinds of machine anyway.
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
    """(x_train, y_train, x_val, y_val) uint8/int64: processed CIFAR-10 if present, else random of the same
    shape; read as the train stage reads its splits (l2lab.data.load_split: aligned memory)."""
    import numpy as np

    sys.path.insert(0, str(REPO / "src"))
    from l2lab.data import aligned_empty, load_split

    processed = Path(os.environ.get("BENCH_DATA_DIR", REPO / "data" / "processed"))
    if (processed / "train.npz").exists() and (processed / "val.npz").exists():
        (xt, yt), (xv, yv) = load_split(processed / "train.npz"), load_split(processed / "val.npz")
        source = f"{processed} (processed CIFAR-10)"
    else:
        rng = np.random.default_rng(0)
        xt, xv = aligned_empty((45_000, 32, 32, 3), np.uint8), aligned_empty((5_000, 32, 32, 3), np.uint8)
        xt[...] = rng.integers(0, 256, size=xt.shape, dtype=np.uint8)
        yt = rng.integers(0, 10, size=45_000)
        xv[...] = rng.integers(0, 256, size=xv.shape, dtype=np.uint8)
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
    from l2lab.imports import quiet_tensorflow
    from l2lab.params import load_params, parse_params

    quiet_tensorflow()  # as the train stage imports it (l2lab.imports)
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


def torch_side(epochs: int, images: int | None, compiled: bool = False) -> dict:
    """A PyTorch loop for the same network, as its engineers would write it: the same layers and
    Glorot-uniform kernels, Adam 1e-3, batch 64, L2 on every kernel as a loss term, uint8 images
    scaled per batch, a seeded shuffle, channels_last, every core, denormals flushed to zero (as
    TensorFlow's threads do: the L2 term drives many weights toward zero, and subnormal floats run
    about ten times slower on x86); validation after each epoch. compiled: the model through
    torch.compile (Inductor's C++ kernels on the CPU)."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.set_flush_denormal(True)
    xt, yt, xv, yv, source = load_arrays(images)
    # NHWC uint8 arrays seen as NCHW tensors: already channels_last in memory, no copy.
    x_train, x_val = (torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2) for a in (xt, xv))
    y_train, y_val = torch.from_numpy(yt.astype(np.int64)), torch.from_numpy(yv.astype(np.int64))
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 6 * 6, 128), nn.ReLU(), nn.Linear(128, 10),
    ).to(memory_format=torch.channels_last)
    kernels = [m.weight for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    net = torch.compile(model) if compiled else model
    shuffle = torch.Generator().manual_seed(0)

    def batch(x: torch.Tensor, idx) -> torch.Tensor:
        return x[idx].float().div_(255.0).contiguous(memory_format=torch.channels_last)

    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), generator=shuffle)
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            loss = loss_fn(net(batch(x_train, idx)), y_train[idx]) + L2 * sum((w * w).sum() for w in kernels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((net(batch(x_val, slice(i, i + BATCH))).argmax(1) == y_val[i : i + BATCH]).sum())
                          for i in range(0, len(x_val), BATCH))
        seconds.append(time.perf_counter() - start)
    return {"epoch_seconds": seconds, "images": len(xt), "source": source,
            "params": sum(p.numel() for p in model.parameters()), "val_accuracy": correct / len(x_val),
            "torch": torch.__version__}


COMPILE_ERROR: list[str] = []  # why torch.compile did not work here, when it did not


def torch_compiles() -> bool:
    """Whether torch.compile builds and runs a small convolution here (Inductor needs a C++ compiler)."""
    probe = ("import torch; m = torch.compile(torch.nn.Conv2d(3, 4, 3)); "
             "m(torch.zeros(2, 3, 8, 8)).sum().backward(); print('ok')")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    if proc.returncode == 0 and proc.stdout.strip().endswith("ok"):
        return True
    COMPILE_ERROR.append((proc.stderr.strip().splitlines() or ["no output"])[-1][:300])
    print(f"torch.compile does not work here: {COMPILE_ERROR[0]}", flush=True)
    return False


# What each library reads to cap its runtime kernel dispatch at an ISA.
ISA_CAPS = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def isa_flags() -> list[str]:
    """The CPU's vector ISA flags that decide which kernels run (from /proc/cpuinfo; empty elsewhere)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return [f for f in wanted if f in flags]


def train_flops_per_image() -> float:
    """Forward + backward FLOPs per training image, from the model's layers.

    Forward: 2 * multiply-adds. Backward: 2x forward (input and weight gradients),
    less the first conv's input gradient, which nothing needs.
    """
    sys.path.insert(0, str(REPO / "src"))
    from l2lab.model import build_model
    from l2lab.params import load_params

    model = build_model(load_params(REPO / "params.yaml").train)  # the penalty and the seed change no FLOP
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


def own_peak_mb() -> float | None:
    """This process's own peak resident memory, MB: VmHWM, which starts afresh at exec (ru_maxrss carries the
    parent's high-water mark into a forked child); None where /proc is not there."""
    try:
        line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024  # kB


def worker(side: str, epochs: int, images: int | None, out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sides = {"seed": seed_side, "ours": ours_side, "torch": torch_side,
             "torch_compile": lambda e, i: torch_side(e, i, compiled=True),
             "ours_bf16": lambda e, i: ours_side(e, i, precision="mixed_bfloat16")}
    result = sides[side](epochs, images)
    result["own_peak_rss_mb"] = own_peak_mb()
    out.write_text(json.dumps(result))


SPREAD = 2.0  # a side whose fastest timed epoch is this many times its slowest is flagged, not summarized quietly


def run_side(side: str, epochs: int, images: int | None) -> dict:
    """One side in a fresh process; its peak memory as it measured it (own_peak_mb), the kernel's maximum RSS
    (wait4, which includes the parent's before the exec) beside it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--worker", side, "--epochs", str(epochs), "--out", str(out)]
        if images:
            cmd += ["--images", str(images)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=False)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            said = proc.stderr.read().decode(errors="replace")
            if side == "torch_compile":  # the expert's peer, where it works: its failure is a finding, not the end
                return {"error": (said.strip().splitlines() or ["no output"])[-1][:300]}
            raise SystemExit(f"{side} side failed:\n{said[-3000:]}")
        result = json.loads(out.read_text())
    result["inherited_max_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    result["peak_rss_mb"] = result.pop("own_peak_rss_mb") or result["inherited_max_rss_mb"]
    timed = result["epoch_seconds"][1:] or result["epoch_seconds"]  # epoch 1 includes tracing (and compiling)
    result["images_per_s"] = [result["images"] / s for s in timed]
    if max(result["images_per_s"]) > SPREAD * min(result["images_per_s"]):
        result["warning"] = (f"{side}'s timed epochs differ by more than {SPREAD:g}x ("
                             + ", ".join(f"{r:,.0f}" for r in result["images_per_s"]) + " images/s): a cliff, "
                             "not noise; its median hides it")
        print(f"warning: {result['warning']}", flush=True)
    return result


def summarize(runs: list[dict], flops: float, peak: float) -> dict:
    rates = [r for run in runs for r in run["images_per_s"]]
    median = statistics.median(rates)
    warnings = [run["warning"] for run in runs if "warning" in run]
    return {
        **({"warnings": warnings} if warnings else {}),
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
    parser.add_argument("--no-torch", action="store_true",
                        help="leave out the PyTorch peers even if torch is installed")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile peer")
    parser.add_argument("--max-isa", choices=sorted(ISA_CAPS),
                        help="run with the kernels a CPU without AVX-512 gets (see the module's docstring)")
    parser.add_argument("--worker", choices=["seed", "ours", "ours_bf16", "torch", "torch_compile"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.epochs, args.images, args.out)
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["BENCH_DATA_DIR"] = str(args.data_dir)  # the worker processes read it
    if args.max_isa:
        os.environ.update(ISA_CAPS[args.max_isa])  # before TensorFlow loads here; the workers inherit it
    peak = matmul_peak_gflops()
    flops = train_flops_per_image()
    import importlib.util

    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if not with_torch and not args.no_torch:
        print("PyTorch is not installed: no torch peer (pip install torch to add it)", flush=True)
    compiles = with_torch and not args.no_compile and torch_compiles()
    order = (["seed", "ours"] + (["ours_bf16"] if args.bf16 else []) + (["torch"] if with_torch else [])
             + (["torch_compile"] if compiles else []))
    runs: dict[str, list[dict]] = {side: [] for side in order}
    for pair in range(args.pairs):
        for side in list(order):
            result = run_side(side, args.epochs, args.images)
            if "error" in result:
                COMPILE_ERROR.append(result["error"])
                print(f"torch.compile failed while training: {result['error']}", flush=True)
                order.remove(side)
                del runs[side]
                continue
            runs[side].append(result)
            print(f"pair {pair + 1}/{args.pairs} {side:>13}: "
                  f"{', '.join(f'{r:,.0f}' for r in result['images_per_s'])} images/s, "
                  f"peak RSS {result['peak_rss_mb']:,.0f} MB", flush=True)
    sides = {side: summarize(results, flops, peak) for side, results in runs.items()}
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "isa": isa_flags(),
                    "kernel_isa_cap": args.max_isa},
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
    for peer in ("torch", "torch_compile"):
        if peer in sides:
            report[peer] = sides[peer] | {"version": runs[peer][0]["torch"]}
            report[f"train_speedup_vs_{peer}"] = (sides["ours"]["images_per_s"]["median"]
                                                 / sides[peer]["images_per_s"]["median"])
            report[f"peak_rss_ratio_vs_{peer}"] = sides["ours"]["peak_rss_mb"] / sides[peer]["peak_rss_mb"]
    peers = [p for p in ("torch", "torch_compile") if p in sides]
    if peers:  # against the faster of the PyTorch legs
        fastest = max(peers, key=lambda p: sides[p]["images_per_s"]["median"])
        report["train_speedup_vs_torch"] = report[f"train_speedup_vs_{fastest}"]
        report["fastest_torch_leg"] = fastest
    if with_torch and "torch_compile" not in sides and not args.no_compile:
        report["torch_compile"] = {"error": COMPILE_ERROR[0] if COMPILE_ERROR else "did not compile"}
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
    print(f"{'':13} {'images/s (median, min-max)':>30} {'peak RSS':>10} {'GFLOP/s':>8} {'of peak':>8}")
    for side in ("seed", "ours", "ours_bf16", "torch", "torch_compile"):
        if side not in r or "error" in r[side]:
            continue
        s = r[side]
        ips = s["images_per_s"]
        print(f"{side:13} {ips['median']:>14,.0f} ({ips['min']:,.0f}-{ips['max']:,.0f}) "
              f"{s['peak_rss_mb']:>8,.0f} MB {s['gflops']:>8.1f} {s['share_of_matmul_peak']:>7.1%}")
    print(f"train_speedup_vs_seed {r['train_speedup_vs_seed']:.2f}x, "
          f"peak_rss_ratio_vs_seed {r['peak_rss_ratio_vs_seed']:.2f}"
          + (f", bf16_speedup_vs_fp32 {r['bf16_speedup_vs_fp32']:.2f}x" if "bf16_speedup_vs_fp32" in r else "")
          + (f", train_speedup_vs_torch {r['train_speedup_vs_torch']:.2f}x (vs {r['fastest_torch_leg']})"
             if "train_speedup_vs_torch" in r else ""))
    if "error" in r.get("torch_compile", {}):
        print(f"torch.compile: {r['torch_compile']['error']}")
    for side in ("seed", "ours", "ours_bf16", "torch", "torch_compile"):
        for warning in r.get(side, {}).get("warnings", []):
            print(f"warning: {warning}")
    cap = r["machine"].get("kernel_isa_cap")
    print(f"CPU: {r['machine']['cpus']} cores, ISA {' '.join(r['machine']['isa']) or 'unknown'}"
          + (f"; kernels capped at {cap}" if cap else ""))


if __name__ == "__main__":
    main()
