"""Team mode's parts that need no servers: the Optuna queue (on Optuna's SQLite storage), the guard, redaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from l2lab import studies
from l2lab.errors import L2labError
from l2lab.team import queue


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(studies, "GRACE_SECONDS", 1)
    return queue.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")


def test_each_point_is_taken_once_and_its_state_follows_its_latest_trial(storage) -> None:
    study = queue.enqueue(queue.new_study(storage, "sw1"), "sw1",
                          [("a_sw1", {"train.l2": "0"}), ("b_sw1", {"train.l2": "1"})],
                          {"commit": "c0ffee", "parent_run_id": "p"})
    (found,) = queue.sweeps(storage)
    assert found.study_name == "sw1" and found.user_attrs["commit"] == "c0ffee"
    first, second = queue.take(storage, study), queue.take(storage, study)
    assert (first.point, first.sets, first.retry_of) == ("a_sw1", {"train.l2": "0"}, None)
    assert second.point == "b_sw1"
    assert queue.take(storage, study) is None  # nothing waiting: never a fresh, empty trial
    assert queue.point_states(study) == {"a_sw1": "Running", "b_sw1": "Running"}
    study.tell(first.number, 0.5)
    assert queue.point_states(study)["a_sw1"] == "Success"
    assert len(study.trials) == 2


def test_a_point_whose_heartbeat_stops_is_retried_by_the_next_taker(storage) -> None:
    study = queue.enqueue(queue.new_study(storage, "sw2"), "sw2", [("a_sw2", {"train.l2": "0"})],
                          {"commit": "c", "parent_run_id": "p"})
    dead = queue.take(storage, study)  # its worker dies: no more heartbeats
    assert queue.trials_running([study]) == 1
    time.sleep(2.5)  # past the grace period (1 s here)
    retry = queue.take(storage, study)
    assert retry is not None and retry.point == "a_sw2" and retry.retry_of == dead.number
    assert retry.sets == {"train.l2": "0"}
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {dead.number: "FAIL", retry.number: "RUNNING"}
    assert queue.point_states(study) == {"a_sw2": "Running"}  # the retry supersedes the failure


def test_a_heartbeat_keeps_a_slow_point_its_workers(storage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue, "HEARTBEAT_SECONDS", 0.2)
    study = queue.enqueue(queue.new_study(storage, "sw3"), "sw3", [("a_sw3", {}), ("b_sw3", {})],
                          {"commit": "c", "parent_run_id": "p"})
    task = queue.take(storage, study)
    with queue.Heartbeat(task):
        time.sleep(2.5)
        other = queue.take(storage, study)
    assert other.point == "b_sw3" and other.retry_of is None  # the live point was not handed out again
    assert queue.cancel_waiting(storage, study) == []
    queue.requeue(task)  # an interrupted point goes back to the queue
    assert queue.cancel_waiting(storage, study) == ["a_sw3"]
    assert queue.take(storage, study) is None


def test_storage_errors_name_the_url_without_its_password() -> None:
    with pytest.raises(L2labError) as caught:
        queue.open_storage("postgresql+psycopg2://me:s3cret@127.0.0.1:9/optuna")
    message = str(caught.value)
    assert message.startswith("cannot open the sweep storage postgresql+psycopg2://me:***@127.0.0.1:9/optuna")
    assert "s3cret" not in message
    assert queue.redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert queue.redact("/repo/optuna.journal") == "/repo/optuna.journal"  # a local tune's journal file, as it is
    with pytest.raises(L2labError, match="no team sweep 'nope'"):
        queue.sweeps(queue.open_storage("sqlite://"), "nope")


GUARDED = """
import signal, sys, time
def stop(*_):
    open(sys.argv[1], "w").write("interrupted")
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
open(sys.argv[1] + ".started", "w").write("")
time.sleep(120)
"""


def test_the_guard_interrupts_its_command_when_the_worker_dies(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    # The worker: holds the guard's stdin and is then SIGKILLed.
    worker = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; "
        f"g = subprocess.Popen([sys.executable, '-m', 'l2lab.team.guard', sys.executable, '-c', {GUARDED!r}, "
        f"{str(marker)!r}], stdin=subprocess.PIPE); print(g.pid, flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    guard_pid = int(worker.stdout.readline())
    deadline = time.monotonic() + 30
    while not Path(f"{marker}.started").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.read_text() == "interrupted"  # SIGINT reached the command: a stage ends its run KILLED
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(guard_pid, 0)
        except ProcessLookupError:
            break
        try:
            os.waitpid(guard_pid, os.WNOHANG)  # reaped by init, not us; this only avoids a busy loop
        except ChildProcessError:
            pass
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(guard_pid, 0)


def test_team_mode_refuses_a_local_store_a_dirty_clone_and_an_unpushed_commit(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from l2lab.team.clone import pushed_commit
    from l2lab.team.clone import check_shared_tracking
    from project import run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(L2labError, match="team mode needs the team's MLflow tracking server, not sqlite:///"):
        check_shared_tracking(tmp_path)
    assert not (tmp_path / "mlflow.db").exists()  # refused before any store was made
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    check_shared_tracking(tmp_path)

    repo, remote = tmp_path / "repo", tmp_path / "remote.git"
    repo.mkdir()
    run(tmp_path, "git", "init", "-q", "--bare", str(remote))
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, "dvc", "init", "-q")
    (repo / "params.yaml").write_text("a: 1\n")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "init")
    with pytest.raises(L2labError, match="no git remote named origin"):
        pushed_commit(repo)
    run(repo, "git", "remote", "add", "origin", str(remote))
    with pytest.raises(L2labError, match="no default DVC remote"):
        pushed_commit(repo)
    run(repo, "dvc", "remote", "add", "-d", "team", "s3://bucket/dvc")
    run(repo, "git", "commit", "-qam", "remote")
    with pytest.raises(L2labError, match=r"commit [0-9a-f]{12} is not on origin: .* git push first"):
        pushed_commit(repo)
    run(repo, "git", "push", "-q", "origin", "main")
    assert pushed_commit(repo) == run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    (repo / "params.yaml").write_text("a: 2\n")
    with pytest.raises(L2labError, match="has uncommitted changes; team workers run the sweep's commit"):
        pushed_commit(repo)


def test_a_points_latest_try_is_the_run_its_progress_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from l2lab.tracking.sweeps import point_runs, prepare_run
    from l2lab.tracking.store import connect
    from l2lab.tracking.sweeps import reserve

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = connect(tmp_path)
    parent = store.client.create_run(store.experiment_id, run_name="sw").info.run_id
    first = reserve(store, parent, "sw", "l2=0_sw")
    store.client.update_run(first, status="RUNNING")  # taken by a worker that then died
    second = prepare_run(store, parent, "sw", "l2=0_sw")  # the retry: the dead try ends KILLED
    assert second != first and store.client.get_run(first).info.status == "KILLED"
    assert [r.info.run_id for r in point_runs(store, parent, "l2=0_sw")][0] == second
    assert prepare_run(store, parent, "sw", "l2=0_sw") == second  # a waiting reservation is reused


@pytest.mark.fault
def test_a_study_name_taken_already_is_one_line(storage) -> None:
    """Two team sweeps started in the same second used to take the same id; a clash that happens all the same
    is one line, before anything else is created."""
    queue.new_study(storage, "sw-clash")
    with pytest.raises(L2labError, match=r"^the sweep storage already holds a study named 'sw-clash': start the "
                                         r"sweep again \(a new id is drawn each time\)$"):
        queue.new_study(storage, "sw-clash")


def test_sweep_ids_started_in_one_second_differ() -> None:
    from l2lab.sweeps.grid import new_sweep_id

    ids = {new_sweep_id() for _ in range(10)}  # 24 random bits: a clash in 10 draws is a 1-in-370,000 event
    assert len(ids) == 10 and all(i.startswith("sweep-") and len(i) == len("sweep-20261201-231500-3f9a1c") for i in ids)


def a_tune(storage, name: str, trials: int, seed: int | None = 5) -> object:
    import optuna

    space = {"train.l2": optuna.distributions.FloatDistribution(1e-6, 1e-1, log=True),
             "train.optimizer": optuna.distributions.CategoricalDistribution(("adam", "sgd"))}
    study = queue.tune_study(storage, name, space, {"train.epochs": "3"}, trials, "random", seed,
                             {"name": "median", "epochs": 3}, {"commit": "c0ffee", "parent_run_id": "p"})
    assert queue.sweeps(storage) == [] or name not in [s.study_name for s in queue.sweeps(storage)]  # not yet marked
    study.set_user_attr(queue.SWEEP_ATTR, name)
    return study


def test_a_tune_s_workers_draw_trials_until_its_count_then_none(storage) -> None:
    study = a_tune(storage, "tune-a", trials=2)
    first, second = queue.take(storage, study), queue.take(storage, study)
    assert queue.take(storage, study) is None  # two drawn: no third
    assert first.point.startswith("t000_l2=") and first.point.endswith("_tune-a")
    assert first.sets["train.epochs"] == "3" and float(first.sets["train.l2"]) == study.trials[0].params["train.l2"]
    assert first.sets != second.sets  # the sampler is seeded per draw: two workers never draw alike
    again = a_tune(storage, "tune-b", trials=2)  # the same seed, one worker: the same draws
    assert [queue.take(storage, again).sets for _ in range(2)] == [first.sets, second.sets]


def test_two_workers_asking_at_once_draw_different_trials(storage, monkeypatch) -> None:
    """Both counted the study's trials before either drew: seeded by that count, their samplers drew alike
    (CI saw a 4-trial team tune with 3 different draws)."""
    import threading

    import optuna

    a_tune(storage, "tune-d", trials=4)
    real, together = studies.make_sampler, threading.Barrier(2, timeout=30)

    def make_sampler(name, seed):  # each worker waits here for the other: both are past their count
        together.wait()
        return real(name, seed)

    monkeypatch.setattr(studies, "make_sampler", make_sampler)
    drawn = []

    def worker() -> None:
        drawn.append(queue.take(storage, optuna.load_study(study_name="tune-d", storage=storage)))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(drawn) == 2 and all(drawn)
    assert drawn[0].sets != drawn[1].sets


def test_a_draw_past_the_count_by_workers_asking_at_once_is_surplus(storage, monkeypatch) -> None:
    from optuna.trial import TrialState

    study = a_tune(storage, "tune-c", trials=1)
    other = study.ask()  # another worker drew the one trial after this one counted none
    other.set_user_attr("point", "t000_other_tune-c")
    real, counted = queue.drawn_points, []

    def drawn_points(s):  # the first count (before drawing) saw none: the other worker had not drawn yet
        counted.append(s)
        return {} if len(counted) == 1 else real(s)

    monkeypatch.setattr(queue, "drawn_points", drawn_points)
    assert queue.take(storage, study) is None
    mine = study.trials[-1]
    assert mine.state == TrialState.FAIL and mine.user_attrs["l2lab.surplus"]
    assert [t.number for t in queue.tune_trials(study)] == [other.number]
