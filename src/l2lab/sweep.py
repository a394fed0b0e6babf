"""`l2lab sweep`: a grid of queued DVC experiments, run by N workers, grouped in MLflow."""

from __future__ import annotations

import copy
import itertools
import logging
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ruamel.yaml import YAML

from l2lab import tracking
from l2lab.errors import L2labError
from l2lab.params import ParamsError, load_params, parse_params

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0
STALLED_POLLS = 6  # polls with no queue worker alive before a sweep gives up (workers take a moment to start)
DONE = ("Success", "Failed")


@dataclass(frozen=True)
class Point:
    name: str  # the DVC experiment name, also the MLflow run name
    sets: dict[str, str]  # params.yaml overrides, dotted key -> value as typed


def parse_values(option: str, text: str) -> list[str]:
    """'0,1e-5,1e-4' -> ['0', '1e-5', '1e-4']; each must be a number."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise L2labError(f"{option}: give at least one value, e.g. {option} 0,1e-4,1e-3")
    for value in values:
        try:
            float(value)
        except ValueError:
            raise L2labError(f"{option}: {value!r} is not a number") from None
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


def grid(sweep_id: str, axes: dict[str, list[str]], fixed: dict[str, str]) -> list[Point]:
    """The cartesian product of the axes (param key -> values), each point with the fixed overrides."""
    points = []
    for combo in itertools.product(*axes.values()):
        varying = dict(zip(axes, combo))
        label = "-".join(f"{key.split('.')[-1].replace('_', '')}{_slug(v)}" for key, v in varying.items())
        points.append(Point(f"{sweep_id}-{label}", {**fixed, **varying}))
    return points


def _slug(value: str) -> str:
    """A value as it may stand in a git ref name."""
    return re.sub(r"[^0-9A-Za-z.+-]", "_", value).replace("..", "_")


def validate(params_path: Path, points: list[Point]) -> None:
    """Every point's params must pass the stages' own checks before anything is queued."""
    base = load_params(params_path).model_dump()
    for point in points:
        parse_params(_override(base, point.sets), f"params.yaml with {point.name}'s overrides")


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


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a dvc command; raise with its own message when it fails."""
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise L2labError(f"dvc {' '.join(args)} failed: {last[0]}")
    return proc


def queue(points: list[Point], cwd: Path) -> None:
    """Queue every point as a named DVC experiment."""
    for point in points:
        sets = [arg for key, value in point.sets.items() for arg in ("-S", f"{key}={value}")]
        dvc("exp", "run", "--queue", "-n", point.name, *sets, cwd=cwd)
        log.info("queued %s (%s)", point.name, ", ".join(f"{k}={v}" for k, v in point.sets.items()))


def start_workers(jobs: int, cwd: Path) -> None:
    """`dvc queue start -j N`. The workers it forks outlive it and keep inherited pipes open,
    so its output goes to a file, not a pipe, or this call would wait for the whole queue."""
    with tempfile.TemporaryFile("w+") as out:
        status = subprocess.call(["dvc", "queue", "start", "-j", str(jobs)], cwd=cwd, stdout=out, stderr=out)
        if status != 0:
            out.seek(0)
            lines = out.read().strip().splitlines() or ["no output"]
            raise L2labError(f"dvc queue start -j {jobs} failed: {lines[-1]}")


def parse_queue_status(text: str) -> tuple[dict[str, str], int]:
    """(experiment name -> Queued/Running/Success/Failed, live workers) from `dvc queue status` output."""
    states = {}
    workers = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and re.fullmatch(r"[0-9a-f]{7,}", fields[0]):
            states[fields[1]] = fields[-1]
        elif match := re.search(r"Worker status: (\d+) active, (\d+) idle", line):
            workers = int(match.group(1)) + int(match.group(2))
    return states, workers


def wait(points: list[Point], cwd: Path, on_done: Callable[[str, str], None]) -> dict[str, str]:
    """Poll the queue until every point is done; call on_done(name, status) once for each."""
    names = [p.name for p in points]
    seen: dict[str, str] = {}
    last_line = ""
    idle_polls = 0  # consecutive polls with points left and no worker alive
    while len(seen) < len(names):
        states, workers = parse_queue_status(dvc("queue", "status", cwd=cwd).stdout)
        idle_polls = idle_polls + 1 if workers == 0 and len(seen) < len(names) else 0
        if idle_polls > STALLED_POLLS:
            left = [n for n in names if n not in seen]
            raise L2labError(f"the DVC queue has no workers left but {len(left)} point(s) are not done "
                             f"({', '.join(left)}); run `dvc queue start`, then `l2lab report`")
        for name in names:
            status = states.get(name)
            if name not in seen and status in DONE:
                seen[name] = status
                on_done(name, status)
        running = sum(states.get(n) == "Running" for n in names)
        failed = sum(s == "Failed" for s in seen.values())
        line = f"{len(seen)}/{len(names)} done ({failed} failed), {running} running"
        if line != last_line:
            log.info("sweep progress: %s", line)
            last_line = line
        if len(seen) < len(names):
            time.sleep(POLL_SECONDS)
    return seen


def run_sweep(axes: dict[str, list[str]], fixed: dict[str, str], jobs: int, cwd: Path) -> tuple[str, dict[str, str]]:
    """Queue and run the grid; return (sweep id, experiment name -> Success/Failed)."""
    sweep_id = time.strftime("sweep-%Y%m%d-%H%M%S")
    points = grid(sweep_id, axes, fixed)
    validate(cwd / "params.yaml", points)
    with tracking.sweep_parent(sweep_id, axes, fixed) as parent:
        queue(points, cwd)
        start_workers(jobs, cwd)
        log.info("sweep %s: %d experiments on %d worker(s); MLflow parent run %s",
                 sweep_id, len(points), jobs, parent.run_id)

        def link(name: str, status: str) -> None:
            run_id = tracking.adopt_child(parent.run_id, sweep_id, name)
            log.info("%s: %s%s", name, status, f" (MLflow run {run_id})" if run_id else "")

        results = wait(points, cwd, link)
        parent.failed = any(status != "Success" for status in results.values())
    return sweep_id, results
