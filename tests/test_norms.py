"""Norms, sparsity and scores against hand-computed values."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from l2lab.norms import sparsity, weight_norms
from l2lab.params import flatten
from l2lab.scores import score

KS = {"a": np.array([[3.0, 4.0]]), "b": np.array([0.0, 1e-4, -2e-3, 12.0])}


def test_weight_norms_per_layer_and_total() -> None:
    norms = weight_norms(KS)
    assert norms["a"] == pytest.approx(5.0)
    assert norms["b"] == pytest.approx(np.sqrt(1e-8 + 4e-6 + 144.0))
    assert norms["total"] == pytest.approx(np.sqrt(25.0 + 1e-8 + 4e-6 + 144.0))


def test_sparsity_counts_weights_below_threshold() -> None:
    s = sparsity(KS)  # |w| < 1e-3: 0.0 and 1e-4 in "b"; -2e-3 is not
    assert s == {"a": 0.0, "b": 0.5, "total": pytest.approx(2 / 6)}


def test_flatten_nests_with_dots() -> None:
    flat = flatten({"test_accuracy": 0.5, "weight_norm": {"conv1": 1.0, "total": 2.0}, "id": "x"})
    assert flat == {"test_accuracy": 0.5, "weight_norm.conv1": 1.0, "weight_norm.total": 2.0, "id": "x"}


class Fixed:
    """A stand-in model whose predictions are given: scoring is tested apart from training."""

    def __init__(self, probs: dict[int, np.ndarray]) -> None:
        self.probs = probs
        self.layers = [SimpleNamespace(name="k", kernel=np.array([[0.0, 3.0], [4.0, 0.0]]))]

    def predict(self, x: np.ndarray, batch_size: int, verbose: int) -> np.ndarray:
        return self.probs[len(x)]


def test_scores_against_hand_counts() -> None:
    classes = ["a", "b", "c", "d"]
    y_test = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])
    probs = np.full((6, 4), 0.1)
    probs[np.arange(6), pred] = 0.7
    train_probs = np.eye(4)[[0, 1, 2, 3, 0]] * 0.6 + 0.1  # 5 images, all right
    y_train = np.array([0, 1, 2, 3, 1])  # the last one wrong: 4/5
    val_probs = np.eye(4)[[3, 3, 3]] * 0.6 + 0.1
    y_val = np.array([3, 0, 0])  # 1/3
    splits = {"train": (np.zeros((5, 1)), y_train), "val": (np.zeros((3, 1)), y_val),
              "test": (np.zeros((6, 1)), y_test)}
    result = score(Fixed({5: train_probs, 3: val_probs, 6: probs}), splits, classes)
    m = result.metrics
    assert m["test_accuracy"] == pytest.approx(4 / 6) and m["train_accuracy"] == pytest.approx(4 / 5)
    assert m["val_accuracy"] == pytest.approx(1 / 3)
    assert m["generalization_gap"] == pytest.approx(4 / 5 - 4 / 6)
    assert m["test_loss"] == pytest.approx(-np.mean(np.log(np.where(pred == y_test, 0.7, 0.1))))
    expected = np.zeros((4, 4), dtype=np.int64)
    for a, p in zip(y_test, pred):
        expected[a, p] += 1
    np.testing.assert_array_equal(result.confusion, expected)  # rows actual, columns predicted; "d" never seen
    rows = {row["class"]: row for row in result.per_class}
    assert list(rows) == classes
    assert rows["a"]["recall"] == pytest.approx(1 / 2) and rows["a"]["precision"] == pytest.approx(1 / 2)
    assert rows["c"]["recall"] == pytest.approx(2 / 3) and rows["c"]["precision"] == pytest.approx(1.0)
    assert rows["c"]["f1-score"] == pytest.approx(0.8) and rows["c"]["support"] == 3
    assert rows["d"]["support"] == 0 and rows["d"]["recall"] == 0.0
    assert m["weight_norm"] == {"k": 5.0, "total": 5.0} and m["sparsity"] == {"k": 0.5, "total": 0.5}


def test_abs_histogram_bins_zeros_small_and_large_weights() -> None:
    from l2lab.norms import ABS_EDGES, abs_histogram, abs_quantiles

    kernel = np.array([[0.0, -5e-7, 2e-6], [0.5, -0.5, 7.0]])
    counts = abs_histogram(kernel)
    assert counts.sum() == kernel.size and len(counts) == len(ABS_EDGES) - 1
    assert counts[0] == 2  # the exact zero and |w| < 1e-6 share the first bin: "zero" for L1's purposes
    assert counts[-1] == 1  # 7.0 lands in [1, 1000]
    assert counts[np.searchsorted(ABS_EDGES, 0.5, side="right") - 1] == 2
    q = abs_quantiles({"a": np.array([1.0, -2.0]), "b": np.array([3.0, 4.0, -5.0])})
    assert q == {"p10": pytest.approx(1.4), "p50": pytest.approx(3.0), "p90": pytest.approx(4.6)}
