"""The one worker: `l2lab worker`, and the workers `l2lab sweep` and `l2lab tune` start on this machine.

It takes a sweep's points one at a time (l2lab.sweeps.trials) and runs each as a named DVC
experiment from a worktree of the sweep's code (l2lab.sweeps.checkout): its MLflow run made
ready, `dvc exp run --temp -n <point> -S ...` under a guard that dies with the worker, the
point trained again with training forced if DVC found it equal to the lock, the experiment
pushed to the team's remotes (team mode), and its trial told how it ended. It exits when no
sweep has a point left and none runs on a live worker elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from l2lab.commands import RETRAIN, dvc, dvc_command, set_args
from l2lab.errors import L2labError
from l2lab.studies import PRUNED_TAG, STORAGE_ENV, is_shared, open_storage, redact, trial_tags
from l2lab.sweeps import trials
from l2lab.sweeps.checkout import Code, worktree
from l2lab.sweeps.grid import POLL_SECONDS, logs_dir
from l2lab.tracking.store import Store, connect
from l2lab.tracking.sweep_runs import end_unlanded, finished_run, never_trained, prepare_run

log = logging.getLogger(__name__)

PUSH_TRIES = 3


def work(storage_url: str, sweep_id: str | None, repo: Path, checkout: Path | None = None) -> int:
    """Take and run points until none is left; return how many failed. checkout: the worktree a local
    sweep made for its workers (and its warm stage server); without it, one per sweep is made here."""
    repo = repo.resolve()
    if is_shared(storage_url):
        from l2lab.team.clone import check_clone, check_shared_tracking

        check_clone(repo)
        check_shared_tracking(repo)
    storage = open_storage(storage_url)
    store = connect(repo)
    done = failed = 0
    waiting_said = False
    log.info("worker %d on %s: sweeps in %s%s", os.getpid(), repo, redact(storage_url),
             f", sweep {sweep_id} only" if sweep_id else "")
    with contextlib.ExitStack() as held:
        places: dict[str, Path] = {}
        while True:
            studies, task = trials.ride_out(lambda: next_task(storage, sweep_id), "the sweeps' storage")
            if task is None:
                if not trials.ride_out(lambda: trials.more_to_come(studies), "the sweeps' storage"):
                    log.info("worker %d: nothing left to run: %d point(s) done here, %d failed", os.getpid(), done,
                             failed)
                    return failed
                if not waiting_said:
                    log.info("worker %d: no point waiting; waiting for more (a running one that comes back, a "
                             "refit)", os.getpid())
                    waiting_said = True
                time.sleep(POLL_SECONDS)
                continue
            waiting_said = False
            name = task.study.study_name
            if checkout is None and name not in places:
                places[name] = held.enter_context(own_place(repo, task.study))
            ok = run_point(task, checkout or places[name], repo, store, storage_url)
            done += ok
            failed += not ok


def next_task(storage: Any, sweep_id: str | None) -> tuple[list[Any], trials.Task | None]:
    """The sweeps in the storage (the one named sweep_id), and the next point taken from one of them, if any."""
    studies = trials.sweeps(storage, sweep_id)
    return studies, next(filter(None, (trials.take(storage, study) for study in studies)), None)


@contextlib.contextmanager
def own_place(repo: Path, study: Any) -> Iterator[Path]:
    """A worktree of the sweep's code for this worker, with a warm stage server of its own: a team's
    worker (its commit fetched from origin and the data pulled from the DVC remote) or one started by hand."""
    from l2lab.warm_server import warm_server

    attrs = study.user_attrs
    team = bool(attrs.get(trials.TEAM_ATTR))
    with worktree(repo, attrs[trials.SWEEP_ATTR], Code(attrs["commit"], attrs["snapshot"]), fetch=team) as place:
        if team:
            pulled = subprocess.run([dvc_command(), "pull", "--allow-missing"], cwd=place, capture_output=True,
                                    text=True)
            if pulled.returncode != 0:
                log.warning("dvc pull: %s", (pulled.stderr.strip() or pulled.stdout.strip()).splitlines()[-1:])
        with warm_server(place):
            yield place


def run_point(task: trials.Task, place: Path, repo: Path, store: Store, storage_url: str) -> bool:
    """Run one taken point end to end; tell its trial how it went. True when it landed.

    Stopped (Ctrl-C, SIGTERM) while it runs, the point's run ends KILLED and, unless its sweep
    was stopped, the point goes back to the queue for another worker; the stop is raised again.
    """
    attrs = task.study.user_attrs
    parent_id, sweep_id = attrs["parent_run_id"], attrs[trials.SWEEP_ATTR]
    retry = f", retry of trial {task.retry_of}" if task.retry_of is not None else ""
    log.info("%s: taken (trial %d%s)", task.point, task.number, retry)
    output = logs_dir(repo, sweep_id) / f"{task.point}.log"
    try:
        with trials.Beat(task):
            tags = trial_tags(sweep_id, task.number) if trials.is_tune(task.study) else None
            run_id = prepare_run(store, parent_id, sweep_id, task.point, task.sets, tags)
            trials.ride_out(lambda: task.storage.set_trial_user_attr(task.trial_id, "mlflow_run_id", run_id),
                            "the sweep's storage")
            why, stop = land(task, place, store, storage_url, run_id, output)
    except BaseException:  # stopped or broken before the experiment ran
        tell(task, None)
        raise
    if why:
        end_unlanded(store, run_id, why, killed=stop is not None)
    keep_output(store, run_id, output)
    run = None if why else finished_run(store, run_id)
    trials.ride_out(lambda: tell(task, run), "the sweep's storage")
    if run is None and stop is not None and not task.study.user_attrs.get(trials.STOPPED_ATTR):
        trials.ride_out(lambda: trials.requeue(task), "the sweep's storage")
        log.warning("%s: interrupted; queued again for another worker", task.point)
    elif run is None and stop is not None:
        log.warning("%s: stopped; its run ended KILLED", task.point)
    elif run is None:
        log.error("%s: failed: %s", task.point, why or "its run has no test metrics")
    else:
        shown = "val_accuracy" if "val_accuracy" in run.data.metrics else "test_accuracy"  # a refit: no validation
        log.info("%s: done, %s %.4f", task.point, shown, run.data.metrics[shown])
    if stop is not None:
        raise stop
    return run is not None


def land(task: trials.Task, place: Path, store: Store, storage_url: str, run_id: str,
         output: Path) -> tuple[str | None, KeyboardInterrupt | None]:
    """Run the point's experiment (again with training forced where DVC found it equal to the lock), push it
    in team mode; (why it did not land, or None; the stop that arrived meanwhile, if one did)."""
    env = stage_env(store, storage_url)
    if task.retry_of is not None:  # an earlier try in this repository may have saved its experiment
        subprocess.run([dvc_command(), "exp", "remove", task.point], cwd=place, capture_output=True)
    status, stop = experiment(task, place, env, output)
    if status == 0 and stop is None and never_trained(store, run_id):
        log.warning("%s: DVC found it equal to the lock (same params, code and data) and skipped its training; "
                    "running it again with training forced (dvc exp run %s)", task.point, " ".join(RETRAIN))
        status, stop = experiment(task, place, env, output, RETRAIN)
    if stop is not None:
        return "stopped", stop
    if status != 0:
        return f"its DVC experiment failed (exit {status}: {cause(output, task.number)}; see {output})", None
    if never_trained(store, run_id):
        return f"DVC skipped its training again, with training forced (see {output})", None
    if task.study.user_attrs.get(trials.TEAM_ATTR):
        try:
            push(place, task.point)
        except KeyboardInterrupt as exc:
            return "stopped while pushing its experiment", exc
        except L2labError as exc:
            return str(exc), None
    return None, None


def cause(output: Path, number: int) -> str:
    """Why trial number's part of output says it failed: the stage's own `error:` line; else a traceback's
    last line (before DVC's `ERROR:`); else DVC's line; else the last line. The failure line carries it,
    so that a worker's log (a team's CI) shows why without the file."""
    text = output.read_text(errors="replace") if output.exists() else ""
    lines = [line.strip() for line in text.split(f"--- trial {number}:")[-1].splitlines()[1:] if line.strip()]
    ours = [line for line in lines if line.startswith("error:") or " error: " in line]
    dvcs = [i for i, line in enumerate(lines) if line.startswith("ERROR:")]
    traced = dvcs and any(line.startswith("Traceback") for line in lines[:dvcs[0]])
    before = [lines[dvcs[0] - 1]] if traced else []
    found = (ours or before or [lines[i] for i in dvcs] or lines or ["it printed nothing"])[-1]
    return found if len(found) <= 300 else found[:297] + "..."


def stage_env(store: Store, storage_url: str) -> dict[str, str]:
    """The environment of a point's experiment: the store and study of this repository, not of the temporary
    copy the stages run in, and this Python's folder first on PATH (the stages' `python`)."""
    folder = str(Path(sys.executable).parent)
    return {**os.environ, "MLFLOW_TRACKING_URI": store.uri, STORAGE_ENV: storage_url,
            "PATH": os.pathsep.join([folder, os.environ.get("PATH", "")])}


def experiment(task: trials.Task, place: Path, env: dict[str, str], output: Path,
               extra: tuple[str, ...] = ()) -> tuple[int, KeyboardInterrupt | None]:
    """`dvc exp run --temp -n <point> -S ...` in place, under l2lab.sweeps.guard (it dies with this worker),
    its output appended to output; its status, and the Ctrl-C or SIGTERM that stopped it, if one did."""
    argv = [dvc_command(), "exp", "run", "--temp", *extra, "-n", task.point, *set_args(task.sets)]
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as out:
        out.write(f"--- trial {task.number}: {' '.join(argv[1:])}\n")
        out.flush()
        guard = subprocess.Popen([sys.executable, "-m", "l2lab.sweeps.guard", *argv], cwd=place, env=env,
                                 stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
        try:
            return guard.wait(), None
        except KeyboardInterrupt as stop:  # closing its stdin makes the guard stop the experiment
            guard.stdin.close()
            return guard.wait(), stop


def tell(task: trials.Task, run: Any) -> None:
    """Tell the trial how its point ended: the run's val_accuracy (validation, never test), pruned, or failed."""
    from optuna.trial import TrialState

    trial = task.storage.get_trial(task.trial_id)
    if trial.state != TrialState.RUNNING:
        return  # the sweep failed it already (it took this worker for gone)
    if run is None:
        task.study.tell(task.number, state=TrialState.FAIL)
    elif PRUNED_TAG in run.data.tags:
        task.study.tell(task.number, state=TrialState.PRUNED)
    else:  # a refit validates on nothing: its pick's mean over folds stands for it
        task.study.tell(task.number, run.data.metrics.get("val_accuracy", trial.user_attrs.get(trials.ESTIMATE)))


def keep_output(store: Store, run_id: str, output: Path) -> None:
    """The experiment's output as an artifact of the point's run (logs/), where every member of a team sees it."""
    try:
        store.write(lambda: store.client.log_artifact(run_id, str(output), "logs"))
    except Exception as exc:  # noqa: BLE001 (the output is on this machine all the same)
        log.warning("could not log %s to the run: %s", output, type(exc).__name__)


def push(place: Path, name: str) -> None:
    """`dvc exp push origin <name>`: the experiment's commit to the git remote, its outputs to the DVC remote."""
    for attempt in range(1, PUSH_TRIES + 1):
        try:
            dvc("exp", "push", "origin", name, cwd=place)
            return
        except L2labError:
            if attempt == PUSH_TRIES:
                raise
            log.warning("dvc exp push %s failed; trying again in %d s", name, 5 * attempt)
            time.sleep(5 * attempt)
