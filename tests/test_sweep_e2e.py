"""End to end: lambda grids through plain DVC's queue and through `l2lab sweep` (its workers, its study), read
back from MLflow and DVC."""

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
from loopback import free_port, stop, wait_http
from project import ctrl_c_once_a_point_trains, env, run, wait_until_a_point_trains, workers_of

pytestmark = pytest.mark.e2e


@pytest.fixture
def queued(project: Path) -> Path:
    """The project, for plain DVC's queue: its workers stopped after the test."""
    yield project
    run(project, "dvc", "queue", "stop", "--kill", check=False)


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


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
def test_plain_dvc_queue_runs_each_point_once_with_its_own_code(queued: Path) -> None:
    # The README's flow, the data locked first (the project fixture did).
    project = queued
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


def test_sweep_report_champion_reproduction_and_ui(bare: Path) -> None:
    project = bare  # no data made: the points' first stages download and preprocess it, restored by the others
    proc = subprocess.Popen(["l2lab", "sweep", "--l2", "0.003,1e30", "--seeds", "1,2", "--jobs", "2",
                             "-S", "train.epochs=1"], cwd=project, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen_running, orphans = watch_nesting(project, proc)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr  # the 1e30 points diverge
    assert "error: 2 of 4 points failed:" in stderr and "l2=1e30_seed=1_sweep-" in stderr
    assert "/logs/<name>.log, and its run's logs/" in stderr
    assert "Champion (best validation accuracy): train.l2 = 0.003" in stdout
    # Every point's run was nested under the sweep from the moment it existed, also while it trained.
    assert seen_running > 0 and orphans == []
    assert "sweep progress: " in stderr and "epoch " in stderr  # running points' epochs were shown
    assert workers_of(project) == []  # the workers the sweep started left with it
    assert run(project, "git", "worktree", "list").stdout.count("\n") == 1  # its worktree went too

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
        output = (project / "reports" / "sweep" / sweep_id / "logs" / f"{r.info.run_name}.log").read_text()
        assert output.count("warm stage server") == 2
        assert [a.path for a in c.list_artifacts(r.info.run_id, "logs")] == [f"logs/{r.info.run_name}.log"]
    diverged = [r for r in children if r.info.status == "FAILED"]  # the train stage ended them FAILED itself
    assert all([a.path for a in c.list_artifacts(r.info.run_id, "logs")] for r in diverged)
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
    reported = {a.path for a in c.list_artifacts(parent.info.run_id, "report")}
    assert reported >= {"report/table.csv", "report/table.md"} and "report/logs" not in reported

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
        stop(server)


@pytest.mark.slow  # minutes: `make test-slow`, which CI runs after `make test`
def test_versus_adamw_in_one_report(project: Path) -> None:
    swept = run(project, "l2lab", "sweep", "--l2", "0,0.01", "--versus-adamw", "--jobs", "1")
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
def test_four_workers_on_two_cores_all_land_once_and_the_database_stays_readable(queued: Path) -> None:
    # Plain DVC's queue, the data locked first as the docs advise: four points running download for the first
    # time at once can trip DVC's own run-cache writes (ENOENT on .dvc/cache/runs/.../<tmp>; DVC 3.67).
    project = queued
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
    assert "stopped; its run ended KILLED" in stderr and "cancelled (no worker had taken them): " in stderr

    (parent,) = [r for r in runs(project) if r.data.tags.get("l2lab.role") == "sweep"]
    children = [r for r in runs(project) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "KILLED"
    assert sorted(r.info.status for r in children) == ["KILLED"] * 3  # the running one and the two waiting
    assert workers_of(project) == []
    from l2lab.studies import load_study

    study = load_study(parent.data.tags["l2lab.sweep_id"], project / "optuna.journal")
    assert {t.state.name for t in study.trials} == {"FAIL"}  # the study agrees with MLflow
    assert run(project, "dvc", "exp", "list", "--name-only").stdout.strip() == ""  # no experiment saved


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
@pytest.mark.fault
def test_a_killed_worker_s_point_is_run_again_and_the_sweep_ends(project: Path) -> None:
    """kill -9 of the worker that runs a point (its training reparented, DVC's queue hung the sweep): its guard
    stops the training (run KILLED), the sweep notices the worker gone within a read of its study, queues the
    point again for a new worker, and ends with every point done once."""
    import psutil

    proc = subprocess.Popen(["l2lab", "sweep", "--l2", "0,0.01", "--jobs", "1", "-S", "train.epochs=6"], cwd=project,
                            env=env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until_a_point_trains(project, proc)
    (worker,) = [p for p in psutil.Process(proc.pid).children() if "worker" in p.cmdline()]
    worker.kill()
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert f"worker {worker.pid} exited with status -9" in stderr and "queued again (try 2 of 4)" in stderr
    assert "2/2 done (0 failed)" in stderr
    (parent,) = [r for r in runs(project) if r.data.tags.get("l2lab.role") == "sweep"]
    children = [r for r in runs(project) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED", "KILLED"]  # the killed try KILLED
    finished = {r.info.run_name for r in children if r.info.status == "FINISHED"}
    assert finished == set(run(project, "dvc", "exp", "list", "--name-only").stdout.split())
    assert workers_of(project) == [] and not [p for p in psutil.process_iter(["cmdline"])
                                              if str(project) in " ".join(p.info["cmdline"] or [])]


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
    assert "DVC found it equal to the lock" in swept.stderr and "2/2 done (0 failed)" in swept.stderr


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
@pytest.mark.fault
def test_points_run_the_workspace_as_the_sweep_found_it_whatever_is_edited_meanwhile(project: Path) -> None:
    """An uncommitted change and an untracked file at the start reach every point (as DVC's queue would stash
    them); an edit while the sweep runs reaches none (it reached later points through the warm server)."""
    norms = project / "src" / "l2lab" / "norms.py"
    norms.write_text(norms.read_text() + "\n# changed before the sweep\n")
    (project / "notes.txt").write_text("untracked, not ignored\n")
    proc = subprocess.Popen(["l2lab", "sweep", "--l2", "0,0.01", "--jobs", "1", "-S", "train.epochs=3"], cwd=project,
                            env=env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until_a_point_trains(project, proc)
    marker = project.parent / "edited-code-ran"
    for stage in ("train", "evaluate"):
        path = project / "src" / "l2lab" / "stages" / f"{stage}.py"
        path.write_text(f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n" + path.read_text())
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert "the workspace differs from commit" in stderr
    assert not marker.exists()
    head = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert len(run(project, "dvc", "exp", "list", "--name-only").stdout.split()) == 2  # under HEAD, as queued
    for ref in run(project, "git", "for-each-ref", "--format=%(refname)", "refs/exps/").stdout.split():
        assert run(project, "git", "rev-parse", f"{ref}^").stdout.strip() == head  # based on the commit, as queued
        files = run(project, "git", "show", "--name-only", "--format=", ref).stdout.split()
        assert "src/l2lab/norms.py" in files and "notes.txt" in files
        train = run(project, "git", "show", f"{ref}:src/l2lab/stages/train.py").stdout
        assert str(marker) not in train  # the experiment records the code it ran
    assert run(project, "git", "for-each-ref", "refs/l2lab/").stdout == ""  # the snapshot's ref went with the sweep


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
def test_a_temporary_experiment_restores_preprocess_instead_of_running_it(bare: Path) -> None:
    """The data summary was a `cache: false` output: an experiment in a temporary copy (a sweep's point, a
    queued one) gets only what git tracks, so with it (or dvc.lock) not committed every point ran preprocess
    again. Cached, the run-cache restores the stage even when dvc.lock was never committed nor staged."""
    project = bare
    run(project, "dvc", "repro", "preprocess")
    run(project, "git", "reset", "-q")  # nothing of the run committed or staged
    log = run(project, "dvc", "exp", "run", "--temp", "-n", "point", "-S", "train.l2=0.01").stdout
    assert "Stage 'preprocess' is cached - skipping run, checking out outputs" in log
    assert "Running stage 'preprocess'" not in log and "Running stage 'train'" in log


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
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
    assert all("its DVC experiment failed" in r.data.tags["l2lab.incomplete"] for r in points)
    assert all("val_accuracy" in r.data.metrics for r in points)  # they did train
    assert client(project).search_model_versions(f"name = '{REGISTERED_MODEL}'") == []


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
def test_a_grid_over_any_keys_draws_heatmaps_and_its_sgd_cosine_flip_crop_points_reproduce(project: Path) -> None:
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
    for name in ("heatmap_learning_rate_l2_optimizer=adam.png", "heatmap_learning_rate_l2_optimizer=sgd.png",
                 "best_per_row.csv", "accuracy_vs_lambda.png"):
        assert (folder / name).stat().st_size > 0, name
    best = (folder / "best_per_row.csv").read_text().splitlines()
    # A row whose runs all collapsed to chance (likely on these few images and one epoch) has no best lambda.
    alive = {(r.data.params["train.optimizer"], r.data.params["train.learning_rate"]) for r in children
             if r.data.tags.get("l2lab.collapsed") != "true"}
    assert best[0].startswith("train.optimizer,train.learning_rate,best train.l2,") and len(best) == 1 + len(alive)
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
def test_grid_refuses_a_bad_key_or_value_before_queueing(bare: Path) -> None:
    project = bare
    for args, message in ((["--grid", "train.optimizer=adam,rmsprop"],
                           "train.optimizer: Input should be 'adam' or 'sgd'"),
                          (["--grid", "train.beta_1=0.9,0.99"], "train.beta_1: unknown key"),
                          (["--l2", "0", "--grid", "train.l2=0.1"], "--grid train.l2=... and --l2 both vary train.l2"),
                          (["--grid", "train.augment=none,none"], "none and none are the same value"),
                          # A YAML tag that would run code if it were not refused (DVC's -S reads YAML too).
                          (["--l2", "0", "-S", 'train.l1=!!python/object/apply:os.system ["touch x"]'],
                           "-S train.l1: '!!python/object/apply:os.system [\"touch x\"]' is not a plain YAML value "
                           "(could not determine a constructor for the tag")):
        swept = run(project, "l2lab", "sweep", *args, check=False)
        assert swept.returncode == 1 and "Traceback" not in swept.stderr
        (line,) = [line for line in swept.stderr.splitlines() if "error:" in line]
        assert message in line, swept.stderr
    assert not (project / "mlflow.db").exists()  # nothing started: not even a sweep's parent run
    assert not (project / "optuna.journal").exists() and not (project / ".dvc" / "tmp" / "l2lab").exists()
    assert not (project / "x").exists()
