"""The benchmarks still run end to end (tiny sizes; they print figures, nothing here checks a timing)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # make test-slow (CI runs it after make test)
REPO = Path(__file__).resolve().parents[1]


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
