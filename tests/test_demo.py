"""`make demo`: the offline pipeline on generated data, as a temporary DVC experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from l2lab.tracking.runs import DEMO_NOTE
from l2lab.tracking.store import EXPERIMENT
from project import clone_project, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # make test-slow (CI runs it after make test)


def test_demo_runs_offline_and_is_marked_synthetic(tmp_path: Path) -> None:
    project = clone_project(tmp_path / "repo")
    run(project, "python", "-m", "l2lab.demo", "--per-batch", "100", "--epochs", "1")
    assert run(project, "git", "status", "--porcelain", "--untracked-files=no").stdout == ""  # workspace untouched
    c = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    (only,) = c.search_runs([c.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert only.info.status == "FINISHED" and only.info.run_name.startswith("demo-")
    assert only.data.tags["mlflow.note.content"] == DEMO_NOTE
    assert only.data.tags["data.dataset"].startswith("synthetic")
    assert "test_accuracy" in only.data.metrics
    assert only.info.run_name in run(project, "dvc", "exp", "show", "--csv").stdout
