"""The one queue (l2lab.sweeps.trials) and the loop that follows a sweep (l2lab.sweeps.follow), on real Optuna
storages: the journal file a sweep on one machine uses, and Optuna's SQLite storage standing in for the team's
database (same RDB code as PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from l2lab.errors import L2labError
from l2lab.studies import open_storage
from l2lab.sweeps import follow as following, trials
from l2lab.sweeps.follow import Progress, follow


@pytest.fixture(params=["journal", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path):
    return open_storage(str(tmp_path / "optuna.journal") if request.param == "journal"
                        else f"sqlite:///{tmp_path / 'optuna.db'}")


def point_states(study) -> dict[str, str]:
    """Point name -> its latest trial's state."""
    return {name: t.state.name for name, t in trials.latest_tries(study.get_trials()).items()}


def grid_study(storage, name: str, points: list[str]):
    study = trials.new_study(storage, name)
    trials.open_to_workers(study, name, {"commit": "c0ffee", "snapshot": "c0ffee", "parent_run_id": "p"},
                           [(p, {"train.l2": str(i)}) for i, p in enumerate(points)])
    return study


def test_each_point_is_taken_once_and_its_state_follows_its_latest_trial(storage) -> None:
    study = grid_study(storage, "sw1", ["a", "b"])
    (found,) = trials.sweeps(storage)
    assert found.study_name == "sw1" and found.user_attrs["commit"] == "c0ffee"
    first, second = trials.take(storage, study), trials.take(storage, study)
    assert (first.point, first.sets, first.retry_of) == ("a", {"train.l2": "0"}, None)
    assert second.point == "b"
    assert trials.take(storage, study) is None  # nothing waiting: never a fresh, empty trial
    assert point_states(study) == {"a": "RUNNING", "b": "RUNNING"}
    study.tell(first.number, 0.5)
    assert point_states(study)["a"] == "COMPLETE"
    assert len(study.trials) == 2
    with pytest.raises(L2labError, match="no sweep 'nope'"):
        trials.sweeps(storage, "nope")


def test_two_processes_taking_at_once_never_take_one_point_twice(tmp_path: Path) -> None:
    journal = str(tmp_path / "optuna.journal")
    grid_study(open_storage(journal), "sw", [f"p{i}" for i in range(8)])
    code = ("import sys; from l2lab.studies import open_storage; from l2lab.sweeps import trials; "
            "s = open_storage(sys.argv[1]); (study,) = trials.sweeps(s)\n"
            "while (task := trials.take(s, study)) is not None: print(task.point, flush=True)")
    procs = [subprocess.Popen([sys.executable, "-c", code, journal], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    taken = [line for proc in procs for line in proc.communicate(timeout=120)[0].split()]
    assert sorted(taken) == [f"p{i}" for i in range(8)]


@pytest.mark.fault
def test_a_point_whose_local_worker_died_is_queued_again_at_the_next_read(storage) -> None:
    study = grid_study(storage, "sw2", ["a"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    task = trials.take(storage, study)
    storage.set_trial_user_attr(task.trial_id, "l2lab.pid", dead.stdout.strip())  # its worker, gone
    assert trials.reap(storage, study) == ["a"]
    retry = trials.take(storage, study)
    assert (retry.point, retry.sets, retry.retry_of) == ("a", {"train.l2": "0"}, task.number)
    assert {t.number: t.state.name for t in study.get_trials()} == {task.number: "FAIL", retry.number: "RUNNING"}
    assert point_states(study) == {"a": "RUNNING"}  # the retry supersedes the failure
    assert trials.reap(storage, study) == []  # the retry's worker (this process) lives


@pytest.mark.fault
def test_a_point_whose_remote_worker_went_silent_is_queued_again_after_the_grace(storage, monkeypatch) -> None:
    monkeypatch.setattr(trials, "GRACE_SECONDS", 1.0)
    monkeypatch.setattr(trials, "BEAT_SECONDS", 0.2)
    study = grid_study(storage, "sw3", ["a", "b"])
    far, near = trials.take(storage, study), trials.take(storage, study)
    for task in (far, near):
        storage.set_trial_user_attr(task.trial_id, "l2lab.host", "another-machine")
    with trials.Beat(near):  # its worker beats; the other went silent
        time.sleep(0.1)
        assert trials.reap(storage, study) == []  # both within the grace
        time.sleep(2.0)
        assert trials.reap(storage, study) == ["a"]
    assert point_states(study) == {"a": "WAITING", "b": "RUNNING"}


@pytest.mark.fault
def test_a_point_whose_workers_keep_dying_fails_after_its_retries(storage, caplog) -> None:
    study = grid_study(storage, "sw4", ["a"])
    for _ in range(trials.MAX_RETRIES + 1):
        task = trials.take(storage, study)
        storage.set_trial_user_attr(task.trial_id, "l2lab.pid", "999999999")
        trials.reap(storage, study)
    assert trials.take(storage, study) is None
    assert point_states(study) == {"a": "FAIL"}
    assert "its worker is gone (trial 3), 4 tries in all: it counts as failed" in caplog.text


@pytest.mark.fault
def test_a_stopped_sweep_hands_out_nothing_and_its_waiting_points_are_cancelled(storage) -> None:
    study = grid_study(storage, "sw5", ["a", "b", "c"])
    task = trials.take(storage, study)
    study.set_user_attr(trials.STOPPED_ATTR, True)
    assert trials.take(storage, study) is None
    trials.requeue(task)  # a worker stopped as the sweep was: its point back in the queue
    assert sorted(trials.cancel_waiting(storage, study)) == ["a", "b", "c"]
    assert trials.cancel_waiting(storage, study) == []


@pytest.mark.fault
def test_a_study_name_taken_already_is_one_line(storage) -> None:
    """Two sweeps started in the same second used to take the same id; a clash that happens all the same is one
    line, before anything else is made."""
    trials.new_study(storage, "sw-clash")
    with pytest.raises(L2labError, match=r"^the sweep storage already holds a study named 'sw-clash': start the "
                                         r"sweep again \(a new id is drawn each time\)$"):
        trials.new_study(storage, "sw-clash")


def tune_study(storage, name: str, count: int, seed: int | None = 0):
    import optuna.distributions as d

    study = trials.new_study(storage, name)
    attrs = trials.tune_attrs(name, {"train.l2": d.FloatDistribution(1e-6, 1e-1, log=True)}, {"train.epochs": "1"},
                              count, "random", seed, {"name": "none", "epochs": 1})
    trials.open_to_workers(study, name, {"commit": "c", "snapshot": "c", "parent_run_id": "p", **attrs}, [])
    return study


def test_a_tune_s_workers_draw_trials_until_its_count_then_none(storage) -> None:
    study = tune_study(storage, "tune-a", 3)
    drawn = [trials.take(storage, study) for _ in range(4)]
    assert drawn[3] is None and all(drawn[:3])
    assert [t.point.split("_")[0] for t in drawn[:3]] == ["t000", "t001", "t002"]
    assert all(t.sets["train.epochs"] == "1" and float(t.sets["train.l2"]) > 0 for t in drawn[:3])
    again = tune_study(storage, "tune-b", 3)  # the same seed: the same draws, trial by trial
    assert [trials.take(storage, again).sets for _ in range(3)] == [t.sets for t in drawn[:3]]


def take_at_once(storage, study, monkeypatch) -> list:
    """Two workers taking from a tune at once, both past its count check before either draws."""
    import threading

    from l2lab import studies

    barrier, made = threading.Barrier(2), studies.make_sampler

    def slow_sampler(name: str, seed: int | None):
        barrier.wait(timeout=30)
        return made(name, seed)

    monkeypatch.setattr(trials, "make_sampler", slow_sampler)
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(trials.take(storage, study))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return got


def test_two_workers_asking_at_once_draw_different_trials(storage, monkeypatch) -> None:
    """Both count the trials before either draws: seeded by the count, they drew alike (CI: 4 trials, 3 different)."""
    got = take_at_once(storage, tune_study(storage, "tune-c", 4), monkeypatch)
    assert len({repr(t.sets) for t in got}) == 2


def test_a_draw_past_the_count_by_workers_asking_at_once_is_surplus(storage, monkeypatch) -> None:
    study = tune_study(storage, "tune-d", 1)
    got = take_at_once(storage, study, monkeypatch)
    (kept,) = [t for t in got if t is not None]
    assert kept.number == 0 and got.count(None) == 1
    (surplus,) = [t for t in study.get_trials() if t.user_attrs.get(trials.SURPLUS)]
    assert surplus.number == 1 and surplus.state.name == "FAIL"
    assert list(trials.latest_tries(study.get_trials())) == [kept.point]  # left out of the tune
    assert trials.take(storage, study) is None


def test_follow_reads_to_the_end_keeps_workers_for_waiting_points_and_says_progress(
        storage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """follow() with keep() standing in for the workers: each read one point is taken, the next it ends."""
    monkeypatch.setattr(following, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(following, "PROGRESS_SECONDS", 0.0)
    study = grid_study(storage, "sw6", ["a", "b"])
    needed: list[int] = []
    held: list = []

    def keep(waiting: int) -> None:
        needed.append(waiting)
        if held:
            task = held.pop()
            study.tell(task.number, 0.5) if task.point == "a" else study.tell(task.number, state=trials_fail())
        elif waiting:
            held.append(trials.take(storage, study))

    results = follow(storage, study, 2, lambda trial: Progress(1, 3, 0.25), keep)
    assert results == {"a": "Success", "b": "Failed"}
    assert needed[:2] == [2, 1]
    lines = [r.message for r in caplog.records if r.message.startswith("sweep progress")]
    assert ("a: epoch 1/3, val_accuracy 0.2500" in lines[1]
            and lines[-1] == "sweep progress: 2/2 done (1 failed), 0 running")


def trials_fail():
    from optuna.trial import TrialState

    return TrialState.FAIL


@pytest.mark.fault
def test_workers_that_keep_exiting_with_an_error_stop_the_sweep(tmp_path: Path, monkeypatch) -> None:
    """A worker that cannot start (here: a storage it cannot open) exits 1; started again RESTARTS times, then one
    line, not a sweep that waits for ever."""
    from l2lab.sweeps.run import RESTARTS, Workers

    workers = Workers(1, str(tmp_path / "no-such-folder" / "optuna.journal"), "sw", tmp_path, None)
    with pytest.raises(L2labError, match=f"this sweep's workers exited with an error {RESTARTS + 1} times"):
        for _ in range(100):
            workers.keep(1)
            for proc in workers.procs:
                proc.wait(timeout=120)
    assert len(workers.procs) <= 1


@pytest.mark.fault
def test_workers_that_leave_while_points_wait_are_started_again(tmp_path: Path, monkeypatch) -> None:
    """A worker that finds nothing to take leaves (status 0); points queued after it left (a retry) get a new
    one. Leaving is no error: it never counts towards RESTARTS."""
    from l2lab.sweeps.run import Workers

    workers = Workers(2, "unused", "sw", tmp_path, None)
    workers.argv = [sys.executable, "-c", "pass"]  # a worker that leaves at once
    for _ in range(10):
        workers.keep(1)
        assert len(workers.procs) == 1  # never more than the points that wait
        workers.procs[0].wait(timeout=60)
    workers.keep(0)
    assert workers.procs == [] and workers.restarts == 0


def test_the_guard_interrupts_its_command_when_the_worker_dies(tmp_path: Path) -> None:
    import signal

    marker = tmp_path / "marker"
    guarded = ("import signal, sys, time\n"
               "def stop(*_):\n    open(sys.argv[1], 'w').write('interrupted'); sys.exit(130)\n"
               "signal.signal(signal.SIGINT, stop)\nopen(sys.argv[1] + '.started', 'w').write('')\ntime.sleep(120)\n")
    # The worker: holds the guard's stdin and is then SIGKILLed.
    worker = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; "
        f"g = subprocess.Popen([sys.executable, '-m', 'l2lab.sweeps.guard', sys.executable, '-c', {guarded!r}, "
        f"{str(marker)!r}], stdin=subprocess.PIPE, stderr=open({str(tmp_path / 'guard.log')!r}, 'w')); "
        "print(g.pid, flush=True); time.sleep(120)")],
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
    # The point's log says why its experiment stopped.
    assert "l2lab guard: its worker is gone; interrupting" in (tmp_path / "guard.log").read_text()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(guard_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(guard_pid, 0)


POINT_LOG = """--- trial 0: exp run --temp -n p -S train.l2=0
ERROR: failed to reproduce 'train': an earlier try's line
--- trial 3: exp run --temp -n p -S train.l2=0
Running stage 'train':
> PYTHONPATH=src python -m l2lab.stages.train --data-dir data/processed
{body}ERROR: failed to reproduce 'train': failed to run: PYTHONPATH=src python -m l2lab.stages.train, exited with 1
"""


@pytest.mark.parametrize(("body", "said"), [
    ("2026-12-05 10:13:45,100 ERROR l2lab: error: train.l2 must be >= 0, got -1\n",
     "2026-12-05 10:13:45,100 ERROR l2lab: error: train.l2 must be >= 0, got -1"),
    ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
     "mlflow.exceptions.RestException: BAD_REQUEST: duplicate key value\n",
     "mlflow.exceptions.RestException: BAD_REQUEST: duplicate key value"),
    ("epoch 1/2: loss 2.3\n", "ERROR: failed to reproduce 'train': failed to run: PYTHONPATH=src python -m "
                              "l2lab.stages.train, exited with 1"),
])
def test_a_failed_points_line_says_why_from_its_own_trials_part_of_the_log(tmp_path: Path, body: str,
                                                                           said: str) -> None:
    from l2lab.sweeps.worker import cause

    log = tmp_path / "point.log"
    log.write_text(POINT_LOG.format(body=body))
    assert cause(log, 3) == said
    assert cause(tmp_path / "missing.log", 3) == "it printed nothing"


class OperationalError(Exception):
    """Named as SQLAlchemy's and psycopg2's: the database went away (a restart, the network)."""


@pytest.mark.fault
def test_follow_rides_out_a_storage_outage_and_says_so_once(storage, monkeypatch, caplog) -> None:
    """PostgreSQL stopped for a minute mid-sweep: the workers rode it out, the sweep that followed them died with
    three tracebacks once it came back."""
    monkeypatch.setattr(following, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(trials, "OUTAGE_WAIT", 0.0)
    study = grid_study(storage, "sw7", ["a"])
    study.tell(trials.take(storage, study).number, 0.5)
    real, calls = trials.reap, []

    def flaky(*args):  # noqa: ANN002
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("(psycopg2.OperationalError) server closed the connection") from OperationalError()
        return real(*args)

    monkeypatch.setattr(trials, "reap", flaky)
    assert follow(storage, study, 1, lambda trial: Progress(0, 1, None)) == {"a": "Success"}
    assert caplog.text.count("is unreachable") == 1 and "tracking server) is back after" in caplog.text
    monkeypatch.setattr(trials, "OUTAGE_SECONDS", 0.0)
    calls.clear()
    with pytest.raises(L2labError, match="unreachable for 0 s .*l2lab report --sweep sw7"):
        follow(storage, study, 1, lambda trial: Progress(0, 1, None))
    monkeypatch.setattr(trials, "reap", lambda *args: 1 / 0)  # a bug is no outage: raised at once
    with pytest.raises(ZeroDivisionError):
        follow(storage, study, 1, lambda trial: Progress(0, 1, None))
