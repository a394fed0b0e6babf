"""Following a sweep to its end: read its study, hand lost workers' points to others, log progress."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from l2lab.sweeps import trials
from l2lab.sweeps.grid import POLL_SECONDS

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 30.0  # a progress line at least this often while points run


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


@dataclass
class _Followed:
    """What follow() has seen so far: the points ended, the last progress line's counts and time."""

    seen: dict[str, str]
    started: float
    counts: str = ""
    logged: float = 0.0


def follow(storage: Any, study: Any, total: int, progress: Callable[[Any], Progress],
           keep: Callable[[int], None] = lambda needed: None, seen: dict[str, str] | None = None) -> dict[str, str]:
    """Read the study until total points have ended; return point name -> Success/Failed.

    Each read first fails the trials whose worker is gone and queues their points again
    (trials.reap: within a read of a local worker's end, GRACE_SECONDS of a remote one's
    silence), then calls keep(needed) with how many points wait for a worker (this machine's
    workers are kept going, l2lab.sweeps.run). A progress line whenever the counts change and
    at least every PROGRESS_SECONDS while points run, with each running point's epoch
    (progress(trial)). seen: the points an earlier call followed to their end (a refit's follows its
    folds'). A storage or tracking server that cannot be reached (restarted, a network fault) is ridden
    out (trials.ride_out), as the workers do.
    """
    state = _Followed(dict(seen or {}), time.monotonic())
    hint = f"its points run on: `l2lab report --sweep {study.study_name}` reports them once it is back"
    while not trials.ride_out(lambda: _read(storage, study, total, progress, keep, state),
                              "the sweep's storage (or tracking server)", hint):
        time.sleep(POLL_SECONDS)
    return state.seen


def _read(storage: Any, study: Any, total: int, progress: Callable[[Any], Progress], keep: Callable[[int], None],
          state: _Followed) -> bool:
    """One read of the study (see follow); whether every point has ended."""
    trials.reap(storage, study)
    latest = trials.latest_tries(study.get_trials(deepcopy=False))
    for name, trial in latest.items():
        if name not in state.seen and trial.state.is_finished():
            state.seen[name] = trials.STATES[trial.state.name]
            log.info("%s: %s%s", name, state.seen[name], " (pruned)" if trial.state.name == "PRUNED" else "")
    waiting = sum(t.state.name == "WAITING" for t in latest.values())
    keep(waiting + max(0, total - len(latest)) if trials.is_tune(study) else waiting)
    running = {name: t for name, t in latest.items() if t.state.name == "RUNNING"}
    failed = sum(s == "Failed" for s in state.seen.values())
    counts, now = f"{len(state.seen)}/{failed}/{len(running)}", time.monotonic()
    if counts != state.counts or (running and now - state.logged >= PROGRESS_SECONDS):
        shown = {name: progress(t) for name, t in running.items()}
        log.info("sweep progress: %s", progress_line(len(state.seen), total, failed, shown, now - state.started))
        state.counts, state.logged = counts, now
    return len(state.seen) >= total
