"""Output files: whole or not at all (written to temporary names, then renamed), as JSON or CSV."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence


def temp_name(path: Path) -> Path:
    """A hidden sibling that keeps the suffix (Keras picks the format from it)."""
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


@contextmanager
def atomic_outputs(*paths: Path) -> Iterator[list[Path]]:
    """Yield temporary paths to write; rename them all into place only if the block succeeds."""
    temps = [temp_name(p) for p in paths]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temps
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in zip(temps, paths):
        os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Write obj as indented JSON, atomically."""
    with atomic_outputs(path) as (tmp,):
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def write_confusion_pairs(path: Path, y_true: Sequence[int], y_pred: Sequence[int], classes: list[str]) -> None:
    """One (actual, predicted) row per test image: the input of DVC's confusion template."""
    import numpy as np

    names = np.asarray(classes, dtype=object)  # indexed by whole arrays, not a Python loop per image
    pairs = np.stack([names[np.asarray(y_true)], names[np.asarray(y_pred)]], 1)
    write_rows(path, ["actual", "predicted"], pairs.tolist())
