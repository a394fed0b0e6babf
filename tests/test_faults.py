"""Faults during a run: signals, divergence, a busy MLflow database. Real processes, real stores."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from l2lab.tracking.runs import Run
from l2lab.tracking.store import MlflowBusyError, connect, retrying
from l2lab.stages.preprocess import preprocess
from project import REPO, env, run, set_params

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


@pytest.fixture
def prepared(tmp_path: Path, small_archive: Path) -> Path:
    """A folder with params.yaml and the processed splits, ready for the train stage."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "params.yaml").write_text((REPO / "params.yaml").read_text().replace("epochs: 10", "epochs: 500"))
    preprocess(small_archive, work / "data", work / "data.json", val_size=50, split_seed=42)
    return work


def like_a_terminal() -> None:
    """Child setup: SIGINT at its default, as under a terminal (a shell's `cmd &` starts children ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def train_command(work: Path) -> list[str]:
    return [sys.executable, "-m", "l2lab.stages.train", "--params", str(work / "params.yaml"),
            "--data-dir", str(work / "data"), "--data-summary", str(work / "data.json"),
            "--model", str(work / "models" / "model.keras"), "--run-info", str(work / "models" / "run.json"),
            "--history", str(work / "history.csv")]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_training_ends_the_run_killed_and_writes_nothing(prepared: Path, sig: int, code: int) -> None:
    proc = subprocess.Popen(train_command(prepared), cwd=prepared, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env(PYTHONPATH=str(REPO / "src"), DVC_ROOT=str(prepared)),
                            preexec_fn=like_a_terminal)
    lines = []
    for line in proc.stderr:  # wait until training is under way
        lines.append(line)
        if "epoch 2/500" in line:
            break
    proc.send_signal(sig)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == code, "".join(lines) + rest
    assert ("terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted") in rest
    (only,) = MlflowClient(f"sqlite:///{prepared / 'mlflow.db'}").search_runs(["1"])
    assert only.info.status == "KILLED"
    leftovers = sorted(p.name for p in prepared.rglob("*") if "tmp" in p.name or p.suffix == ".keras")
    assert leftovers == [] and not (prepared / "models" / "run.json").exists()


def test_diverging_run_fails_clearly(bare: Path) -> None:
    project = bare
    set_params(project, train__epochs=2, train__l2=1e30)
    proc = run(project, "dvc", "repro", check=False)
    assert proc.returncode != 0
    assert ("error: training diverged at epoch 1: loss is nan; lower train.learning_rate or the penalty "
            "(train.l2, train.l1)") in proc.stderr
    (only,) = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_runs(["1"])
    assert only.info.status == "FAILED"
    assert not (project / "models" / "model.keras").exists()


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
def test_a_run_that_collapses_to_chance_is_tagged_collapsed(project: Path) -> None:
    """A penalty that swamps the data (train.l2 = 1: the weights shrink to nothing) ends at chance without a NaN:
    FINISHED, and no result. The evaluate stage says so and tags the run; a sweep's report leaves it out."""
    set_params(project, train__l2=1.0)
    proc = run(project, "dvc", "repro")
    assert "the run collapsed; it is tagged l2lab.collapsed" in proc.stderr
    (only,) = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_runs(["1"])
    assert only.info.status == "FINISHED" and only.data.tags["l2lab.collapsed"] == "true"
    assert only.data.metrics["val_accuracy"] <= 0.1 + 2 * (0.09 / 50) ** 0.5  # chance, on 50 validation images


def test_busy_database_is_retried_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    store = connect(tmp_path)
    run_id = store.client.create_run(store.experiment_id).info.run_id
    blocker = sqlite3.connect(tmp_path / "mlflow.db", timeout=0, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")  # nobody else may read or write now
    release = threading.Timer(7.0, blocker.rollback)  # longer than SQLite's 5 s busy wait
    release.start()
    started = time.monotonic()
    Run(store, run_id).log_metrics({"test_accuracy": 0.5})
    assert time.monotonic() - started >= 5
    release.join()
    blocker.close()
    assert store.client.get_run(run_id).data.metrics["test_accuracy"] == 0.5


HOLD_LOCKED = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], timeout=0)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.rollback()
"""


@pytest.mark.parametrize("held_for", [3.0, 60.0])
def test_a_locked_database_is_waited_for_then_called_busy_never_broken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, held_for: float) -> None:
    """Another process holds mlflow.db under BEGIN EXCLUSIVE: the stage waits (one line), then either goes on or
    says the file is busy and who holds it; it never advises moving a busy database aside."""
    import l2lab.tracking.store as store_module

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    connect(tmp_path)
    before = (tmp_path / "mlflow.db").read_bytes()
    monkeypatch.setattr(store_module, "BUSY_WAIT_SECONDS", 8.0)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCKED, str(tmp_path / "mlflow.db"), str(held_for)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        if held_for < 8.0:
            store = connect(tmp_path)  # waits, then goes on
            assert store.client.get_experiment(store.experiment_id).name == "cifar10-l2"
        else:
            with pytest.raises(MlflowBusyError) as caught:
                connect(tmp_path)
            message = str(caught.value)
            assert message.startswith(f"{tmp_path / 'mlflow.db'} is busy: another process has held it locked for 8 s")
            assert f"pid {holder.pid} (python" in message and "move it aside" not in message
    finally:
        holder.kill()
        holder.wait()
    waiting = [r.message for r in caplog.records if "locked by another process" in r.message]
    assert len(waiting) == 1 and f"held open by pid {holder.pid}" in waiting[0]
    assert (tmp_path / "mlflow.db").read_bytes() == before or held_for < 8.0  # a busy file is never touched


def test_retrying_gives_up_on_other_errors_at_once() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("not a database problem")

    with pytest.raises(ValueError):
        retrying(broken)
    assert calls == [1]


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
def test_database_locked_too_long_is_reported_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    store = connect(tmp_path)
    run_id = store.client.create_run(store.experiment_id).info.run_id
    blocker = sqlite3.connect(tmp_path / "mlflow.db", timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(MlflowBusyError, match=r"still busy after 2 tries: .*database is locked"):
            retrying(lambda: store.client.log_metric(run_id, "x", 1.0), attempts=2, first_wait=0.1)
    finally:
        blocker.rollback()
        blocker.close()


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
def test_ctrl_c_during_dvc_repro_then_the_next_repro_starts_clean(bare: Path) -> None:
    project = bare
    set_params(project, train__epochs=500)
    proc = subprocess.Popen(["dvc", "repro"], cwd=project, env=env(), text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=like_a_terminal)
    for line in proc.stderr:
        if "epoch 2/500" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    proc.stderr.read()
    assert proc.wait(timeout=120) != 0
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (killed,) = client.search_runs(["1"])
    assert killed.info.status == "KILLED"
    assert not (project / "models" / "model.keras").exists()
    assert not [p for p in project.rglob(".*.tmp*")]

    set_params(project, train__epochs=1)
    run(project, "dvc", "repro")
    statuses = sorted(r.info.status for r in client.search_runs(["1"]))
    assert statuses == ["FINISHED", "KILLED"]
    assert (project / "models" / "model.keras").exists()


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
def test_kill_9_leaves_no_run_running_for_long(prepared: Path) -> None:
    """SIGKILL cannot be caught: the run stays RUNNING until l2lab notices its process is gone."""
    from l2lab.tracking.owners import end_stale_runs

    proc = subprocess.Popen(train_command(prepared), cwd=prepared, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env(PYTHONPATH=str(REPO / "src"), DVC_ROOT=str(prepared)))
    for line in proc.stderr:
        if "epoch 2/500" in line:
            break
    store = connect(prepared)
    (running,) = store.client.search_runs([store.experiment_id])
    assert running.info.status == "RUNNING" and running.data.tags["l2lab.pid"] == str(proc.pid)
    assert end_stale_runs(store) == []  # alive: left alone
    proc.kill()  # kill -9
    proc.wait(timeout=60)
    assert store.client.get_run(running.info.run_id).info.status == "RUNNING"  # nothing could end it
    gc = run(prepared, sys.executable, "-m", "l2lab.cli", "gc", PYTHONPATH=str(REPO / "src"), DVC_ROOT=str(prepared))
    assert f"MLflow run {running.info.run_id}" in gc.stderr and "is gone (killed?): ended KILLED" in gc.stderr
    assert "1 stale run(s) ended KILLED" in gc.stderr
    after = store.client.get_run(running.info.run_id)
    assert after.info.status == "KILLED" and after.data.tags["l2lab.ended_by"] == "l2lab: its process was gone"
    assert "0 stale run(s)" in run(prepared, sys.executable, "-m", "l2lab.cli", "gc", PYTHONPATH=str(REPO / "src"),
                                   DVC_ROOT=str(prepared)).stderr


def test_a_reused_pid_does_not_keep_a_dead_run_alive() -> None:
    from l2lab.tracking.owners import owner_tags, process_gone

    mine = owner_tags()
    assert not process_gone(mine)  # this very process
    assert process_gone({**mine, "l2lab.pid_started": "1.00"})  # same pid, another process's start time
    assert not process_gone({**mine, "l2lab.host": "another-machine"})  # not ours to judge
    assert not process_gone({})  # a run from before owners were recorded


@pytest.fixture
def full_artifacts(prepared: Path) -> Path:
    """prepared, with mlartifacts/ on a 1 MB filesystem: logging the 3.8 MB model fills it."""
    target = prepared / "mlartifacts"
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield prepared
    subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_full_disk_while_logging_the_model_is_one_line_and_leaves_nothing_half_written(full_artifacts: Path) -> None:
    work = full_artifacts
    (work / "params.yaml").write_text((work / "params.yaml").read_text().replace("epochs: 500", "epochs: 1"))
    proc = subprocess.run(train_command(work), cwd=work, capture_output=True, text=True,
                          env=env(PYTHONPATH=str(REPO / "src"), DVC_ROOT=str(work)), timeout=600)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "no space left on the device holding" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    (only,) = MlflowClient(f"sqlite:///{work / 'mlflow.db'}").search_runs(["1"])
    assert only.info.status == "FAILED"
    assert not list((work / "mlartifacts").rglob("MLmodel")) and not list((work / "mlartifacts").rglob("*.keras"))
    assert not (work / "models" / "model.keras").exists() and not list(work.rglob(".*.tmp*"))


STOPPED_WHILE_TRACING = r"""
import os, signal, sys, time
from l2lab.process import run_stage
from l2lab.tracking.runs import ending
from l2lab.tracking.store import connect

store = connect()
run_id = store.client.create_run(store.experiment_id).info.run_id
print(run_id, flush=True)

def body():
    with ending(store, run_id):
        try:
            os.kill(os.getpid(), int(sys.argv[1]))
            time.sleep(30)
        except:  # noqa: E722  as Keras's ops.shape() does while TensorFlow traces the training step
            pass
        if sys.argv[2] == "fails":
            raise TypeError("Failed to convert elements of (None, 2304) to Tensor.")
        # else it carries on as if no stop came (tracing fell back, and training would end FINISHED)

run_stage(body)
"""


@pytest.mark.parametrize("then", ["fails", "carries on"])
@pytest.mark.parametrize(("sig", "code", "line"), [(signal.SIGTERM, 143, "error: terminated (SIGTERM)"),
                                                   (signal.SIGINT, 130, "error: interrupted")])
def test_a_stop_signal_a_library_swallows_still_ends_the_run_killed_in_one_line(
        tmp_path: Path, sig: int, code: int, line: str, then: str) -> None:
    """Ctrl-C, or the team guard's SIGINT, during graph tracing: Keras's bare `except:` ate the
    KeyboardInterrupt and the stage failed with a TypeError traceback and a FAILED run; or it carried
    on, and a point whose worker was killed trained to the end and landed FINISHED beside its retry."""
    proc = subprocess.run([sys.executable, "-c", STOPPED_WHILE_TRACING, str(int(sig)), then], cwd=tmp_path, text=True,
                          capture_output=True, env=env(PYTHONPATH=str(REPO / "src"), DVC_ROOT=str(tmp_path)),
                          preexec_fn=like_a_terminal, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert line in proc.stderr and "Traceback" not in proc.stderr and "TypeError" not in proc.stderr
    run_id = proc.stdout.split()[0]
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status == "KILLED"


def _float64_images(path: Path) -> None:
    with np.load(path) as f:
        x, y = f["x"], f["y"]
    np.savez(path, x=x.astype(np.float64), y=y)


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _grey_28x28(path: Path) -> None:
    with np.load(path) as f:
        y = f["y"]
    np.savez(path, x=np.zeros((len(y), 28, 28, 1), np.uint8), y=y)


@pytest.mark.parametrize(("spoil", "says"), [
    (_float64_images, "x must be uint8 images of shape (N, 32, 32, 3), got float64 (250, 32, 32, 3)"),
    (_truncated, "is not a readable split file (BadZipFile: "),
    (_grey_28x28, "x must be uint8 images of shape (N, 32, 32, 3), got uint8 (250, 28, 28, 1)"),
])
def test_a_split_file_of_the_wrong_kind_stops_training_in_one_line(prepared: Path, spoil, says: str) -> None:
    spoil(prepared / "data" / "train.npz")
    proc = subprocess.run(train_command(prepared), cwd=prepared, capture_output=True, text=True,
                          env=env(PYTHONPATH=str(REPO / "src"), DVC_ROOT=str(prepared)), timeout=300)
    assert proc.returncode == 1, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert f"error: {prepared / 'data' / 'train.npz'}" in line and says in line, line
    assert line.endswith("restore it with `dvc checkout`, or write it again with `dvc repro -f preprocess`")
    assert "Traceback" not in proc.stderr
    assert not (prepared / "models").exists()  # nothing trained, nothing written
    runs = (MlflowClient(f"sqlite:///{prepared / 'mlflow.db'}").search_runs(["1"])
            if (prepared / "mlflow.db").exists() else [])
    assert runs == []  # refused before a run was started
