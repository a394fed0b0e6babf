"""`l2lab tune`: an Optuna search whose every trial is a queued DVC experiment and an MLflow run.

The sampler runs here: --jobs trials run at once and one more waits in the queue (a DVC worker leaves
once it has found no work for 10 s; workers that left with trials still queued are started again,
follow.wait). A trial is queued as a named DVC experiment with its values as -S overrides, its MLflow
run reserved under the tune's parent run first; its train stage reports val_accuracy each epoch to
the trial and stops when the pruner says so, and tells the trial its final val_accuracy (validation,
never test) or that it was pruned (l2lab.studies.trial_link). When the experiment is done, a trial
still untold failed; the next one is asked for.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2lab.errors import L2labError
from l2lab.params import ParamsError, load_params, parse_params
from l2lab.studies import (PRUNED_TAG, PRUNER_ATTR, PRUNERS, SAMPLERS, STORAGE_ENV, STUDY_TAG, TUNE_ATTR,
                           local_journal, make_pruner, make_sampler, open_storage, redact, trial_tags)
from l2lab.sweeps.dvcqueue import (fresh_workers, live_workers, queue_points, queue_state, restart_workers,
                                   start_workers, stop_points, worker_count, workers_starting)
from l2lab.sweeps.follow import AGAIN, Progress, wait
from l2lab.sweeps.grid import Point, Sweep, new_sweep_id, override, trial_name, value_text
from l2lab.sweeps.local import Settler
from l2lab.tracking.owners import end_stale_runs
from l2lab.tracking.store import connect
from l2lab.tracking.sweeps import point_progress, points_live, reserve, sweep_parent

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Dimension:
    """One --space: a params.yaml key and what Optuna draws for it."""

    key: str
    kind: str  # "log" (log-uniform), "uniform", or "choice"
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()
    integer: bool = False  # the key is an integer param: Optuna draws integers
    text: str = ""  # as the user gave it

    def distribution(self) -> Any:
        import optuna.distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution(self.choices)
        if self.integer:
            return d.IntDistribution(int(self.low), int(self.high), log=self.kind == "log")
        return d.FloatDistribution(float(self.low), float(self.high), log=self.kind == "log")


def _yaml(text: str) -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(text)


def parse_space(items: list[str], params_path: Path, fixed: dict[str, str]) -> dict[str, Dimension]:
    """['train.l2=log:1e-6:1e-1', 'train.learning_rate=1e-4:1e-2', 'train.optimizer=adam,sgd'] -> dimensions.

    log:LO:HI a log-uniform draw (LO > 0), LO:HI a uniform one, a,b,c a choice; integer params
    (train.epochs, train.batch_size, ...) draw integers. Both ends and every choice go through the params
    schema with the fixed overrides, so a bad key or value is one line before any trial starts.
    """
    if not items:
        raise L2labError("give at least one --space KEY=SPEC, e.g. --space train.l2=log:1e-6:1e-1")
    base = load_params(params_path).model_dump()
    space: dict[str, Dimension] = {}
    for item in items:
        key, sep, spec = (part.strip() for part in item.partition("="))
        option = f"--space {item}"
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*\.[A-Za-z_]\w*", key) or not spec:
            raise L2labError(f"{option}: expected section.key=log:LO:HI, LO:HI or a,b,c, "
                             "e.g. --space train.l2=log:1e-6:1e-1")
        if key in space or key in fixed:
            raise L2labError(f"{option}: {key} is {'already searched' if key in space else 'also set with -S'}; "
                             "give it once")
        section, name = key.split(".")
        current = base.get(section, {}).get(name) if isinstance(base.get(section), dict) else None
        integer = isinstance(current, int) and not isinstance(current, bool)
        log_scale = spec.startswith("log:")
        bounds = spec.removeprefix("log:").split(":")
        if log_scale or len(bounds) == 2:
            if len(bounds) != 2:
                raise L2labError(f"{option}: a range is LO:HI or log:LO:HI")
            try:
                low, high = (float(b) for b in bounds)
            except ValueError:
                raise L2labError(f"{option}: {bounds[0]!r} and {bounds[1]!r} must be numbers") from None
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise L2labError(f"{option}: LO must be below HI, both finite")
            if log_scale and low <= 0:
                raise L2labError(f"{option}: a log range needs LO > 0 (0 lies at minus infinity on a log scale; "
                                 "search from a small value, e.g. log:1e-7:1e-1)")
            if integer:
                if low != int(low) or high != int(high):
                    raise L2labError(f"{option}: {key} is an integer: give integer ends")
                low, high = int(low), int(high)
            values = [low, high]
            dim = Dimension(key, "log" if log_scale else "uniform", low, high, integer=integer, text=spec)
        else:
            values = [_yaml(v.strip()) for v in spec.split(",") if v.strip()]
            if len(values) < 2 or len({repr(v) for v in values}) != len(values):
                raise L2labError(f"{option}: a choice needs two or more different values")
            dim = Dimension(key, "choice", choices=tuple(values), text=spec)
        for value in values:
            try:
                parse_params(override(base, {**fixed, key: repr(value) if isinstance(value, float) else str(value)}),
                             f"params.yaml with {option}")
            except ParamsError as exc:
                raise L2labError(str(exc)) from None
        space[key] = dim
    return space


def check_choices(trials: int, sampler: str, pruner: str) -> None:
    if sampler not in SAMPLERS or pruner not in PRUNERS:
        raise L2labError(f"--sampler is one of {', '.join(SAMPLERS)}; --pruner one of {', '.join(PRUNERS)}")
    if trials < 1:
        raise L2labError(f"--trials must be at least 1, got {trials}")


def tune_epochs(cwd: Path, fixed: dict[str, str]) -> int:
    """The trials' train.epochs (params.yaml with the -S overrides): the pruners' longest training."""
    return parse_params(override(load_params(cwd / "params.yaml").model_dump(), fixed), "params.yaml").train.epochs


def run_tune(space: dict[str, Dimension], fixed: dict[str, str], trials: int, jobs: int, cwd: Path,
             sampler: str = "tpe", pruner: str = "hyperband", seed: int | None = None,
             storage: str | None = None) -> Sweep:
    """Run trials trials on this machine's DVC queue, jobs at once; return the tune as a Sweep (its id, parent
    run, results). storage: the study's journal file (default optuna.journal beside mlflow.db)."""
    import optuna
    from optuna.exceptions import DuplicatedStudyError
    from optuna.trial import TrialState

    check_choices(trials, sampler, pruner)
    epochs = tune_epochs(cwd, fixed)
    url = storage or str(local_journal())
    tune_id = new_sweep_id("tune")
    studies = open_storage(url)
    taken = L2labError(f"a study named {tune_id} already exists in {redact(url)}; run again")
    if tune_id in optuna.get_all_study_names(studies):  # said before MLflow is touched: no parent run left behind
        raise taken
    store = connect(cwd)
    end_stale_runs(store)
    try:
        study = optuna.create_study(study_name=tune_id, storage=studies, sampler=make_sampler(sampler, seed),
                                    pruner=make_pruner(pruner, epochs), direction="maximize")
    except DuplicatedStudyError:  # made elsewhere since the check above
        raise taken from None
    study.set_user_attr(PRUNER_ATTR, {"name": pruner, "epochs": epochs})
    study.set_user_attr(TUNE_ATTR, tune_id)
    distributions = {key: dim.distribution() for key, dim in space.items()}
    jobs = worker_count(jobs, trials)
    os.environ[STORAGE_ENV] = url  # the queue workers started below, and so the train stages, find the study here
    axes = {key: [dim.text] for key, dim in space.items()}
    settings = {"trials": str(trials), "sampler": sampler, "pruner": pruner, "seed": str(seed), "jobs": str(jobs)}
    from l2lab.warm_server import warm_server

    fresh_workers(cwd)  # none left idle by an earlier sweep: they would not see this tune's study
    with warm_server(cwd), sweep_parent(store, tune_id, axes, fixed, tune=settings) as parent:
        store.write(lambda: store.client.set_tag(parent.run_id, STUDY_TAG, tune_id))
        points: list[Point] = []
        runs: dict[str, str] = {}
        asked: dict[str, Any] = {}  # experiment name -> its Optuna trial
        settle = Settler(store, runs, {}, cwd)

        def launch() -> None:
            trial = study.ask(distributions)
            name = trial_name(tune_id, trial.number, trial.params)
            sets = {**fixed, **{key: value_text(v) for key, v in trial.params.items()}}
            run_id = reserve(store, parent.run_id, tune_id, name, sets, trial_tags(tune_id, trial.number, trial._trial_id))
            trial.set_user_attr("dvc_experiment", name)
            trial.set_user_attr("mlflow_run_id", run_id)
            point = Point(name, sets)
            settle.points[name] = point
            runs[name], asked[name] = run_id, trial
            queue_points([point], cwd)
            points.append(point)

        def done(name: str, status: str) -> str | None:
            final = settle(name, status)
            if final == AGAIN:
                return final
            run, trial = store.client.get_run(runs[name]), asked[name]
            state = studies.get_trial(trial._trial_id).state  # its train stage told it, if training ended
            if state == TrialState.RUNNING:  # it failed before or in training
                study.tell(trial, state=TrialState.FAIL)
            elif state == TrialState.PRUNED:
                log.info("trial %d (%s): pruned at epoch %s", trial.number, name, run.data.tags.get(PRUNED_TAG))
            else:
                log.info("trial %d (%s): val_accuracy %.4f%s", trial.number, name, studies.get_trial(
                    trial._trial_id).value, "" if final == "Success" else f" (its experiment then ended {final})")
            if len(points) < trials:
                launch()
                live = live_workers(cwd)
                if live < jobs:  # a worker leaves after 10 s with an empty queue
                    start_workers(jobs, cwd)
            return final

        def progress(name: str) -> Progress:
            done_epochs, val = point_progress(store, runs[name])
            return Progress(done_epochs, epochs, val)

        with workers_starting(jobs, cwd):  # they start while the first trials are asked and queued
            for _ in range(min(jobs + 1, trials)):
                launch()
        log.info("tune %s: %d trials, %d at once (sampler %s, pruner %s, seed %s); study in %s; MLflow parent run %s",
                 tune_id, trials, jobs, sampler, pruner, seed, redact(url), parent.run_id)
        try:
            results = wait(points, cwd, done, queue_state, progress=progress,
                           settled=lambda: not points_live(store, parent.run_id), total=trials,
                           restart=lambda: restart_workers(jobs, cwd))
        except BaseException:  # Ctrl-C, SIGTERM or a dead queue: stop what this tune started
            stop_points([p.name for p in points], cwd)
            for trial in asked.values():
                if studies.get_trial(trial._trial_id).state == TrialState.RUNNING:
                    study.tell(trial, state=TrialState.FAIL)
            raise
        parent.failed = any(status != "Success" for status in results.values())
    return Sweep(tune_id, parent.run_id, results)
