"""The evaluate stage: score the trained model on train, val and test, write metrics and plots, log to
the training's MLflow run."""

from __future__ import annotations

from l2lab.warm import hand_over

if __name__ == "__main__":  # DVC ran the stage: a sweep's warm server runs it instead, when there is one
    hand_over("l2lab.stages.evaluate")  # (l2lab.warm), before the imports below: the server has them

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from l2lab.data import load_split  # noqa: E402
from l2lab.files import file_sha256, write_confusion_pairs, write_json, write_rows  # noqa: E402
from l2lab.imports import pyplot, quiet_tensorflow  # noqa: E402
from l2lab.params import flatten  # noqa: E402
from l2lab.process import run_stage  # noqa: E402

log = logging.getLogger(__name__)

# Per-epoch series already end on the final value; logging them again at step 0 would add a point.
EPOCH_SERIES = ("val_accuracy", "weight_norm.")


@dataclass(frozen=True)
class EvalPaths:
    data_dir: Path  # holds {train,val,test}.npz
    data_summary: Path  # preprocess's summary: the class names
    model: Path
    run_info: Path  # the training's MLflow run id
    metrics: Path  # JSON for dvc metrics
    confusion: Path  # CSV (actual, predicted) for dvc plots
    per_class: Path  # CSV: precision, recall, f1, support per class on test


def evaluate(paths: EvalPaths) -> dict:
    """Score the saved model on all three splits, write metrics and plots, log to the training run."""
    # TensorFlow, pandas and MLflow load here, not at the top: main() imports TensorFlow quietly first.
    import keras
    import pandas as pd

    from l2lab.devices import prepare_device
    from l2lab.scores import collapsed, score
    from l2lab.tracking.runs import COLLAPSED_TAG, resumed_run
    from l2lab.tracking.store import connect

    store = connect()  # a broken or locked store fails here, before any work
    prepare_device()  # on a GPU: take memory as needed, leave the rest to the sweep's other points
    run_id = json.loads(paths.run_info.read_text())["run_id"]
    classes = json.loads(paths.data_summary.read_text())["classes"]
    splits = {name: load_split(paths.data_dir / f"{name}.npz") for name in ("train", "val", "test")}
    model = keras.models.load_model(paths.model)
    with resumed_run(store, run_id, "evaluate") as run:
        run.log_splits({"test": file_sha256(paths.data_dir / "test.npz")}, json.loads(paths.data_summary.read_text()))
        result = score(model, splits, classes)
        lead = ("val_accuracy", "test_accuracy", "generalization_gap", "weight_norm")  # what dvc exp show shows first
        metrics = {**{k: result.metrics[k] for k in lead if k in result.metrics}, "mlflow_run_id": run_id,
                   **result.metrics}
        write_confusion_pairs(paths.confusion, splits["test"][1], result.test_pred, classes)
        header = list(result.per_class[0])
        write_rows(paths.per_class, header, [[row[k] for k in header] for row in result.per_class])
        run.log_metrics({k: v for k, v in flatten(result.metrics).items() if not k.startswith(EPOCH_SERIES)})
        if "val_accuracy" in result.metrics and collapsed(result.metrics["val_accuracy"], len(splits["val"][1]),
                                                           len(classes)):
            run.set_tags({COLLAPSED_TAG: "true"})  # no result: left out of every pick (l2lab.sweeps.report)
            log.warning("val_accuracy %.4f is at chance (1/%d): the run collapsed; it is tagged %s",
                        result.metrics["val_accuracy"], len(classes), COLLAPSED_TAG)
        run.log_figure(confusion_figure(result.confusion, classes), "confusion_matrix.png")
        run.log_table(pd.DataFrame(result.per_class), "per_class_report.json")
        run.log_dict(metrics, "metrics.json")
        write_json(paths.metrics, metrics)
    log.info("test_accuracy %.4f, train_accuracy %.4f, gap %.4f",
             metrics["test_accuracy"], metrics["train_accuracy"], metrics["generalization_gap"])
    return metrics


def confusion_figure(confusion: np.ndarray, classes: list[str]) -> Any:
    """A matplotlib heat map of the confusion matrix, counts in the cells (rows = true class)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = confusion.max() / 2
    for (i, j), n in np.ndenumerate(confusion):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="white" if n > threshold else "black")
    ax.set_title("Test set confusion matrix")
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with {train,val,test}.npz")
    parser.add_argument("--data-summary", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--run-info", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="JSON for dvc metrics")
    parser.add_argument("--confusion", type=Path, required=True, help="CSV for the confusion plot")
    parser.add_argument("--per-class", type=Path, required=True, help="CSV: precision, recall, f1 per class")
    args = parser.parse_args()

    def body() -> None:
        quiet_tensorflow()
        evaluate(EvalPaths(args.data_dir, args.data_summary, args.model, args.run_info, args.metrics,
                           args.confusion, args.per_class))

    run_stage(body)


if __name__ == "__main__":
    main()
