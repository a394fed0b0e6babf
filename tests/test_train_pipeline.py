"""End to end: `dvc repro` trains and evaluates; MLflow holds the run; a forced re-run is identical."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import mlflow.artifacts
import numpy as np
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from l2lab.tracking import EXPERIMENT
from project import clone_project, run, set_params

pytestmark = pytest.mark.e2e
EPOCHS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_archive: Path, small_archive_sha256: str) -> Path:
    """A copy of the repo after one full `dvc repro` on the small archive."""
    project = clone_project(tmp_path_factory.mktemp("train") / "repo")
    set_params(project, data__url=small_archive.as_uri(), data__sha256=small_archive_sha256,
               data__val_size=50, train__epochs=EPOCHS)
    run(project, "git", "commit", "-qam", "point at the test archive")
    run(project, "dvc", "repro")
    return project


def client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def finished_runs(project: Path) -> list:
    c = client(project)
    experiment = c.get_experiment_by_name(EXPERIMENT)
    return c.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
                         order_by=["attributes.start_time ASC"])


def test_metrics_file_and_outputs(trained: Path) -> None:
    metrics = json.loads((trained / "reports" / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["generalization_gap"] == pytest.approx(metrics["train_accuracy"] - metrics["test_accuracy"])
    assert set(metrics["weight_norm"]) == {"conv1", "conv2", "dense1", "dense2", "total"}
    assert set(metrics["sparsity"]) == {"conv1", "conv2", "dense1", "dense2", "total"}
    assert len(metrics["per_class_accuracy"]) == 10
    assert (trained / "models" / "model.keras").stat().st_size > 1_000_000
    history = (trained / "reports" / "plots" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 1 + EPOCHS
    assert len((trained / "reports" / "plots" / "confusion.csv").read_text().splitlines()) == 1 + 100
    assert "up to date" in run(trained, "dvc", "status").stdout


def test_one_finished_mlflow_run_with_params_tags_and_history(trained: Path) -> None:
    runs = finished_runs(trained)
    assert len(runs) == 1
    first = runs[0]
    assert first.info.run_id == json.loads((trained / "models" / "mlflow_run.json").read_text())["run_id"]
    c = client(trained)
    assert c.get_experiment_by_name(EXPERIMENT).artifact_location == (trained / "mlartifacts").as_uri()
    params = first.data.params
    assert params["train.l2"] == "0.001" and params["train.epochs"] == str(EPOCHS) and params["seed"] == "42"
    assert {"data.url", "data.sha256", "data.val_size", "train.l1", "train.weight_decay",
            "train.learning_rate", "train.batch_size"} <= set(params)
    tags = first.data.tags
    assert tags["data.sha256"] == params["data.sha256"]
    assert len(tags["git.commit"]) == 40 and tags["tensorflow.version"] and tags["keras.version"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "l2_penalty", "epoch_seconds",
                "weight_norm.total", "weight_norm.conv1", "weight_norm.conv2", "weight_norm.dense1", "weight_norm.dense2"):
        history = c.get_metric_history(first.info.run_id, key)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), key
    for key in ("test_accuracy", "test_loss", "train_accuracy", "generalization_gap", "sparsity.total"):
        assert key in first.data.metrics
    artifacts = {a.path for a in c.list_artifacts(first.info.run_id)}
    assert {"confusion_matrix.png", "metrics.json", "weights"} <= artifacts


def test_logged_model_loads_with_pyfunc_and_predicts(trained: Path) -> None:
    run_id = json.loads((trained / "models" / "mlflow_run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{trained / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    with np.load(trained / "data" / "processed" / "test.npz") as f:
        x = f["x"][:8]
    probs = np.asarray(model.predict(x))
    assert probs.shape == (8, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    # The stated requirements (not inferred) pin the versions that trained it.
    requirements = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model/requirements.txt")).read_text()
    assert f"tensorflow=={tf.__version__}" in requirements.splitlines()
    assert f"keras=={keras.__version__}" in requirements.splitlines()


def test_forced_rerun_gives_identical_metrics_in_a_new_run(trained: Path) -> None:
    before = json.loads((trained / "reports" / "metrics.json").read_text())
    run(trained, "dvc", "repro", "-f", "train", "evaluate")
    after = json.loads((trained / "reports" / "metrics.json").read_text())
    assert after["mlflow_run_id"] != before["mlflow_run_id"]
    assert after["test_accuracy"] == before["test_accuracy"]
    assert after["weight_norm"] == before["weight_norm"]
    assert {k: v for k, v in after.items() if k != "mlflow_run_id"} == {k: v for k, v in before.items() if k != "mlflow_run_id"}
    runs = finished_runs(trained)
    assert len(runs) == 2 and runs[1].info.run_id == after["mlflow_run_id"]


def test_exp_run_names_the_mlflow_run_after_the_experiment(trained: Path) -> None:
    run(trained, "dvc", "exp", "run", "-n", "strong-l2", "-S", "train.l2=0.01", "-S", "train.epochs=1")
    metrics = json.loads((trained / "reports" / "metrics.json").read_text())
    c = client(trained)
    latest = c.get_run(metrics["mlflow_run_id"])
    assert latest.info.status == "FINISHED" and latest.info.run_name == "strong-l2"
    assert latest.data.tags["dvc.exp_name"] == "strong-l2" and latest.data.params["train.l2"] == "0.01"
    shown = run(trained, "dvc", "exp", "show", "--csv").stdout
    assert "strong-l2" in shown and metrics["mlflow_run_id"] in shown


def test_bad_train_param_stops_before_training(trained: Path) -> None:
    runs_before = len(finished_runs(trained))
    proc = run(trained, "dvc", "exp", "run", "-S", "train.batch_size=0", check=False)
    run(trained, "git", "checkout", "params.yaml")
    assert proc.returncode != 0
    assert "error: params.yaml: train.batch_size: Input should be greater than or equal to 1 (got 0)" in proc.stderr
    assert "epoch 1/" not in proc.stderr and "MLflow run" not in proc.stderr
    c = client(trained)
    assert len(c.search_runs([c.get_experiment_by_name(EXPERIMENT).experiment_id])) == runs_before
