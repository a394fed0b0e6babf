"""Typed, validated view of params.yaml: the project's public interface."""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator)
from ruamel.yaml import YAML, YAMLError

from l2lab.errors import L2labError, first_line

TRAIN_IMAGES = 50_000  # images in the five official training batches
NUM_CLASSES = 10  # CIFAR-10's: every split holds at least one image of each

URL_SCHEMES = ("http", "https", "file")
# params.yaml holds about 15 values. YAML anchors let a file of a few lines stand for billions of
# them ("billion laughs"): nothing reads more than this many, counting each alias where it is used.
MAX_VALUES = 10_000
MAX_BYTES = 1 << 20  # params.yaml is about 2 KB; past this it is not read at all (DVC would spend minutes on it)
_SHOWN = reprlib.Repr()  # a bad value as a message shows it: a few levels and items of it, never all
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 2, 4, 4, 80, 80


class ParamsError(L2labError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def redact_url(url: str) -> str:
    """The URL with any user name and password replaced by "***" (for messages and logs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _check_url(url: str) -> str:
    if "@" in urlsplit(url).netloc:
        # dvc.lock records params in git, and MLflow shows every param to anyone with the UI.
        raise ValueError("must not hold a user name or password (dvc.lock would commit them to git); give the URL "
                         "without them and put them in ~/.netrc (or the file $NETRC names): "
                         "machine HOST login USER password PASSWORD")
    scheme = urlsplit(url).scheme.lower()
    # A bare local path has no scheme; "C:\\x" would parse as scheme "c", so keep it to one letter.
    if scheme and len(scheme) > 1 and scheme not in URL_SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not allowed; use http, https, file or a local path")
    if not url.strip():
        raise ValueError("must not be empty")
    return url


def _check_sha256(value: object) -> str:
    if not isinstance(value, str):  # YAML reads an all-digit checksum as a number, losing leading zeros
        raise ValueError("must be a string of 64 hex digits; quote it in params.yaml")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError("must be 64 hex digits (a sha256 checksum)")
    return value.lower()


def _check_fold(value: Any) -> Any:
    if value != "all" and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError("must be a fold's number (0..data.folds - 1) or all")
    return value


class _Section(BaseModel):
    # No defaults: params.yaml is the one source of every value, so a missing key is an error.
    # strict: no silent "1" -> 1 or true -> 1.0 coercion; frozen: params are read-only.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DataParams(_Section):
    url: Annotated[str, AfterValidator(_check_url)]
    sha256: Annotated[str, BeforeValidator(_check_sha256)]
    val_size: int = Field(ge=NUM_CLASSES, le=TRAIN_IMAGES - NUM_CLASSES)  # images held out of training
    split_seed: int = Field(ge=0, le=2**32 - 1)  # picks the validation images (and the train subset); nothing else
    # a stratified subset of the train split; None: all
    train_size: int | None = Field(ge=NUM_CLASSES, le=TRAIN_IMAGES - NUM_CLASSES)

    # Cross-validation, with defaults so that a params.yaml without them splits as data.val_size says.
    # folds = K >= 2: the pool (the images the fixed split trains and validates on: data.train_size +
    # data.val_size of them, or all TRAIN_IMAGES when train_size is null) is cut into K stratified folds
    # (seeded by split_seed); fold i validates and the others train; "all": the whole pool trains (a refit).
    folds: int = Field(default=0, ge=0)  # 0: the fixed split
    fold: Annotated[int | Literal["all"], BeforeValidator(_check_fold)] = 0

    @field_validator("train_size")
    @classmethod
    def _fits_beside_val(cls, size: int | None, info: ValidationInfo) -> int | None:
        val = info.data.get("val_size")  # validated before it: declared first
        if size is not None and val is not None and size > TRAIN_IMAGES - val:
            raise ValueError(f"is more than the {TRAIN_IMAGES - val} training images that data.val_size = {val} "
                             f"leaves of CIFAR-10's {TRAIN_IMAGES}")
        return size

    @field_validator("folds")
    @classmethod
    def _folds_hold_every_class(cls, folds: int, info: ValidationInfo) -> int:
        if folds == 1:
            raise ValueError("must be 0 (the fixed split) or at least 2")
        val, size = info.data.get("val_size"), info.data.get("train_size")
        pool = pool_size(val, size) if val is not None else None
        if folds and pool is not None and pool // folds < NUM_CLASSES:
            raise ValueError(f"{folds} folds of the pool's {pool} images (data.train_size + data.val_size) hold "
                             f"fewer than one image per class each; at most {pool // NUM_CLASSES}")
        return folds

    @field_validator("fold")
    @classmethod
    def _fold_in_range(cls, fold: int | str, info: ValidationInfo) -> int | str:
        folds = info.data.get("folds")
        if folds == 0 and fold != 0:
            raise ValueError("applies to cross-validation only (data.folds >= 2), and data.folds is 0")
        if folds and isinstance(fold, int) and not 0 <= fold < folds:
            raise ValueError(f"must be one of 0..{folds - 1} (data.folds = {folds}), or all (the whole pool trains)")
        return fold


def pool_size(val_size: int, train_size: int | None) -> int:
    """The labelled images a run may learn from: the fixed split's train and val together."""
    return TRAIN_IMAGES if train_size is None else train_size + val_size


class TrainParams(_Section):
    seed: int = Field(ge=0, le=2**31 - 1)  # weight init and shuffling; the split has its own
    l2: float = Field(ge=0.0)  # lambda in loss = CE + l2 * sum(W**2), kernels only
    l1: float = Field(ge=0.0)  # lambda in loss = CE + l1 * sum(|W|), kernels only
    weight_decay: float = Field(ge=0.0, lt=1.0)  # decoupled (AdamW) decay per step, times lr
    learning_rate: float = Field(gt=0.0, le=10.0)  # Adam step size
    batch_size: int = Field(ge=1, le=65_536)  # images per step
    epochs: int = Field(ge=1, le=10_000)
    # compute dtype; variables stay float32. mixed_float16 (NVIDIA GPUs) trains with dynamic loss scaling
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"]
    # With defaults, so that a params.yaml without them trains Adam at a constant rate without augmentation;
    # params.yaml states them all.
    # sgd: SGD with momentum; weight_decay > 0 makes it SGDW (AdamW for adam)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)  # sgd only
    nesterov: bool = True  # sgd only: Nesterov momentum
    schedule: Literal["constant", "cosine"] = "constant"  # learning rate per step: constant, or cosine decay to 0
    warmup_epochs: int = Field(default=0, ge=0)  # cosine only: a linear ramp from 0 over these first epochs
    augment: Literal["none", "flip_crop"] = "none"  # training images only: random horizontal flip, pad-4 random crop

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_fits(cls, warmup: int, info: ValidationInfo) -> int:
        schedule, epochs = info.data.get("schedule"), info.data.get("epochs")  # validated before it: declared first
        if warmup and schedule != "cosine":
            raise ValueError(f"applies to train.schedule cosine only, and train.schedule is {schedule!r}")
        if warmup and epochs is not None and warmup >= epochs:
            raise ValueError(f"must be fewer than train.epochs = {epochs}")
        return warmup


class Params(_Section):
    data: DataParams
    train: TrainParams

    def flat(self) -> dict[str, Any]:
        """Every value under its dotted params.yaml name, e.g. {"train.l2": 0.001}."""
        return flatten(self.model_dump())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {"train": {"l2": 0.1}} -> {"train.l2": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<top level>"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: missing key"
    message = error["msg"].removeprefix("Value error, ")
    given = redact_url(error["input"]) if isinstance(error["input"], str) else error["input"]
    return f"{key}: {message} (got {_SHOWN.repr(given)})"


def _check_size(raw: Any, source: str) -> None:
    """Refuse a params tree of more than MAX_VALUES nodes, counted as it would expand (aliases each time)."""
    seen, todo = 0, [(raw, "")]
    while todo:
        node, key = todo.pop()
        seen += 1
        if seen > MAX_VALUES:
            where = f" under {'.'.join(key.split('.')[:2])}" if key else ""  # the params key: section.name
            raise ParamsError(f"{source}: expands to more than {MAX_VALUES} values{where} (YAML anchors and aliases?); "
                              "a params file holds plain values")
        if isinstance(node, dict):
            todo.extend((value, f"{key}.{name}" if key else str(name)) for name, value in node.items())
        elif isinstance(node, (list, tuple)):
            todo.extend((value, key) for value in node)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping; raise ParamsError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    _check_size(raw, source)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(f"{source}: {_describe(exc.errors()[0])}") from None


def plain_value(text: str, what: str) -> Any:
    """A value given on the command line (-S, --grid, --space) as `dvc exp run -S` reads it (YAML 1.2); one
    line when it is not plain YAML (a tag such as !!python/object is refused, never run)."""
    try:
        return YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise ParamsError(f"{what}: {_SHOWN.repr(text)} is not a plain YAML value ({first_line(exc)})") from None


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml (YAML 1.2, as DVC reads it: 1e-5 is a float); a file over MAX_BYTES is
    refused unread."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ParamsError(f"{path}: {size:,} bytes; a params file holds a few dozen values (at most "
                              f"{MAX_BYTES:,} bytes): not read")
        raw = YAML(typ="safe").load(path.read_text())
    except (OSError, YAMLError) as exc:
        raise ParamsError(f"{path}: cannot read params: {exc}".replace("\n", " ")) from None
    return parse_params(raw if raw is not None else {}, str(path))
