"""`l2lab sweep` and `l2lab tune`: a sweep's points as the trials of an Optuna study, grouped under one MLflow
parent run, run by `l2lab worker`s (--jobs of them on this machine, or a team's on any machine; one worker
code either way, l2lab.sweeps.worker), and followed to their end."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2lab.errors import L2labError
from l2lab.studies import STUDY_TAG, is_shared, redact
from l2lab.sweeps import trials
from l2lab.sweeps.checkout import Code
from l2lab.sweeps.follow import Progress, follow
from l2lab.sweeps.grid import Point, Sweep
from l2lab.tracking.owners import end_stale_runs
from l2lab.tracking.store import connect
from l2lab.tracking.sweep_runs import point_progress, reserve, sweep_parent

log = logging.getLogger(__name__)

STOP_SECONDS = 120.0  # how long stopped workers have to end their points' runs KILLED before they are killed
RESTARTS = 3  # this machine's workers that exit with an error are started again this often, then the sweep stops


@dataclass(frozen=True)
class Tune:
    """A tune's settings: what its workers draw trials from, and how many."""

    space: dict[str, Any]  # params.yaml key -> Optuna distribution
    texts: dict[str, str]  # params.yaml key -> its --space, as given
    trials: int
    sampler: str
    pruner: str
    seed: int | None
    epochs: int


@dataclass(frozen=True)
class Sweeping:
    """What a sweep runs: its id, its grid's points (none for a tune), each point's epochs, its axes and overrides."""

    sweep_id: str
    points: list[Point]
    epochs: dict[str, int]
    axes: dict[str, list[str]]
    fixed: dict[str, str]
    versus_adamw: bool = False
    tune: Tune | None = None
    refit: str | None = None  # a cross-validated grid's rule (min, 1se): its pick trains on the whole pool at the end


def run(sweeping: Sweeping, jobs: int, repo: Path, storage_url: str, storage: Any, study: Any, code: Code,
        place: Path | None) -> Sweep:
    """Run the sweep to its end and return it with each point's Success/Failed. On this machine (place: the
    worktree of its code, l2lab.sweeps.checkout), --jobs workers run it; in team mode (a database), the
    team's workers. Ctrl-C or SIGTERM stops it: no point is taken any more, this machine's workers stop
    theirs (runs KILLED); a team's running points finish on their workers."""
    sweep_id, tune = sweeping.sweep_id, sweeping.tune
    team = is_shared(storage_url)
    store = connect(repo)
    end_stale_runs(store)
    total = tune.trials if tune else len(sweeping.points)  # the refit, if any, comes after these
    settings = None
    if tune:
        settings = {"trials": str(tune.trials), "sampler": tune.sampler, "pruner": tune.pruner, "seed": str(tune.seed),
                    "jobs": "team workers" if team else str(jobs)}
    axes = {k: [v] for k, v in tune.texts.items()} if tune else sweeping.axes
    with sweep_parent(store, sweep_id, axes, sweeping.fixed, sweeping.versus_adamw, settings) as parent:
        for point in sweeping.points:
            reserve(store, parent.run_id, sweep_id, point.name, point.sets)
        attrs: dict[str, Any] = {"commit": code.commit, "snapshot": code.snapshot, "parent_run_id": parent.run_id,
                                 trials.TEAM_ATTR: team, trials.MORE_ATTR: bool(sweeping.refit)}
        if tune:
            store.write(lambda: store.client.set_tag(parent.run_id, STUDY_TAG, sweep_id))
            attrs |= trials.tune_attrs(sweep_id, tune.space, sweeping.fixed, tune.trials, tune.sampler, tune.seed,
                                       {"name": tune.pruner, "epochs": tune.epochs})
        if sweeping.refit:
            store.write(lambda: store.client.set_tag(parent.run_id, REFIT_TAG, f"lambda_{sweeping.refit}"))
        trials.open_to_workers(study, sweep_id, attrs, [(p.name, p.sets) for p in sweeping.points])
        what = f"{total} trials (sampler {tune.sampler}, pruner {tune.pruner}, seed {tune.seed})" if tune else \
            f"{total} points"
        kind = "tune" if tune else "sweep"
        if team:
            log.info("%s %s: %s for team workers (commit %s; study in %s; MLflow parent run %s); on each worker "
                     "machine: l2lab worker --sweep %s", kind, sweep_id, what, code.commit[:12], redact(storage_url),
                     parent.run_id, sweep_id)
        workers = None if team else Workers(worker_count(jobs, total), storage_url, sweep_id, repo, place)
        if workers:
            log.info("%s %s: %s, %d worker(s) on this machine; MLflow parent run %s", kind, sweep_id, what,
                     workers.jobs, parent.run_id)

        def progress(trial: Any) -> Progress:
            run_id = trial.user_attrs.get("mlflow_run_id")
            done, val = point_progress(store, run_id) if run_id else (0, None)
            return Progress(done, tune.epochs if tune else sweeping.epochs.get(trial.user_attrs["point"], 0), val)

        keep = workers.keep if workers else lambda needed: None
        try:
            results = follow(storage, study, total, progress, keep)
            if sweeping.refit:
                refit = refit_point(store, parent.run_id, sweeping)
                if refit is not None:
                    point, tags, epochs, estimate = refit
                    sweeping.epochs[point.name] = epochs
                    reserve(store, parent.run_id, sweep_id, point.name, point.sets, tags)
                    study.enqueue_trial({}, user_attrs={trials.POINT: point.name, trials.SETS: point.sets,
                                                        trials.ESTIMATE: estimate})
                    log.info("%s: %s picks %s; it trains on the whole pool as %s", sweep_id, tags[REFIT_TAG],
                             tags[PICKED_TAG], point.name)
                study.set_user_attr(trials.MORE_ATTR, False)
                if refit is not None:
                    results = follow(storage, study, total + 1, progress, keep, results)
        except BaseException:
            stop(storage, study, workers)
            raise
        if workers:
            workers.finish()
        parent.failed = any(status != "Success" for status in results.values())
    return Sweep(sweep_id, parent.run_id, results)


REFIT_TAG, PICKED_TAG = "l2lab.refit", "l2lab.refit.picked"  # a refit's run: its rule (min, 1se), and what it picked


def refit_point(store: Any, parent_id: str, sweeping: Sweeping) -> tuple[Point, dict[str, str], int, float] | None:
    """The refit of a cross-validated grid (its rule's pick, data.fold all: trained on the whole pool), its run's
    tags, its epochs and its pick's mean val_accuracy over folds; None (said in one line) when no point finished
    all its folds. The fold runs' validation metrics alone decide: no test accuracy is read."""
    from l2lab.sweeps.cv import FOLD, picks, summary
    from l2lab.sweeps.report import SEED, point_keys, sweep_table, versus_columns
    from l2lab.tracking.sweep_runs import SET_PREFIX, axis_value, sweep_runs

    runs = sweep_runs(store, parent_id)
    table = sweep_table(runs, list(sweeping.axes))
    recorded = {key: [axis_value(v) for v in values] for key, values in sweeping.axes.items()}
    table, keys = ((versus_columns(table), ["penalty", "l2_equivalent"]) if sweeping.versus_adamw
                   else (table, point_keys(recorded)))
    chosen = picks(summary(table, keys, len(sweeping.axes[FOLD])), keys[-1])
    if chosen is None:
        log.error("%s: no point finished all its folds: no pick, no refit", sweeping.sweep_id)
        return None
    row = chosen.row(sweeping.refit)
    mine = table[(table[keys] == row[keys]).all(axis=1)]
    first = mine.sort_values([k for k in (SEED, FOLD) if k in mine]).iloc[0]  # its first seed's fold 0
    given = next(r["tags"] for r in runs if r["run_id"] == first["mlflow_run_id"])
    sets = {k.removeprefix(SET_PREFIX): v for k, v in given.items() if k.startswith(SET_PREFIX)} | {FOLD: "all"}
    name = "refit_" + first["experiment"].replace(f"_fold={first[FOLD]}_", "_")
    picked = ", ".join(f"{k} = {row[k]:g}" if isinstance(row[k], float) else f"{k} = {row[k]}" for k in keys)
    tags = {REFIT_TAG: f"lambda_{sweeping.refit}", PICKED_TAG: picked}
    return Point(name, sets), tags, int(first["epochs"]), float(row["val_accuracy_mean"])


def stop(storage: Any, study: Any, workers: "Workers | None") -> None:
    """A stopped sweep: nothing more taken or drawn, waiting points cancelled, this machine's workers stopped."""
    study.set_user_attr(trials.STOPPED_ATTR, True)
    cancelled = trials.cancel_waiting(storage, study)
    if workers:
        workers.stop()
        cancelled += trials.cancel_waiting(storage, study)  # a point a worker queued again as it stopped
    if cancelled:
        log.info("cancelled (no worker had taken them): %s", ", ".join(cancelled))


def worker_count(requested: int, points: int, cores: int | None = None) -> int:
    """Workers to start: never more than the points, nor than the machine's cores.

    Each worker's point holds TensorFlow and a copy of the data (~1 GB on CIFAR-10); more of
    them than cores only make them wait on each other.
    """
    cores = cores or os.cpu_count() or 1
    jobs = max(1, min(requested, points, cores))
    if jobs != requested:
        log.warning("--jobs %d: starting %d worker(s) (%d point(s), %d core(s))", requested, jobs, points, cores)
    return jobs


class Workers:
    """This machine's `l2lab worker` processes for one sweep: kept at up to jobs while points wait, started again
    (RESTARTS times in all) when one exits with an error; in this process's group, so Ctrl-C reaches them."""

    def __init__(self, jobs: int, storage_url: str, sweep_id: str, repo: Path, place: Path | None) -> None:
        self.jobs, self.procs, self.restarts = jobs, [], 0
        self.argv = [sys.executable, "-m", "l2lab.cli", "worker", "--storage", storage_url, "--sweep", sweep_id,
                     *(["--checkout", str(place)] if place else [])]
        self.repo = repo

    def keep(self, needed: int) -> None:
        alive = []
        for proc in self.procs:
            status = proc.poll()
            if status is None:
                alive.append(proc)
            elif status != 0:
                self.restarts += 1
                log.warning("worker %d exited with status %d", proc.pid, status)
        self.procs = alive
        if self.restarts > RESTARTS:
            raise L2labError(f"this sweep's workers exited with an error {self.restarts} times; see their lines above")
        for _ in range(min(self.jobs, needed) - len(alive)):
            self.procs.append(subprocess.Popen(self.argv, cwd=self.repo, stdin=subprocess.DEVNULL))

    def finish(self) -> None:
        """Wait for the workers, which leave once nothing is left (a few seconds at most)."""
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()

    def stop(self) -> None:
        """SIGTERM to each worker (its point's run ends KILLED), SIGKILL after STOP_SECONDS (its guard then
        stops the point)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                log.warning("worker %d did not stop within %.0f s: killed", proc.pid, STOP_SECONDS)
