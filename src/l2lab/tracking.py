"""Every MLflow call of the project: where runs go, what they hold, how they end."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import mlflow
import numpy as np
from mlflow.entities import RunStatus

from l2lab.errors import L2labError
from l2lab.params import Params

log = logging.getLogger(__name__)
T = TypeVar("T")

EXPERIMENT = "cifar10-l2"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
LOCK_NAME = ".mlflow.db.lock"
MODEL_URI_TAG = "l2lab.model_uri"
DEMO_NOTE = (
    "**Demo run on synthetic data, not CIFAR-10.** Generated shapes and colours in the CIFAR-10 "
    "archive format, so the whole pipeline can run offline. Its accuracy says nothing about CIFAR-10."
)


def repo_root(start: Path | None = None) -> Path:
    """The main repository: DVC_ROOT (or cwd), lifted out of a queued experiment's temp copy.

    `dvc exp run --queue/--temp` runs stages in <repo>/.dvc/tmp/exps/<tmp>/, so the
    database the user browses lives above that copy's ".dvc" folder.
    """
    path = (start or Path(os.environ.get("DVC_ROOT") or Path.cwd())).resolve()
    parts = path.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return path


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else the repo's sqlite:///<root>/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / DB_NAME}"


@contextmanager
def _first_use_lock(root: Path) -> Iterator[None]:
    """Serialise the first touch of the store across processes.

    Two queued experiments opening a fresh SQLite database at once both run MLflow's
    schema migration and one fails (or leaves alembic's temporary tables behind).
    An exclusive lock on a file beside the database makes creation happen once.
    """
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_NAME).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def setup(root: Path | None = None) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; return its id."""
    root = root or repo_root()
    with _first_use_lock(root):
        mlflow.set_tracking_uri(tracking_uri(root))
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)  # creates and migrates the database
        if experiment is not None:
            return experiment.experiment_id
        return mlflow.create_experiment(EXPERIMENT, artifact_location=(root / ARTIFACTS_DIR).as_uri())


def _git_commit(cwd: Path) -> str | None:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def library_versions() -> dict[str, str]:
    """The versions of the libraries a trained model depends on, by package name."""
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def run_tags(data_summary: dict[str, Any]) -> dict[str, str]:
    """Tags that say where a run came from: code, experiment, data, library versions."""
    tags = {
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "data.sha256": data_summary.get("source_sha256", ""),
        "data.dataset": data_summary.get("dataset", ""),
        **{f"{name}.version": version for name, version in library_versions().items()},
    }
    commit = _git_commit(Path.cwd())
    if commit:
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return {k: v for k, v in tags.items() if v}


@contextmanager
def _ending(run_id: str, failed: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """End the run FINISHED on success, KILLED on Ctrl-C/SIGTERM, FAILED on any other error."""
    try:
        yield
    except KeyboardInterrupt:
        retrying(lambda: mlflow.end_run(RunStatus.to_string(RunStatus.KILLED)))
        raise
    except BaseException:
        retrying(lambda: mlflow.end_run(RunStatus.to_string(RunStatus.FAILED)))
        raise
    status = RunStatus.FAILED if failed() else RunStatus.FINISHED
    retrying(lambda: mlflow.end_run(RunStatus.to_string(status)))
    log.info("MLflow run %s ended %s", run_id, RunStatus.to_string(status))


@contextmanager
def training_run(params: Params, data_summary: dict[str, Any]) -> Iterator[str]:
    """Start the pipeline's run (named after the DVC experiment), log params and tags; yield its id."""
    experiment_id = setup()
    name = os.environ.get("DVC_EXP_NAME") or None
    tags = run_tags(data_summary)
    if data_summary.get("synthetic"):  # the offline demo: say so wherever the run is shown
        name = name or "demo-synthetic-data"  # a DVC experiment keeps its own name, as everywhere
        tags["mlflow.note.content"] = DEMO_NOTE
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    log.info("MLflow run %s (%s) in %s", run_id, run.info.run_name, mlflow.get_tracking_uri())
    with _ending(run_id):
        retrying(lambda: mlflow.log_params(params.flat()))
        yield run_id


@contextmanager
def resumed_run(run_id: str) -> Iterator[str]:
    """Reopen the training stage's run so evaluation lands beside it."""
    setup()
    mlflow.start_run(run_id=run_id)
    with _ending(run_id):
        yield run_id


def retrying(call: Callable[[], T], attempts: int = 6, first_wait: float = 0.5) -> T:
    """Run an MLflow call, retrying with backoff while the store is busy (SQLite "database is locked")."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # MLflow wraps SQLAlchemy's errors in its own, or not at all
            if not _transient(exc):
                raise
            if attempt == attempts - 1:
                raise MlflowBusyError(f"MLflow store {mlflow.get_tracking_uri()} still busy after {attempts} tries: "
                                      f"{str(exc).splitlines()[0][:200]}") from None
            wait = first_wait * 2**attempt
            log.warning("MLflow store busy (%s); retrying in %.1f s", str(exc).splitlines()[0][:120], wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


class MlflowBusyError(L2labError):
    """The tracking store stayed locked through every retry."""


def _transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("database is locked", "database table is locked", "OperationalError"))


def log_epoch(step: int, metrics: dict[str, float]) -> None:
    """One epoch's metrics, step = epoch number (1-based)."""
    retrying(lambda: mlflow.log_metrics(metrics, step=step))


def log_final(metrics: dict[str, float]) -> None:
    """End-of-run scalar metrics."""
    retrying(lambda: mlflow.log_metrics(metrics))


def log_model(model: Any, example: np.ndarray) -> None:
    """The model as an MLflow model at artifact path "model" (pyfunc-loadable), and its weights file."""
    import mlflow.tensorflow
    from mlflow.models import infer_signature

    signature = infer_signature(example, model.predict(example, verbose=0))
    # Stated, not inferred: MLflow infers them by loading the model in a subprocess,
    # a second TensorFlow import that cost every run about 5 s here.
    requirements = [f"{name}=={version}" for name, version in library_versions().items()]
    info = mlflow.tensorflow.log_model(model, name="model", signature=signature, pip_requirements=requirements)
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)  # models:/<id>, what the registry wants
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.weights.h5"
        model.save_weights(weights)
        mlflow.log_artifact(str(weights), artifact_path="weights")


def log_figure(figure: Any, name: str) -> None:
    """A matplotlib figure as a PNG artifact."""
    mlflow.log_figure(figure, name)


def log_dict(data: dict[str, Any], name: str) -> None:
    """A JSON artifact."""
    mlflow.log_dict(data, name)


SWEEP_TAG = "l2lab.sweep_id"
ROLE_TAG = "l2lab.role"  # "sweep" on a sweep's parent run


@dataclass
class SweepParent:
    run_id: str
    failed: bool = False  # set when a point failed: the parent then ends FAILED


@contextmanager
def sweep_parent(sweep_id: str, axes: dict[str, list[str]], fixed: dict[str, str]) -> Iterator[SweepParent]:
    """The parent run that groups a sweep's runs in the UI; ends FINISHED, FAILED or KILLED."""
    experiment_id = setup()
    tags = {SWEEP_TAG: sweep_id, ROLE_TAG: "sweep", "mlflow.note.content": _sweep_note(axes, fixed)}
    run = mlflow.start_run(experiment_id=experiment_id, run_name=sweep_id, tags=tags)
    parent = SweepParent(run.info.run_id)
    with _ending(parent.run_id, lambda: parent.failed):
        mlflow.log_params({f"sweep.{key}": ",".join(values) for key, values in axes.items()})
        mlflow.log_params({f"sweep.fixed.{key}": value for key, value in fixed.items()})
        yield parent


def _sweep_note(axes: dict[str, list[str]], fixed: dict[str, str]) -> str:
    grid = "; ".join(f"{k} in {{{', '.join(v)}}}" for k, v in axes.items())
    extra = ", ".join(f"{k}={v}" for k, v in fixed.items())
    return f"Sweep over {grid}" + (f" with {extra}" if extra else "") + ". Child runs are the DVC experiments."


def _search(filter_string: str, **kwargs: Any) -> list:
    """Runs of the cifar10-l2 experiment matching an MLflow filter string."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], filter_string=filter_string, **kwargs)


def adopt_child(parent_id: str, sweep_id: str, exp_name: str) -> str | None:
    """Nest the run named exp_name under the sweep's parent run; return its id (None if it never started)."""
    runs = _search(f"tags.`dvc.exp_name` = '{exp_name}'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run_id = runs[0].info.run_id
    client = mlflow.MlflowClient()
    client.set_tag(run_id, "mlflow.parentRunId", parent_id)
    client.set_tag(run_id, SWEEP_TAG, sweep_id)
    return run_id


REGISTERED_MODEL = "cifar10-cnn"
CHAMPION_ALIAS = "champion"


def latest_sweep() -> tuple[str, str]:
    """(sweep id, parent run id) of the most recent sweep."""
    setup()
    runs = _search(f"tags.`{ROLE_TAG}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise L2labError(f"no sweep found in {mlflow.get_tracking_uri()}; run `l2lab sweep` first")
    return runs[0].data.tags[SWEEP_TAG], runs[0].info.run_id


def sweep_parent_id(sweep_id: str) -> str:
    """The parent run id of a sweep."""
    setup()
    runs = _search(f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{SWEEP_TAG}` = '{sweep_id}'")
    if not runs:
        raise L2labError(f"no sweep {sweep_id!r} in {mlflow.get_tracking_uri()}")
    return runs[0].info.run_id


def sweep_runs(parent_id: str) -> list[dict[str, Any]]:
    """The sweep's child runs as plain dicts: run_id, name, status, params, metrics, val_curve."""
    client = mlflow.MlflowClient()
    runs = _search(f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "params": dict(r.data.params),
            "metrics": dict(r.data.metrics),
            "val_curve": [m.value for m in sorted(client.get_metric_history(r.info.run_id, "val_accuracy"),
                                                  key=lambda m: m.step)],
        }
        for r in runs
    ]


def register_champion(run_id: str) -> str:
    """Register the run's model as a version of cifar10-cnn (once) and point the champion alias at it."""
    client = mlflow.MlflowClient()
    existing = client.search_model_versions(f"name = '{REGISTERED_MODEL}' and tags.source_run_id = '{run_id}'")
    if existing:  # reporting the same sweep twice moves no alias and adds no version
        version = existing[0]
    else:
        uri = client.get_run(run_id).data.tags.get(MODEL_URI_TAG, f"runs:/{run_id}/model")
        version = mlflow.register_model(uri, REGISTERED_MODEL, tags={"source_run_id": run_id})
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version.version)
    client.set_model_version_tag(REGISTERED_MODEL, version.version, "selected_by", "max val_accuracy")
    return str(version.version)


def log_report(parent_id: str, folder: Path) -> None:
    """Attach the report's files to the sweep's parent run, under report/."""
    mlflow.MlflowClient().log_artifacts(parent_id, str(folder), artifact_path="report")
