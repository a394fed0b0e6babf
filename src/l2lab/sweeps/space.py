"""`l2lab tune --space`: what a tune searches, each key's range or choices as Optuna draws them, checked up front."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2lab.errors import L2labError
from l2lab.params import ParamsError, load_params, parse_params, plain_value
from l2lab.studies import PRUNERS, SAMPLERS
from l2lab.sweeps.grid import KEY, override


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
        if not sep or not KEY.fullmatch(key) or not spec:
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
            values = [plain_value(v.strip(), option) for v in spec.split(",") if v.strip()]
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
