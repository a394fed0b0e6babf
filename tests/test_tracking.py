"""Where runs go: the tracking URI and the repository root, also from a queued experiment's copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from l2lab.cli import ui_command
from l2lab.tracking.store import connect, repo_root, tracking_uri


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
    dry = subprocess.run(["make", "-n", "ui", "UI_PORT=5123"], cwd=repo, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": ""})
    assert [line for line in dry.stdout.splitlines() if "l2lab ui --port 5123" in line]
    command = ui_command("sqlite:////x/mlflow.db", 5123)
    assert command[command.index("--host") + 1] == "127.0.0.1" and "0.0.0.0" not in command


def test_a_new_database_appears_whole(tmp_path: Path) -> None:
    """connect() builds the database aside and renames it: no reader ever sees it half-migrated."""
    import sqlite3

    store = connect(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mlflow.db.lock", "mlflow.db"]  # no temporary left
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        (version,) = db.execute("select version_num from alembic_version").fetchone()
        (name,) = db.execute("select name from experiments where experiment_id = ?", (store.experiment_id,)).fetchone()
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config  # the migrations MLflow would run

    head = ScriptDirectory.from_config(_get_alembic_config(f"sqlite:///{tmp_path / 'mlflow.db'}")).get_current_head()
    assert version == head and name == "cifar10-l2"
    assert connect(tmp_path).experiment_id == store.experiment_id  # a second connect finds it, creates nothing


@pytest.mark.fault
@pytest.mark.parametrize("damage", ["random bytes", "truncated", "not mlflow"])
def test_a_broken_database_is_one_clear_error_and_left_untouched(tmp_path: Path, damage: str) -> None:
    import os
    import sqlite3

    from l2lab.tracking.store import BrokenStoreError

    db = tmp_path / "mlflow.db"
    if damage == "random bytes":
        db.write_bytes(os.urandom(100_000))
    elif damage == "truncated":
        connect(tmp_path)
        store = connect(tmp_path)
        for i in range(300):  # enough rows to span many pages
            store.client.create_run(store.experiment_id, run_name=f"r{i}", tags={"pad": "x" * 500})
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2])
    else:
        with sqlite3.connect(db) as con:
            con.execute("create table notes (x)")
    before = db.read_bytes()
    with pytest.raises(BrokenStoreError) as info:
        connect(tmp_path)
    text = str(info.value)
    assert text.startswith(f"{db} is not a readable MLflow database (") and "\n" not in text
    assert f"mv {db} {db}.broken" in text
    assert db.read_bytes() == before


def test_a_stop_signal_during_a_store_write_is_raised_once_the_write_is_done() -> None:
    # Interrupted inside a SQLite transaction, a write keeps the lock (its connection held by the
    # traceback), and ending the run KILLED then waits on it: the stop waits for the write instead.
    import os
    import signal

    from l2lab import process
    from l2lab.tracking.store import retrying

    previous = signal.signal(signal.SIGTERM, process._on_stop_signal)
    done = []
    try:
        with pytest.raises(process.Terminated):
            retrying(lambda: (os.kill(os.getpid(), signal.SIGTERM), done.append("write"))[1])
        assert done == ["write"]  # the write ran to its end before the stop surfaced
        assert retrying(lambda: 7) == 7  # and later writes are not stopped again
    finally:
        signal.signal(signal.SIGTERM, previous)
        process._stop.clear()
