"""A sweep's grid as an Optuna study in the team's PostgreSQL: one enqueued trial per point.

Workers on any machine take the next waiting trial (Optuna moves it to RUNNING for one
taker only), keep it alive with a heartbeat, and report val_accuracy back. A trial whose
heartbeat stops (its worker was killed, its machine died) is failed by the next worker
that looks, and Optuna's RetryHeartbeatStaleTrialCallback enqueues a copy of it, with
the point's attributes, for another worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from l2lab.errors import L2labError
from l2lab.studies import GRACE_SECONDS, STORAGE_ENV, open_storage, redact, storage_url  # noqa: F401 (team's names)
from l2lab.tracking.sweeps import SWEEP_TAG

log = logging.getLogger(__name__)

SWEEP_ATTR = SWEEP_TAG  # study user attribute: marks l2lab's studies among others in the storage
STATES = {"WAITING": "Queued", "RUNNING": "Running", "COMPLETE": "Success", "FAIL": "Failed"}


@dataclass(frozen=True)
class Task:
    """A trial a worker took: its study, number and id, the point it runs, and whether it is a retry."""

    storage: Any
    study: Any
    number: int
    trial_id: int
    point: str
    sets: dict[str, str]
    retry_of: int | None


def new_study(storage, sweep_id: str) -> Any:
    """The sweep's study, named after it, maximizing val_accuracy; one line if the name is taken."""
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    try:
        return optuna.create_study(storage=storage, study_name=sweep_id, direction="maximize")
    except DuplicatedStudyError:
        raise L2labError(f"the sweep storage already holds a study named {sweep_id!r}: start the sweep again "
                         "(a new id is drawn each time)") from None


def enqueue(study: Any, sweep_id: str, points: list[tuple[str, dict[str, str]]], attrs: dict[str, Any]) -> Any:
    """One waiting trial per (name, sets) in the sweep's study, its attributes set first."""
    for key, value in {SWEEP_ATTR: sweep_id, **attrs}.items():
        study.set_user_attr(key, value)
    for name, sets in points:
        study.enqueue_trial({}, user_attrs={"point": name, "sets": sets})
    return study


def sweeps(storage, sweep_id: str | None = None) -> list[Any]:
    """l2lab's studies in the storage (the one named sweep_id), oldest first."""
    import optuna

    names = optuna.get_all_study_names(storage)
    if sweep_id is not None:
        if sweep_id not in names:
            raise L2labError(f"no team sweep {sweep_id!r} in the sweep storage")
        names = [sweep_id]
    studies = [optuna.load_study(study_name=name, storage=storage) for name in names]
    return [s for s in studies if s.user_attrs.get(SWEEP_ATTR)]


def take(storage, study) -> Task | None:
    """Fail the study's stale trials (their retries get enqueued), then take its next waiting trial."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                continue  # another worker took it first
        except UpdateFinishedTrialError:
            continue
        storage.record_heartbeat(trial._trial_id)
        return Task(storage, study, trial.number, trial._trial_id, trial.user_attrs["point"], dict(trial.user_attrs["sets"]),
                    trial.system_attrs.get("failed_trial"))
    return None


def point_states(study) -> dict[str, str]:
    """Point name -> Queued/Running/Success/Failed, from its latest trial (a retry supersedes a failure)."""
    latest: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        name = trial.user_attrs.get("point")
        if name and (name not in latest or trial.number > latest[name].number):
            latest[name] = trial
    return {name: STATES.get(trial.state.name, trial.state.name) for name, trial in latest.items()}


def cancel_waiting(storage, study) -> list[str]:
    """Fail the study's waiting trials so that no worker takes them; return their points."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    cancelled = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                cancelled.append(trial.user_attrs.get("point", str(trial.number)))
        except UpdateFinishedTrialError:
            pass
    return cancelled


def requeue(task: Task) -> None:
    """Enqueue a copy of a task's point (it was interrupted here): another worker takes it up."""
    task.study.enqueue_trial({}, user_attrs={"point": task.point, "sets": task.sets})


class Heartbeat:
    """Record the task's heartbeat every HEARTBEAT_SECONDS in a thread, for as long as the block runs."""

    def __init__(self, task: Task) -> None:
        self.task, self.stop = task, threading.Event()
        self.thread = threading.Thread(target=self._beat, name="l2lab-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self.task.storage.record_heartbeat(self.task.trial_id)
            except Exception as exc:  # the database away for a moment: the next beat tries again
                log.warning("heartbeat not recorded (%s)", str(exc).splitlines()[0][:120])

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def trials_running(studies: list[Any]) -> int:
    from optuna.trial import TrialState

    return sum(len(s.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) for s in studies)

