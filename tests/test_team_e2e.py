"""Team mode end to end, on loopback: the real stack (PostgreSQL, SeaweedFS's S3, `mlflow server`),
a bare git repository as the team's remote, and two workers in two clones, one killed mid-point."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

pytest.importorskip("mirakuru", reason="team extras not installed (make install-team)")

from l2lab.team import stack as team_stack  # noqa: E402
from l2lab.tracking.registry import CHAMPION_ALIAS, REGISTERED_MODEL  # noqa: E402
from l2lab.tracking.store import EXPERIMENT  # noqa: E402
from project import clone_project, env, run, set_params  # noqa: E402

pytestmark = [pytest.mark.team, pytest.mark.e2e]
GRID = {"train.l2": ["0", "0.001"], "train.optimizer": ["adam", "sgd"]}  # --l2 and --grid: 4 points


@pytest.fixture
def stack(tmp_path: Path):
    if shutil.which("initdb") is None and shutil.which("pg_config") is None:
        pytest.skip("PostgreSQL's server programs are not installed")
    started = team_stack.up(tmp_path / ".team")
    yield started
    team_stack.down(tmp_path / ".team")
    ports = [p for port in (started.s3_port, *started.s3_ports) for p in (port, port + team_stack.GRPC_OFFSET)]
    left = [str(sock) for port in ports for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
    assert not left and not (tmp_path / ".team").exists()  # weed's sockets in /tmp go with the stack


def team_env(stack: team_stack.Stack) -> dict[str, str]:
    return env(**stack.client_env())


def sh(cwd: Path, stack: team_stack.Stack, *args: str) -> subprocess.CompletedProcess:
    return run(cwd, *args, **stack.client_env())


def start(cwd: Path, stack: team_stack.Stack, *args: str, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(list(args), cwd=cwd, env=team_env(stack), stdout=out, stderr=subprocess.STDOUT,
                                text=True)


def wait_for(condition, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def team_project(tmp_path: Path, stack: team_stack.Stack, small_archive: Path, small_archive_sha256: str,
                 epochs: int = 2) -> tuple[Path, Path]:
    """(admin clone, the team's git remote): the project pushed, its data in the DVC remote, the archive gone."""
    remote = tmp_path / "remote.git"
    run(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(remote))
    archive = tmp_path / "shared" / "cifar.tar.gz"  # removed once pushed: workers must pull, not download
    archive.parent.mkdir()
    shutil.copy(small_archive, archive)
    admin = clone_project(tmp_path / "admin")
    set_params(admin, data__url=archive.as_uri(), data__sha256=small_archive_sha256, data__val_size=50,
               train__epochs=epochs)
    sh(admin, stack, "dvc", "remote", "add", "-d", "team", f"s3://{team_stack.BUCKET}/dvc")
    sh(admin, stack, "dvc", "repro", "preprocess")
    sh(admin, stack, "git", "add", "-A")
    sh(admin, stack, "git", "commit", "-qm", "team remote, data")
    sh(admin, stack, "dvc", "push")
    sh(admin, stack, "git", "remote", "add", "origin", str(remote))
    sh(admin, stack, "git", "push", "-q", "origin", "main")
    archive.unlink()
    return admin, remote


def test_two_workers_one_killed_every_point_lands_once(tmp_path: Path, stack: team_stack.Stack,
                                                         small_archive: Path, small_archive_sha256: str) -> None:
    # The team's git remote, and an admin clone that puts the data in the DVC remote once.
    admin, remote = team_project(tmp_path, stack, small_archive, small_archive_sha256)
    workers = [tmp_path / "w1", tmp_path / "w2"]
    for clone in workers:
        run(tmp_path, "git", "clone", "-q", str(remote), str(clone))

    sweep = start(admin, stack, "l2lab", "sweep", "--l2", ",".join(GRID["train.l2"]),
                  "--grid", "train.optimizer=" + ",".join(GRID["train.optimizer"]), log=tmp_path / "sweep.log")
    client = MlflowClient(stack.tracking_uri)
    wait_for(lambda: "4 points for team workers" in (tmp_path / "sweep.log").read_text(), 120, "the grid")
    procs = [start(clone, stack, "l2lab", "worker", log=tmp_path / f"{clone.name}.log") for clone in workers]

    # Kill worker 1 (SIGKILL: no clean-up of its own) once its point trains.
    experiment = client.get_experiment_by_name(EXPERIMENT)

    def training_in_worker1():
        mine = {p.pid for p in psutil.Process(procs[0].pid).children(recursive=True)}
        for r in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
            if int(r.data.tags.get("l2lab.pid", "0")) in mine and r.data.metrics.get("val_accuracy") is None:
                return r
        return None

    killed_run = wait_for(training_in_worker1, 300, "worker 1 to train a point")
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()

    assert procs[1].wait(timeout=900) == 0, (tmp_path / "w2.log").read_text()
    assert sweep.wait(timeout=120) == 0, (tmp_path / "sweep.log").read_text()
    log2 = (tmp_path / "w2.log").read_text()
    assert f"{killed_run.data.tags['dvc.exp_name']}: taken (trial 4, retry of trial" in log2  # w2 took it up

    (parent,) = client.search_runs([experiment.experiment_id], "tags.`l2lab.role` = 'sweep'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_point: dict[str, list] = {}
    for r in children:
        by_point.setdefault(r.data.tags["dvc.exp_name"], []).append(r)
    assert len(by_point) == 4
    for name, point_runs in by_point.items():  # exactly one FINISHED run per point
        assert [r.info.status for r in point_runs].count("FINISHED") == 1, name
    assert sorted((r.data.params["train.l2"], r.data.params["train.optimizer"]) for r in children
                  if r.info.status == "FINISHED") == [("0.0", "adam"), ("0.0", "sgd"),
                                                      ("0.001", "adam"), ("0.001", "sgd")]
    # The killed worker's run ended KILLED (its guard interrupted the training), not FINISHED.
    assert client.get_run(killed_run.info.run_id).info.status == "KILLED"
    assert len(by_point[killed_run.data.tags["dvc.exp_name"]]) == 2
    # No training outlived worker 1.
    assert not [p for p in psutil.process_iter(["cmdline"]) if "w1" in " ".join(p.info["cmdline"] or [])
                and "l2lab.stages" in " ".join(p.info["cmdline"] or [])]

    # Artifacts went through the server to the S3 bucket.
    keys = [o["Key"] for page in team_stack.s3_client(stack).get_paginator("list_objects_v2").paginate(
        Bucket=team_stack.BUCKET, Prefix="mlartifacts/") for o in page.get("Contents", [])]
    finished = [r for r in children if r.info.status == "FINISHED"]
    for r in finished:
        assert any(f"/{r.info.run_id}/artifacts/weights/model.weights.h5" in k for k in keys), r.info.run_name
    assert any(k.startswith("mlartifacts/") and "/models/" in k for k in keys)  # the logged MLflow models

    # A third, fresh clone sees the four experiments and pulls a model that loads and predicts.
    fresh = tmp_path / "w3"
    run(tmp_path, "git", "clone", "-q", str(remote), str(fresh))
    sh(fresh, stack, "dvc", "exp", "pull", "origin", *by_point)
    listed = sh(fresh, stack, "dvc", "exp", "list", "--name-only").stdout.split()
    assert sorted(listed) == sorted(by_point)
    champion_name = max(finished, key=lambda r: r.data.metrics["val_accuracy"]).data.tags["dvc.exp_name"]
    sh(fresh, stack, "dvc", "exp", "apply", champion_name)
    sh(fresh, stack, "dvc", "pull", "train")
    code = ("import keras, numpy as np; m = keras.models.load_model('models/model.keras'); "
            "p = m.predict(np.zeros((2, 32, 32, 3), 'float32'), verbose=0); assert p.shape == (2, 10); print('ok')")
    assert sh(fresh, stack, sys.executable, "-c", code).stdout.strip().endswith("ok")

    # l2lab report against the server: the champion on validation accuracy, registered there.
    out = sh(admin, stack, "l2lab", "report").stdout
    best = max(finished, key=lambda r: (r.data.metrics["val_accuracy"], -r.data.metrics["val_loss"]))
    assert best.info.run_id in out
    assert client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).tags["source_run_id"] == best.info.run_id


def test_a_tune_across_two_workers_each_asking_the_sampler(tmp_path: Path, stack: team_stack.Stack,
                                                            small_archive: Path, small_archive_sha256: str) -> None:
    from optuna.trial import TrialState

    from l2lab.studies import open_storage
    from l2lab.sweeps import trials as queue

    admin, remote = team_project(tmp_path, stack, small_archive, small_archive_sha256, epochs=3)
    workers = [tmp_path / "w1", tmp_path / "w2"]
    for clone in workers:
        run(tmp_path, "git", "clone", "-q", str(remote), str(clone))
    tune = start(admin, stack, "l2lab", "tune", "--trials", "4", "--sampler", "random", "--pruner", "median",
                 "--seed", "3", "--space", "train.learning_rate=log:1e-5:3e-2", "--space", "train.l2=log:1e-6:1e-2",
                 log=tmp_path / "tune.log")
    wait_for(lambda: "for team workers" in (tmp_path / "tune.log").read_text(), 120, "the tune")
    procs = [start(clone, stack, "l2lab", "worker", log=tmp_path / f"{clone.name}.log") for clone in workers]
    for proc, clone in zip(procs, workers):
        assert proc.wait(timeout=900) == 0, (tmp_path / f"{clone.name}.log").read_text()
    assert tune.wait(timeout=120) == 0, (tmp_path / "tune.log").read_text()
    logs = [(tmp_path / f"{clone.name}.log").read_text() for clone in workers]
    assert all(": taken (trial " in text for text in logs)  # both workers drew trials of their own

    (study,) = queue.sweeps(open_storage(stack.database_uri("optuna")))
    trials = [t for t in study.get_trials() if not t.user_attrs.get(queue.SURPLUS)]
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({repr(t.params) for t in trials}) == 4  # the workers' samplers never drew alike
    client = MlflowClient(stack.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment], "tags.`l2lab.kind` = 'tune'")
    assert parent.info.status == "FINISHED" and parent.data.tags["l2lab.study"] == study.study_name
    children = {r.data.tags["dvc.exp_name"]: r for r in
                client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    assert sorted(children) == sorted(t.user_attrs["point"] for t in trials)
    for t in trials:
        r = children[t.user_attrs["point"]]
        assert r.info.status == "FINISHED" and r.data.tags["l2lab.trial"] == str(t.number)
        assert float(r.data.params["train.l2"]) == t.params["train.l2"]
        epochs = len(client.get_metric_history(r.info.run_id, "val_accuracy"))
        assert epochs == len(t.intermediate_values)  # every epoch reported to the trial by the train stage
        assert ("l2lab.pruned_at_epoch" in r.data.tags) == (t.state == TrialState.PRUNED)
        assert "test_accuracy" in r.data.metrics  # evaluated before the tune's report, pruned ones too
    out = sh(admin, stack, "l2lab", "report").stdout
    assert study.study_name in out and "pruned_at_epoch" in out


OPEN_AND_CREATE = """
import sys
from l2lab.studies import open_storage
from l2lab.sweeps import trials
trials.new_study(open_storage(sys.argv[1]), sys.argv[2])
print("ok")
"""


@pytest.mark.fault
def test_two_first_sweeps_on_a_fresh_storage_both_start(stack: team_stack.Stack) -> None:
    """The first two team sweeps on a fresh database raced while Optuna created its tables on first use
    (PostgreSQL's UniqueViolation on pg_type_typname_nsp_index, reported as a bad URL)."""
    import psycopg2

    con = psycopg2.connect(host=stack.pg_data, port=stack.pg_port, user="postgres", dbname="postgres")
    con.autocommit = True
    try:
        for attempt in range(3):
            name = f"fresh{attempt}"
            with con.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name} OWNER {team_stack.ROLE}")
            url = stack.database_uri(name)
            both = [subprocess.Popen([sys.executable, "-c", OPEN_AND_CREATE, url, f"sweep-{attempt}-{i}"], env=env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
            for proc in both:
                out, err = proc.communicate(timeout=120)
                assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
    finally:
        con.close()


SAME_DATASET_AT = """
import sys, time
from l2lab.tracking.runs import Run
from l2lab.tracking.store import connect
store = connect()
run = Run(store, store.client.create_run(store.experiment_id).info.run_id)
summary = {"dataset": "cifar-10", "train": {"total": 250}, "val": {"total": 50}, "test": {"total": 100}}
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
run.log_splits({split: sys.argv[2] + split for split in ("train", "val", "test")}, summary)
print("ok")
"""


@pytest.mark.fault
def test_two_points_logging_the_same_new_dataset_at_once_both_land(tmp_path: Path, stack: team_stack.Stack) -> None:
    """Two workers' first points logged their (same) splits to the server at the same instant: MLflow looks the
    dataset up, then inserts it, and one of them failed on PostgreSQL's UniqueViolation (dataset_pk)."""
    for attempt in range(3):
        at = time.time() + 8.0  # both past their imports by then
        both = [subprocess.Popen([sys.executable, "-c", SAME_DATASET_AT, str(at), f"digest{attempt}"], cwd=tmp_path,
                                 env=team_env(stack), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        for proc in both:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
    client = MlflowClient(stack.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 6 and all(len(r.inputs.dataset_inputs) == 3 for r in runs)


@pytest.mark.fault
def test_team_up_starts_again_each_stopped_service_on_its_data(stack: team_stack.Stack) -> None:
    """After SIGTERM to the team's `mlflow server` nothing restarted it, `team up` refused (set up already) and
    `team down` deletes the data. Now `team up` starts whichever service is down, keeping what it held."""
    import os

    folder = Path(stack.folder)
    client = MlflowClient(stack.tracking_uri)
    run_id = client.create_run(client.create_experiment("kept")).info.run_id
    team_stack.s3_client(stack).put_object(Bucket=team_stack.BUCKET, Key="kept.txt", Body=b"kept")
    for service in ("mlflow", "s3", "postgres"):
        current = team_stack.load(folder)
        if service == "postgres":
            subprocess.run(team_stack._as_postgres([team_stack._pg_bin("pg_ctl"), "-D",
                                                    str(Path(current.pg_data) / "db"), "-m", "fast", "-w", "stop"]),
                           check=True, capture_output=True)
            assert not team_stack.pg_running(current)
        else:
            os.kill(current.pids[service], signal.SIGTERM)
            wait_for(lambda: not team_stack._alive(current.pids[service]), 60, f"{service} to stop")
        again = team_stack.up(folder)  # no error: the stack is set up; the one service down starts
        assert (again.mlflow_port, again.s3_port, again.pg_port) == (stack.mlflow_port, stack.s3_port, stack.pg_port)
        assert team_stack.pg_running(again)
        body = team_stack.s3_client(again).get_object(Bucket=team_stack.BUCKET, Key="kept.txt")["Body"].read()
        assert body == b"kept", service
        kept = wait_for(lambda: _run_or_none(client, run_id), 60, "the tracking server to answer")
        assert kept.info.run_id == run_id, service  # PostgreSQL's data, through MLflow


def _run_or_none(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except Exception:  # noqa: BLE001 (the server's first requests after PostgreSQL restarted may fail)
        return None


@pytest.mark.fault
def test_a_team_sweep_rides_out_its_database_stopping(tmp_path: Path, stack: team_stack.Stack, small_archive: Path,
                                                      small_archive_sha256: str) -> None:
    """PostgreSQL stopped for a while mid-sweep: the workers rode it out, but the `l2lab sweep` that follows them
    died with three tracebacks once it came back, its parent run FAILED."""
    admin, remote = team_project(tmp_path, stack, small_archive, small_archive_sha256, epochs=3)
    worker_clone = tmp_path / "w1"
    run(tmp_path, "git", "clone", "-q", str(remote), str(worker_clone))
    sweep = start(admin, stack, "l2lab", "sweep", "--l2", "0,0.001", log=tmp_path / "sweep.log")
    wait_for(lambda: "2 points for team workers" in (tmp_path / "sweep.log").read_text(), 120, "the grid")
    worker = start(worker_clone, stack, "l2lab", "worker", log=tmp_path / "w1.log")
    client = MlflowClient(stack.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    wait_for(lambda: client.search_runs([experiment], "attributes.status = 'RUNNING' and tags.`l2lab.role` = 'point'"),
             300, "a point to train")
    db = str(Path(stack.pg_data) / "db")
    subprocess.run(team_stack._as_postgres([team_stack._pg_bin("pg_ctl"), "-D", db, "-m", "fast", "-w", "stop"]),
                   check=True, capture_output=True)
    wait_for(lambda: "is unreachable" in (tmp_path / "sweep.log").read_text(), 60, "the sweep to notice")
    time.sleep(10)
    team_stack.pg_start(stack)
    assert worker.wait(timeout=900) == 0, (tmp_path / "w1.log").read_text()
    assert sweep.wait(timeout=300) == 0, (tmp_path / "sweep.log").read_text()
    said = (tmp_path / "sweep.log").read_text()
    assert said.count("is unreachable") == 1 and "is back after" in said and "Traceback" not in said
    (parent,) = client.search_runs([experiment], "tags.`l2lab.role` = 'sweep'")
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]


def test_a_cross_validated_team_sweep_runs_its_folds_and_refit_on_the_workers(
        tmp_path: Path, stack: team_stack.Stack, small_archive: Path, small_archive_sha256: str) -> None:
    """Fold points and the refit are points like any other: a worker waits while the refit is still to come."""
    admin, remote = team_project(tmp_path, stack, small_archive, small_archive_sha256, epochs=1)
    worker_clone = tmp_path / "w1"
    run(tmp_path, "git", "clone", "-q", str(remote), str(worker_clone))
    sweep = start(admin, stack, "l2lab", "sweep", "--l2", "0,0.001", "--folds", "2", log=tmp_path / "sweep.log")
    wait_for(lambda: "4 points for team workers" in (tmp_path / "sweep.log").read_text(), 120, "the folds")
    worker = start(worker_clone, stack, "l2lab", "worker", log=tmp_path / "w1.log")
    assert sweep.wait(timeout=900) == 0, (tmp_path / "sweep.log").read_text()
    assert worker.wait(timeout=120) == 0, (tmp_path / "w1.log").read_text()
    assert "refit_l2=" in (tmp_path / "w1.log").read_text()  # the worker took the refit too
    client = MlflowClient(stack.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment], "tags.`l2lab.role` = 'sweep'")
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.params["data.fold"] for r in children) == ["0", "0", "1", "1", "all"]
    assert {r.info.status for r in children} == {"FINISHED"} and parent.info.status == "FINISHED"
    (refit,) = [r for r in children if r.data.params["data.fold"] == "all"]
    assert client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).tags["source_run_id"] == \
        refit.info.run_id
    listed = sh(worker_clone, stack, "dvc", "exp", "list", "--name-only", "origin").stdout.split()
    assert refit.info.run_name in listed  # pushed to the team's git remote like every point
