"""The benchmarks still run end to end (tiny sizes; they print figures, nothing here checks a timing)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # make test-slow (CI runs it after make test)
def test_train_speed_writes_its_ratios_with_the_isa_cap(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "train_speed.py"), "--pairs", "1", "--epochs", "2",
                          "--images", "640", "--max-isa", "avx2", "--data-dir", str(tmp_path / "none"),
                          "--out", str(out)],
                         capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["kernel_isa_cap"] == "avx2"
    assert report["images_per_epoch"] == 640 and report["data"] == "generated arrays of CIFAR-10's shape"
    assert report["train_speedup_vs_seed"] > 0 and 0 < report["peak_rss_ratio_vs_seed"]
    assert ("train_speedup_vs_torch" in report) == ("torch" in report)
    assert "kernels capped at avx2" in run.stdout


@pytest.mark.slow  # make test-slow (CI runs it after make test)
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="oneDNN's AVX2 cap and kernel names are x86's")
def test_the_op_profile_names_the_ops_and_the_onednn_kernels_under_the_cap() -> None:
    run = subprocess.run([sys.executable, str(REPO / "bench" / "step_profile.py"), "--ops", "--images", "640"],
                         capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert run.returncode == 0, run.stderr[-3000:]
    tf_part = run.stdout.split("the PyTorch peer's step")[0]
    assert "kernel ISA cap AVX2" in tf_part and "Conv2DBackpropFilter" in tf_part
    # oneDNN's own log: the first convolution's (3 input channels) weight gradient, on AVX2 kernels
    assert "convolution backward_weights jit:avx2  mb64_ic3oc32" in tf_part


CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from train_speed import own_peak_mb
held = np.ones(int(sys.argv[2]) * 2**20, np.uint8)  # touched: resident
print(json.dumps({"own": own_peak_mb()}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_a_childs_own_peak_is_its_size_not_its_parents() -> None:
    """The driver holds TensorFlow (hundreds of MB) before it starts each side; a child's kernel-reported maximum
    RSS starts from that. Here a parent holding 600 MB starts children that hold 50 and 150 MB."""
    parent = ("import numpy as np, resource, subprocess, sys, json; big = np.ones(600 * 2**20, np.uint8); "
              "out = [json.loads(subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2], n], capture_output="
              "True, text=True, check=True).stdout) | {'inherited': resource.getrusage(resource.RUSAGE_CHILDREN)"
              ".ru_maxrss / 1024} for n in ('50', '150')]; print(json.dumps(out))")
    proc = subprocess.run([sys.executable, "-c", parent, CHILD, str(REPO / "bench")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    small, large = json.loads(proc.stdout)
    assert small["inherited"] > 600  # what the benchmark used to report for every side
    assert 50 < small["own"] < 50 + 120 and 150 < large["own"] < 150 + 120  # the array, and an interpreter's worth
    assert large["own"] - small["own"] == pytest.approx(100, abs=15)
