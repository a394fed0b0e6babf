"""Score a trained model: test metrics, train/val accuracy, the gap, per-class report, final weight statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, log_loss

from l2lab.norms import kernels, sparsity, weight_norms

PREDICT_BATCH = 1024  # images per forward pass; memory only, results do not depend on it


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities (N, 10) for uint8 images (N, 32, 32, 3), rows summing to 1 in float64.

    The float32 softmax sums to 1 only within rounding; scikit-learn's log_loss warns on that.
    """
    probs = np.asarray(model.predict(x, batch_size=PREDICT_BATCH, verbose=0), dtype=np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]  # scalars, and dicts of scalars per layer
    confusion: np.ndarray  # (10, 10) counts, rows = true class, columns = predicted
    per_class: list[dict[str, Any]]  # one row per class: precision, recall (= its accuracy), f1, support
    test_pred: np.ndarray  # (N_test,) predicted class per test image


def per_class_rows(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """scikit-learn's classification report on the test split, one row per class."""
    report = classification_report(y, pred, labels=range(len(classes)), target_names=classes,
                                   output_dict=True, zero_division=0)
    return [{"class": name, **{k: (int(v) if k == "support" else float(v)) for k, v in report[name].items()}}
            for name in classes]


def score(model: Any, splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]) -> Evaluation:
    """Accuracy and loss on test, accuracy on train and val, the gap, and final weight statistics."""
    probs = {name: predict(model, x) for name, (x, _) in splits.items()}
    pred = {name: p.argmax(axis=1) for name, p in probs.items()}
    y = {name: labels for name, (_, labels) in splits.items()}
    labels = list(range(len(classes)))
    ks = kernels(model)
    accuracy = {split: float(accuracy_score(y[split], pred[split])) for split in ("val", "test", "train")}
    metrics: dict[str, Any] = {  # in the order tables show them: what a lambda study compares first
        "val_accuracy": accuracy["val"],
        "test_accuracy": accuracy["test"],
        "generalization_gap": accuracy["train"] - accuracy["test"],
        "weight_norm": weight_norms(ks),
        "train_accuracy": accuracy["train"],
        "test_loss": float(log_loss(y["test"], probs["test"], labels=labels)),  # cross-entropy, no penalty
        "sparsity": sparsity(ks),
    }
    return Evaluation(metrics, confusion_matrix(y["test"], pred["test"], labels=labels),
                      per_class_rows(y["test"], pred["test"], classes), pred["test"])
