"""A checkout under a path with spaces or letters other than ASCII: the make targets and a sweep work, or stop
before any work with one line naming the cause."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from project import copy_project, env, run

pytestmark = [pytest.mark.e2e, pytest.mark.fault]
VENV = Path(sys.executable).parent.parent  # this test run's environment, already installed


def test_make_targets_quote_a_path_with_a_space(tmp_path: Path, template: Path) -> None:
    """`make exps` failed with `test: /tmp/my: unexpected operator` and left a stray .venv/ (BIN unquoted)."""
    project = copy_project(template, tmp_path / "my lab" / "repo")
    stamp = VENV / ".installed"  # -o: take the environment as installed, whatever the copy's pyproject.toml says
    made = subprocess.run(["make", "exps", f"VENV={VENV}", "-o", str(stamp)], cwd=project, env=env(),
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "unexpected operator" not in made.stderr and not (project / ".venv").exists()
    assert "Experiment" in made.stdout  # dvc exp show's table


def test_a_sweep_under_a_path_with_non_ascii_letters_stops_in_one_line_before_any_work(tmp_path: Path,
                                                                                      template_data: Path) -> None:
    """DVC writes an experiment's cache.dir through configobj as ASCII: every point failed, the cause only in a
    worker's log. The sweep says so before it starts anything."""
    project = copy_project(template_data, tmp_path / "my lab" / "实验 é" / "repo")
    assert "up to date" in run(project, "dvc", "status", "preprocess").stdout  # plain DVC reads it here
    swept = run(project, "l2lab", "sweep", "--l2", "0", "--jobs", "1", check=False)
    assert swept.returncode == 1 and "Traceback" not in swept.stderr
    (line,) = [line for line in swept.stderr.splitlines() if "error:" in line]
    assert "DVC's cache is under a path with letters other than ASCII" in line and "dvc cache dir" in line
    import optuna

    from l2lab.studies import open_storage

    assert not (project / "mlflow.db").exists()  # no parent run
    assert optuna.get_all_study_names(open_storage(str(project / "optuna.journal"))) == []  # no study left
    assert run(project, "git", "worktree", "list").stdout.count("\n") == 1


@pytest.mark.slow  # make test-slow, which CI runs after make test
def test_a_sweep_under_a_path_with_spaces_runs(tmp_path: Path, template_data: Path) -> None:
    project = copy_project(template_data, tmp_path / "my lab" / "the repo")
    swept = run(project, "l2lab", "sweep", "--l2", "0", "--jobs", "1")
    assert "1/1 done (0 failed)" in swept.stderr
