"""End to end: lambda grids through DVC's queue and `l2lab sweep`, read back from MLflow."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from l2lab.tracking.registry import CHAMPION_ALIAS, REGISTERED_MODEL
from l2lab.tracking.store import EXPERIMENT
from loopback import free_port, wait_http
from project import (assert_no_workers_left, clone_project, ctrl_c_once_a_point_trains, env, run, set_params,
                     wait_until_a_point_trains)

pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path: Path, small_archive: Path, small_archive_sha256: str) -> Path:
    """A committed copy of the repo pointed at the small archive, one epoch, no mlflow.db yet."""
    repo = clone_project(tmp_path / "repo")
    set_params(repo, data__url=small_archive.as_uri(), data__sha256=small_archive_sha256,
               data__val_size=50, train__epochs=1)
    run(repo, "git", "commit", "-qam", "point at the test archive")
    yield repo
    run(repo, "dvc", "queue", "stop", "--kill", check=False)


def client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def runs(project: Path) -> list:
    c = client(project)
    return c.search_runs([c.get_experiment_by_name(EXPERIMENT).experiment_id])


def wait_for_queue(project: Path, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(project, "dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(3)
    raise AssertionError(f"queue did not finish:\n{status}")


def test_plain_dvc_queue_runs_each_point_once_with_its_own_code(project: Path) -> None:
    # The README's flow: the data locked first. Two points downloading at once can collide in DVC's own
    # run-cache writes (docs/troubleshooting.md), which is not what this test is about.
    run(project, "dvc", "repro", "preprocess")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "data")
    assert not (project / "mlflow.db").exists()
    run(project, "dvc", "exp", "run", "--queue", "-S", "train.l2=0,0.01")
    # Break the workspace code after queueing: the queued experiments must not see it.
    train_py = project / "src" / "l2lab" / "stages" / "train.py"
    train_py.write_text('raise SystemExit("the workspace code ran, not the queued commit")\n' + train_py.read_text())
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    status = wait_for_queue(project)
    assert status.count("Success") == 2 and "Failed" not in status, status

    finished = [r for r in runs(project) if r.info.status == "FINISHED"]
    assert sorted(r.data.params["train.l2"] for r in finished) == ["0.0", "0.01"]
    assert len(runs(project)) == 2  # exactly one run per point, all in the repo's database
    shown = json.loads(run(project, "dvc", "exp", "show", "--json").stdout)
    by_name = {exp["name"]: exp for rev in shown for exp in _experiments(rev)}
    for r in finished:
        assert r.info.run_name in by_name  # MLflow run name = DVC experiment name
        assert r.data.tags["dvc.exp_name"] == r.info.run_name
        assert _metric(by_name[r.info.run_name], "mlflow_run_id") == r.info.run_id


def _experiments(rev: dict) -> list[dict]:
    return [exp for group in rev.get("experiments") or [] for exp in group.get("revs", [])]


def _metric(exp: dict, key: str) -> object:
    metrics = exp["data"]["metrics"]
    return metrics["reports/metrics.json"]["data"][key]


def watch_nesting(project: Path, proc: subprocess.Popen) -> tuple[int, list[str]]:
    """Poll MLflow while the sweep runs: (point runs seen RUNNING, runs ever seen without a parent)."""
    running, orphans = set(), set()
    while proc.poll() is None:
        if (project / "mlflow.db").exists():
            for r in runs(project) if client(project).get_experiment_by_name(EXPERIMENT) else []:
                if r.data.tags.get("l2lab.role") == "sweep":
                    continue
                if "mlflow.parentRunId" not in r.data.tags:
                    orphans.add(r.info.run_name)
                if r.info.status == "RUNNING":
                    running.add(r.info.run_id)
        time.sleep(1)
    return len(running), sorted(orphans)


def test_sweep_report_champion_reproduction_and_ui(project: Path) -> None:
    proc = subprocess.Popen(["l2lab", "sweep", "--l2", "0.003,1e30", "--seeds", "1,2", "--jobs", "2",
                             "-S", "train.epochs=1"], cwd=project, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen_running, orphans = watch_nesting(project, proc)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr  # the 1e30 points diverge
    assert "error: 2 of 4 points failed:" in stderr and "l2=1e30_seed=1_sweep-" in stderr
    assert "Champion (best validation accuracy): train.l2 = 0.003" in stdout
    # Every point's run was nested under the sweep from the moment it existed, also while it trained.
    assert seen_running > 0 and orphans == []
    assert "sweep progress: " in stderr and "epoch " in stderr  # running points' epochs were shown
    assert_no_workers_left(project)  # the workers the sweep started left once the queue was empty

    c = client(project)
    (parent,) = [r for r in runs(project) if r.data.tags.get("l2lab.role") == "sweep"]
    sweep_id = parent.data.tags["l2lab.sweep_id"]
    assert parent.data.params["sweep.train.l2"] == "0.003,1e30" and parent.data.params["sweep.train.seed"] == "1,2"
    children = [r for r in runs(project) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs(project)) == 1 + 4  # no run outside the sweep
    assert sorted(r.info.status for r in children) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    assert all(r.data.tags["l2lab.sweep_id"] == sweep_id for r in children)
    assert parent.info.status == "FAILED"
    good = {r.info.run_id: r for r in children if r.info.status == "FINISHED"}
    for r in good.values():  # both stages ran in the sweep's warm server (l2lab.warm); reproduced cold below
        assert run(project, "dvc", "queue", "logs", r.info.run_name).stdout.count("warm stage server") == 2
    # --seeds varies training only: two seeds, one validation split (and one training split).
    assert sorted(r.data.params["train.seed"] for r in good.values()) == ["1", "2"]
    assert len({r.data.tags["data.val.sha256"] for r in good.values()}) == 1
    assert len({r.data.tags["data.train.sha256"] for r in good.values()}) == 1
    assert len({r.data.metrics["weight_norm.total"] for r in good.values()}) == 2  # yet different models
    (device,) = {r.data.tags["l2lab.device"] for r in good.values()}  # where each trained: one machine's device
    assert device == "CPU" or device.startswith("GPU:0 (")
    # Best validation accuracy; on the few validation images here ties happen, and go to lower val_loss.
    best = max(good.values(), key=lambda r: (r.data.metrics["val_accuracy"], -r.data.metrics["val_loss"]))
    champion = c.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    assert champion.tags["source_run_id"] == best.info.run_id

    folder = project / "reports" / "sweep" / sweep_id
    for name in ("table.csv", "summary.csv", "table.md", "accuracy_vs_lambda.png", "gap_vs_lambda.png",
                 "weight_norm_vs_lambda.png", "val_accuracy_curves.png", "weight_distributions.png"):
        assert (folder / name).stat().st_size > 0, name
    assert len((folder / "table.csv").read_text().splitlines()) == 1 + 4
    summary = (folder / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("train.l2,n,val_accuracy_mean,val_accuracy_std") and summary[1].startswith("0.003,2,")
    assert "± " in (folder / "table.md").read_text()  # two seeds of 0.003: mean ± std
    assert {a.path for a in c.list_artifacts(parent.info.run_id, "report")} >= {"report/table.csv", "report/table.md"}

    # `l2lab report` again, for this sweep by id: the same choice, and no duplicate version.
    again = run(project, "l2lab", "report", "--sweep", sweep_id)
    assert best.info.run_id in again.stdout
    assert str(c.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version) == "1"

    # Reproduce one point: apply the experiment, re-run training, get the same numbers.
    name = best.info.run_name
    run(project, "dvc", "exp", "apply", name)
    run(project, "dvc", "repro", "-f", "train", "evaluate")
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == best.data.metrics["test_accuracy"]
    assert metrics["weight_norm"]["total"] == best.data.metrics["weight_norm.total"]

    # The UI server (loopback only) serves the sweep through its REST API.
    port = free_port()
    server = subprocess.Popen(["mlflow", "server", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=project, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", server)
        body = json.dumps({"experiment_ids": [parent.info.experiment_id],
                           "filter": f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"}).encode()
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            found = json.load(response)["runs"]
        assert len(found) == 4
        assert {r["info"]["run_name"] for r in found} == {r.info.run_name for r in children}
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow  # minutes: `make test-slow`, which CI runs after `make test`
def test_back_to_back_sweeps_and_versus_adamw_in_one_report(project: Path) -> None:
    # A first sweep, then a `dvc queue stop` once its workers have left: the shutdown waits in
    # DVC's broker for the next workers of the same names. The next sweep must clear it, or its
    # one worker stops after the first of its three points.
    run(project, "l2lab", "sweep", "--l2", "0.003", "--jobs", "1")
    assert_no_workers_left(project)
    run(project, "dvc", "queue", "stop")
    swept = run(project, "l2lab", "sweep", "--l2", "0,0.01", "--versus-adamw", "--jobs", "1")
    assert "stale control message(s) left in DVC's queue broker" in swept.stderr  # the shutdown was there
    out = swept.stdout
    assert "Champion (best validation accuracy): penalty = " in out
    (parent,) = [r for r in runs(project) if r.data.tags.get("l2lab.versus") == "adamw"]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs(project) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # lambda = 0 once (plain Adam), 0.01 as Adam + L2, and AdamW at the matched decay 2 x 0.01.
    assert sorted((float(r.data.params["train.l2"]), float(r.data.params["train.weight_decay"]))
                  for r in children) == [(0, 0), (0, 0.02), (0.01, 0)]
    assert all(r.info.status == "FINISHED" for r in children)
    folder = project / "reports" / "sweep" / parent.data.tags["l2lab.sweep_id"]
    summary = (folder / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("penalty,l2_equivalent,n,")
    assert [line.split(",")[:3] for line in summary[1:]] == [["none", "0.0", "1"], ["L2 (Adam)", "0.01", "1"],
                                                             ["AdamW", "0.01", "1"]]
    assert (folder / "weight_distributions.png").stat().st_size > 10_000
    assert (folder / "accuracy_vs_lambda.png").stat().st_size > 10_000


@pytest.mark.fault
@pytest.mark.slow  # minutes: `make test-slow`, which CI runs after `make test`
def test_four_workers_on_two_cores_all_land_once_and_the_database_stays_readable(project: Path) -> None:
    # The data stages first, locked, as the docs advise: four points running download for the first time
    # at once can trip DVC's own run-cache writes (ENOENT on .dvc/cache/runs/.../<tmp>; DVC 3.67).
    run(project, "dvc", "repro", "preprocess")
    run(project, "git", "commit", "-qm", "the data, locked")
    run(project, "dvc", "exp", "run", "--queue", "-S", "train.l2=0,0.0001,0.001,0.01")
    subprocess.run(["dvc", "queue", "start", "-j", "4"], cwd=project, env=env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    reads, deadline = 0, time.monotonic() + 600
    while time.monotonic() < deadline:  # what `mlflow ui` does while they run: read the store
        if (project / "mlflow.db").exists():
            c = client(project)
            experiment = c.get_experiment_by_name(EXPERIMENT)
            if experiment is not None:
                c.search_runs([experiment.experiment_id])
                reads += 1
        status = run(project, "dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(1)
    assert status.count("Success") == 4 and "Failed" not in status, status
    assert reads > 0
    finished = [r for r in runs(project) if r.info.status == "FINISHED"]
    assert len(runs(project)) == 4
    assert sorted(float(r.data.params["train.l2"]) for r in finished) == [0.0, 0.0001, 0.001, 0.01]


@pytest.mark.fault
def test_ctrl_c_of_a_sweep_stops_what_it_started(project: Path) -> None:
    status, stderr = ctrl_c_once_a_point_trains(project, "l2lab", "sweep", "--l2", "0,0.001,0.01", "--jobs", "1",
                                                "-S", "train.epochs=200")
    assert status == 130, stderr
    assert "interrupted: " in stderr and "removed from the queue: " in stderr

    (parent,) = [r for r in runs(project) if r.data.tags.get("l2lab.role") == "sweep"]
    children = [r for r in runs(project) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "KILLED"
    assert sorted(r.info.status for r in children) == ["KILLED"] * 3  # the running one and the two queued
    status = run(project, "dvc", "queue", "status").stdout
    assert "Queued" not in status and "Running" not in status, status
    assert_no_workers_left(project)


@pytest.mark.fault
@pytest.mark.slow  # minutes: `make test-slow`, which CI runs after `make test`
def test_a_worker_that_leaves_with_a_point_still_queued_is_started_again(project: Path) -> None:
    """A DVC worker checks every 10 s whether it has work; one that checks between taking a point and the
    next being queued leaves after its point with the next still queued (CI saw it end a tune). Here
    `dvc queue stop` makes the worker leave the same way: after the point it runs, the second queued."""
    proc = subprocess.Popen(["l2lab", "sweep", "--l2", "0,0.01", "--jobs", "1"], cwd=project, env=env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until_a_point_trains(project, proc)
    run(project, "dvc", "queue", "stop")  # no --kill: the worker ends the point it runs, then leaves
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert "workers left with 1 point(s) still queued (l2=0.01_" in stderr and "2/2 done (0 failed)" in stderr
    (parent,) = [r for r in runs(project) if r.data.tags.get("l2lab.role") == "sweep"]
    children = [r for r in runs(project) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert sorted(float(r.data.params["train.l2"]) for r in children) == [0.0, 0.01]
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in children)
    assert_no_workers_left(project)


@pytest.mark.fault
@pytest.mark.slow  # minutes: `make test-slow`, which CI runs after `make test`
def test_a_point_equal_to_the_committed_lock_trains_as_its_own_run(project: Path) -> None:
    # The README's flow: `make repro`, commit what it made, then a grid holding the committed lambda
    # (train.l2 = 0.001). DVC finds that point up to date and skips its training; it must train all the same.
    run(project, "dvc", "repro")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "the pipeline's outputs")
    committed = json.loads((project / "reports" / "metrics.json").read_text())
    swept = run(project, "l2lab", "sweep", "--l2", "0,0.001", "--jobs", "1")

    (parent,) = [r for r in runs(project) if r.data.tags.get("l2lab.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    children = {float(r.data.params["train.l2"]): r for r in runs(project)
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == [0.0, 0.001]  # one run per point: the first try's empty run is the one re-used
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in children.values())
    same = children[0.001]
    # Same params, code and data: the committed run's numbers, from a training of its own.
    assert same.data.metrics["test_accuracy"] == committed["test_accuracy"]
    assert same.data.metrics["weight_norm.total"] == committed["weight_norm"]["total"]
    assert same.info.run_id != committed["mlflow_run_id"]
    shown = json.loads(run(project, "dvc", "exp", "show", "--json").stdout)
    by_name = {exp["name"]: exp for rev in shown for exp in _experiments(rev)}
    assert _metric(by_name[same.info.run_name], "mlflow_run_id") == same.info.run_id
    table = (project / "reports" / "sweep" / parent.data.tags["l2lab.sweep_id"] / "table.csv").read_text()
    assert ",," not in table and "nan" not in table.lower()
    assert "DVC found it equal to the workspace's dvc.lock" in swept.stderr and "2/2 done (0 failed)" in swept.stderr


@pytest.mark.fault
def test_a_sweep_started_while_an_earlier_worker_idles_runs_with_its_own_environment(project: Path,
                                                                                     tmp_path: Path) -> None:
    """A DVC worker waits 10 s for work once the queue is empty, and `dvc queue start` starts none while
    one of its name lives: a sweep started in those 10 s ran its points in the earlier worker, with that
    sweep's environment. Here the earlier worker has another MLFLOW_TRACKING_URI: the point trained and
    logged there, its own run never took up, and it failed after a re-run in the same worker."""
    elsewhere = tmp_path / "elsewhere.db"
    subprocess.run(["dvc", "queue", "start"], cwd=project, env=env(MLFLOW_TRACKING_URI=f"sqlite:///{elsewhere}"),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    swept = run(project, "l2lab", "sweep", "--l2", "0.001", "--jobs", "1")
    assert "1/1 done (0 failed)" in swept.stderr
    (point,) = [r for r in runs(project) if r.data.tags.get("l2lab.role") == "point"]
    assert point.info.status == "FINISHED" and "test_accuracy" in point.data.metrics
    assert not elsewhere.exists()  # nothing of the sweep went to the earlier worker's store


def test_a_queued_point_restores_preprocess_instead_of_running_it(project: Path) -> None:
    """The data summary was a `cache: false` output: a queued experiment gets only what git tracks, so
    with it (or dvc.lock) not committed every point ran preprocess again. Cached, the run-cache restores
    the stage even when dvc.lock was never committed nor staged."""
    run(project, "dvc", "repro", "preprocess")
    run(project, "git", "reset", "-q")  # nothing of the run committed or staged
    run(project, "dvc", "exp", "run", "--queue", "-n", "point", "-S", "train.l2=0.01")
    subprocess.run(["dvc", "queue", "start"], cwd=project, env=env(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    status = wait_for_queue(project)
    assert "Success" in status, status
    log = run(project, "dvc", "queue", "logs", "point").stdout
    assert "Stage 'preprocess' is cached - skipping run, checking out outputs" in log
    assert "Running stage 'preprocess'" not in log and "Running stage 'train'" in log


@pytest.mark.fault
def test_points_that_fail_after_training_are_failed_runs_and_no_champion(project: Path) -> None:
    # A model file committed to git: DVC trains each point, then refuses to take the output over
    # ("output 'models/model.keras' is already tracked by SCM"), so evaluate never runs.
    (project / "models").mkdir(exist_ok=True)
    (project / "models" / "model.keras").write_bytes(b"not a model")
    run(project, "git", "add", "-f", "models/model.keras")
    run(project, "git", "commit", "-qm", "a model file in git")
    swept = run(project, "l2lab", "sweep", "--l2", "0,0.001", "--jobs", "1", check=False)
    assert swept.returncode == 1, swept.stderr
    assert "Traceback" not in swept.stderr
    assert "error: 2 of 2 points failed:" in swept.stderr
    assert "No finished run: no champion." in swept.stdout
    points = [r for r in runs(project) if r.data.tags.get("l2lab.role") == "point"]
    assert [r.info.status for r in points] == ["FAILED", "FAILED"]
    assert all("failed after training" in r.data.tags["l2lab.incomplete"] for r in points)
    assert all("val_accuracy" in r.data.metrics for r in points)  # they did train
    assert client(project).search_model_versions(f"name = '{REGISTERED_MODEL}'") == []


def test_a_grid_over_any_keys_draws_heatmaps_and_its_sgd_cosine_flip_crop_points_reproduce(project: Path) -> None:
    run(project, "dvc", "repro", "preprocess")  # the data locked first, as docs/sweeps.md says for parallel grids
    run(project, "git", "commit", "-qam", "lock the data")
    swept = run(project, "l2lab", "sweep", "--l2", "0,0.001", "--grid", "train.learning_rate=0.001,0.003",
                "--grid", "train.optimizer=adam,sgd", "--jobs", "2", "-S", "train.schedule=cosine",
                "-S", "train.augment=flip_crop")
    assert "Best train.l2 for each train.learning_rate" in swept.stdout
    (parent,) = [r for r in runs(project) if r.data.tags.get("l2lab.role") == "sweep"]
    assert parent.data.params["sweep.train.optimizer"] == "adam,sgd"
    children = [r for r in runs(project) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 8 and {r.info.status for r in children} == {"FINISHED"}
    assert {(r.data.params["train.optimizer"], r.data.params["train.schedule"], r.data.params["train.augment"])
            for r in children} == {("adam", "cosine", "flip_crop"), ("sgd", "cosine", "flip_crop")}
    folder = project / "reports" / "sweep" / parent.data.tags["l2lab.sweep_id"]
    for name in ("heatmap_learning_rate_l2_optimizer=adam.png", "heatmap_learning_rate_l2_optimizer=sgd.png", "best_per_row.csv", "accuracy_vs_lambda.png"):
        assert (folder / name).stat().st_size > 0, name
    best = (folder / "best_per_row.csv").read_text().splitlines()
    assert best[0].startswith("train.optimizer,train.learning_rate,best train.l2,") and len(best) == 1 + 4
    logged = {a.path for a in client(project).list_artifacts(parent.info.run_id, "report")}
    assert "report/heatmap_learning_rate_l2_optimizer=sgd.png" in logged

    # An SGD point with its cosine schedule and augmentation, forced to run again: the same numbers.
    sgd = next(r for r in children if r.data.params["train.optimizer"] == "sgd")
    run(project, "dvc", "exp", "apply", sgd.info.run_name)
    run(project, "dvc", "repro", "-f", "train", "evaluate")
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == sgd.data.metrics["test_accuracy"]
    assert metrics["weight_norm"]["total"] == sgd.data.metrics["weight_norm.total"]


@pytest.mark.fault
def test_grid_refuses_a_bad_key_or_value_before_queueing(project: Path) -> None:
    for args, message in ((["--grid", "train.optimizer=adam,rmsprop"], "train.optimizer: Input should be 'adam' or 'sgd'"),
                          (["--grid", "train.beta_1=0.9,0.99"], "train.beta_1: unknown key"),
                          (["--l2", "0", "--grid", "train.l2=0.1"], "--grid train.l2=... and --l2 both vary train.l2"),
                          (["--grid", "train.augment=none,none"], "none and none are the same value")):
        swept = run(project, "l2lab", "sweep", *args, check=False)
        assert swept.returncode == 1 and "Traceback" not in swept.stderr
        (line,) = [line for line in swept.stderr.splitlines() if "error:" in line]
        assert message in line, swept.stderr
    assert "No experiment tasks in the queue" in run(project, "dvc", "queue", "status").stdout
    assert not (project / "mlflow.db").exists()  # nothing started: not even a sweep's parent run
