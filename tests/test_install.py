"""The install profiles: TensorFlow comes with the cpu or gpu extra, and a stage without it says which to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tensorflow_is_an_extra_cpu_or_gpu_not_a_base_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("tensorflow")]
    extras = project["optional-dependencies"]
    assert any(d.startswith("tensorflow-cpu") for d in extras["cpu"])
    assert [d.split(">=")[0] for d in extras["gpu"]] == ["tensorflow[and-cuda]"]
    # make picks the extra: gpu where nvidia-smi lists a GPU, else cpu (TF=... overrides)
    dry = subprocess.run(["make", "-n", "-B", "install", "TF=cpu"], cwd=REPO, capture_output=True, text=True).stdout
    assert "pip install --quiet -e '.[test,cpu]'" in dry


def test_without_tensorflow_a_stage_says_which_extra_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['tensorflow'] = None; "  # as if no extra had been installed
            "from l2lab.stages.train import main; "
            f"sys.argv = ['train', '--params', {str(REPO / 'params.yaml')!r}, '--data-dir', 'd', "
            "'--data-summary', 's', '--model', 'm', '--run-info', 'r', '--history', 'h']; main()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "error: TensorFlow is not installed: pip install -e '.[cpu]' (or '.[gpu]' on Linux with an NVIDIA GPU), "
        "or run `make install`, which picks one")
    assert not list(tmp_path.iterdir())  # nothing written


def test_without_the_team_extras_team_up_says_how_to_install_them(tmp_path: Path) -> None:
    # CI's `make test` venv has no team extras: `l2lab team up` there must say so, not raise
    code = ("import sys; sys.modules['mirakuru'] = None; "
            "from l2lab.cli import main; "
            f"main(['team', 'up', '--dir', {str(tmp_path / '.team')!r}])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "error: `l2lab team` needs the team extras (mirakuru is not installed): run make install-team")
    assert not list(tmp_path.iterdir())  # no stack folder half-made
