"""params.yaml validation: every bad value is one line naming the key."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from l2lab.params import ParamsError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw() -> dict:
    return load_params(REPO / "params.yaml").model_dump()


def test_repo_params_load_and_flatten(raw: dict) -> None:
    flat = parse_params(raw).flat()
    assert flat["train.l2"] == 0.001 and flat["data.val_size"] == 5000
    assert flat["train.seed"] == 42 and flat["data.split_seed"] == 42
    assert flat["data.train_size"] is None
    assert flat["data.folds"] == 0 and flat["data.fold"] == 0  # the fixed split
    assert set(flat) == {"data.url", "data.sha256", "data.val_size", "data.split_seed", "data.train_size",
                         "data.folds", "data.fold", "train.seed", "train.l2",
                         "train.l1", "train.weight_decay", "train.learning_rate", "train.batch_size", "train.epochs",
                         "train.precision", "train.optimizer", "train.momentum", "train.nesterov", "train.schedule",
                         "train.warmup_epochs", "train.augment"}


def test_a_params_file_from_before_the_optimizer_keys_trains_as_it_did(raw: dict) -> None:
    old = copy.deepcopy(raw)
    for key in ("optimizer", "momentum", "nesterov", "schedule", "warmup_epochs", "augment"):
        del old["train"][key]
    train = parse_params(old).train
    assert (train.optimizer, train.schedule, train.augment, train.warmup_epochs) == ("adam", "constant", "none", 0)
    assert train == parse_params(raw).train  # params.yaml states the same defaults


@pytest.mark.parametrize(("key", "value", "message"), [
    ("optimizer", "rmsprop", "train.optimizer: Input should be 'adam' or 'sgd' (got 'rmsprop')"),
    ("momentum", 1.0, "train.momentum: Input should be less than 1 (got 1.0)"),
    ("nesterov", "yes", "train.nesterov: Input should be a valid boolean (got 'yes')"),
    ("schedule", "step", "train.schedule: Input should be 'constant' or 'cosine' (got 'step')"),
    ("augment", "mixup", "train.augment: Input should be 'none' or 'flip_crop' (got 'mixup')"),
])
def test_bad_optimizer_schedule_and_augment_values_name_the_key(raw: dict, key: str, value: object,
                                                                 message: str) -> None:
    bad = copy.deepcopy(raw)
    bad["train"][key] = value
    with pytest.raises(ParamsError, match=re.escape(message)):
        parse_params(bad)


def test_warmup_needs_a_cosine_schedule_and_fewer_epochs_than_the_run(raw: dict) -> None:
    bad = copy.deepcopy(raw)
    bad["train"]["warmup_epochs"] = 1
    with pytest.raises(ParamsError, match=r"train.warmup_epochs: applies to train.schedule cosine only"):
        parse_params(bad)
    bad["train"].update(schedule="cosine", warmup_epochs=bad["train"]["epochs"])
    with pytest.raises(ParamsError, match=r"train.warmup_epochs: must be fewer than train.epochs = 10 \(got 10\)"):
        parse_params(bad)
    bad["train"]["warmup_epochs"] = 2
    assert parse_params(bad).train.warmup_epochs == 2


def test_yaml_1_2_floats_as_dvc_writes_them(tmp_path: Path, raw: dict) -> None:
    text = (REPO / "params.yaml").read_text().replace("l2: 0.001", "l2: 1e-05")
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.l2 == 1e-05


@pytest.mark.fault
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.l2", -0.1, "train.l2: Input should be greater than or equal to 0 (got -0.1)"),
        ("train.l2", "abc", "train.l2: Input should be a valid number (got 'abc')"),
        ("train.l2", True, "train.l2: Input should be a valid number (got True)"),
        ("train.l2", float("nan"), "train.l2: Input should be a finite number (got nan)"),
        ("train.l1", -1, "train.l1: Input should be greater than or equal to 0"),
        ("train.weight_decay", -1e-4, "train.weight_decay: Input should be greater than or equal to 0"),
        ("train.epochs", 0, "train.epochs: Input should be greater than or equal to 1 (got 0)"),
        ("train.epochs", 2.5, "train.epochs: Input should be a valid integer (got 2.5)"),
        ("train.batch_size", 0, "train.batch_size: Input should be greater than or equal to 1"),
        ("train.batch_size", -64, "train.batch_size: Input should be greater than or equal to 1"),
        ("train.learning_rate", 0, "train.learning_rate: Input should be greater than 0"),
        ("data.val_size", 0, "data.val_size: Input should be greater than or equal to 10 (got 0)"),
        ("data.val_size", 9, "data.val_size: Input should be greater than or equal to 10 (got 9)"),  # one per class
        ("data.val_size", 49_999, "data.val_size: Input should be less than or equal to 49990 (got 49999)"),
        ("data.url", "ftp://example.org/x.tgz", "data.url: scheme 'ftp' is not allowed"),
        ("data.url", "", "data.url: must not be empty"),
        ("data.sha256", "abc123", "data.sha256: must be 64 hex digits"),
        ("data.sha256", "g" * 64, "data.sha256: must be 64 hex digits"),
        ("data.sha256", 0, "data.sha256: must be a string of 64 hex digits; quote it in params.yaml (got 0)"),
        ("train.seed", "42", "train.seed: Input should be a valid integer (got '42')"),
        ("train.seed", -1, "train.seed: Input should be greater than or equal to 0 (got -1)"),
        ("data.split_seed", 1.5, "data.split_seed: Input should be a valid integer (got 1.5)"),
        ("data.train_size", 0, "data.train_size: Input should be greater than or equal to 10 (got 0)"),
        ("data.train_size", 5, "data.train_size: Input should be greater than or equal to 10 (got 5)"),
        ("data.train_size", 45_001, "data.train_size: is more than the 45000 training images that data.val_size = "
                                    "5000 leaves of CIFAR-10's 50000 (got 45001)"),
        ("data.train_size", "5000", "data.train_size: Input should be a valid integer (got '5000')"),
        ("seed", 42, "seed: unknown key"),  # the old top-level seed is now data.split_seed and train.seed
        ("train.precision", "float16",
         "train.precision: Input should be 'float32', 'mixed_bfloat16' or 'mixed_float16'"),
        ("train.beta_1", 0.9, "train.beta_1: unknown key"),
        ("extra", 1, "extra: unknown key"),
    ],
)
def test_bad_values_name_the_key(raw: dict, key: str, value: object, message: str) -> None:
    bad = copy.deepcopy(raw)
    *sections, last = key.split(".")
    node = bad
    for section in sections:
        node = node[section]
    node[last] = value
    with pytest.raises(ParamsError) as info:
        parse_params(bad)
    text = str(info.value)
    assert text.startswith(f"params.yaml: {message}") and "\n" not in text


@pytest.mark.fault
def test_missing_key_is_named(raw: dict) -> None:
    bad = copy.deepcopy(raw)
    del bad["train"]["epochs"]
    with pytest.raises(ParamsError, match=r"^params.yaml: train.epochs: missing key$"):
        parse_params(bad)


@pytest.mark.fault
def test_unreadable_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="cannot read params"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="cannot read params") as info:
        load_params(tmp_path / "p.yaml")
    assert "\n" not in str(info.value)


def test_params_are_frozen(raw: dict) -> None:
    params = parse_params(raw)
    with pytest.raises(ValidationError, match="frozen_instance"):
        params.train.l2 = 1.0  # type: ignore[misc]
    assert params.train.l2 == 0.001


LAUGHS = "\n".join(['    a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
                   + [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)])


@pytest.mark.fault
@pytest.mark.parametrize("where", ["train.l2", "train.extra"])
def test_a_billion_laughs_params_file_is_one_line_in_bounded_memory(tmp_path: Path, where: str) -> None:
    """Nested YAML anchors: a 1 kB file that stands for 10^9 values. Under train.l2 the error message's
    formatting of the value took 4.5 GB and a MemoryError traceback; the stage runs under a 1 GiB cap."""
    import resource
    import subprocess
    import sys

    key = where.split(".")[1]
    text = (REPO / "params.yaml").read_text()
    text = text.replace("  l2: 0.001", f"  {key}:\n{LAUGHS}" + ("\n  l2: 0.001" if key != "l2" else ""))
    (tmp_path / "params.yaml").write_text(text)
    assert len(text) < 5_000

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    proc = subprocess.run([sys.executable, "-m", "l2lab.stages.download", "--out", str(tmp_path / "a.tar.gz")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, preexec_fn=cap,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.endswith(f"error: params.yaml: expands to more than 10000 values under {where}"
                         " (YAML anchors and aliases?); a params file holds plain values"), line
    assert not (tmp_path / "a.tar.gz").exists()


@pytest.mark.fault
def test_a_params_file_of_megabytes_is_refused_unread(tmp_path: Path) -> None:
    """A valid params.yaml padded with 520,000 comment lines (53 MB): DVC took 31 s on it, a sweep minutes."""
    from l2lab.params import MAX_BYTES

    big = tmp_path / "params.yaml"
    big.write_text((REPO / "params.yaml").read_text() + "# padding\n" * (MAX_BYTES // 10 + 1))
    with pytest.raises(ParamsError, match=r"params.yaml: [0-9,]+ bytes; a params file holds a few dozen values"):
        load_params(big)


@pytest.mark.fault
def test_a_yaml_tag_on_the_command_line_is_one_line_never_run() -> None:
    from l2lab.params import plain_value

    with pytest.raises(ParamsError, match=r"^-S train.l1: .* is not a plain YAML value \(could not determine a "
                                          r"constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"):
        plain_value('!!python/object/apply:os.system ["touch x"]', "-S train.l1")
    assert plain_value("1e-3", "-S train.l2") == 0.001  # YAML 1.2, as DVC reads it
