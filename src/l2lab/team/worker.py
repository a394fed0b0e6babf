"""`l2lab worker`: take a team sweep's points one at a time and run each as a DVC experiment here.

A worker runs in a clone of its own (it checks out each sweep's commit). For every
point: take its trial from the Optuna study (one taker only; a heartbeat while it runs),
check out the sweep's commit, `dvc pull` the data, `dvc exp run --temp -n <point>` with
the point's params (its stages log to the tracking server, nested under the sweep's
parent), `dvc exp push origin <point>` (the experiment to the git remote, its outputs to
the DVC remote), and report val_accuracy to the study. It exits when nothing is left.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from l2lab.commands import RETRAIN, dvc, dvc_command, set_args
from l2lab.errors import L2labError
from l2lab.studies import trial_tags
from l2lab.team import queue
from l2lab.team.clone import check_clone, check_shared_tracking, checkout
from l2lab.tracking.store import connect
from l2lab.tracking.sweeps import end_unstarted, finished_value, never_trained, point_runs, prepare_run

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0
PUSH_TRIES = 3


def run_guarded(argv: list[str], cwd: Path) -> tuple[int, KeyboardInterrupt | None]:
    """Run argv under l2lab.team.guard (it dies with this worker); return its status and the Ctrl-C or
    SIGTERM that stopped it, if one did (the guard then interrupted argv and waited for it)."""
    guard = subprocess.Popen([sys.executable, "-m", "l2lab.team.guard", *argv], cwd=cwd, stdin=subprocess.PIPE)
    try:
        return guard.wait(), None
    except KeyboardInterrupt as stop:  # closing its stdin makes the guard stop argv (if Ctrl-C did not already)
        guard.stdin.close()
        return guard.wait(), stop


def run_point(task: queue.Task, clone: Path) -> bool:
    """Run one taken point end to end; tell the study how it went. True when it succeeded.

    Stopped (Ctrl-C, SIGTERM) while it trains, the point's run ends KILLED and the point
    goes back to the queue for another worker; a point that finished all the same is
    pushed and reported as done. Either way the stop is raised again.
    """
    from optuna.trial import TrialState

    attrs = task.study.user_attrs
    parent_id, sweep_id, commit = attrs["parent_run_id"], attrs[queue.SWEEP_ATTR], attrs["commit"]
    retry = f", retry of trial {task.retry_of}" if task.retry_of is not None else ""
    log.info("%s: taken (trial %d%s), on commit %s", task.point, task.number, retry, commit[:12])
    store = connect(clone)
    value, stop, trained = None, None, False
    try:
        with queue.Heartbeat(task):
            tags = trial_tags(sweep_id, task.number, task.trial_id) if queue.is_tune(task.study) else None
            run_id = prepare_run(store, parent_id, sweep_id, task.point, task.sets, tags)  # a tune's: for its train stage
            checkout(clone, commit)
            pulled = subprocess.run([dvc_command(), "pull", "--allow-missing"], cwd=clone, capture_output=True, text=True)
            if pulled.returncode != 0:
                log.warning("dvc pull: %s", (pulled.stderr.strip() or pulled.stdout.strip()).splitlines()[-1:])
            # An earlier try of this point in this clone (stopped, never pushed) holds its name.
            if subprocess.run([dvc_command(), "exp", "remove", task.point], cwd=clone, capture_output=True).returncode == 0:
                log.info("%s: removed this clone's experiment of an earlier try", task.point)
            command = [dvc_command(), "exp", "run", "--temp", "-n", task.point, *set_args(task.sets)]
            status, stop = run_guarded(command, clone)
            if status == 0 and stop is None and never_trained(store, run_id):
                log.warning("%s: DVC found it equal to the commit's dvc.lock (same params, code and data) and skipped "
                            "its training; running it again with training forced (dvc exp run %s)",
                            task.point, " ".join(RETRAIN))
                status, stop = run_guarded([*command[:3], *RETRAIN, *command[3:]], clone)
            trained = status == 0 and not never_trained(store, run_id)
            if trained:
                push(clone, task.point)
                value = finished_value(store, parent_id, task.point)
            else:
                log.error("%s: %s", task.point, f"dvc exp run exited {status}" if status else
                          "DVC skipped its training again, with training forced")
                end_unstarted(store, run_id)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM outside the training (checkout, pull, push)
        stop = exc
    except BaseException:
        tell(task, state=TrialState.FAIL)
        raise
    if value is None:
        tell(task, state=TrialState.FAIL)
        if stop is None:
            log.error("%s: failed", task.point)
            landed(task, "Failed")
            return False
        if not trained:  # nothing finished: another worker runs the point
            queue.requeue(task)
            runs = point_runs(store, parent_id, task.point)
            log.warning("%s: interrupted; its run is %s and the point is queued again for another worker",
                        task.point, runs[0].info.status if runs else "gone")
        else:  # trained, but stopped while pushing: a second run would be a second FINISHED one
            landed(task, "Failed")
            log.error("%s: interrupted while pushing its experiment: the point ends FAILED (its run FINISHED); "
                      "dvc exp push origin %s from %s shares it", task.point, task.point, clone)
        raise stop
    tell(task, value)
    landed(task, "Success")
    log.info("%s: done, val_accuracy %.4f", task.point, value)
    if stop is not None:
        raise stop  # it finished before the stop reached it
    return True


def tell(task: queue.Task, value: float | None = None, state=None) -> None:
    """Tell the study how the point ended, unless its train stage already did (a tune's trial: it tells its
    value, or that it was pruned, when training ends)."""
    from optuna.trial import TrialState

    if task.storage.get_trial(task.trial_id).state == TrialState.RUNNING:
        task.study.tell(task.number, value, state=state)


def landed(task: queue.Task, status: str) -> None:
    """Mark in a tune's study that this point's work is over (Success or Failed): its trial was told when its
    training ended, before evaluate and the push, so the trial's state alone cannot say so."""
    if queue.is_tune(task.study):
        task.study.set_user_attr(f"{queue.LANDED_PREFIX}{task.point}", status)


def push(clone: Path, name: str) -> None:
    """`dvc exp push origin <name>`: the experiment's commit to the git remote, its outputs to the DVC remote."""
    for attempt in range(1, PUSH_TRIES + 1):
        try:
            dvc("exp", "push", "origin", name, cwd=clone)
            return
        except L2labError:
            if attempt == PUSH_TRIES:
                raise
            log.warning("dvc exp push %s failed; trying again in %d s", name, 5 * attempt)
            time.sleep(5 * attempt)


def work(storage_url: str, sweep_id: str | None, clone: Path) -> int:
    """Take and run points until no sweep has one waiting and none runs elsewhere; return the failures."""
    clone = clone.resolve()
    check_clone(clone)
    check_shared_tracking(clone)
    storage = queue.open_storage(storage_url)
    done = failed = 0
    waiting_logged = False
    log.info("worker on %s: sweeps in %s%s", clone, queue.redact(storage_url),
             f", sweep {sweep_id} only" if sweep_id else "")
    while True:
        studies = queue.sweeps(storage, sweep_id)
        task = next(filter(None, (queue.take(storage, study) for study in studies)), None)
        if task is None:
            running = queue.trials_running(studies)
            if not running:
                log.info("nothing left to run: %d point(s) done here, %d failed", done, failed)
                return failed
            if not waiting_logged:  # a running point may yet come back, if its worker dies
                log.info("no point waiting; %d running elsewhere: waiting in case one comes back", running)
                waiting_logged = True
            time.sleep(POLL_SECONDS)
            continue
        waiting_logged = False
        ok = run_point(task, clone)
        done += ok
        failed += not ok
