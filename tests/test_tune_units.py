"""`l2lab tune`'s pieces without DVC: spaces, trial names, samplers and pruners, the train stage's trial link."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from l2lab.errors import L2labError
from l2lab.studies import PRUNER_ATTR, STUDY_TAG, TRIAL_TAG, make_pruner, make_sampler, open_storage, trial_link
from l2lab.sweeps.grid import trial_name, value_text
from l2lab.sweeps.space import parse_space

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_spaces_parse_to_optuna_distributions_integers_for_integer_params() -> None:
    space = parse_space(["train.l2=log:1e-6:1e-1", "train.learning_rate=1e-4:1e-2", "train.optimizer=adam,sgd",
                         "train.batch_size=32:256"], PARAMS, {})
    d = {key: dim.distribution() for key, dim in space.items()}
    assert d["train.l2"] == optuna.distributions.FloatDistribution(1e-6, 1e-1, log=True)
    assert d["train.learning_rate"] == optuna.distributions.FloatDistribution(1e-4, 1e-2)
    assert d["train.optimizer"] == optuna.distributions.CategoricalDistribution(("adam", "sgd"))
    assert d["train.batch_size"] == optuna.distributions.IntDistribution(32, 256)


@pytest.mark.parametrize("items, message", [
    ([], "give at least one --space"),
    (["train.l2"], "expected section.key=log:LO:HI"),
    (["train.l2=log:1e-6"], "a range is LO:HI or log:LO:HI"),
    (["train.l2=a:b"], "must be numbers"),
    (["train.l2=0:inf"], "LO must be below HI, both finite"),
    (["train.optimizer=adam"], "a choice needs two or more different values"),
    (["train.l2=0:1e-3", "train.l2=0:1e-2"], "train.l2 is already searched"),
])
def test_bad_spaces_say_what_is_wrong(items: list[str], message: str) -> None:
    with pytest.raises(L2labError, match=message):
        parse_space(items, PARAMS, {})


def test_a_key_searched_and_set_is_refused() -> None:
    with pytest.raises(L2labError, match="train.l2 is also set with -S"):
        parse_space(["train.l2=0:1e-3"], PARAMS, {"train.l2": "0"})


def test_trial_names_show_number_and_values_and_the_run_gets_them_in_full() -> None:
    values = {"train.l2": 1.234567e-05, "train.optimizer": "sgd", "train.batch_size": 64}
    assert trial_name("tune-20261202-101500-3f9a1c", 7, values) == (
        "t007_l2=1.23e-05_optimizer=sgd_batch_size=64_tune-20261202-101500-3f9a1c")
    assert value_text(1.234567e-05) == "1.234567e-05" and value_text(64) == "64" and value_text("sgd") == "sgd"


def test_pruners_and_samplers_by_name() -> None:
    assert isinstance(make_pruner("hyperband", 10), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("median", 10), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("none", 10), optuna.pruners.NopPruner)
    assert isinstance(make_sampler("tpe", 1), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("random", 1), optuna.samplers.RandomSampler)
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(L2labError, match="--sampler gp needs PyTorch and SciPy"):
            make_sampler("gp", 1)


def test_the_train_stage_reporter_tells_the_trial_and_relays_the_pruner(tmp_path: Path, monkeypatch) -> None:
    journal = tmp_path / "optuna.journal"
    monkeypatch.setenv("L2LAB_STORAGE", str(journal))
    study = optuna.create_study(study_name="tune-x", storage=open_storage(str(journal)), direction="maximize",
                                pruner=make_pruner("median", 4))
    study.set_user_attr(PRUNER_ATTR, {"name": "median", "epochs": 4})
    for value in (0.5, 0.6):  # two finished trials: the median pruner's start-up
        finished = study.ask()
        for epoch in range(1, 5):
            finished.report(value, epoch)
        study.tell(finished, value)
    trial = study.ask()
    assert trial_link({"mlflow.runName": "not a trial"}) is None
    link = trial_link({STUDY_TAG: "tune-x", TRIAL_TAG: str(trial.number)})
    assert link.report(1, 0.1) is False  # never at epoch 1
    assert link.report(2, 0.1) is True  # below the median (0.55) at epoch 2
    reloaded = optuna.load_study(study_name="tune-x", storage=open_storage(str(journal)))
    assert reloaded.trials[trial.number].intermediate_values == {1: 0.1, 2: 0.1}
    # How the trial ended is its worker's to tell, once the point's experiment is saved: still running here.
    assert reloaded.trials[trial.number].state == optuna.trial.TrialState.RUNNING
