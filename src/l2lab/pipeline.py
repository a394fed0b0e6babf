"""The train and evaluate stages end to end: read inputs, run the math, write outputs, track."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import keras

from l2lab import tracking
from l2lab.data import load_split
from l2lab.evaluate import evaluate, flat_metrics
from l2lab.files import atomic_outputs, write_json
from l2lab.params import Params
from l2lab.plots import confusion_figure, write_confusion_pairs, write_history
from l2lab.train import fit, input_pipelines

log = logging.getLogger(__name__)

# Per-epoch series already end on the final value; logging them again without a step would add a point.
EPOCH_SERIES = ("val_accuracy", "weight_norm.")


@dataclass(frozen=True)
class TrainPaths:
    data_dir: Path  # holds train.npz and val.npz (never test.npz)
    data_summary: Path  # preprocess's summary: dataset kind and source sha256
    model: Path  # the trained model, .keras
    run_info: Path  # JSON with the MLflow run id, read by evaluate
    history: Path  # per-epoch learning curves, CSV for dvc plots


@dataclass(frozen=True)
class EvalPaths:
    data_dir: Path
    data_summary: Path
    model: Path
    run_info: Path
    metrics: Path  # JSON for dvc metrics
    confusion: Path  # CSV (actual, predicted) for dvc plots


def train_stage(params: Params, paths: TrainPaths) -> str:
    """Train on train, validate on val each epoch, save the model; return the MLflow run id."""
    summary = json.loads(paths.data_summary.read_text())
    val_xy = load_split(paths.data_dir / "val.npz")
    train, val = input_pipelines(params, load_split(paths.data_dir / "train.npz"), val_xy)
    with tracking.training_run(params, summary) as run_id:
        model, history = fit(params, train, val, tracking.log_epoch)
        with atomic_outputs(paths.model, paths.run_info) as (model_tmp, info_tmp):
            model.save(model_tmp)
            tracking.log_model(model, example=val_xy[0][:2])
            info_tmp.write_text(json.dumps({"run_id": run_id, "experiment": tracking.EXPERIMENT}, indent=2) + "\n")
        write_history(paths.history, history)
    return run_id


def evaluate_stage(paths: EvalPaths) -> dict:
    """Score the saved model on all three splits, write metrics and plots, log to the training run."""
    run_id = json.loads(paths.run_info.read_text())["run_id"]
    classes = json.loads(paths.data_summary.read_text())["classes"]
    splits = {name: load_split(paths.data_dir / f"{name}.npz") for name in ("train", "val", "test")}
    model = keras.models.load_model(paths.model)
    with tracking.resumed_run(run_id):
        result = evaluate(model, splits, classes)
        metrics = {**result.metrics, "mlflow_run_id": run_id}
        write_confusion_pairs(paths.confusion, splits["test"][1], result.test_pred, classes)
        tracking.log_final({k: v for k, v in flat_metrics(result.metrics).items() if not k.startswith(EPOCH_SERIES)})
        tracking.log_figure(confusion_figure(result.confusion, classes), "confusion_matrix.png")
        tracking.log_dict(metrics, "metrics.json")
        write_json(paths.metrics, metrics)
    log.info("test_accuracy %.4f, train_accuracy %.4f, gap %.4f",
             metrics["test_accuracy"], metrics["train_accuracy"], metrics["generalization_gap"])
    return metrics
