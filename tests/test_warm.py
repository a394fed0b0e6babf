"""Warm stages (l2lab.warm, l2lab.warm_server): a stage handed to the warm server gives the numbers it
gives in a fresh process, bit for bit; signals reach it; a killed stage takes its child along; a stage
whose code differs from the server's runs by itself."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from l2lab.warm import ENV
from l2lab.warm_server import warm_server
from project import env, run, set_params

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(sys.platform != "linux", reason="warm stages are Linux-only")]

WARM_LINE = "runs in a child of the warm stage server"
TRAIN = ["python", "-m", "l2lab.stages.train", "--data-dir", "data/processed", "--data-summary", "reports/data.json",
         "--model", "models/model.keras", "--run-info", "models/mlflow_run.json",
         "--history", "reports/plots/history.csv"]


@pytest.fixture
def project(bare: Path) -> Path:
    set_params(bare, train__epochs=2)
    run(bare, "git", "commit", "-qam", "two epochs")
    return bare


def results(project: Path) -> tuple[dict, list[dict]]:
    """metrics.json without the run id, and history.csv without the epoch timings."""
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    metrics.pop("mlflow_run_id")
    with (project / "reports" / "plots" / "history.csv").open() as f:
        history = [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]
    return metrics, history


def server_process(path: str) -> psutil.Process:
    """The warm server listening on path: the l2lab.warm_server process with that socket argument."""
    for proc in psutil.process_iter(["cmdline"]):
        if path in (proc.info["cmdline"] or []):
            return proc
    raise AssertionError(f"no warm server on {path}")


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
def test_a_warm_stage_gives_the_cold_numbers_bit_for_bit(project: Path) -> None:
    cold = run(project, "dvc", "repro")
    assert WARM_LINE not in cold.stdout + cold.stderr
    cold_results = results(project)
    with warm_server(project) as path:
        assert path is not None and os.environ[ENV] == path
        again = run(project, "dvc", "repro", "--force", "--downstream", "train")
    out = again.stdout + again.stderr
    assert out.count(WARM_LINE) == 2, out  # train and evaluate both ran in the server's children
    assert "l2lab.stages.train" in out and "l2lab.stages.evaluate" in out
    assert results(project) == cold_results
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    ran = client.search_runs([client.get_experiment_by_name("cifar10-l2").experiment_id])
    assert [r.info.status for r in ran] == ["FINISHED", "FINISHED"]
    assert ran[0].data.metrics["test_accuracy"] == ran[1].data.metrics["test_accuracy"]
    assert os.environ.get(ENV) is None  # put back when the block ended


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
def test_signals_reach_the_stage_and_a_killed_stage_takes_its_child(project: Path) -> None:
    run(project, "dvc", "repro", "preprocess")
    set_params(project, train__epochs=400)  # long enough to be stopped in the middle
    with warm_server(project) as path:
        server = server_process(path)
        for how, expected in ((signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)):
            # Ctrl-C as a terminal's foreground job gets it: under a shell's background job (CI started with
            # `&`) SIGINT comes ignored, and the stage rightly keeps ignoring it.
            stage = subprocess.Popen(TRAIN, cwd=project, env=env(PYTHONPATH="src"), stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            seen = ""
            for line in stage.stderr:
                seen += line
                if "epoch 2/400" in line:
                    break
            assert WARM_LINE in seen, seen
            stage.send_signal(how)
            rest = stage.communicate(timeout=120)[1]
            assert stage.returncode == expected, seen + rest
            if how != signal.SIGKILL:
                assert ("error: terminated (SIGTERM)" if how == signal.SIGTERM else "error: interrupted") in rest
            deadline = time.monotonic() + 30
            while server.children() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert server.children() == []  # the child ended with its stage, whichever way
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    statuses = sorted(r.info.status
                      for r in client.search_runs([client.get_experiment_by_name("cifar10-l2").experiment_id]))
    # SIGTERM and Ctrl-C end their runs KILLED in the stage; the SIGKILLed one is left RUNNING by a process
    # that is gone, which the next stage (or l2lab gc) ends KILLED, as for a stage killed without the server.
    assert statuses == ["KILLED", "KILLED", "RUNNING"]
    assert not server.is_running()  # the block's end stopped it


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
def test_a_stage_whose_code_differs_from_the_servers_runs_by_itself(project: Path) -> None:
    run(project, "dvc", "repro", "preprocess")
    with warm_server(project) as path:
        while not Path(path).exists():  # listening: it has imported the code edited below
            time.sleep(0.1)
        norms = project / "src" / "l2lab" / "norms.py"  # in the train stage's code
        norms.write_text(norms.read_text() + "\n# edited after the server imported it\n")
        stage = run(project, *TRAIN, PYTHONPATH="src")
    assert WARM_LINE not in stage.stderr
    assert "epoch 2/2" in stage.stderr


def test_a_stage_waits_for_a_starting_server_and_not_for_a_dead_one(tmp_path: Path) -> None:
    from l2lab.warm import PID_FILE, listening

    sock = tmp_path / "stages.sock"
    assert not listening(sock)  # no server there at all: at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / PID_FILE).write_text(dead.stdout.strip())
    started = time.monotonic()
    assert not listening(sock)  # it ended before listening: no wait
    assert time.monotonic() - started < 5
    (tmp_path / PID_FILE).write_text(str(os.getpid()))  # alive, still importing
    appears = subprocess.Popen([sys.executable, "-c",
                                f"import time, pathlib; time.sleep(0.5); pathlib.Path({str(sock)!r}).touch()"])
    assert listening(sock)  # waited for it
    appears.wait()
