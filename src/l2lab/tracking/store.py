"""Where runs go: the tracking URI, one client bound to it, first-use locking, retries while busy."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import mlflow
from mlflow import MlflowClient

from l2lab.errors import L2labError, causes, first_line
from l2lab.process import stops_deferred

log = logging.getLogger(__name__)
T = TypeVar("T")

EXPERIMENT = "cifar10-l2"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
LOCK_NAME = ".mlflow.db.lock"
# MLflow 3's UI opens an experiment by its kind: on its training runs, not the GenAI overview.
KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}
BUSY = ("database is locked", "database table is locked")  # SQLite: another writer holds the file
# Two writers inserted the same row at once (MLflow looks a row up, then inserts it: two workers' first
# points log the same dataset to the experiment at the same instant); the retry finds the row and updates it.
COLLIDED = ("duplicate key value violates unique constraint", "UNIQUE constraint failed")
BUSY_WAIT_SECONDS = 120.0  # how long a stage waits for a database another process holds locked


class MlflowBusyError(L2labError):
    """The tracking store stayed locked through every retry."""


class BrokenStoreError(L2labError):
    """The tracking database is not a readable MLflow database (truncated, overwritten, not SQLite)."""


def repo_root(start: Path | None = None) -> Path:
    """The main repository: DVC_ROOT (or cwd), lifted out of a queued experiment's temp copy.

    `dvc exp run --queue/--temp` runs stages in <repo>/.dvc/tmp/exps/<tmp>/, so the
    database the user browses lives above that copy's ".dvc" folder.
    """
    path = (start or Path(os.environ.get("DVC_ROOT") or Path.cwd())).resolve()
    parts = path.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return path


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else the repo's sqlite:///<root>/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / DB_NAME}"


@dataclass(frozen=True)
class Store:
    """A tracking store, a client bound to its URI, and the cifar10-l2 experiment in it."""

    uri: str
    client: MlflowClient
    experiment_id: str

    def write(self, call: Callable[[], T]) -> T:
        """Run one write against the store, retried while it is busy."""
        return retrying(call, where=self.uri)


@contextmanager
def _first_use_lock(root: Path) -> Iterator[None]:
    """Serialise the first touch of the store across processes.

    Two queued experiments opening a fresh SQLite database at once both run MLflow's
    schema migration and one fails (or leaves alembic's temporary tables behind).
    An exclusive lock on a file beside the database makes creation happen once.
    """
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_NAME).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Dropped(logging.Filter):
    """Drops a library's log records that begin with one of the given texts: notices no user can act on."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_mlflow() -> None:
    """MLflow's notices that l2lab's use makes moot: its artifact downloads' progress bars (one per run in a
    stage's or report's log) and, when a model is logged, the CloudPickle notice (the model is l2lab's own
    class, logged with l2lab's code beside it)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    pyfunc = logging.getLogger("mlflow.pyfunc")
    if not any(isinstance(f, _Dropped) for f in pyfunc.filters):
        pyfunc.addFilter(_Dropped("Passing a Python object as `python_model`"))


def connect(root: Path | None = None) -> Store:
    """The store for this repo (creating the database and the experiment on first use)."""
    quiet_mlflow()
    root = (root or repo_root()).resolve()
    uri = tracking_uri(root)
    with _first_use_lock(root):
        db = sqlite_path(uri)
        if db is not None and (not db.exists() or db.stat().st_size == 0):
            _create_database(db, root)
        elif db is not None:
            check_database(db)
        client = MlflowClient(tracking_uri=uri)
        experiment = retrying(lambda: client.get_experiment_by_name(EXPERIMENT), where=uri)
        if experiment is None:
            # A tracking server decides where artifacts go (its --artifacts-destination); a local store, mlartifacts/.
            location = _artifacts(root) if db is not None else None
            created = retrying(lambda: client.create_experiment(EXPERIMENT, artifact_location=location, tags=KIND_TAGS),
                               where=uri)
            return Store(uri, client, created)
        for key, value in KIND_TAGS.items():  # experiments made before l2lab set it
            if experiment.tags.get(key) != value:
                retrying(lambda: client.set_experiment_tag(experiment.experiment_id, key, value), where=uri)
        return Store(uri, client, experiment.experiment_id)


def check_database(db: Path, wait_seconds: float | None = None) -> None:
    """Refuse, untouched, a database file that SQLite cannot read whole or that MLflow did not make.

    A database another process holds locked is busy, not broken: this waits for it (up to
    wait_seconds, BUSY_WAIT_SECONDS by default, with a line saying so), then fails saying who holds it.
    """
    def broken(why: str) -> BrokenStoreError:
        return BrokenStoreError(f"{db} is not a readable MLflow database ({why}); it was left as it is: restore it "
                                f"from a backup, or move it aside (mv {db} {db}.broken) and runs start afresh")

    wait = BUSY_WAIT_SECONDS if wait_seconds is None else wait_seconds
    deadline, told = time.monotonic() + wait, False
    while True:
        try:
            with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1.0)) as con:
                problems = [row[0] for row in con.execute("PRAGMA quick_check(1)")]
                tables = {row[0] for row in con.execute("select name from sqlite_master where type = 'table'")}
            break
        except sqlite3.DatabaseError as exc:
            if not busy(exc):
                raise broken(str(exc)) from None
            if time.monotonic() >= deadline:
                raise MlflowBusyError(f"{db} is busy: another process has held it locked for {wait:.0f} s "
                                      f"({holders(db)}); wait for it to finish, or stop it, and run again") from None
            if not told:
                log.warning("%s is locked by another process (%s); waiting up to %.0f s for it", db, holders(db), wait)
                told = True
    if problems != ["ok"]:
        raise broken(f"SQLite: {problems[0]}")
    if problems != ["ok"]:
        raise broken(f"SQLite: {problems[0]}")
    if "alembic_version" not in tables or "runs" not in tables:
        raise broken("an SQLite file without MLflow's tables")


def holders(db: Path) -> str:
    """The processes that have the database file open, e.g. "held open by pid 4242 (sqlite3)", as far as
    this user may see them."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.pid != os.getpid() and any(Path(f.path) == db for f in proc.open_files()):
                found.append(f"pid {proc.pid} ({proc.info['name']})")
        except (psutil.Error, OSError):
            continue
    return "held open by " + ", ".join(found) if found else "no process of this user has it open"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _artifacts(root: Path) -> str:
    return (root / ARTIFACTS_DIR).as_uri()


def _create_database(db: Path, root: Path) -> None:
    """Create, migrate and fill a new SQLite store under a temporary name, then rename it into place.

    MLflow migrates a database's schema on first open, and two processes migrating
    one file at once break it (alembic: "expected to match one row"). Built aside and
    renamed, the file at `db` is never half-migrated: any reader (the UI, a notebook,
    another stage) either finds no file or a finished one, and has nothing to migrate.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp}")
        client.create_experiment(EXPERIMENT, artifact_location=_artifacts(root), tags=KIND_TAGS)
        _close_engine(f"sqlite:///{tmp}")
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created the MLflow database %s", db)


def _close_engine(uri: str) -> None:
    """Close and forget MLflow's cached SQLAlchemy engine for uri (the temporary file is renamed next)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)  # the cache MLflow 3 keeps
    if engine is not None:
        engine.dispose()


def bind_fluent(store: Store) -> None:
    """Point MLflow's process-wide state at this store, for the calls that read nothing else.

    mlflow.<flavor>.log_model and mlflow.register_model take no client: they read the
    global tracking URI and active experiment. Only those two callers use this.
    """
    mlflow.set_tracking_uri(store.uri)
    mlflow.set_experiment(experiment_id=store.experiment_id)


def retrying(call: Callable[[], T], attempts: int = 6, first_wait: float = 0.5, where: str = "") -> T:
    """Run an MLflow call, retrying with backoff while the store is busy (SQLite "database is locked") or
    when another writer inserted the same row at once (COLLIDED; every write l2lab makes is one the retry
    may repeat: a tag, a param of the same value, a dataset input).

    Nothing else is transient: any other error (a missing table, a bad argument, a broken file) is
    raised at once.
    """
    for attempt in range(attempts):
        try:
            with stops_deferred():  # a stop lands between two writes, never inside one
                return call()
        except Exception as exc:  # MLflow wraps SQLAlchemy's errors in its own, or not at all
            why = "busy" if busy(exc) else "written by another process at once" if collided(exc) else None
            if why is None:
                raise
            first = first_line(exc) or type(exc).__name__
            if attempt == attempts - 1:
                raise MlflowBusyError(f"MLflow store {where or mlflow.get_tracking_uri()} still busy after "
                                      f"{attempts} tries: {first}") from None
            wait = first_wait * 2**attempt
            log.warning("MLflow store %s (%s); retrying in %.1f s", why, first[:120], wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def busy(exc: BaseException) -> bool:
    """Whether an error means the database is locked by another writer (and worth a retry)."""
    return says(exc, BUSY)


def collided(exc: BaseException) -> bool:
    """Whether an error means another writer inserted the same row at once (worth a retry)."""
    return says(exc, COLLIDED)


def says(exc: BaseException, texts: tuple[str, ...]) -> bool:
    """Whether the error, or one it wraps, says one of texts (MLflow may wrap SQLAlchemy's error, or not)."""
    return any(text in str(error) for error in causes(exc) for text in texts)


def search_runs(store: Store, filter_string: str, **kwargs: Any) -> list:
    """Runs of the cifar10-l2 experiment matching an MLflow filter string."""
    return store.client.search_runs([store.experiment_id], filter_string=filter_string, **kwargs)
