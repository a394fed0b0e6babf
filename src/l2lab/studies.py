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
HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 30  # a RUNNING trial without a heartbeat for this long is a dead worker's
MAX_RETRIES = 3  # a point whose workers keep dying is retried this often, then left FAILED
SCHEMA_TRIES = 3  # opening a fresh storage while another process creates its tables: tries before giving up

# A tune's trial run carries these tags (set when its run is reserved): its study and trial.
STUDY_TAG = "l2lab.study"
TRIAL_TAG = "l2lab.trial"  # the trial's number in its study (0, 1, ...)
TRIAL_ID_TAG = "l2lab.optuna_trial_id"  # its id in the storage, what optuna.trial.Trial takes
PRUNED_TAG = "l2lab.pruned_at_epoch"  # on a pruned trial's run: the last epoch it trained
PRUNER_ATTR = "l2lab.pruner"  # study user attribute: how to rebuild its pruner in the train stage
TUNE_ATTR = "l2lab.tune_id"  # study user attribute: the study is an l2lab tune's (not a grid's queue)

SAMPLERS = ("tpe", "random", "gp")
PRUNERS = ("hyperband", "median", "none")


def storage_url(given: str | None) -> str | None:
    """--storage, else L2LAB_STORAGE; None: the local DVC queue (for tunes: the local journal file)."""
    return given or os.environ.get(STORAGE_ENV) or None


def local_journal() -> Path:
    """The repository's own studies, beside its mlflow.db (resolved as the tracking store is: DVC_ROOT)."""
    from l2lab.tracking.store import repo_root

    return repo_root() / JOURNAL_NAME


def redact(url: str) -> str:
    """The URL with its password replaced, fit for logs and errors; a journal file's path as it is."""
    from sqlalchemy.engine import make_url

    if "://" not in url:  # a path: open_storage's journal file, nothing secret in it
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL at all: show its scheme only
        return url.split(":", 1)[0] + ":…"


def open_storage(url: str):
    """Optuna's storage: a database URL (RDB, with heartbeats and retries of dead workers' trials), or a
    file path: Optuna's journal file, which several processes on one machine may write at once."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and their retry callback are marked experimental (since Optuna 2.8); said once per call otherwise.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if "://" not in url:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        try:
            return JournalStorage(JournalFileBackend(str(url)))
        except OSError as exc:
            raise L2labError(f"cannot open the study journal {url}: {exc.strerror or exc}") from None
    for attempt in range(SCHEMA_TRIES):
        try:
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
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
            raise L2labError("--sampler gp needs PyTorch and SciPy: pip install torch scipy, or use --sampler tpe") from None
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
    """A tune trial as its train stage sees it: report(epoch, val_accuracy) tells the trial and returns
    whether its pruner says stop; finish() tells the trial how training ended, before evaluate runs and
    before the DVC worker takes the next trial, so the sampler and pruner never wait on DVC."""

    def __init__(self, study: Any, trial: Any) -> None:
        self.study, self.trial = study, trial

    def report(self, epoch: int, val_accuracy: float) -> bool:
        self.trial.report(val_accuracy, epoch)
        return bool(self.trial.should_prune())

    def finish(self, pruned: bool, val_accuracy: float) -> None:
        """The objective is the last epoch's val_accuracy (validation, never test); a pruned trial is PRUNED."""
        from optuna.trial import TrialState

        if pruned:
            self.study.tell(self.trial, state=TrialState.PRUNED)
        else:
            self.study.tell(self.trial, val_accuracy)


def trial_tags(study_name: str, number: int, trial_id: int) -> dict[str, str]:
    """The tags a tune trial's run is reserved with: how its train stage finds its trial (trial_link)."""
    return {STUDY_TAG: study_name, TRIAL_TAG: str(number), TRIAL_ID_TAG: str(trial_id)}


def load_tune_study(name: str) -> Any:
    """A tune's study by name, from L2LAB_STORAGE (which `l2lab tune` sets for its queue workers; team mode's
    database), else the repository's journal file."""
    import optuna

    return optuna.load_study(study_name=name, storage=open_storage(storage_url(None) or str(local_journal())))


def trial_link(tags: dict[str, str]) -> TrialLink | None:
    """The trial a tune's run stands for (its tags name study and trial); None for any other run."""
    if STUDY_TAG not in tags:
        return None
    import optuna

    study = load_tune_study(tags[STUDY_TAG])
    study.pruner = make_pruner(**study.user_attrs[PRUNER_ATTR])
    return TrialLink(study, optuna.trial.Trial(study, int(tags[TRIAL_ID_TAG])))
