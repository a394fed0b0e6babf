"""End to end: `dvc repro` runs download and preprocess in a copy of the repo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import PER_BATCH, TEST_SIZE
from loopback import LoopbackServer, Route, free_port
from project import clone_project, run, set_params

pytestmark = pytest.mark.e2e
ARCHIVE = Path("data/raw/cifar-10-python.tar.gz")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return clone_project(tmp_path / "repo")


def test_repro_downloads_preprocesses_and_then_does_nothing(
    project: Path, server: LoopbackServer, small_archive: Path, small_archive_sha256: str
) -> None:
    url = server.add("/cifar-10-python.tar.gz", Route(body=small_archive.read_bytes()))
    set_params(project, data__url=url, data__sha256=small_archive_sha256, data__val_size=50)

    first = run(project, "dvc", "repro", "preprocess")
    assert "Running stage 'download'" in first.stdout and "Running stage 'preprocess'" in first.stdout
    assert (project / ARCHIVE).read_bytes() == small_archive.read_bytes()
    for split, n in {"train": 5 * PER_BATCH - 50, "val": 50, "test": TEST_SIZE}.items():
        with np.load(project / "data" / "processed" / f"{split}.npz") as f:
            assert f["x"].shape == (n, 32, 32, 3) and f["y"].shape == (n,)
    summary = json.loads((project / "reports" / "data.json").read_text())
    assert summary["source_sha256"] == small_archive_sha256 and summary["val"]["total"] == 50

    second = run(project, "dvc", "repro", "preprocess")
    assert "Running stage" not in second.stdout
    assert "up to date" in run(project, "dvc", "status", "preprocess").stdout
    assert "reports/data.json" not in run(project, "dvc", "metrics", "show").stdout  # a plain output, not 40 columns


def test_file_url_works_through_dvc(project: Path, small_archive: Path, small_archive_sha256: str) -> None:
    set_params(project, data__url=small_archive.as_uri(), data__sha256=small_archive_sha256, data__val_size=50)
    run(project, "dvc", "repro", "preprocess")
    assert (project / "data" / "processed" / "train.npz").exists()


@pytest.mark.fault
def test_wrong_checksum_fails_clearly_and_leaves_no_archive(
    project: Path, server: LoopbackServer, small_archive: Path
) -> None:
    url = server.add("/cifar-10-python.tar.gz", Route(body=small_archive.read_bytes()))
    set_params(project, data__url=url, data__sha256="ab" * 32)
    proc = run(project, "dvc", "repro", "download", check=False)
    assert proc.returncode != 0
    assert f"error: checksum mismatch for {url}: expected sha256 {'ab' * 32}, got " in proc.stderr
    assert not (project / ARCHIVE).exists()
    assert not list(project.glob("data/raw/*.part"))


@pytest.mark.fault
def test_unreachable_url_fails_fast_naming_it(project: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    set_params(project, data__url=url)
    proc = run(project, "dvc", "repro", "download", check=False, timeout=60)
    assert proc.returncode != 0
    assert f"error: cannot fetch {url}: connection refused" in proc.stderr
    assert "data.url=file://" in proc.stderr


@pytest.mark.fault
def test_bad_param_stops_before_any_work(project: Path, small_archive: Path, small_archive_sha256: str) -> None:
    set_params(project, data__url=small_archive.as_uri(), data__sha256=small_archive_sha256, data__val_size=-5)
    proc = run(project, "dvc", "repro", "preprocess", check=False)
    assert proc.returncode != 0
    assert "error: params.yaml: data.val_size: Input should be greater than or equal to 10 (got -5)" in proc.stderr
    assert not (project / "data" / "processed").exists() or not any((project / "data" / "processed").iterdir())
