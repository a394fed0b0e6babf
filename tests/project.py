"""A throwaway copy of this repository to run real DVC in, and helpers to drive it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def env(**extra: str) -> dict[str, str]:
    """The test process's environment with this venv first on PATH and no analytics."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    path = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    return base | GIT_ID | {"PATH": path, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"} | extra


def run(cwd: Path, *args: str, check: bool = True, timeout: float = 900, **extra: str) -> subprocess.CompletedProcess:
    """Run a command in cwd; on an unexpected exit status show everything it printed."""
    proc = subprocess.run(args, cwd=cwd, env=env(**extra), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def clone_project(dest: Path) -> Path:
    """Copy the tracked and untracked-but-not-ignored files (the working tree as CI sees it) into a new git repo."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    run(dest, "git", "init", "-q", "-b", "main")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-q", "-m", "copy of l2lab for a test")
    return dest


def copy_project(template: Path, dest: Path) -> Path:
    """A copy of a template project (its git history, DVC cache and outputs, nothing else it shares)."""
    shutil.copytree(template, dest, symlinks=True)
    return dest


def set_params(project: Path, **values: object) -> None:
    """Set dotted params (train__l2=0.1 means train.l2) in project's params.yaml, keeping comments."""
    yaml = YAML()
    path = project / "params.yaml"
    doc = yaml.load(path)
    for dotted, value in values.items():
        *sections, last = dotted.split("__")
        node = doc
        for section in sections:
            node = node[section]
        node[last] = value
    with path.open("w") as f:
        yaml.dump(doc, f)


def workers_of(project: Path) -> list:
    """The `l2lab worker` processes running in project, and its points' experiments (dvc exp run)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline, where = " ".join(proc.info["cmdline"] or []), proc.info["cwd"] or ""
        if ("l2lab.cli worker" in cmdline or "exp run --temp" in cmdline) and where.startswith(str(project)):
            found.append(proc)
    return found


def ctrl_c_once_a_point_trains(project: Path, *args: str) -> tuple[int, str]:
    """Start args in project (Ctrl-C not ignored), press Ctrl-C once one of its points' MLflow runs is
    RUNNING (training), and return its exit status and stderr."""
    proc = subprocess.Popen(args, cwd=project, env=env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_until_a_point_trains(project, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def wait_until_a_point_trains(project: Path, proc: subprocess.Popen) -> None:
    """Return once one of the points of the sweep proc runs in project has a RUNNING MLflow run (it trains)."""
    from l2lab.tracking.store import connect

    store, deadline = None, time.monotonic() + 300
    while time.monotonic() < deadline:
        if store is None and (project / "mlflow.db").exists():
            # Through l2lab's own first-use lock: a plain MlflowClient opening the database while the
            # command still creates it runs MLflow's schema migration beside it, and one of them fails.
            store = connect(project)
        if store and store.client.search_runs([store.experiment_id], "tags.`l2lab.role` = 'point' and "
                                              "attributes.status = 'RUNNING'"):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(1)
    raise AssertionError("no point of the sweep started training within 300 s")
