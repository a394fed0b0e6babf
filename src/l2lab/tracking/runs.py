"""A pipeline run in MLflow: how it starts (or takes up a sweep's reservation), what it holds, how it ends."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit
from urllib.request import url2pathname

from mlflow.entities import LoggedModelStatus, Metric, Param, RunStatus, RunTag

from l2lab.deps import code_digest
from l2lab.errors import L2labError, causes
from l2lab.process import raise_if_stopped, stop_requested
from l2lab.tracking.owners import end_stale_runs, owner_tags
from l2lab.tracking.store import Store, bind_fluent, search_runs

log = logging.getLogger(__name__)

MODEL_URI_TAG = "l2lab.model_uri"
COLLAPSED_TAG = "l2lab.collapsed"  # "true": the run's val_accuracy ended at chance (scores.collapsed): no result
HISTOGRAMS = "weight_histograms.json"  # run artifact: |w| histogram per layer per epoch (a table in the UI)
DEMO_NOTE = (
    "**Demo run on synthetic data, not CIFAR-10.** Generated shapes and colours in the CIFAR-10 "
    "archive format, so the whole pipeline can run offline. Its accuracy says nothing about CIFAR-10."
)
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # a split's mlflow.data.context
PARENT_TAG = "mlflow.parentRunId"  # how MLflow nests runs (start_run(parent_run_id=...) sets it too)
RESERVED = "SCHEDULED"  # a sweep's point run that no stage has taken up yet


class DiskFullError(L2labError):
    """A write failed because its filesystem is full."""


def disk_full(exc: BaseException) -> str | None:
    """The path (or "unknown path") of an ENOSPC/EDQUOT error anywhere in exc's chain; None if there is none."""
    for error in causes(exc):
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error.filename or "unknown path"
        if "No space left on device" in str(error):
            return "unknown path"
    return None


def git_commit(cwd: Path) -> str | None:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def library_versions() -> dict[str, str]:
    """The versions of the libraries a trained model depends on, by package name."""
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def code_tags(stage: str) -> dict[str, str]:
    """Which code a stage ran: its commit and a digest of the source files it imports.

    The digest changes with any edit to those files, committed or not; evaluate
    records its own, so a re-run evaluation says which code produced its numbers.
    """
    tags = {f"l2lab.{stage}.code": code_digest(f"l2lab.stages.{stage}")}
    commit = git_commit(Path.cwd())
    if commit:
        tags[f"l2lab.{stage}.git.commit"] = commit
    return tags


def training_tags(data_summary: dict[str, Any], split_sha256: dict[str, str]) -> dict[str, str]:
    """Tags that say where a training run came from: code, experiment, data, library versions."""
    tags = {
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "data.sha256": data_summary.get("source_sha256", ""),
        "data.dataset": data_summary.get("dataset", ""),
        **{f"data.{split}.sha256": digest for split, digest in split_sha256.items()},  # the split files read
        **{f"{name}.version": version for name, version in library_versions().items()},
        **code_tags("train"),
    }
    if "l2lab.train.git.commit" in tags:  # MLflow's UI shows these in its Source column
        tags |= {"mlflow.source.git.commit": tags["l2lab.train.git.commit"], "mlflow.source.type": "LOCAL",
                 "mlflow.source.name": "dvc.yaml"}
    if data_summary.get("synthetic"):  # the offline demo: say so wherever the run is shown
        tags["mlflow.note.content"] = DEMO_NOTE
    return {k: v for k, v in tags.items() if v}


class Run:
    """One MLflow run of the pipeline, written through the store's client (every write retried)."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store, self.run_id = store, run_id

    def log_splits(self, digests: dict[str, str], summary: dict[str, Any]) -> None:
        """The split files a stage read, as MLflow dataset inputs (the UI's Dataset column): named after the data
        and the fold (cifar-10 val, fold 2 of 5), the file's sha256 as digest, what it served as context."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        folds, fold = summary.get("folds", 0), summary.get("fold", 0)
        part = f", fold {fold} of {folds}" if folds and fold != "all" else (f", all {folds} folds" if folds else "")
        inputs = [DatasetInput(Dataset(name=f"{summary.get('dataset', 'data')} {split}{part}", digest=digest[:16],
                                       source_type="local", source=json.dumps({"uri": f"{split}.npz"}),
                                       profile=json.dumps({"num_rows": summary[split]["total"]})),
                               tags=[InputTag("mlflow.data.context", CONTEXTS[split]),
                                     InputTag("l2lab.fold", f"{fold} of {folds}" if folds else "fixed split")])
                  for split, digest in digests.items() if summary[split]["total"]]
        self.store.write(lambda: self.store.client.log_inputs(self.run_id, datasets=inputs))

    def log_params(self, params: dict[str, Any]) -> None:
        entries = [Param(k, str(v)) for k, v in params.items()]
        self.store.write(lambda: self.store.client.log_batch(self.run_id, params=entries))

    def set_tags(self, tags: dict[str, str]) -> None:
        self.store.write(lambda: self.store.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()]))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Scalars at one step (an epoch, counted from 1; 0 for end-of-run values)."""
        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step) for k, v in metrics.items()]  # log_batch splits at MLflow's limits
        self.store.write(lambda: self.store.client.log_batch(self.run_id, metrics=entries))

    def log_figure(self, figure: Any, name: str) -> None:
        self.store.write(lambda: self.store.client.log_figure(self.run_id, figure, name))

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        self.store.write(lambda: self.store.client.log_dict(self.run_id, data, name))

    def log_table(self, table: Any, name: str) -> None:
        """A table artifact (a DataFrame) that the UI shows as a table."""
        self.store.write(lambda: self.store.client.log_table(self.run_id, table, name))

    def log_model(self, model: Any, classes: list[str]) -> None:
        """The model as an MLflow model named "model" (pyfunc-loadable), and its weights file.

        On a full disk (or any failure) the half-written model is removed, not left behind.
        """
        try:
            self._log_model(model, classes)
        except BaseException as exc:
            self._remove_unfinished_models()
            full = disk_full(exc)
            if full is not None:
                raise DiskFullError(f"no space left on the device holding {full} while logging the model; "
                                    "free space there (or point the artifacts elsewhere) and run again") from None
            raise

    def _remove_unfinished_models(self) -> None:
        """Delete this run's logged models that never became READY, and their local artifact files."""
        client = self.store.client
        for logged in client.search_logged_models([self.store.experiment_id],
                                                  filter_string=f"source_run_id = '{self.run_id}'"):
            if logged.status == LoggedModelStatus.READY:
                continue
            location = urlsplit(logged.artifact_location)
            if location.scheme == "file":  # .../models/m-<id>/artifacts: remove the model's whole folder
                shutil.rmtree(Path(url2pathname(location.path)).parent, ignore_errors=True)
            self.store.write(lambda: client.delete_logged_model(logged.model_id))
            log.info("removed the unfinished MLflow model %s", logged.model_id)

    def _log_model(self, model: Any, classes: list[str]) -> None:
        import mlflow.pyfunc
        from mlflow.models import Model

        import l2lab
        from l2lab.classifier import EXPECTED, KERAS_ARTIFACT, Classifier

        # Stated, not inferred: MLflow infers them by loading the model in a subprocess, a second
        # TensorFlow import in every run (docs/performance.md has its cost).
        requirements = [f"{name}=={version}" for name, version in library_versions().items()]
        bind_fluent(self.store)
        with tempfile.TemporaryDirectory() as tmp:
            keras_file = Path(tmp) / "model.keras"
            model.save(keras_file)
            # No input signature: MLflow would cast JSON floats to it silently; Classifier checks instead.
            # Model.log is what mlflow.pyfunc.log_model calls; it alone takes the run to log to.
            info = self.store.write(lambda: Model.log(
                artifact_path=None, flavor=mlflow.pyfunc, name="model", python_model=Classifier(classes),
                artifacts={KERAS_ARTIFACT: str(keras_file)},
                code_paths=[str(Path(l2lab.__file__).parent)], pip_requirements=requirements,
                metadata={"input": EXPECTED, "output": "label, then one probability column per class",
                          "classes": classes}, run_id=self.run_id))
        self.set_tags({MODEL_URI_TAG: info.model_uri})  # models:/<id>, what the registry wants
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "model.weights.h5"
            model.save_weights(weights)
            self.store.write(lambda: self.store.client.log_artifact(self.run_id, str(weights), artifact_path="weights"))


@contextmanager
def ending(store: Store, run_id: str, failed: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """End the run FINISHED on success, KILLED on Ctrl-C/SIGTERM (or any error once one arrived), FAILED on
    any other error."""
    def end(status: int) -> None:
        store.write(lambda: store.client.set_terminated(run_id, RunStatus.to_string(status)))

    try:
        yield
        raise_if_stopped()  # a stop the block's libraries swallowed ends the run KILLED all the same
    except BaseException as exc:
        stopped = isinstance(exc, KeyboardInterrupt) or stop_requested() is not None  # whatever it surfaced as
        end(RunStatus.KILLED if stopped else RunStatus.FAILED)
        raise
    status = RunStatus.FAILED if failed() else RunStatus.FINISHED
    end(status)
    log.info("MLflow run %s ended %s", run_id, RunStatus.to_string(status))


@contextmanager
def training_run(store: Store, params: dict[str, Any], data_summary: dict[str, Any],
                 split_sha256: dict[str, str]) -> Iterator[Run]:
    """Start the pipeline's run, log params and tags; yield it.

    The run is named after the DVC experiment; a plain `dvc repro`'s after its commit (repro_name).
    When a sweep reserved a run for that experiment, this is that run, already nested under the
    sweep's parent. Runs left RUNNING by a process that is gone are ended KILLED first.
    """
    end_stale_runs(store)
    kind = "demo" if data_summary.get("synthetic") else "repro"
    name = os.environ.get("DVC_EXP_NAME") or repro_name(Path.cwd(), kind)
    run_id = take_reservation(store, name) if name else None
    if run_id is None:
        created = store.write(lambda: store.client.create_run(store.experiment_id, run_name=name, tags=owner_tags()))
        run_id = created.info.run_id
    run = Run(store, run_id)
    log.info("MLflow run %s (%s) in %s", run_id, name or "unnamed", store.uri)
    with ending(store, run_id):
        run.set_tags(training_tags(data_summary, split_sha256))
        run.log_params(params)
        yield run


def repro_name(cwd: Path, kind: str = "repro") -> str | None:
    """`repro-<commit>[-dirty]-<date>-<time>` for a run of `dvc repro` in a workspace (kind demo: on the offline
    demo's generated data): its commit, and whether the code or params there differ from it (dvc.lock and the
    outputs do not count: the run itself changes them)."""
    commit = git_commit(cwd)
    if commit is None:
        return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}" if kind == "demo" else None
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "params.yaml",
                              "dvc.yaml"], cwd=cwd, capture_output=True, text=True).stdout.strip()
    return f"{kind}-{commit[:8]}{'-dirty' if changed else ''}-{time.strftime('%Y%m%d-%H%M%S')}"


def take_reservation(store: Store, exp_name: str) -> str | None:
    """The run a sweep reserved for this DVC experiment, now RUNNING; None when there is none."""
    waiting = search_runs(store, f"tags.`dvc.exp_name` = '{quote(exp_name)}' and attributes.status = '{RESERVED}'")
    if not waiting:
        return None
    run_id = waiting[0].info.run_id
    Run(store, run_id).set_tags(owner_tags())  # before RUNNING: a RUNNING run always names its process
    store.write(lambda: store.client.update_run(run_id, status="RUNNING"))
    return run_id


def quote(value: str) -> str:
    """A value for an MLflow filter string's single-quoted literal."""
    return value.replace("'", "\\'")


@contextmanager
def resumed_run(store: Store, run_id: str, stage: str) -> Iterator[Run]:
    """Reopen the training's run for a later stage, tagged with that stage's code."""
    end_stale_runs(store)
    run = Run(store, run_id)
    run.set_tags(owner_tags())
    store.write(lambda: store.client.update_run(run_id, status="RUNNING"))
    with ending(store, run_id):
        run.set_tags(code_tags(stage))
        yield run
