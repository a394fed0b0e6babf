"""End to end: `dvc repro` trains and evaluates; MLflow holds the run; a forced re-run is identical."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import keras
import mlflow
import mlflow.artifacts
import numpy as np
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from l2lab.deps import code_digest
from l2lab.tracking.store import EXPERIMENT
from loopback import free_port, stop, wait_http
from project import copy_project, env, run, set_params

pytestmark = pytest.mark.e2e
EPOCHS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, template_data: Path) -> Path:
    """A copy of the repo after one full `dvc repro` on the small archive."""
    project = copy_project(template_data, tmp_path_factory.mktemp("train") / "repo")
    set_params(project, train__epochs=EPOCHS)
    run(project, "git", "commit", "-qam", "two epochs")
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
    test_y = np.load(trained / "data" / "processed" / "test.npz")["y"]
    predicted = [line.split(",")[1]
                 for line in (trained / "reports" / "plots" / "confusion.csv").read_text().splitlines()[1:]]
    actual = [line.split(",")[0]
              for line in (trained / "reports" / "plots" / "confusion.csv").read_text().splitlines()[1:]]
    assert metrics["test_accuracy"] == pytest.approx(np.mean([a == p for a, p in zip(actual, predicted)]))
    assert len(actual) == len(test_y)
    assert metrics["generalization_gap"] == pytest.approx(metrics["train_accuracy"] - metrics["test_accuracy"])
    assert set(metrics["weight_norm"]) == {"conv1", "conv2", "dense1", "dense2", "total"}
    assert set(metrics["sparsity"]) == {"conv1", "conv2", "dense1", "dense2", "total"}
    assert "per_class_accuracy" not in metrics  # per-class results are one table, not ten metrics
    per_class = (trained / "reports" / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,precision,recall,f1-score,support" and len(per_class) == 11
    assert sum(int(float(line.split(",")[-1])) for line in per_class[1:]) == len(test_y)
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
    commit = run(trained, "git", "rev-parse", "HEAD").stdout.strip()
    # Not MLflow's random name: the commit (its code and params unchanged), when; "demo": the test archive is
    # generated data, as the offline demo's.
    assert re.fullmatch(rf"demo-{commit[:8]}-\d{{8}}-\d{{6}}", first.info.run_name), first.info.run_name
    c = client(trained)
    assert c.get_experiment_by_name(EXPERIMENT).artifact_location == (trained / "mlartifacts").as_uri()
    params = first.data.params
    assert params["train.l2"] == "0.001" and params["train.epochs"] == str(EPOCHS) and params["train.seed"] == "42"
    assert {"data.url", "data.sha256", "data.val_size", "data.split_seed", "train.l1", "train.weight_decay",
            "train.learning_rate", "train.batch_size"} <= set(params)
    tags = first.data.tags
    assert tags["data.sha256"] == params["data.sha256"]
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["tensorflow.version"] and tags["keras.version"]
    assert tags["l2lab.train.git.commit"] == tags["mlflow.source.git.commit"] == tags["l2lab.evaluate.git.commit"]
    assert tags["l2lab.train.code"] == code_digest("l2lab.stages.train", trained / "src")
    assert tags["l2lab.evaluate.code"] == code_digest("l2lab.stages.evaluate", trained / "src")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "penalty", "epoch_seconds",
                "weight_norm.total", "weight_norm.conv1", "weight_norm.conv2", "weight_norm.dense1",
                "weight_norm.dense2"):
        history = c.get_metric_history(first.info.run_id, key)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), key
    for key in ("test_accuracy", "test_loss", "train_accuracy", "generalization_gap", "sparsity.total"):
        assert key in first.data.metrics
    artifacts = {a.path for a in c.list_artifacts(first.info.run_id)}
    assert {"confusion_matrix.png", "metrics.json", "weights", "per_class_report.json",
            "weight_histograms.json"} <= artifacts
    histograms = json.loads(Path(mlflow.artifacts.download_artifacts(
        f"runs:/{first.info.run_id}/weight_histograms.json",
        tracking_uri=f"sqlite:///{trained / 'mlflow.db'}")).read_text())
    assert histograms["columns"] == ["epoch", "layer", "bin_low", "bin_high", "count"]
    assert {row[0] for row in histograms["data"]} == set(range(EPOCHS + 1))
    for key in ("weight_abs.p10", "weight_abs.p50", "weight_abs.p90"):
        assert [m.step for m in c.get_metric_history(first.info.run_id, key)] == list(range(1, EPOCHS + 1))


def test_logged_model_loads_with_pyfunc_and_predicts(trained: Path) -> None:
    run_id = json.loads((trained / "models" / "mlflow_run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{trained / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    with np.load(trained / "data" / "processed" / "test.npz") as f:
        x = f["x"][:8]
    classes = json.loads((trained / "reports" / "data.json").read_text())["classes"]
    table = model.predict(x)
    assert list(table.columns) == ["label", *classes] and len(table) == 8
    probs = table[classes].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    assert list(table["label"]) == [classes[i] for i in probs.argmax(axis=1)]
    keras_probs = keras.models.load_model(trained / "models" / "model.keras").predict(x, verbose=0)
    np.testing.assert_allclose(probs, keras_probs, rtol=1e-5)  # the same model as the DVC output
    # The stated requirements (not inferred) pin the versions that trained it.
    requirements = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model/requirements.txt")).read_text()
    assert f"tensorflow=={tf.__version__}" in requirements.splitlines()
    assert f"keras=={keras.__version__}" in requirements.splitlines()


def test_served_model_answers_labels_and_refuses_float_pixels(trained: Path) -> None:
    """A real `mlflow models serve` process and real HTTP requests."""
    run_id = json.loads((trained / "models" / "mlflow_run.json").read_text())["run_id"]
    classes = json.loads((trained / "reports" / "data.json").read_text())["classes"]
    with np.load(trained / "data" / "processed" / "test.npz") as f:
        x = f["x"][:3]
    port = free_port()
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port), "-w", "1"], cwd=trained,
                              env=env(MLFLOW_TRACKING_URI=f"sqlite:///{trained / 'mlflow.db'}"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/ping", server)
        good = post(f"{base}/invocations", {"inputs": x.tolist()})
        assert good.status == 200
        rows = json.loads(good.body)["predictions"]
        assert len(rows) == 3 and all(row["label"] in classes for row in rows)
        assert all(abs(sum(row[c] for c in classes) - 1) < 1e-4 for row in rows)
        assert [row["label"] for row in rows] == [max(classes, key=row.get) for row in rows]
        floats = post(f"{base}/invocations", {"inputs": (x / 255.0).tolist()})  # what most users send
        assert floats.status == 400 and "expected uint8 pixels 0-255, shape (N, 32, 32, 3)" in floats.body
        assert "float64" in floats.body
        wrong_shape = post(f"{base}/invocations", {"inputs": x[:, :16].tolist()})
        assert wrong_shape.status == 400 and "got shape (3, 16, 32, 3)" in wrong_shape.body
    finally:
        stop(server)


@pytest.mark.fault
def test_l2lab_serve_bounds_requests_and_stops_on_sigterm(trained: Path) -> None:
    """20,000 images in one request got a 504 after 60 s from `mlflow models serve`, junk got its own 50 MB
    echoed back, and a SIGTERM left uvicorn running. `l2lab serve`: a real process, real HTTP."""
    import http.client
    import signal

    import psutil

    from l2lab.serve import MAX_BODY_BYTES
    from l2lab.classifier import MAX_IMAGES

    run_id = json.loads((trained / "models" / "mlflow_run.json").read_text())["run_id"]
    with np.load(trained / "data" / "processed" / "test.npz") as f:
        x = f["x"][:2]
    port = free_port()
    server = subprocess.Popen(["l2lab", "serve", "--model", f"runs:/{run_id}/model", "--port", str(port)], cwd=trained,
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/ping", server)
        good = post(f"{base}/invocations", {"inputs": x.tolist()})
        assert good.status == 200 and len(json.loads(good.body)["predictions"]) == 2
        # A body declared larger than the bound is refused from its headers: none of it is ever sent.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        connection.endheaders()
        refused = connection.getresponse()
        assert refused.status == 413 and f"at most {MAX_IMAGES} images" in refused.read().decode()
        connection.close()
        many = post(f"{base}/invocations", {"inputs": np.zeros((MAX_IMAGES + 1, 32, 32, 3), np.uint8).tolist()})
        assert many.status == 400 and f"got {MAX_IMAGES + 1} images; a request holds at most {MAX_IMAGES}" in many.body
        junk = urllib.request.Request(f"{base}/invocations", data=b"{" + b"x" * 5_000_000,
                                      headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(junk, timeout=60)
        body = answer.value.read()
        assert answer.value.code == 400 and len(body) < 3_000 and b"more characters cut" in body
        children = psutil.Process(server.pid).children(recursive=True)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 143
        assert not [c for c in children if c.is_running()]  # no server left behind
    finally:
        server.kill()
        server.wait()


class Reply:
    def __init__(self, status: int, body: str) -> None:
        self.status, self.body = status, body


def post(url: str, payload: dict) -> Reply:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Reply(response.status, response.read().decode())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.read().decode())


def test_editing_report_and_sweep_modules_leaves_train_and_evaluate_up_to_date(trained: Path) -> None:
    # The deps case end to end (tests/test_stage_deps.py has the static one): DVC itself decides.
    edited = [trained / "src" / "l2lab" / name for name in ("sweeps/report.py", "sweeps/figures.py", "sweeps/worker.py",
                                                            "cli.py", "archive.py")]
    for path in edited:
        path.write_text(path.read_text() + "\n# an edit\n")
    try:
        status = run(trained, "dvc", "status", "train", "evaluate").stdout
        assert "up to date" in status, status
        assert "preprocess" in run(trained, "dvc", "status", "preprocess").stdout  # the archive reader is its code
    finally:
        run(trained, "git", "checkout", "--", *map(str, edited))


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
def test_forced_rerun_gives_identical_metrics_in_a_new_run(trained: Path) -> None:
    before = json.loads((trained / "reports" / "metrics.json").read_text())
    run(trained, "dvc", "repro", "-f", "train", "evaluate")
    after = json.loads((trained / "reports" / "metrics.json").read_text())
    assert after["mlflow_run_id"] != before["mlflow_run_id"]
    assert after["test_accuracy"] == before["test_accuracy"]
    assert after["weight_norm"] == before["weight_norm"]
    assert ({k: v for k, v in after.items() if k != "mlflow_run_id"}
            == {k: v for k, v in before.items() if k != "mlflow_run_id"})
    runs = finished_runs(trained)
    assert len(runs) == 2 and runs[1].info.run_id == after["mlflow_run_id"]


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
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


@pytest.mark.slow  # make test-slow, which CI runs after make test (make test stays under 8 minutes)
@pytest.mark.fault
def test_a_failed_training_leaves_the_previous_state_to_come_back_whole(trained: Path) -> None:
    run(trained, "git", "checkout", "params.yaml")  # the committed params: earlier tests ran experiments here
    run(trained, "dvc", "repro")  # and their outputs, up to date
    kept = [trained / "models" / "mlflow_run.json", trained / "reports" / "plots" / "history.csv",
            trained / "reports" / "metrics.json", trained / "reports" / "per_class.csv"]
    before = {path: path.read_bytes() for path in kept}
    set_params(trained, train__l2=1e30)
    proc = run(trained, "dvc", "repro", check=False)
    assert proc.returncode != 0 and "error: training diverged at epoch 1" in proc.stderr
    assert {path: path.read_bytes() for path in kept} == before  # DVC did not delete them (persist)
    run(trained, "git", "checkout", "params.yaml")
    run(trained, "dvc", "checkout")  # brings the model back from the cache
    assert (trained / "models" / "model.keras").exists()
    assert "Data and pipelines are up to date" in run(trained, "dvc", "status").stdout


def test_a_copy_of_the_same_archive_reruns_the_download_alone(trained: Path, tmp_path: Path) -> None:
    run(trained, "git", "checkout", "params.yaml")  # the committed params: earlier tests ran experiments here
    run(trained, "dvc", "repro")  # and their outputs, up to date
    url = yaml_value(trained, "data", "url")
    mirror = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    mirror.parent.mkdir()
    mirror.write_bytes(Path(url.removeprefix("file://")).read_bytes())
    set_params(trained, data__url=mirror.as_uri())
    out = run(trained, "dvc", "repro").stdout
    assert "Running stage 'download'" in out
    for stage in ("preprocess", "train", "evaluate"):
        assert f"Running stage '{stage}'" not in out and f"Stage '{stage}' didn't change" in out, out
    # What the split depends on does move it (checked without running: dvc status only).
    set_params(trained, data__split_seed=7)
    status = run(trained, "dvc", "status", "--json").stdout
    assert set(json.loads(status)) == {"preprocess"}, status
    run(trained, "git", "checkout", "params.yaml")
    run(trained, "dvc", "repro", "download")


def yaml_value(project: Path, *keys: str) -> str:
    from ruamel.yaml import YAML

    node = YAML(typ="safe").load((project / "params.yaml").read_text())
    for key in keys:
        node = node[key]
    return node
