"""`l2lab tune` end to end: a real Optuna study (its journal file), real workers and DVC experiments, real MLflow."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from l2lab.studies import PRUNED_TAG, STUDY_TAG, TRIAL_TAG
from l2lab.tracking.runs import PARENT_TAG
from l2lab.tracking.store import EXPERIMENT
from project import ctrl_c_once_a_point_trains, env, run, workers_of

pytestmark = pytest.mark.e2e

EPOCHS = 3


def study_of(project: Path, name: str) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=name,
                             storage=JournalStorage(JournalFileBackend(str(project / "optuna.journal"))))


def test_a_tune_runs_every_trial_as_an_experiment_and_a_run_and_prunes(project: Path) -> None:
    tuned = run(project, "l2lab", "tune", "--trials", "4", "--jobs", "2", "--seed", "3", "--sampler", "random",
                "--pruner", "median",
                "--space", "train.learning_rate=log:1e-5:3e-2", "--space", "train.l2=log:1e-6:1e-2",
                "-S", f"train.epochs={EPOCHS}")
    tune_id = re.search(r"tune (tune-\d{8}-\d{6}-[0-9a-f]{6}):", tuned.stderr).group(1)
    study = study_of(project, tune_id)
    trials = study.get_trials()
    assert len(trials) == 4 and {t.number for t in trials} == {0, 1, 2, 3}
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    # Seed 3 draws trial 3 a learning rate of 0.0127 (each draw is seeded by the seed plus its number): 0.24 at
    # epoch 2, below the median of trials 0 and 1, which had both ended by then (a worker asks for its next trial
    # once it has told the last one's end; the median pruner waits for two). Trial 2 (5.9e-5) is pruned only when
    # trial 1 ended before trial 2's epoch 2.
    assert 3 in {t.number for t in pruned} <= {2, 3}

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parent = client.search_runs([experiment], f"tags.`l2lab.sweep_id` = '{tune_id}' and tags.`l2lab.role` = 'sweep'")[0]
    assert parent.data.tags[STUDY_TAG] == tune_id and parent.data.tags["l2lab.kind"] == "tune"
    assert parent.data.params["tune.space.train.l2"] == "log:1e-6:1e-2" and parent.info.status == "FINISHED"
    children = {r.info.run_id: r
                for r in client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")}
    assert len(children) == 4
    shown = run(project, "dvc", "exp", "show", "--json").stdout
    for trial in trials:
        child = children[trial.user_attrs["mlflow_run_id"]]
        name = trial.user_attrs["point"]
        assert child.info.run_name == name and child.data.tags["dvc.exp_name"] == name and name in shown
        assert name.startswith(f"t{trial.number:03d}_learning_rate=") and name.endswith(tune_id)
        assert child.data.tags[TRIAL_TAG] == str(trial.number) and child.data.tags[STUDY_TAG] == tune_id
        assert float(child.data.params["train.learning_rate"]) == trial.params["train.learning_rate"]  # in full
        assert child.info.status == "FINISHED" and "test_accuracy" in child.data.metrics  # evaluate ran, pruned too
        curve = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.value for m in sorted(curve, key=lambda m: m.step)] == [
            trial.intermediate_values[step] for step in sorted(trial.intermediate_values)]
        if trial.state == TrialState.PRUNED:
            stopped = int(child.data.tags[PRUNED_TAG])
            assert stopped < EPOCHS and len(curve) == stopped  # it stopped there, kept its partial history
        else:
            assert PRUNED_TAG not in child.data.tags and len(curve) == EPOCHS
            assert trial.value == child.data.metrics["val_accuracy"]  # the objective: validation, never test

    report = project / "reports" / "sweep" / tune_id
    for name in ("table.md", "table.csv", "optimization_history.png", "parallel_coordinate.png",
                 "intermediate_values.png"):
        assert (report / name).stat().st_size > 0, name
    assert not list(report.glob("heatmap_*.png")) and not (report / "accuracy_vs_lambda.png").exists()
    line = next(line for line in (report / "table.md").read_text().splitlines() if line.startswith("Champion"))
    champion_run = re.search(r"MLflow run ([0-9a-f]{32})", line).group(1)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert champion_run == best.user_attrs["mlflow_run_id"]  # the champion is the best unpruned trial
    table = (report / "table.csv").read_text().splitlines()
    assert table[0].split(",")[:2] == ["trial", "pruned_at_epoch"] and len(table) == 5
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/optimization_history.png" in logged

    again = run(project, "l2lab", "report", "--sweep", tune_id)
    assert tune_id in again.stdout and "pruned_at_epoch" in again.stdout


BAD_SPACES = [
    ("train.l2=log:0:1e-2", "--space train.l2=log:0:1e-2: a log range needs LO > 0"),
    ("train.l2=1e-2:1e-3", "--space train.l2=1e-2:1e-3: LO must be below HI"),
    ("train.nope=1:2", "train.nope: unknown key"),
    ("train.learning_rate=log:1e-4:50", "train.learning_rate: Input should be less than or equal to 10"),
    ("train.optimizer=adam,rmsprop", "train.optimizer: Input should be 'adam' or 'sgd'"),
    ("train.epochs=1.5:3", "train.epochs is an integer"),
]


def test_a_bad_space_is_one_error_line_before_anything_starts(bare: Path) -> None:
    project = bare
    for space, message in BAD_SPACES:
        tuned = run(project, "l2lab", "tune", "--trials", "2", "--space", space, check=False)
        assert tuned.returncode == 1 and "Traceback" not in tuned.stderr
        lines = tuned.stderr.strip().splitlines()
        assert len(lines) == 1 and "error: " in lines[0] and message in lines[0], tuned.stderr
    assert not (project / "mlflow.db").exists() and not (project / "optuna.journal").exists()


@pytest.mark.slow
def test_a_seeded_sampler_with_one_worker_gives_the_same_trials_twice(project: Path) -> None:
    args = ["l2lab", "tune", "--trials", "3", "--jobs", "1", "--seed", "7", "--space", "train.l2=log:1e-6:1e-1",
            "--space", "train.optimizer=adam,sgd", "-S", "train.epochs=1"]
    studies = []
    for _ in range(2):
        tune_id = re.search(r"tune (tune-\d{8}-\d{6}-[0-9a-f]{6}):", run(project, *args).stderr).group(1)
        studies.append([(t.params, t.value, t.state) for t in study_of(project, tune_id).get_trials()])
    assert studies[0] == studies[1] and len(studies[0]) == 3
    assert len({repr(params) for params, _, _ in studies[0]}) == 3  # three different draws, drawn again alike


def test_a_study_name_that_exists_is_one_error_line_before_anything_starts(bare: Path) -> None:
    project = bare
    taken = "tune-20261202-120000-abc123"
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.create_study(study_name=taken, storage=JournalStorage(JournalFileBackend(str(project / "optuna.journal"))))
    # The id's random part makes this a one-in-16-million draw in the same second: fix the draw to force it.
    code = ("import l2lab.sweeps.grid as grid; "
            f"grid.new_sweep_id = lambda kind: {taken!r}; "
            "from l2lab.cli import main; "
            "main(['tune', '--trials', '2', '--space', 'train.l2=log:1e-6:1e-1'])")
    tuned = subprocess.run([sys.executable, "-c", code], cwd=project, env=env(), capture_output=True, text=True)
    assert tuned.returncode == 1 and "Traceback" not in tuned.stderr
    lines = tuned.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        f"error: the sweep storage already holds a study named {taken!r}: start the sweep again (a new id is drawn "
        "each time)"), tuned.stderr
    assert not (project / "mlflow.db").exists()  # no parent run left behind
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    assert optuna.get_all_study_names(JournalStorage(JournalFileBackend(str(project / "optuna.journal")))) == [taken]


@pytest.mark.fault
def test_ctrl_c_of_a_tune_stops_its_trials_and_fails_them(project: Path) -> None:
    status, stderr = ctrl_c_once_a_point_trains(project, "l2lab", "tune", "--trials", "4", "--jobs", "1",
                                                "--space", "train.l2=log:1e-6:1e-1", "-S", "train.epochs=200")
    assert status == 130, stderr
    assert "stopped; its run ended KILLED" in stderr
    tune_id = re.search(r"tune (tune-\d{8}-\d{6}-[0-9a-f]{6}):", stderr).group(1)

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment], "tags.`l2lab.role` = 'sweep'")
    children = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert parent.info.status == "KILLED"
    assert [r.info.status for r in children] == ["KILLED"]  # the one training (one worker draws one at a time)
    trials = study_of(project, tune_id).get_trials()
    # The study agrees with MLflow: the interrupted trial FAIL, none COMPLETE, none left RUNNING.
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert [t.user_attrs["mlflow_run_id"] for t in trials] == [r.info.run_id for r in children]
    assert workers_of(project) == []
