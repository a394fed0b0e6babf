"""Score a trained model: test metrics, train/val accuracy, the gap, final weight statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from l2lab.norms import kernels, sparsity, weight_norms

PREDICT_BATCH = 1024  # images per forward pass; memory only, results do not depend on it


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities (N, 10) for uint8 images (N, 32, 32, 3)."""
    return np.asarray(model.predict(x, batch_size=PREDICT_BATCH, verbose=0), dtype=np.float64)


def cross_entropy(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean -log p(true class): the data loss alone, without any penalty."""
    picked = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.mean(np.log(picked)))


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == y))


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts, rows = actual class, columns = predicted class."""
    pairs = actual.astype(np.int64) * classes + predicted.astype(np.int64)
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]  # scalars, and dicts of scalars per layer or class
    confusion: np.ndarray  # (10, 10) counts, rows = true class, columns = predicted
    test_pred: np.ndarray  # (N_test,) predicted class per test image


def evaluate(model: Any, splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]) -> Evaluation:
    """Accuracy and loss on test, accuracy on train and val, the gap, and final weight statistics."""
    probs = {name: predict(model, x) for name, (x, _) in splits.items()}
    y_test = splits["test"][1]
    test_pred = probs["test"].argmax(axis=1)
    confusion = confusion_matrix(y_test, test_pred, len(classes))
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    ks = kernels(model)
    metrics: dict[str, Any] = {
        "test_accuracy": accuracy(probs["test"], y_test),
        "test_loss": cross_entropy(probs["test"], y_test),
        "train_accuracy": accuracy(probs["train"], splits["train"][1]),
        "val_accuracy": accuracy(probs["val"], splits["val"][1]),
    }
    metrics["generalization_gap"] = metrics["train_accuracy"] - metrics["test_accuracy"]
    metrics["per_class_accuracy"] = {c: float(a) for c, a in zip(classes, per_class)}
    metrics["weight_norm"] = weight_norms(ks)
    metrics["sparsity"] = sparsity(ks)
    return Evaluation(metrics, confusion, test_pred)


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Nested metrics as MLflow keys: {"weight_norm": {"conv1": x}} -> {"weight_norm.conv1": x}."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": float(v) for k, v in value.items()})
        elif isinstance(value, (int, float)):
            flat[key] = float(value)
    return flat
