"""Figures and plot files: what a person looks at."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from l2lab.files import atomic_outputs


def confusion_figure(confusion: np.ndarray, classes: list[str]):
    """A matplotlib heat map of the confusion matrix, counts in the cells (rows = true class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def write_rows(path: Path, header: list[str], rows: list[list[object]]) -> None:
    """A CSV file for `dvc plots`, written atomically."""
    with atomic_outputs(path) as (tmp,):
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """Per-epoch learning curves, one row per epoch."""
    keys = list(history)
    write_rows(path, keys, [list(row) for row in zip(*(history[k] for k in keys))])


def write_confusion_pairs(path: Path, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> None:
    """One (actual, predicted) row per test image: the input of DVC's confusion template."""
    write_rows(path, ["actual", "predicted"], [[classes[t], classes[p]] for t, p in zip(y_true, y_pred)])
