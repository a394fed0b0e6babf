"""Where runs go: the tracking URI and the repository root, also from a queued experiment's copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from l2lab.tracking import repo_root, tracking_uri


def test_repo_root_follows_dvc_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert repo_root() == tmp_path.resolve()


def test_repo_root_lifts_out_of_an_experiment_temp_copy(tmp_path: Path) -> None:
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    assert repo_root(copy) == (tmp_path / "repo").resolve()


def test_repo_root_defaults_to_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert repo_root() == tmp_path.resolve()


def test_tracking_uri_env_wins_else_repo_sqlite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_make_ui_listens_on_loopback_only() -> None:
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    repo = Path(__file__).resolve().parents[1]
    dry = subprocess.run(["make", "-n", "ui"], cwd=repo, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": ""})
    command = [line for line in dry.stdout.splitlines() if "mlflow ui" in line]
    assert command and "--host 127.0.0.1" in command[0] and "0.0.0.0" not in dry.stdout
