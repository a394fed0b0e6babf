"""Shared fixtures: a small generated CIFAR-format archive and a loopback HTTP server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from l2lab.synthetic import write_cifar_archive
from loopback import LoopbackServer

PER_BATCH = 60  # images per training batch: 300 training images, 30 per class
TEST_SIZE = 100


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR-format archive (Python 2 pickles) of 5 x 60 training and 100 test images."""
    path = tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz"
    return write_cifar_archive(path, per_batch=PER_BATCH, test_size=TEST_SIZE, seed=1)


@pytest.fixture(scope="session")
def small_archive_sha256(small_archive: Path) -> str:
    return hashlib.sha256(small_archive.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def no_leaked_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI in os.environ: undo it after each test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def server() -> LoopbackServer:
    with LoopbackServer() as srv:
        yield srv


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many fault-injection cases ran and how many held (behaved as specified)."""
    reports = [r for key in ("passed", "failed", "error") for r in terminalreporter.stats.get(key, [])
               if r.when == "call" and "fault" in r.keywords]
    if reports:
        held = sum(r.passed for r in reports)
        terminalreporter.write_line(f"fault-injection: {len(reports)} cases tried, {held} held")
