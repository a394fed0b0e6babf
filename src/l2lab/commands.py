"""Running git, dvc and other programs: one way to find dvc, one way to fail with the command's own words."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from l2lab.errors import L2labError

# `dvc exp run` options that train a point whatever its lock says: train and the stages after it run
# (forced), the stages before it are left as they are. For a point DVC found up to date ("Stage
# 'train' didn't change, skipping"): its upstream stages were up to date as well.
RETRAIN = ("--force", "--downstream", "train")


def checked(argv: list[str], what: str, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command; when it fails, raise with what it was and the last line it printed."""
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise L2labError(f"{what} failed: {last[0]}")
    return proc


def git(*args: str, cwd: Path) -> str:
    """A git command's output; raise with its own message when it fails."""
    return checked(["git", *args], f"git {' '.join(args)}", cwd).stdout.strip()


def dvc_command() -> str:
    """The dvc beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A dvc command; raise with its own message when it fails."""
    return checked([dvc_command(), *args], f"dvc {' '.join(args)}", cwd)


def set_args(sets: dict[str, str]) -> list[str]:
    """params.yaml overrides as `dvc exp run` takes them: ['-S', 'train.l2=0.001', ...]."""
    return [arg for key, value in sets.items() for arg in ("-S", f"{key}={value}")]
