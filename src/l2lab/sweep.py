"""`l2lab sweep`: a grid of queued DVC experiments, run by N workers, grouped in MLflow."""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ruamel.yaml import YAML

from l2lab.commands import RETRAIN, checked, dvc, dvc_command, git, set_args
from l2lab.errors import L2labError
from l2lab.params import Params, ParamsError, load_params, parse_params
from l2lab.tracking.owners import end_stale_runs
from l2lab.tracking.store import connect
from l2lab.tracking.sweeps import end_unstarted, never_trained, point_progress, reserve, sweep_parent

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0
STALLED_POLLS = 6  # polls with nothing running and no worker alive before a sweep gives up
PROGRESS_SECONDS = 30.0  # a progress line at least this often while points run
DONE = ("Success", "Failed")


@dataclass(frozen=True)
class Point:
    name: str  # the DVC experiment name, also the MLflow run name
    sets: dict[str, str]  # params.yaml overrides, dotted key -> value as typed


def parse_values(option: str, text: str) -> list[str]:
    """'0,1e-5,1e-4' -> ['0', '1e-5', '1e-4']; each must be a number, and each number given once."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise L2labError(f"{option}: give at least one value, e.g. {option} 0,1e-4,1e-3")
    seen: dict[float, str] = {}
    for value in values:
        try:
            number = float(value)
        except ValueError:
            raise L2labError(f"{option}: {value!r} is not a number") from None
        if number in seen:
            raise L2labError(f"{option}: {seen[number]} and {value} are the same value; give each value once")
        seen[number] = value
    return values


def parse_sets(sets: list[str]) -> dict[str, str]:
    """['train.epochs=1'] -> {'train.epochs': '1'}."""
    parsed = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise L2labError(f"-S {item!r}: expected key=value, e.g. -S train.epochs=1")
        parsed[key.strip()] = value.strip()
    return parsed


L2, WEIGHT_DECAY = "train.l2", "train.weight_decay"
# Keras's L2 penalty l2 * sum(w**2) has the gradient 2 * l2 * w; AdamW shrinks w by
# learning_rate * weight_decay * w per step. Under plain SGD, weight_decay = 2 * l2 is the very
# same update (Loshchilov & Hutter, Proposition 1): that is the strength a comparison matches.
MATCHED_DECAY = 2.0


def grid(sweep_id: str, axes: dict[str, list[str]], fixed: dict[str, str], versus_adamw: bool = False) -> list[Point]:
    """The cartesian product of the axes (param key -> values), each point with the fixed overrides.

    A point is named with its swept values first ("l2=0.001_seed=1_<sweep id>"): UIs that
    cut long names (MLflow's runs table, dvc exp show) still show what the point is.
    With versus_adamw, every non-zero train.l2 value also runs as AdamW at the matched
    weight_decay (MATCHED_DECAY * lambda, train.l2 = 0); lambda = 0 runs once (plain Adam).
    """
    choices = [[(f"{key.split('.')[-1]}={_slug(v)}", {key: v}) for v in values] for key, values in axes.items()]
    if versus_adamw:
        at = list(axes).index(L2)
        choices[at] = ([(f"l2={_slug(v)}", {L2: v, WEIGHT_DECAY: "0"}) for v in axes[L2]]
                       + [(f"weight_decay={_slug(d)}", {L2: "0", WEIGHT_DECAY: d})
                          for d in (f"{MATCHED_DECAY * float(v):g}" for v in axes[L2] if float(v) > 0)])
    points = []
    for combo in itertools.product(*choices):
        label = "_".join(name for name, _ in combo)
        points.append(Point(f"{label}_{sweep_id}", {**fixed, **{k: v for _, sets in combo for k, v in sets.items()}}))
    return points


def _slug(value: str) -> str:
    """A value as it may stand in a git ref name."""
    return re.sub(r"[^0-9A-Za-z.+-]", "_", value).replace("..", "_")


def worker_count(requested: int, points: int, cores: int | None = None) -> int:
    """Queue workers to start: never more than the points, nor than the machine's cores.

    Each DVC worker is a process holding TensorFlow and a copy of the data (~1 GB on
    CIFAR-10); more workers than cores only make them wait on each other.
    """
    cores = cores or os.cpu_count() or 1
    jobs = max(1, min(requested, points, cores))
    if jobs != requested:
        log.warning("--jobs %d: starting %d worker(s) (%d point(s), %d core(s))", requested, jobs, points, cores)
    return jobs


def validate(params_path: Path, points: list[Point]) -> list[Params]:
    """Every point's params, checked by the stages' own checks before anything is queued."""
    base = load_params(params_path).model_dump()
    return [parse_params(_override(base, point.sets), f"params.yaml with {point.name}'s overrides") for point in points]


def _override(base: dict, sets: dict[str, str]) -> dict:
    """base with dotted keys set to YAML 1.2 values, as `dvc exp run -S` writes them."""
    raw = copy.deepcopy(base)
    for dotted, text in sets.items():
        *sections, last = dotted.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ParamsError(f"-S {dotted}: {section} is not a section")
        node[last] = YAML(typ="safe").load(text)
    return raw


def queue(points: list[Point], cwd: Path) -> None:
    """Queue every point as a named DVC experiment."""
    for point in points:
        dvc("exp", "run", "--queue", "-n", point.name, *set_args(point.sets), cwd=cwd)
        log.info("queued %s (%s)", point.name, ", ".join(f"{k}={v}" for k, v in point.sets.items()))


def retrain(point: Point, cwd: Path) -> None:
    """Queue a point again with its training forced, under the same name (its empty first try goes).

    For a point whose params, code and data equal the workspace's dvc.lock, `dvc exp run`
    skips train and evaluate ("didn't change, skipping") and calls the experiment a
    success with the lock's outputs: no run of its own, no metrics of its own.
    """
    log.warning("%s: DVC found it equal to the workspace's dvc.lock (same params, code and data) and skipped its "
                "training; queued again with training forced (dvc exp run %s)", point.name, " ".join(RETRAIN))
    dvc("queue", "remove", point.name, cwd=cwd)  # the empty first try's queue entry; --force replaces its experiment
    dvc("exp", "run", "--queue", *RETRAIN, "-n", point.name, *set_args(point.sets), cwd=cwd)
    if queue_state(cwd)[1] == 0:  # the workers left: the queue was empty for 10 s
        start_workers(1, cwd)


def workspace_state(cwd: Path) -> str:
    """A digest of what `dvc exp run --queue` copies into an experiment: HEAD, the changes to tracked
    files and the untracked files git does not ignore. Equal digests: a point queued now runs the same code."""
    digest = hashlib.sha256(git("rev-parse", "HEAD", cwd=cwd).encode())
    digest.update(checked(["git", "diff", "HEAD", "--binary"], "git diff", cwd).stdout.encode())
    for name in git("ls-files", "--others", "--exclude-standard", "-z", cwd=cwd).split("\0"):
        if name and (cwd / name).is_file():
            digest.update(name.encode() + b"\0" + (cwd / name).read_bytes())
    return digest.hexdigest()


def start_workers(jobs: int, cwd: Path) -> None:
    """`dvc queue start -j N`. The workers it forks outlive it and keep inherited pipes open,
    so its output goes to a file, not a pipe, or this call would wait for the whole queue."""
    with tempfile.TemporaryFile("w+") as out:
        status = subprocess.call([dvc_command(), "queue", "start", "-j", str(jobs)], cwd=cwd, stdout=out, stderr=out)
        if status != 0:
            out.seek(0)
            lines = out.read().strip().splitlines() or ["no output"]
            raise L2labError(f"dvc queue start -j {jobs} failed: {lines[-1]}")


def queue_state(cwd: Path) -> tuple[dict[str, str], int]:
    """(experiment name -> Queued/Running/Success/Failed, live queue workers), read through DVC's Python API."""
    from dvc.repo import Repo

    logging.getLogger("kombu").setLevel(logging.ERROR)  # "No hostname was supplied": DVC's local queue needs none
    with Repo(str(cwd)) as repo:
        queue = repo.experiments.celery_queue
        states: dict[str, str] = {}
        for entry in queue.status():  # running, queued, failed, then succeeded: a name's first entry is its latest
            if entry.get("name"):
                states.setdefault(entry["name"], entry["status"])
        return states, len(queue.worker_status())


@dataclass(frozen=True)
class Progress:
    """How far a running point is: epochs logged out of its epochs, and its latest val_accuracy."""

    epochs_done: int
    epochs: int
    val_accuracy: float | None


def progress_line(done: int, total: int, failed: int, running: dict[str, Progress], elapsed: float) -> str:
    """One progress line: counts, each running point's epoch and val_accuracy, and the time left."""
    line = f"{done}/{total} done ({failed} failed), {len(running)} running"
    for name, p in running.items():
        val = f", val_accuracy {p.val_accuracy:.4f}" if p.val_accuracy is not None else ""
        line += f"; {name}: epoch {p.epochs_done}/{p.epochs}{val}"
    # In points. Training is most of a point, not all: start-up and evaluation come after the
    # last epoch, so a point whose epochs are all done still counts as 90% done.
    finished = done + sum(0.9 * p.epochs_done / p.epochs for p in running.values() if p.epochs)
    if finished > 0 and done < total:
        left = elapsed / finished * (total - finished)
        line += f"; about {left / 60:.0f} min left" if left >= 90 else f"; about {left:.0f} s left"
    return line


AGAIN = "Queued again"  # what on_done returns for a point it put back in the queue


def wait(points: list[Point], cwd: Path, on_done: Callable[[str, str], str | None],
         read_state: Callable[[Path], tuple[dict[str, str], int]] = queue_state,
         progress: Callable[[str], Progress] = lambda name: Progress(0, 0, None)) -> dict[str, str]:
    """Poll the queue until every point is done; call on_done(name, status) once for each.

    on_done returns the point's final status (None: the queue's), or AGAIN when it queued
    the point again: it is then followed until it is done once more.

    Logs a progress line whenever the counts change and at least every PROGRESS_SECONDS
    while points run, with each running point's epoch (from progress(name)). A running
    point is alive whatever the worker count says (DVC can report 0 workers while a
    task runs); the sweep gives up only when none of its points runs and no worker is
    left for STALLED_POLLS polls in a row.
    """
    names = [p.name for p in points]
    seen: dict[str, str] = {}
    last_counts, last_logged, started = "", 0.0, time.monotonic()
    idle_polls = 0
    while len(seen) < len(names):
        states, workers = read_state(cwd)
        for name in names:
            status = states.get(name)
            if name not in seen and status in DONE:
                final = on_done(name, status) or status
                if final != AGAIN:
                    seen[name] = final
        running = sum(states.get(n) == "Running" for n in names)
        stalled = len(seen) < len(names) and running == 0 and workers == 0
        idle_polls = idle_polls + 1 if stalled else 0
        if idle_polls > STALLED_POLLS:
            left = [n for n in names if n not in seen]
            raise L2labError(f"the DVC queue has no workers left but {len(left)} point(s) are not done "
                             f"({', '.join(left)}); run `dvc queue start`, then `l2lab report`")
        failed = sum(s == "Failed" for s in seen.values())
        counts = f"{len(seen)}/{failed}/{running}"
        now = time.monotonic()
        if counts != last_counts or (running and now - last_logged >= PROGRESS_SECONDS):
            live = {n: progress(n) for n in names if states.get(n) == "Running"}
            log.info("sweep progress: %s", progress_line(len(seen), len(names), failed, live, now - started))
            last_counts, last_logged = counts, now
        if len(seen) < len(names):
            time.sleep(POLL_SECONDS)
    return seen


def stop_points(names: list[str], cwd: Path, grace: float = 120.0) -> None:
    """Take a stopped sweep's points out of the queue: queued ones removed, running ones interrupted (Ctrl-C).

    An interrupted point's train stage ends its MLflow run KILLED; this waits (up to
    grace seconds) until none of the points runs any more.
    """
    states, _ = queue_state(cwd)
    queued = [n for n in names if states.get(n) == "Queued"]
    running = [n for n in names if states.get(n) == "Running"]
    if queued:
        dvc("queue", "remove", *queued, cwd=cwd)
        log.info("removed from the queue: %s", ", ".join(queued))
    if running:
        subprocess.run([dvc_command(), "queue", "kill", *running], cwd=cwd, capture_output=True, text=True)
        log.info("interrupted: %s", ", ".join(running))
    deadline = time.monotonic() + grace
    while running and time.monotonic() < deadline:
        time.sleep(1.0)
        states, _ = queue_state(cwd)
        running = [n for n in running if states.get(n) == "Running"]
    if running:
        subprocess.run([dvc_command(), "queue", "kill", "--force", *running], cwd=cwd, capture_output=True, text=True)
        log.warning("killed (did not stop within %.0f s): %s", grace, ", ".join(running))


def clear_stale_controls(cwd: Path) -> int:
    """Delete control messages (shutdown, inspect) waiting for queue workers that are gone; return how many.

    DVC's local queue is Celery on a filesystem broker, and `dvc queue start` names its
    workers the same every time (dvc-exp-<repo hash>-<n>@localhost). A `dvc queue stop`
    sent after they left (they leave by themselves after 10 s idle) waits in the broker,
    and the next workers of those names obey it after their first task: a sweep then
    stalls with points still queued (the symptom of DVC issue #10562). Called only when
    no worker is alive, so no live worker's message is lost; control messages never hold
    tasks.
    """
    inbox = cwd / ".dvc" / "tmp" / "exps" / "celery" / "broker" / "in"
    stale = sorted(inbox.glob("*.celery.pidbox.msg")) if inbox.is_dir() else []
    for message in stale:
        message.unlink(missing_ok=True)
    if stale:
        log.info("removed %d stale control message(s) left in DVC's queue broker", len(stale))
    return len(stale)


def plan(axes: dict[str, list[str]], fixed: dict[str, str], cwd: Path,
         versus_adamw: bool) -> tuple[str, list[Point], dict[str, int]]:
    """A new sweep's id, its points, and each point's epochs, every point's params validated first."""
    sweep_id = time.strftime("sweep-%Y%m%d-%H%M%S")
    points = grid(sweep_id, axes, fixed, versus_adamw)
    epochs = {point.name: params.train.epochs for point, params in zip(points, validate(cwd / "params.yaml", points))}
    return sweep_id, points, epochs


def run_sweep(axes: dict[str, list[str]], fixed: dict[str, str], jobs: int, cwd: Path,
              versus_adamw: bool = False) -> tuple[str, dict[str, str]]:
    """Queue and run the grid; return (sweep id, experiment name -> Success/Failed).

    Each point's MLflow run is created before it is queued, nested under the sweep's
    parent; the train stage takes it up by the experiment's name.
    """
    sweep_id, points, epochs = plan(axes, fixed, cwd, versus_adamw)
    jobs = worker_count(jobs, len(points))
    store = connect(cwd)
    end_stale_runs(store)
    with sweep_parent(store, sweep_id, axes, fixed, versus_adamw) as parent:
        runs = {point.name: reserve(store, parent.run_id, sweep_id, point.name) for point in points}
        queue(points, cwd)
        if queue_state(cwd)[1] == 0:
            clear_stale_controls(cwd)
        start_workers(jobs, cwd)
        log.info("sweep %s: %d experiments on %d worker(s); MLflow parent run %s",
                 sweep_id, len(points), jobs, parent.run_id)

        by_name = {point.name: point for point in points}
        snapshot = workspace_state(cwd)
        retrained: set[str] = set()

        def done(name: str, status: str) -> str | None:
            if status == "Success" and never_trained(store, runs[name]):
                if name not in retrained and workspace_state(cwd) == snapshot:
                    retrained.add(name)
                    retrain(by_name[name], cwd)
                    return AGAIN
                status = "Failed"
                why = ("with its training forced, DVC skipped it again (see dvc queue logs " + name + ")"
                       if name in retrained else "the workspace has changed since the sweep queued its points")
                log.error("%s: DVC skipped its training as up to date (same params, code and data as the "
                          "workspace's dvc.lock) and it was not re-run: %s; it counts as failed", name, why)
            end_unstarted(store, runs[name])  # a point that failed before training never took up its run
            log.info("%s: %s (MLflow run %s)", name, status, runs[name])
            return status

        def progress(name: str) -> Progress:
            done_epochs, val = point_progress(store, runs[name])
            return Progress(done_epochs, epochs[name], val)

        try:  # the workers leave by themselves once the queue is empty (DVC: after 10 s idle)
            results = wait(points, cwd, done, progress=progress)
        except BaseException:  # Ctrl-C, SIGTERM or a dead queue: stop what this sweep started
            stop_points([p.name for p in points], cwd)
            raise
        parent.failed = any(status != "Success" for status in results.values())
    return sweep_id, results


def pushed_commit(cwd: Path) -> str:
    """The commit a team sweep runs on: HEAD, with no uncommitted changes, and on the git remote origin."""
    from l2lab.team.worker import check_clone

    check_clone(cwd, "team workers run the sweep's commit, not your workspace: commit (and push) first")
    commit = git("rev-parse", "HEAD", cwd=cwd)
    git("fetch", "-q", "origin", cwd=cwd)
    if not git("branch", "-r", "--contains", commit, cwd=cwd):
        raise L2labError(f"commit {commit[:12]} is not on origin: workers on other machines could not check it "
                         "out; git push first")
    return commit


def run_team_sweep(axes: dict[str, list[str]], fixed: dict[str, str], cwd: Path, storage_url: str,
                   versus_adamw: bool = False) -> tuple[str, dict[str, str]]:
    """Enqueue the grid in the team's Optuna storage for `l2lab worker`s, and follow it to the end.

    The parent run and every point's reserved run are created on the tracking server
    first, as for a local sweep. Ctrl-C or SIGTERM cancels the points no worker has taken
    (their runs end KILLED); points already running finish on their workers.
    """
    from l2lab.team import queue as team_queue
    from l2lab.team.worker import check_shared_tracking, point_runs

    sweep_id, points, epochs = plan(axes, fixed, cwd, versus_adamw)
    check_shared_tracking(cwd)
    commit = pushed_commit(cwd)
    store = connect(cwd)
    storage = team_queue.open_storage(storage_url)
    end_stale_runs(store)
    with sweep_parent(store, sweep_id, axes, fixed, versus_adamw) as parent:
        runs = {point.name: reserve(store, parent.run_id, sweep_id, point.name) for point in points}
        study = team_queue.enqueue(storage, sweep_id, [(p.name, p.sets) for p in points],
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
    return sweep_id, results
