"""The evaluate stage's scores in numpy against scikit-learn's, bit for bit: confusion matrix, per-class
precision/recall/f1 (zero_division=0), log loss and accuracy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, log_loss

from l2lab import scores

CLASSES = [f"c{i}" for i in range(10)]


def predictions(seed: int, n: int, absent: int | None = None, never: int | None = None) -> tuple:
    """Labels and float64 probability rows as score() makes them (normalised), with one class absent
    from the labels and one never predicted, where asked: the zero-division cases."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int64)
    if absent is not None:
        y[y == absent] = (absent + 1) % 10
    logits = rng.normal(size=(n, 10)).astype(np.float32) * 3
    logits[np.arange(n), y] += rng.normal(1.0, 2.0, n).astype(np.float32)  # better than chance, not perfect
    if never is not None:
        logits[:, never] = -1e4
    probs = np.exp(logits - logits.max(axis=1, keepdims=True)).astype(np.float32)
    probs = probs.astype(np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    probs[0, y[0]] = 0.0  # a probability of 0 for the true class: the clip to eps decides the loss
    return y, probs


@pytest.mark.parametrize("seed,n,absent,never", [(0, 1000, None, None), (1, 37, 3, 7), (2, 5000, 9, 0)])
def test_scores_equal_scikit_learns(seed: int, n: int, absent: int | None, never: int | None) -> None:
    y, probs = predictions(seed, n, absent, never)
    pred = probs.argmax(axis=1)
    confusion = scores.confusion_matrix(y, pred, len(CLASSES))
    expected = confusion_matrix(y, pred, labels=range(10))
    assert confusion.dtype == expected.dtype and np.array_equal(confusion, expected)
    report = classification_report(y, pred, labels=range(10), target_names=CLASSES, output_dict=True, zero_division=0)
    rows = scores.per_class_rows(confusion, CLASSES)
    assert [row["class"] for row in rows] == CLASSES
    for row in rows:
        want = report[row["class"]]
        assert list(row)[1:] == list(want)  # the same columns, in the same order
        assert row["support"] == int(want["support"])
        for key in ("precision", "recall", "f1-score"):
            assert row[key] == float(want[key]), (row["class"], key)  # exactly, not approximately
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9 renamed y_pred; either spelling
        assert scores.log_loss(y, probs) == float(log_loss(y, probs, labels=range(10)))
    assert float(np.mean(y == pred)) == float(accuracy_score(y, pred))
