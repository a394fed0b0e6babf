"""`l2lab sweep --storage` / `l2lab tune --storage`: a grid enqueued for `l2lab worker`s on any machine, or a
tune whose workers each ask its sampler for their next trial; followed to its end."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from l2lab.sweeps.follow import PROGRESS_SECONDS, Progress, wait
from l2lab.sweeps.grid import Sweep, new_sweep_id, plan
from l2lab.team import queue as team_queue
from l2lab.team.clone import check_shared_tracking, pushed_commit
from l2lab.tracking.owners import end_stale_runs
from l2lab.tracking.store import connect
from l2lab.studies import STUDY_TAG
from l2lab.tracking.sweeps import end_unstarted, point_progress, point_runs, reserve, sweep_parent

log = logging.getLogger(__name__)


def run_team_sweep(axes: dict[str, list[str]], fixed: dict[str, str], cwd: Path, storage_url: str,
                   versus_adamw: bool = False) -> Sweep:
    """Enqueue the grid in the team's Optuna storage for `l2lab worker`s, and follow it to the end.

    The parent run and every point's reserved run are created on the tracking server
    first, as for a local sweep. Ctrl-C or SIGTERM cancels the points no worker has taken
    (their runs end KILLED); points already running finish on their workers.
    """
    sweep_id, points, epochs = plan(axes, fixed, cwd, versus_adamw)
    check_shared_tracking(cwd)
    commit = pushed_commit(cwd)
    store = connect(cwd)
    storage = team_queue.open_storage(storage_url)
    study = team_queue.new_study(storage, sweep_id)  # before the parent run: a clash leaves nothing behind
    end_stale_runs(store)
    with sweep_parent(store, sweep_id, axes, fixed, versus_adamw) as parent:
        runs = {point.name: reserve(store, parent.run_id, sweep_id, point.name, point.sets) for point in points}
        team_queue.enqueue(study, sweep_id, [(p.name, p.sets) for p in points],
                           {"commit": commit, "parent_run_id": parent.run_id})
        log.info("sweep %s: %d points enqueued for team workers (commit %s; MLflow parent run %s); on each "
                 "worker machine: l2lab worker --sweep %s", sweep_id, len(points), commit[:12], parent.run_id, sweep_id)

        def done(name: str, status: str) -> None:
            end_unstarted(store, runs[name])
            log.info("%s: %s", name, status)

        def progress(name: str) -> Progress:  # of the point's latest try (a retry has a run of its own)
            tries = point_runs(store, parent.run_id, name)
            done_epochs, val = point_progress(store, tries[0].info.run_id if tries else runs[name])
            return Progress(done_epochs, epochs[name], val)

        try:  # workers come and go: a team sweep never counts as stalled
            results = wait(points, cwd, done, read_state=lambda _: (team_queue.point_states(study), 1), progress=progress)
        except BaseException:
            cancelled = team_queue.cancel_waiting(storage, study)
            if cancelled:
                log.info("cancelled (no worker had taken them): %s", ", ".join(cancelled))
            raise
        parent.failed = any(status != "Success" for status in results.values())
    return Sweep(sweep_id, parent.run_id, results)


POLL_SECONDS = 5.0


def run_team_tune(space: dict[str, Any], fixed: dict[str, str], trials: int, epochs: int, cwd: Path, storage_url: str,
                  sampler: str, pruner: str, seed: int | None, texts: dict[str, str]) -> Sweep:
    """A tune for `l2lab worker`s: its study holds the space, the sampler's name and seed and the pruner; each
    worker asks for its next trial (team.queue.ask) and runs it as a point, the train stage reporting to it.
    Followed here until --trials have ended; Ctrl-C or SIGTERM stops further draws (running trials finish).

    space: params.yaml key -> Optuna distribution; texts: the --space texts, for the parent run."""
    from optuna.trial import TrialState

    tune_id = new_sweep_id("tune")
    check_shared_tracking(cwd)
    commit = pushed_commit(cwd)
    store = connect(cwd)
    storage = team_queue.open_storage(storage_url)
    end_stale_runs(store)
    settings = {"trials": str(trials), "sampler": sampler, "pruner": pruner, "seed": str(seed), "jobs": "team workers"}
    study = team_queue.tune_study(storage, tune_id, space, fixed, trials, sampler, seed, {"name": pruner, "epochs": epochs},
                                  {})  # before the parent run: a clash leaves nothing behind
    with sweep_parent(store, tune_id, {k: [v] for k, v in texts.items()}, fixed, tune=settings) as parent:
        store.write(lambda: store.client.set_tag(parent.run_id, STUDY_TAG, tune_id))
        study.set_user_attr("commit", commit)
        study.set_user_attr("parent_run_id", parent.run_id)
        study.set_user_attr(team_queue.SWEEP_ATTR, tune_id)  # last: workers take up a study once it is marked
        log.info("tune %s: %d trials for team workers (commit %s; MLflow parent run %s); on each worker machine: "
                 "l2lab worker --sweep %s", tune_id, trials, commit[:12], parent.run_id, tune_id)
        last, said = "", 0.0
        try:
            while True:
                latest = team_queue.latest_tries(team_queue.tune_trials(study))
                attrs = study.user_attrs  # a point is over once its worker marked it, or its last try failed
                finished = [t for name, t in latest.items()
                            if f"{team_queue.LANDED_PREFIX}{name}" in attrs or t.state == TrialState.FAIL]
                counts = f"{len(finished)}/{len(latest)}"
                if counts != last or time.monotonic() - said >= PROGRESS_SECONDS:
                    log.info("tune progress: %d/%d trials ended (%d pruned, %d failed), %d running", len(finished),
                             trials, sum(t.state == TrialState.PRUNED for t in finished),
                             sum(t.state == TrialState.FAIL for t in finished), len(latest) - len(finished))
                    last, said = counts, time.monotonic()
                if len(finished) >= trials:
                    break
                time.sleep(POLL_SECONDS)
        except BaseException:
            study.set_user_attr("l2lab.stopped", True)
            log.info("tune %s stopped: workers draw no more trials; running ones finish", tune_id)
            raise
        attrs = study.user_attrs
        results = {name: attrs.get(f"{team_queue.LANDED_PREFIX}{name}", "Failed") for name in latest}
        parent.failed = any(status != "Success" for status in results.values())
    return Sweep(tune_id, parent.run_id, results)

