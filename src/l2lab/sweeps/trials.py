"""A sweep's points as the trials of one Optuna study: the one queue every worker takes from, here or elsewhere.

A grid's points are enqueued trials; a tune's are drawn by its sampler when a worker asks. A
worker takes a trial (Optuna moves a waiting trial to RUNNING for one taker only), beats on it
while its point runs, and tells the trial how the point ended once its experiment is saved. A
trial whose worker is gone (its process ended on this machine, or its beat stopped for
GRACE_SECONDS) is failed by the sweep that follows the study, and its point enqueued again, at
most MAX_RETRIES times. The study is a journal file beside mlflow.db on one machine, the team's
database across machines (l2lab.studies.open_storage).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from l2lab.errors import L2labError, causes, first_line
from l2lab.studies import PRUNER_ATTR, TUNE_ATTR, make_sampler

log = logging.getLogger(__name__)

SWEEP_ATTR = "l2lab.sweep_id"  # study attribute, set last: workers take up a study once it has it
STOPPED_ATTR = "l2lab.stopped"  # study attribute: the sweep was stopped; no point is taken or drawn any more
TEAM_ATTR = "l2lab.team"  # study attribute: workers on any machine, which fetch its commit and push its experiments
MORE_ATTR = "l2lab.more"  # study attribute: the sweep will queue more points (a refit, once its folds are done)
POINT, SETS, RETRY_OF, BEAT = "point", "sets", "l2lab.retry_of", "l2lab.beat"  # trial attributes
ESTIMATE = "l2lab.estimate"  # a refit's trial: its value, its pick's mean val_accuracy over folds (no validation)
SURPLUS = "l2lab.surplus"  # a tune's draw past --trials (two workers asked at once): failed, left out
STATES = {"COMPLETE": "Success", "PRUNED": "Success", "FAIL": "Failed"}  # how a point ended, by its latest trial

BEAT_SECONDS = 5.0  # a worker records its beat on its trial this often (seconds)
GRACE_SECONDS = 60.0  # a trial of another machine whose beat is older than this (seconds) lost its worker
MAX_RETRIES = 3  # a point whose workers keep dying runs this many more times, then counts as failed
OUTAGE_SECONDS = 600.0  # how long a sweep or worker waits for its storage to come back, then gives up
OUTAGE_WAIT = 5.0  # seconds between tries while it is unreachable
OUTAGES = ("OperationalError", "StorageInternalError", "ConnectionError", "MaxRetryError", "InterfaceError")
T = TypeVar("T")


@dataclass(frozen=True)
class Task:
    """A trial a worker took: its study, its number and storage id, the point it runs."""

    storage: Any
    study: Any
    number: int
    trial_id: int
    point: str
    sets: dict[str, str]
    retry_of: int | None = None


def trial_id(storage: Any, study: Any, number: int) -> int:
    """A trial's id in its storage, through the storage's public interface."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def new_study(storage: Any, sweep_id: str) -> Any:
    """The sweep's study, named after it, maximizing val_accuracy; one line if the name is taken."""
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    try:
        return optuna.create_study(storage=storage, study_name=sweep_id, direction="maximize")
    except DuplicatedStudyError:
        raise L2labError(f"the sweep storage already holds a study named {sweep_id!r}: start the sweep again "
                         "(a new id is drawn each time)") from None


def open_to_workers(study: Any, sweep_id: str, attrs: dict[str, Any], points: list[tuple[str, dict[str, str]]]) -> None:
    """Set the study's attributes, enqueue one waiting trial per (name, sets), then mark it as a sweep's:
    from then on workers take its points."""
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for name, sets in points:
        study.enqueue_trial({}, user_attrs={POINT: name, SETS: sets})
    study.set_user_attr(SWEEP_ATTR, sweep_id)


def drop_unopened(storage: Any, study: Any) -> None:
    """Delete a study that never opened to workers (its sweep failed to start)."""
    import optuna

    if not optuna.load_study(study_name=study.study_name, storage=storage).user_attrs.get(SWEEP_ATTR):
        optuna.delete_study(study_name=study.study_name, storage=storage)


def sweeps(storage: Any, sweep_id: str | None = None) -> list[Any]:
    """l2lab's studies in the storage (the one named sweep_id), oldest first."""
    import optuna

    names = optuna.get_all_study_names(storage)
    if sweep_id is not None:
        if sweep_id not in names:
            raise L2labError(f"no sweep {sweep_id!r} in the sweep storage")
        names = [sweep_id]
    studies = [optuna.load_study(study_name=name, storage=storage) for name in names]
    return [s for s in studies if s.user_attrs.get(SWEEP_ATTR)]


def is_tune(study: Any) -> bool:
    return bool(study.user_attrs.get(TUNE_ATTR))


def take(storage: Any, study: Any) -> Task | None:
    """The study's next waiting trial, now RUNNING and this worker's; for a tune with none waiting, a new
    draw of its sampler (ask). None when there is nothing to take, or the sweep was stopped."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    if study.user_attrs.get(STOPPED_ATTR):
        return None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        tid = trial_id(storage, study, trial.number)
        try:
            if not storage.set_trial_state_values(tid, state=TrialState.RUNNING):
                continue  # another worker took it first
        except UpdateFinishedTrialError:
            continue
        task = Task(storage, study, trial.number, tid, trial.user_attrs[POINT], dict(trial.user_attrs[SETS]),
                    trial.user_attrs.get(RETRY_OF))
        claim(task)
        return task
    return ask(storage, study) if is_tune(study) else None


def claim(task: Task) -> None:
    """Name this process as the trial's worker, and beat once."""
    from l2lab.tracking.owners import owner_tags

    for key, value in {**owner_tags(), BEAT: time.time()}.items():
        task.storage.set_trial_user_attr(task.trial_id, key, value)


def ask(storage: Any, study: Any) -> Task | None:
    """A tune's next trial, drawn here by the study's sampler (None once --trials are drawn).

    The sampler is seeded with the tune's seed plus the new trial's number (the storage gives each
    trial its own): two workers never draw alike, and a tune with one worker draws the same trials
    again. A draw past --trials (two workers asked at once) ends FAIL, marked surplus.
    """
    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState

    from l2lab.sweeps.grid import trial_name, value_text

    attrs = study.user_attrs
    target = attrs["l2lab.trials"]
    if len(latest_tries(study.get_trials(deepcopy=False))) >= target:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = study.ask()  # its number, unique across workers, before anything is drawn
    tid = trial_id(storage, study, trial.number)
    made = storage.get_trial(tid)
    if POINT in made.user_attrs:  # ask took a retry queued since take() looked: run that
        task = Task(storage, study, trial.number, tid, made.user_attrs[POINT], dict(made.user_attrs[SETS]),
                    made.user_attrs.get(RETRY_OF))
        claim(task)
        return task
    seed = attrs["l2lab.seed"]
    study.sampler = make_sampler(attrs["l2lab.sampler"], None if seed is None else seed + trial.number)
    study.sampler.before_trial(study, made)  # what ask did for the sampler it had
    for key, spec in attrs["l2lab.space"].items():
        suggest(trial, key, json_to_distribution(spec))
    name = trial_name(attrs[TUNE_ATTR], trial.number, trial.params)
    sets = {**attrs["l2lab.fixed"], **{k: value_text(v) for k, v in trial.params.items()}}
    trial.set_user_attr(POINT, name)
    trial.set_user_attr(SETS, sets)
    # Workers that asked at once agree on which draws are past --trials: the later ones. Every trial made before
    # this one (a smaller number) is visible by now, a draw or a retry (enqueued with RETRY_OF set).
    draws = sorted(t.number for t in study.get_trials(deepcopy=False) if RETRY_OF not in t.user_attrs)
    if draws.index(trial.number) >= target:
        trial.set_user_attr(SURPLUS, True)
        study.tell(trial.number, state=TrialState.FAIL)
        return None
    task = Task(storage, study, trial.number, tid, name, sets)
    claim(task)
    return task


def suggest(trial: Any, key: str, distribution: Any) -> Any:
    """Draw key from distribution for trial through Optuna's public suggest_*."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    return trial.suggest_float(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def tune_attrs(tune_id: str, space: dict[str, Any], fixed: dict[str, str], trials: int, sampler: str,
               seed: int | None, pruner: dict[str, Any]) -> dict[str, Any]:
    """What a tune's study holds for its workers to draw trials and its train stages to prune them."""
    from optuna.distributions import distribution_to_json

    return {TUNE_ATTR: tune_id, PRUNER_ATTR: pruner,
            "l2lab.space": {k: distribution_to_json(d) for k, d in space.items()}, "l2lab.fixed": fixed,
            "l2lab.trials": trials, "l2lab.sampler": sampler, "l2lab.seed": seed}


def latest_tries(trials: list[Any]) -> dict[str, Any]:
    """Point name -> its latest trial (a retry supersedes the try it retries)."""
    latest: dict[str, Any] = {}
    for trial in trials:
        name = trial.user_attrs.get(POINT)
        if name and not trial.user_attrs.get(SURPLUS) and (name not in latest or trial.number > latest[name].number):
            latest[name] = trial
    return latest


def worker_gone(trial: Any, now: float | None = None) -> bool:
    """Whether a RUNNING trial's worker is gone: its process on this machine ended, or (elsewhere) its beat
    is older than GRACE_SECONDS. Clocks of a team's machines are taken to agree within seconds (NTP)."""
    from l2lab.tracking.owners import process_gone

    attrs = trial.user_attrs
    if BEAT not in attrs:
        return False  # being taken right now: claim() follows
    return process_gone(attrs) or (now or time.time()) - float(attrs[BEAT]) > GRACE_SECONDS


def reap(storage: Any, study: Any) -> list[str]:
    """Fail the study's trials whose worker is gone and enqueue their points again (MAX_RETRIES times at
    most); return the points. Only the sweep that follows the study calls it: one reaper, one retry."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    lost = []
    for trial in trials:
        if trial.state != TrialState.RUNNING or not worker_gone(trial):
            continue
        try:
            storage.set_trial_state_values(trial_id(storage, study, trial.number), state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue
        name = trial.user_attrs[POINT]
        tries = sum(t.user_attrs.get(POINT) == name for t in trials)
        if tries <= MAX_RETRIES and not study.user_attrs.get(STOPPED_ATTR):
            study.enqueue_trial({}, user_attrs={POINT: name, SETS: trial.user_attrs[SETS], RETRY_OF: trial.number})
            log.warning("%s: its worker is gone (trial %d); queued again (try %d of %d)", name, trial.number,
                        tries + 1, MAX_RETRIES + 1)
        else:
            log.error("%s: its worker is gone (trial %d), %d tries in all: it counts as failed", name, trial.number,
                      tries)
        lost.append(name)
    return lost


def requeue(task: Task) -> None:
    """Enqueue a copy of a task's point (its worker was stopped before it ended): another worker takes it."""
    task.study.enqueue_trial({}, user_attrs={POINT: task.point, SETS: task.sets, RETRY_OF: task.number})


def cancel_waiting(storage: Any, study: Any) -> list[str]:
    """Fail the study's waiting trials so that no worker takes them; return their points."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    cancelled = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial_id(storage, study, trial.number), state=TrialState.FAIL):
                cancelled.append(trial.user_attrs.get(POINT, str(trial.number)))
        except UpdateFinishedTrialError:
            pass
    return cancelled


def more_to_come(studies: list[Any]) -> bool:
    """Whether a worker with nothing to take should wait: a point runs on a live worker (it may yet come back, if
    that worker dies), or a sweep will queue more (a refit)."""
    from optuna.trial import TrialState

    return any(s.user_attrs.get(MORE_ATTR) and not s.user_attrs.get(STOPPED_ATTR) for s in studies) or any(
        not worker_gone(t) for s in studies for t in s.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


class Beat:
    """Record the task's beat every BEAT_SECONDS in a thread, for as long as the block runs."""

    def __init__(self, task: Task) -> None:
        self.task, self.stop = task, threading.Event()
        self.thread = threading.Thread(target=self._beat, name="l2lab-beat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(BEAT_SECONDS):
            try:
                self.task.storage.set_trial_user_attr(self.task.trial_id, BEAT, time.time())
            except Exception as exc:  # the storage is briefly unreachable: the next beat may pass
                log.warning("%s: could not record its beat (%s)", self.task.point, type(exc).__name__)

    def __enter__(self) -> "Beat":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def outage(exc: BaseException) -> bool:
    """Whether an error says a database or server is unreachable (a restart, a network fault), not a bug."""
    return any(type(error).__name__ in OUTAGES for error in causes(exc))


def ride_out(call: Callable[[], T], what: str, hint: str = "") -> T:
    """call(), tried again every OUTAGE_WAIT seconds while what (a storage, a tracking server) cannot be reached,
    said once, for up to OUTAGE_SECONDS, then one line; any other error is raised at once."""
    down_since = None
    while True:
        try:
            result = call()
        except Exception as exc:  # an outage is waited out; anything else is raised
            if not outage(exc):
                raise
            # The deepest of the chain's outage errors: the database driver's own words, not a wrapper's.
            why = first_line([e for e in causes(exc) if type(e).__name__ in OUTAGES][-1], 160)
            if down_since is None:
                down_since = time.monotonic()
                log.warning("%s is unreachable (%s): trying again every %.0f s, for up to %.0f s", what, why,
                            OUTAGE_WAIT, OUTAGE_SECONDS)
            elif time.monotonic() - down_since > OUTAGE_SECONDS:
                raise L2labError(f"{what} has been unreachable for {OUTAGE_SECONDS:.0f} s ({why})"
                                 + (f"; {hint}" if hint else "")) from None
            time.sleep(OUTAGE_WAIT)
            continue
        if down_since is not None:
            log.info("%s is back after %.0f s", what, time.monotonic() - down_since)
        return result
