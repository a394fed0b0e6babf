"""Score a trained model: test metrics, train/val accuracy, the gap, per-class report, final weight statistics."""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from l2lab.norms import kernels, sparsity, weight_norms

PREDICT_BATCH = 1024  # images per forward pass; memory only, results do not depend on it


def normalised(probs: np.ndarray) -> np.ndarray:
    """The model's class probabilities (N, 10) as rows summing to 1 in float64.

    The float32 softmax sums to 1 only within rounding; the rows are normalised in float64.
    """
    probs = np.asarray(probs, dtype=np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


def forward(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """What model.predict(x, batch_size=PREDICT_BATCH) computes, the same numbers: the same batches through
    the same call (model(batch, training=False), predict_step's), traced once for any batch size instead
    of Keras's tf.data pipeline per call and a trace per new last-batch shape. A model compiled for XLA
    (Keras's jit_compile, on a GPU)
    goes through model.predict itself, whose XLA clusters this one would not reproduce."""
    def keras_predict(x: np.ndarray) -> np.ndarray:
        return model.predict(x, batch_size=PREDICT_BATCH, verbose=0)

    if getattr(model, "jit_compile", True) or getattr(model, "run_eagerly", True):  # or not a Keras model
        return keras_predict
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input_shape[1:]), model.input.dtype)
    step = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True, input_signature=[spec])

    def run(x: np.ndarray) -> np.ndarray:
        if x.dtype != spec.dtype.as_numpy_dtype or x.shape[1:] != tuple(spec.shape[1:]) or not len(x):
            return keras_predict(x)  # Keras casts other dtypes; those images are not the stage's
        return np.concatenate([step(tf.constant(x[i:i + PREDICT_BATCH])).numpy()
                               for i in range(0, len(x), PREDICT_BATCH)])

    return run


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]  # scalars, and dicts of scalars per layer
    confusion: np.ndarray  # (10, 10) counts, rows = true class, columns = predicted
    per_class: list[dict[str, Any]]  # one row per class: precision, recall (= its accuracy), f1, support
    test_pred: np.ndarray  # (N_test,) predicted class per test image


def confusion_matrix(y: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) int64 counts, rows = true class, columns = predicted."""
    return np.bincount(y.astype(np.int64) * classes + pred, minlength=classes * classes).reshape(classes, classes)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator in float64, 0 where the denominator is 0 (a class never predicted or absent)."""
    numerator, denominator = numerator.astype(np.float64), denominator.astype(np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy -log p(true class), probabilities clipped to [eps, 1 - eps] (float64 eps)."""
    eps = np.finfo(probs.dtype).eps
    return float(np.mean(-np.log(np.clip(probs[np.arange(len(y)), y], eps, 1 - eps))))


def per_class_rows(confusion: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """Precision, recall, f1 and support per class from the test confusion matrix, one row per class.

    The same numbers, to the last bit, as scikit-learn's classification_report with
    zero_division=0 (tests/test_scores.py checks it), without importing scikit-learn and
    SciPy in the evaluate stage.
    """
    tp = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision, recall, f1 = ratio(tp, predicted), ratio(tp, support), ratio(2 * tp, support + predicted)
    return [{"class": name, "precision": float(precision[i]), "recall": float(recall[i]), "f1-score": float(f1[i]),
             "support": int(support[i])} for i, name in enumerate(classes)]


def collapsed(accuracy: float, images: int, classes: int) -> bool:
    """Whether a validation accuracy is at chance: no more than 1/classes plus two binomial standard errors of
    chance over these images (0.1 + 0.0085 on 5,000 images). A network that collapsed predicts one class
    (SGD at too high a rate): its accuracy is that class's share, 1/classes on a stratified split."""
    chance = 1.0 / classes
    return accuracy <= chance + 2.0 * math.sqrt(chance * (1.0 - chance) / max(images, 1))


def score(model: Any, splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]) -> Evaluation:
    """Accuracy and loss on test, accuracy on train and val, the gap, and final weight statistics. A split
    without images (a refit's val: nothing validates) has no metrics."""
    splits = {name: split for name, split in splits.items() if len(split[1])}
    run = forward(model)  # one trace for the three splits
    probs = {name: normalised(run(x)) for name, (x, _) in splits.items()}
    pred = {name: p.argmax(axis=1) for name, p in probs.items()}
    y = {name: labels for name, (_, labels) in splits.items()}
    ks = kernels(model)
    accuracy = {split: float(np.mean(y[split] == pred[split])) for split in splits}
    metrics: dict[str, Any] = {  # in the order tables show them: what a lambda study compares first
        **({"val_accuracy": accuracy["val"]} if "val" in accuracy else {}),
        "test_accuracy": accuracy["test"],
        "generalization_gap": accuracy["train"] - accuracy["test"],
        "weight_norm": weight_norms(ks),
        "train_accuracy": accuracy["train"],
        "test_loss": log_loss(y["test"], probs["test"]),  # cross-entropy, no penalty
        "sparsity": sparsity(ks),
    }
    confusion = confusion_matrix(y["test"], pred["test"], len(classes))
    return Evaluation(metrics, confusion, per_class_rows(confusion, classes), pred["test"])
