"""Norms, penalties and sparsity against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from l2lab.evaluate import accuracy, confusion_matrix, cross_entropy, flat_metrics
from l2lab.norms import l1_penalty, l2_penalty, sparsity, weight_norms

KS = {"a": np.array([[3.0, 4.0]]), "b": np.array([0.0, 1e-4, -2e-3, 12.0])}


def test_weight_norms_per_layer_and_total() -> None:
    norms = weight_norms(KS)
    assert norms["a"] == pytest.approx(5.0)
    assert norms["b"] == pytest.approx(np.sqrt(1e-8 + 4e-6 + 144.0))
    assert norms["total"] == pytest.approx(np.sqrt(25.0 + 1e-8 + 4e-6 + 144.0))


def test_penalties() -> None:
    assert l2_penalty(KS, 0.5) == pytest.approx(0.5 * (25.0 + 1e-8 + 4e-6 + 144.0))
    assert l1_penalty(KS, 0.1) == pytest.approx(0.1 * (7.0 + 1e-4 + 2e-3 + 12.0))
    assert l2_penalty(KS, 0.0) == 0.0


def test_sparsity_counts_weights_below_threshold() -> None:
    s = sparsity(KS)  # |w| < 1e-3: 0.0 and 1e-4 in "b"; -2e-3 is not
    assert s == {"a": 0.0, "b": 0.5, "total": pytest.approx(2 / 6)}


def test_cross_entropy_and_accuracy() -> None:
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 1, 1])
    assert cross_entropy(probs, y) == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.4])))
    assert accuracy(probs, y) == pytest.approx(2 / 3)


def test_flat_metrics_nests_with_dots_and_skips_strings() -> None:
    flat = flat_metrics({"test_accuracy": 0.5, "weight_norm": {"conv1": 1.0, "total": 2.0}, "id": "x"})
    assert flat == {"test_accuracy": 0.5, "weight_norm.conv1": 1.0, "weight_norm.total": 2.0}


def test_confusion_matrix_counts_rows_actual_columns_predicted() -> None:
    actual = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    expected = np.zeros((4, 4), dtype=np.int64)
    for a, p in zip(actual, predicted):
        expected[a, p] += 1
    got = confusion_matrix(actual, predicted, 4)
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (4, 4) and got[3].sum() == 0 and got.sum() == len(actual)
