"""Shared fixtures: a small generated CIFAR-format archive, template projects on it (made once per session,
copied by each end-to-end test), and a loopback HTTP server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from l2lab.synthetic import write_cifar_archive
from loopback import LoopbackServer
from project import clone_project, copy_project, run, set_params

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


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, small_archive: Path, small_archive_sha256: str) -> Path:
    """A committed copy of the repo pointed at the small archive: 50 validation images, one epoch, no data
    made yet. Tests copy it (bare); never change it."""
    repo = clone_project(tmp_path_factory.mktemp("template") / "repo")
    set_params(repo, data__url=small_archive.as_uri(), data__sha256=small_archive_sha256,
               data__val_size=50, train__epochs=1)
    run(repo, "git", "commit", "-qam", "point at the test archive")
    return repo


@pytest.fixture(scope="session")
def template_data(tmp_path_factory: pytest.TempPathFactory, template: Path) -> Path:
    """The template with its data made and locked (`dvc repro preprocess`, dvc.lock committed), as the README
    asks before a grid. Tests copy it (project); never change it."""
    repo = copy_project(template, tmp_path_factory.mktemp("template-data") / "repo")
    run(repo, "dvc", "repro", "preprocess")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "the data, locked")
    return repo


@pytest.fixture
def bare(tmp_path: Path, template: Path) -> Path:
    """A fresh copy of the template: committed, pointed at the small archive, no data made, no mlflow.db."""
    return copy_project(template, tmp_path / "repo")


@pytest.fixture
def project(tmp_path: Path, template_data: Path) -> Path:
    """A fresh copy of the template with its data made and locked; no mlflow.db yet."""
    return copy_project(template_data, tmp_path / "repo")


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
