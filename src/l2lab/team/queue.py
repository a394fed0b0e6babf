"""A sweep's grid as an Optuna study in the team's PostgreSQL: one enqueued trial per point.

Workers on any machine take the next waiting trial (Optuna moves it to RUNNING for one
taker only), keep it alive with a heartbeat, and report val_accuracy back. A trial whose
heartbeat stops (its worker was killed, its machine died) is failed by the next worker
that looks, and Optuna's RetryHeartbeatStaleTrialCallback enqueues a copy of it, with
the point's attributes, for another worker.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from l2lab.errors import L2labError
from l2lab.studies import HEARTBEAT_SECONDS, PRUNER_ATTR, TUNE_ATTR, open_storage, redact  # noqa: F401 (team's names)
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


LANDED_PREFIX = "l2lab.landed."  # a tune study's attribute l2lab.landed.<point>: its worker ended it (Success/Failed)


def tune_study(storage, tune_id: str, space: dict[str, Any], fixed: dict[str, str], trials: int, sampler: str,
               seed: int | None, pruner: dict[str, Any], attrs: dict[str, Any]) -> Any:
    """A team tune's study: no trial enqueued; each worker asks its sampler for the next trial (take). Not
    yet marked as a sweep (SWEEP_ATTR): the caller marks it when its parent run and commit are set."""
    from optuna.distributions import distribution_to_json

    study = new_study(storage, tune_id)
    for key, value in {TUNE_ATTR: tune_id, PRUNER_ATTR: pruner,
                       "l2lab.space": {k: distribution_to_json(d) for k, d in space.items()}, "l2lab.fixed": fixed,
                       "l2lab.trials": trials, "l2lab.sampler": sampler, "l2lab.seed": seed, **attrs}.items():
        study.set_user_attr(key, value)
    return study


def ask(storage, study) -> Task | None:
    """A team tune's next trial, drawn here by the study's sampler (None once --trials are drawn, or the tune
    stopped). The sampler is seeded with the tune's seed plus the new trial's number (the storage gives each
    trial its own): two workers never draw alike, and one worker draws the same trials twice. A draw past
    --trials (two workers asked at once) ends FAIL, marked surplus, and is left out of the tune; retries of
    a point do not count."""
    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState

    from l2lab.studies import make_sampler
    from l2lab.sweeps.grid import trial_name, value_text

    attrs = study.user_attrs
    target = attrs["l2lab.trials"]
    if attrs.get("l2lab.stopped") or len(drawn_points(study)) >= target:
        return None
    seed = attrs["l2lab.seed"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = study.ask()  # its number, unique across workers, before anything is drawn
    # Seeded by that number: two workers counting the trials at once would count alike, and draw alike.
    study.sampler = make_sampler(attrs["l2lab.sampler"], None if seed is None else seed + trial.number)
    study.sampler.before_trial(study, storage.get_trial(trial._trial_id))  # what ask did for the old one
    for key, spec in attrs["l2lab.space"].items():
        suggest(trial, key, json_to_distribution(spec))
    name = trial_name(attrs[TUNE_ATTR], trial.number, trial.params)
    sets = {**attrs["l2lab.fixed"], **{k: value_text(v) for k, v in trial.params.items()}}
    trial.set_user_attr("point", name)
    trial.set_user_attr("sets", sets)
    # Workers that asked at once agree on which draws are past --trials: the latest ones.
    if sorted(drawn_points(study).values()).index(trial.number) >= target:
        trial.set_user_attr("l2lab.surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    storage.record_heartbeat(trial._trial_id)
    return Task(storage, study, trial.number, trial._trial_id, name, sets, None)


def suggest(trial, key: str, distribution) -> Any:
    """Draw key from distribution for trial through Optuna's public suggest_* (what ask(fixed) does)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    return trial.suggest_float(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def drawn_points(study) -> dict[str, int]:
    """A tune's points drawn so far (surplus draws left out) -> the number of its first trial (a retry of a
    point is a later trial of the same point)."""
    first: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        point = t.user_attrs.get("point")
        if point and not t.user_attrs.get("l2lab.surplus"):
            first[point] = min(first.get(point, t.number), t.number)
    return first


def is_tune(study) -> bool:
    return bool(study.user_attrs.get(TUNE_ATTR))


def take(storage, study) -> Task | None:
    """Fail the study's stale trials (their retries get enqueued), then take its next waiting trial; for a
    tune with none waiting, ask its sampler for a new one."""
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
    return ask(storage, study) if is_tune(study) else None


def latest_tries(trials: list[Any]) -> dict[str, Any]:
    """Point name -> its latest trial among trials (a retry supersedes a failure)."""
    latest: dict[str, Any] = {}
    for trial in trials:
        name = trial.user_attrs.get("point")
        if name and (name not in latest or trial.number > latest[name].number):
            latest[name] = trial
    return latest


def point_states(study) -> dict[str, str]:
    """Point name -> Queued/Running/Success/Failed, from its latest trial."""
    return {name: STATES.get(trial.state.name, trial.state.name)
            for name, trial in latest_tries(study.get_trials(deepcopy=False)).items()}


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


def tune_trials(study) -> list[Any]:
    """A team tune's trials, surplus draws left out."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("l2lab.surplus")]

