"""What a sweep is: its id, its grid of points (params.yaml overrides), each point's params validated."""

from __future__ import annotations

import copy
import itertools
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from l2lab.errors import L2labError
from l2lab.params import Params, ParamsError, load_params, parse_params, plain_value

REPORT_DIR = Path("reports/sweep")  # each sweep's report goes to REPORT_DIR/<sweep id>/, its points' output to logs/
POLL_SECONDS = 2.0  # between reads of a sweep's study: by the sweep that follows it, and by idle workers
KEY = re.compile(r"[A-Za-z_]\w*\.[A-Za-z_]\w*")  # a params.yaml key as options give it: section.name


def logs_dir(repo: Path, sweep_id: str) -> Path:
    """Where a sweep's points' output goes: one file per point, each try appended."""
    return repo / REPORT_DIR / sweep_id / "logs"


# What a sweep may vary: its command-line option -> the params.yaml key it sets.
AXES = {"l2": "train.l2", "l1": "train.l1", "weight_decay": "train.weight_decay", "seeds": "train.seed"}
L2, WEIGHT_DECAY, SEED = AXES["l2"], AXES["weight_decay"], AXES["seeds"]


@dataclass(frozen=True)
class Point:
    name: str  # the DVC experiment name, also the MLflow run name
    sets: dict[str, str]  # params.yaml overrides, dotted key -> value as typed


@dataclass(frozen=True)
class Sweep:
    """A sweep as the report takes it; results only for one this process ran."""

    id: str
    parent_run_id: str  # the MLflow run its points' runs are nested under
    results: dict[str, str] = field(default_factory=dict)  # experiment name -> Success/Failed


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


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['train.learning_rate=3e-4,1e-3', 'train.optimizer=adam,sgd'] -> {key: values}: any params.yaml key
    (section.name), numbers or names, each value given once (as YAML reads it: 1e-3 and 0.001 are one).
    Whether the key exists and each value is allowed is for the params schema (plan validates every point)."""
    axes: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        option = f"--grid {item}"
        if not sep or not KEY.fullmatch(key):
            raise L2labError(f"{option}: expected section.key=v1,v2,..., e.g. --grid train.learning_rate=3e-4,1e-3")
        if key in axes:
            raise L2labError(f"{option}: {key} is already a grid axis; give its values once")
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values:
            raise L2labError(f"{option}: give at least one value")
        seen: dict[str, str] = {}
        for value in values:
            parsed = repr(plain_value(value, option))  # what `dvc exp run -S` would write
            if parsed in seen:
                raise L2labError(f"{option}: {seen[parsed]} and {value} are the same value; give each value once")
            seen[parsed] = value
        axes[key] = values
    return axes


def parse_sets(sets: list[str]) -> dict[str, str]:
    """['train.epochs=1'] -> {'train.epochs': '1'}."""
    parsed = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise L2labError(f"-S {item!r}: expected key=value, e.g. -S train.epochs=1")
        parsed[key.strip()] = value.strip()
    return parsed


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
    choices = [[(f"{key.split('.')[-1]}={slug(v)}", {key: v}) for v in values] for key, values in axes.items()]
    if versus_adamw:
        at = list(axes).index(L2)
        choices[at] = ([(f"l2={slug(v)}", {L2: v, WEIGHT_DECAY: "0"}) for v in axes[L2]]
                       + [(f"weight_decay={slug(d)}", {L2: "0", WEIGHT_DECAY: d})
                          for d in (f"{MATCHED_DECAY * float(v):g}" for v in axes[L2] if float(v) > 0)])
    points = []
    for combo in itertools.product(*choices):
        label = "_".join(name for name, _ in combo)
        points.append(Point(f"{label}_{sweep_id}", {**fixed, **{k: v for _, sets in combo for k, v in sets.items()}}))
    return points


def slug(value: str) -> str:
    """A value as it may stand in a git ref name."""
    return re.sub(r"[^0-9A-Za-z.+-]", "_", value).replace("..", "_")


def value_text(value: Any) -> str:
    """A drawn value as `dvc exp run -S` takes it: floats in full (repr), names and integers as they are."""
    return repr(value) if isinstance(value, float) else str(value)


def trial_name(tune_id: str, number: int, values: dict[str, Any]) -> str:
    """"t003_l2=1.23e-05_learning_rate=0.00123_tune-20261202-101500-3f9a1c": its number, its values (3
    significant digits; the run's params have them in full), the tune."""
    shown = "_".join(f"{key.split('.')[-1]}={slug(f'{v:.3g}' if isinstance(v, float) else str(v))}"
                     for key, v in values.items())
    return f"t{number:03d}_{shown}_{tune_id}"


def new_sweep_id(kind: str = "sweep") -> str:
    """"sweep-20261201-231500-3f9a1c" (or "tune-..."): when it started, and a random part so that sweeps
    started in the same second (on one machine or several) never share an id, an experiment name or an
    Optuna study."""
    return time.strftime(f"{kind}-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def validate(params_path: Path, points: list[Point]) -> list[Params]:
    """Every point's params, checked by the stages' own checks before anything is queued."""
    base = load_params(params_path).model_dump()
    return [parse_params(override(base, point.sets), f"params.yaml with {point.name}'s overrides") for point in points]


def override(base: dict, sets: dict[str, str]) -> dict:
    """base with dotted keys set to YAML 1.2 values, as `dvc exp run -S` writes them."""
    raw = copy.deepcopy(base)
    for dotted, text in sets.items():
        *sections, last = dotted.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ParamsError(f"-S {dotted}: {section} is not a section")
        node[last] = plain_value(text, f"-S {dotted}")
    return raw


Planned = tuple[str, list[Point], dict[str, int]]  # a sweep's id, its points, each point's epochs


def plan(axes: dict[str, list[str]], fixed: dict[str, str], cwd: Path, versus_adamw: bool) -> Planned:
    """A new sweep's id, its points, and each point's epochs, every point's params validated first."""
    sweep_id = new_sweep_id()
    points = grid(sweep_id, axes, fixed, versus_adamw)
    epochs = {point.name: params.train.epochs for point, params in zip(points, validate(cwd / "params.yaml", points))}
    return sweep_id, points, epochs
