"""Optuna as l2lab uses it: the storage of studies (a journal file beside mlflow.db, or the team's
PostgreSQL), samplers and pruners by name, and a tune trial's side in the train stage (report each
epoch's val_accuracy, ask whether to stop)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from l2lab.errors import L2labError, causes, first_line

log = logging.getLogger(__name__)

STORAGE_ENV = "L2LAB_STORAGE"
JOURNAL_NAME = "optuna.journal"  # the local studies, beside mlflow.db (git-ignored)
SCHEMA_TRIES = 3  # opening a fresh storage while another process creates its tables: tries before giving up

# A tune's trial run carries these tags (set when its run is reserved): its study and trial.
STUDY_TAG = "l2lab.study"
TRIAL_TAG = "l2lab.trial"  # the trial's number in its study (0, 1, ...)
PRUNED_TAG = "l2lab.pruned_at_epoch"  # on a pruned trial's run: the last epoch it trained
PRUNER_ATTR = "l2lab.pruner"  # study user attribute: how to rebuild its pruner in the train stage
TUNE_ATTR = "l2lab.tune_id"  # study user attribute: the study is an l2lab tune's (not a grid's queue)

SAMPLERS = ("tpe", "random", "gp")
PRUNERS = ("hyperband", "median", "none")


def storage_url(given: str | None) -> str:
    """--storage, else L2LAB_STORAGE, else the repository's journal file (local_journal)."""
    return given or os.environ.get(STORAGE_ENV) or str(local_journal())


def is_shared(url: str) -> bool:
    """A database (team mode: workers on other machines) rather than this machine's journal file."""
    return "://" in url


def local_journal() -> Path:
    """The repository's own studies, beside its mlflow.db (resolved as the tracking store is: DVC_ROOT)."""
    from l2lab.tracking.store import repo_root

    return repo_root() / JOURNAL_NAME


def redact(url: str) -> str:
    """The storage's URL without its password, fit for logs and errors; a journal file's path as it is."""
    from l2lab.params import redact_url

    return redact_url(url) if is_shared(url) else url


def open_storage(url: str):
    """Optuna's storage: a database URL (team mode), or a file path: Optuna's journal file, which several
    processes on one machine may write at once."""
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not is_shared(url):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        try:
            return JournalStorage(JournalFileBackend(str(url)))
        except OSError as exc:
            raise L2labError(f"cannot open the study journal {url}: {exc.strerror or exc}") from None
    for attempt in range(SCHEMA_TRIES):
        try:
            return RDBStorage(url)
        except Exception as exc:  # SQLAlchemy/psycopg2 errors: unreachable, bad password, no such database
            first = first_line(exc) or type(exc).__name__
            if _creating_elsewhere(exc) and attempt < SCHEMA_TRIES - 1:
                time.sleep(1.0 + attempt)  # the other process is creating the same tables: they will be there
                continue
            if _creating_elsewhere(exc):
                raise L2labError(f"the sweep storage {redact(url)}: another process was creating Optuna's tables at "
                                 f"the same time and they are still not usable ({first}); run again") from None
            raise L2labError(f"cannot open the sweep storage {redact(url)}: {first}; check the URL "
                             f"(--storage or {STORAGE_ENV}) and that the database server is up") from None
    raise AssertionError("unreachable")


def _creating_elsewhere(exc: BaseException) -> bool:
    """Whether opening a fresh storage collided with another process creating its schema (PostgreSQL's
    UniqueViolation on pg_type_typname_nsp_index, or "already exists")."""
    text = " ".join(str(error) for error in causes(exc))
    return "UniqueViolation" in text or "pg_type_typname_nsp_index" in text or "already exists" in text


def make_sampler(name: str, seed: int | None) -> Any:
    """tpe (Optuna's default), random, or gp (Gaussian process; needs PyTorch and SciPy)."""
    import optuna

    if name == "gp":
        try:
            import scipy  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise L2labError("--sampler gp needs PyTorch and SciPy: pip install torch scipy, "
                             "or use --sampler tpe") from None
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, epochs: int, startup: int = 2) -> Any:
    """hyperband (min 1 epoch, max the trials' epochs, reduction factor 3), median (a trial below the median
    of the finished trials at the same epoch stops, once startup trials have finished; never at epoch 1),
    or none. Rebuilt from name and epochs in every train stage (a pruner is not stored)."""
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=2)  # steps are epochs from 1
    return optuna.pruners.NopPruner()


class TrialLink:
    """A tune trial as its train stage sees it: report(epoch, val_accuracy) tells the trial and returns whether
    its pruner says stop. How the trial ended is told by its worker, once the point's experiment is saved."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def report(self, epoch: int, val_accuracy: float) -> bool:
        self.trial.report(val_accuracy, epoch)
        return bool(self.trial.should_prune())


def trial_tags(study_name: str, number: int) -> dict[str, str]:
    """The tags a tune trial's run is made with: how its train stage finds its trial (trial_link)."""
    return {STUDY_TAG: study_name, TRIAL_TAG: str(number)}


def load_study(name: str, storage: str | Path | None = None) -> Any:
    """A study by name, from storage, else L2LAB_STORAGE (team mode's database), else the repository's journal."""
    import optuna

    return optuna.load_study(study_name=name, storage=open_storage(str(storage or storage_url(None))))


def trial_link(tags: dict[str, str]) -> TrialLink | None:
    """The trial a tune's run stands for (its tags name study and trial); None for any other run."""
    if STUDY_TAG not in tags:
        return None
    import optuna

    storage = open_storage(storage_url(None))
    study = optuna.load_study(study_name=tags[STUDY_TAG], storage=storage)
    study.pruner = make_pruner(**study.user_attrs[PRUNER_ATTR])
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(tags[STUDY_TAG]),
                                                               int(tags[TRIAL_TAG]))
    return TrialLink(optuna.trial.Trial(study, trial_id))
