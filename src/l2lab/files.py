"""Outputs appear whole or not at all: write to temporary names, then rename."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


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
