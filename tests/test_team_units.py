"""Team mode's parts that need no servers: redaction of the database's password, the clone checks, a point's
retried runs. (The queue the team's workers take from is every sweep's: tests/test_trials.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from l2lab.errors import L2labError
from l2lab.studies import open_storage, redact
from l2lab.sweeps import trials


def test_storage_errors_name_the_url_without_its_password() -> None:
    with pytest.raises(L2labError) as caught:
        open_storage("postgresql+psycopg2://me:s3cret@127.0.0.1:9/optuna")
    message = str(caught.value)
    assert message.startswith("cannot open the sweep storage postgresql+psycopg2://***@127.0.0.1:9/optuna")
    assert "s3cret" not in message
    assert redact("postgresql://u:pw@h/db") == "postgresql://***@h/db"
    assert redact("/repo/optuna.journal") == "/repo/optuna.journal"  # a local sweep's journal file, as it is
    with pytest.raises(L2labError, match="no sweep 'nope'"):
        trials.sweeps(open_storage("sqlite://"), "nope")


def test_team_mode_refuses_a_local_store_a_dirty_clone_and_an_unpushed_commit(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from l2lab.team.clone import pushed_commit
    from l2lab.team.clone import check_shared_tracking
    from project import run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(L2labError, match="team mode needs the team's MLflow tracking server, not sqlite:///"):
        check_shared_tracking(tmp_path)
    assert not (tmp_path / "mlflow.db").exists()  # refused before any store was made
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    check_shared_tracking(tmp_path)

    repo, remote = tmp_path / "repo", tmp_path / "remote.git"
    repo.mkdir()
    run(tmp_path, "git", "init", "-q", "--bare", str(remote))
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, "dvc", "init", "-q")
    (repo / "params.yaml").write_text("a: 1\n")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "init")
    with pytest.raises(L2labError, match="no git remote named origin"):
        pushed_commit(repo)
    run(repo, "git", "remote", "add", "origin", str(remote))
    with pytest.raises(L2labError, match="no default DVC remote"):
        pushed_commit(repo)
    run(repo, "dvc", "remote", "add", "-d", "team", "s3://bucket/dvc")
    run(repo, "git", "commit", "-qam", "remote")
    with pytest.raises(L2labError, match=r"commit [0-9a-f]{12} is not on origin: .* git push first"):
        pushed_commit(repo)
    run(repo, "git", "push", "-q", "origin", "main")
    assert pushed_commit(repo) == run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    (repo / "params.yaml").write_text("a: 2\n")
    with pytest.raises(L2labError, match="has uncommitted changes; team workers run the sweep's commit"):
        pushed_commit(repo)


def test_a_points_latest_try_is_the_run_its_progress_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from l2lab.tracking.sweep_runs import point_runs, prepare_run
    from l2lab.tracking.store import connect
    from l2lab.tracking.sweep_runs import reserve

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = connect(tmp_path)
    parent = store.client.create_run(store.experiment_id, run_name="sw").info.run_id
    first = reserve(store, parent, "sw", "l2=0_sw")
    store.client.update_run(first, status="RUNNING")  # taken by a worker that then died
    second = prepare_run(store, parent, "sw", "l2=0_sw")  # the retry: the dead try ends KILLED
    assert second != first and store.client.get_run(first).info.status == "KILLED"
    assert [r.info.run_id for r in point_runs(store, parent, "l2=0_sw")][0] == second
    assert prepare_run(store, parent, "sw", "l2=0_sw") == second  # a waiting reservation is reused


def test_sweep_ids_started_in_one_second_differ() -> None:
    from l2lab.sweeps.grid import new_sweep_id

    ids = {new_sweep_id() for _ in range(10)}  # 24 random bits: a clash in 10 draws is a 1-in-370,000 event
    assert len(ids) == 10 and all(i.startswith("sweep-") and len(i) == len("sweep-20261201-231500-3f9a1c") for i in ids)
