"""Cross-validation: folds as data params (the split files), the picks against a hand computation, and a
cross-validated sweep with its refit, end to end."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from l2lab.data import load_split
from l2lab.params import ParamsError, load_params, parse_params
from l2lab.stages.preprocess import preprocess
from l2lab.sweeps.cv import picks, summary

REPO = Path(__file__).resolve().parents[1]


def test_folds_are_disjoint_cover_the_fixed_splits_images_and_never_the_test_set(small_archive: Path,
                                                                                 tmp_path: Path) -> None:
    fixed = preprocess(small_archive, tmp_path / "fixed", tmp_path / "fixed.json", 50, 42, train_size=200)
    x_train, y_train = load_split(tmp_path / "fixed" / "train.npz")
    x_val, _ = load_split(tmp_path / "fixed" / "val.npz")
    pool = {image.tobytes() for image in np.concatenate([x_train, x_val])}  # the images, not their order
    assert len(pool) == 250 == fixed["pool"] and fixed["folds"] == 0
    vals, trains = [], []
    for fold in range(3):
        made = preprocess(small_archive, tmp_path / f"f{fold}", tmp_path / f"f{fold}.json", 50, 42, 200, 3, fold)
        assert (made["folds"], made["fold"], made["pool"]) == (3, fold, 250)
        assert json.loads((tmp_path / f"f{fold}.json").read_text())["fold"] == fold  # reports/data.json says so
        x, y = load_split(tmp_path / f"f{fold}" / "val.npz")
        assert np.bincount(y, minlength=10).min() >= 8  # stratified: 25 a class in the pool, about 8 a fold
        vals.append({image.tobytes() for image in x})
        trains.append({image.tobytes() for image in load_split(tmp_path / f"f{fold}" / "train.npz")[0]})
        assert not vals[-1] & trains[-1] and vals[-1] | trains[-1] == pool
        x_test, _ = load_split(tmp_path / f"f{fold}" / "test.npz")
        assert not {image.tobytes() for image in x_test} & pool
    assert sum(len(v) for v in vals) == 250 and set().union(*vals) == pool  # disjoint, and every image once
    refit = preprocess(small_archive, tmp_path / "all", tmp_path / "all.json", 50, 42, 200, 3, "all")
    assert refit["train"]["total"] == 250 and refit["val"]["total"] == 0
    assert {image.tobytes() for image in load_split(tmp_path / "all" / "train.npz")[0]} == pool


@pytest.mark.fault
@pytest.mark.parametrize(("data", "says"), [
    ({"folds": 1}, "data.folds: must be 0 (the fixed split) or at least 2"),
    ({"folds": 3, "fold": 3}, "data.fold: must be one of 0..2 (data.folds = 3), or all"),
    ({"folds": 0, "fold": 1}, "data.fold: applies to cross-validation only (data.folds >= 2)"),
    ({"folds": 3, "fold": "last"}, "data.fold: must be a fold's number (0..data.folds - 1) or all"),
    ({"folds": 40, "train_size": 250}, "data.folds: 40 folds of the pool's 300 images (data.train_size + "
                                       "data.val_size) hold fewer than one image per class each; at most 30"),
])
def test_bad_fold_params_are_one_line_naming_the_key(data: dict, says: str) -> None:
    raw = copy.deepcopy(load_params(REPO / "params.yaml").model_dump())
    raw["data"].update({"val_size": 50, **data})
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def fold_rows(values: dict[float, list[float]], seed: int = 1) -> list[dict]:
    return [{"train.l2": l2, "data.fold": str(fold), "train.seed": seed, "status": "FINISHED", "val_accuracy": acc,
             "val_loss": 1.0 - acc} for l2, accs in values.items() for fold, acc in enumerate(accs)]


def test_the_picks_are_glmnets_rules_in_accuracy_by_hand() -> None:
    accs = {0.0: [0.60, 0.62, 0.58], 1e-4: [0.63, 0.61, 0.62], 1e-3: [0.60, 0.62, 0.61], 1e-2: [0.50, 0.52, 0.51]}
    table = pd.DataFrame(fold_rows(accs))
    cv = summary(table, ["train.l2"], folds=3)
    by_hand = {l2: (sum(a) / 3, math.sqrt(sum((v - sum(a) / 3) ** 2 for v in a) / 2) / math.sqrt(3))
               for l2, a in accs.items()}
    for _, row in cv.iterrows():
        mean, se = by_hand[row["train.l2"]]
        assert row["val_accuracy_mean"] == pytest.approx(mean) and row["val_accuracy_se"] == pytest.approx(se)
        assert row["folds"] == 3 and row["complete"]
    chosen = picks(cv, "train.l2")
    assert chosen.best["train.l2"] == 1e-4  # 0.62, the best mean
    assert chosen.threshold == pytest.approx(0.62 - by_hand[1e-4][1])  # 0.62 - 0.00577
    # 1e-3's mean (0.61) lies below the threshold (0.6142), and so does 0.0's (0.60): only the best is within it.
    assert chosen.one_se["train.l2"] == 1e-4


def test_lambda_1se_is_the_strongest_penalty_within_one_standard_error() -> None:
    accs = {0.0: [0.60, 0.62, 0.58], 1e-4: [0.66, 0.58, 0.62], 1e-3: [0.60, 0.62, 0.61], 1e-2: [0.50, 0.52, 0.51]}
    cv = summary(pd.DataFrame(fold_rows(accs)), ["train.l2"], folds=3)
    chosen = picks(cv, "train.l2")
    se = math.sqrt(((0.66 - 0.62) ** 2 + (0.58 - 0.62) ** 2) / 2) / math.sqrt(3)  # 0.0231
    assert chosen.best["train.l2"] == 1e-4 and chosen.threshold == pytest.approx(0.62 - se)
    assert chosen.one_se["train.l2"] == 1e-3  # 0.61 >= 0.597, and the largest lambda that is; 1e-2 (0.51) is not


def test_seeds_are_averaged_within_a_fold_and_a_point_missing_a_fold_is_no_pick() -> None:
    rows = fold_rows({0.0: [0.5, 0.6, 0.7], 1e-3: [0.9, 0.9]}, seed=1) + fold_rows({0.0: [0.7, 0.8, 0.9]}, seed=2)
    cv = summary(pd.DataFrame(rows), ["train.l2"], folds=3).set_index("train.l2")
    assert cv.loc[0.0, "val_accuracy_mean"] == pytest.approx(0.7)  # folds 0.6, 0.7, 0.8
    assert cv.loc[0.0, "folds"] == 3 and not cv.loc[1e-3, "complete"]
    assert picks(cv.reset_index(), "train.l2").best["train.l2"] == 0.0  # 1e-3's 0.9 over two folds is no pick


@pytest.mark.e2e
def test_a_cross_validated_sweep_picks_by_hand_and_refits_its_pick_on_the_whole_pool(project: Path) -> None:
    from mlflow.tracking import MlflowClient

    from l2lab.tracking.registry import CHAMPION_ALIAS, REGISTERED_MODEL
    from project import run

    swept = run(project, "l2lab", "sweep", "--l2", "0,0.3", "--folds", "3", "--refit", "1se", "--jobs", "2")
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cifar10-l2").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`l2lab.role` = 'sweep'")
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    folds = [r for r in children if r.data.params["data.fold"] != "all"]
    (refit,) = [r for r in children if r.data.params["data.fold"] == "all"]
    assert len(folds) == 6 and {r.info.status for r in children} == {"FINISHED"} and parent.info.status == "FINISHED"
    assert sorted((r.data.params["train.l2"], r.data.params["data.fold"]) for r in folds) == [
        (l2, str(fold)) for l2 in ("0.0", "0.3") for fold in range(3)]
    assert all(r.data.params["data.folds"] == "3" for r in children)

    # lambda_min and lambda_1se by hand, from the fold runs' logged validation accuracy only.
    accs = {l2: [r.data.metrics["val_accuracy"] for r in folds if r.data.params["train.l2"] == l2]
            for l2 in ("0.0", "0.3")}
    means = {l2: sum(a) / 3 for l2, a in accs.items()}
    ses = {l2: math.sqrt(sum((v - means[l2]) ** 2 for v in a) / 2) / math.sqrt(3) for l2, a in accs.items()}
    losses = {l2: sum(r.data.metrics["val_loss"] for r in folds if r.data.params["train.l2"] == l2) / 3
              for l2 in accs}
    best = max(accs, key=lambda l2: (means[l2], -losses[l2], -float(l2)))
    one_se = max((l2 for l2 in accs if means[l2] >= means[best] - ses[best]), key=float)
    assert refit.data.params["train.l2"] == one_se and refit.data.tags["l2lab.refit"] == "lambda_1se"
    assert refit.data.tags["l2lab.refit.picked"] == f"train.l2 = {float(one_se):g}"
    assert refit.info.run_name == f"refit_l2={'0' if one_se == '0.0' else '0.3'}_{parent.data.tags['l2lab.sweep_id']}"
    assert "val_accuracy" not in refit.data.metrics and "test_accuracy" in refit.data.metrics  # validated on nothing
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    assert champion.tags["source_run_id"] == refit.info.run_id  # the refit is the champion
    assert f"lambda_1se picks train.l2 = {float(one_se):g}" in swept.stderr

    # The splits as MLflow dataset inputs: the fold's train and val, and the test set, each with its context.
    logged = client.get_run(folds[0].info.run_id).inputs.dataset_inputs
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in logged}
    fold = folds[0].data.params["data.fold"]
    assert inputs[f"synthetic demo data (not CIFAR-10) val, fold {fold} of 3"]["mlflow.data.context"] == "validation"
    assert {v["mlflow.data.context"] for v in inputs.values()} == {"training", "validation", "test"}

    # The report: mean ± standard error over folds, both picks, the cross-validation curve.
    folder = project / "reports" / "sweep" / parent.data.tags["l2lab.sweep_id"]
    assert (folder / "cv_curve.png").stat().st_size > 10_000 and (folder / "cv.csv").exists()
    text = (folder / "table.md").read_text()
    assert f"lambda_min (best mean val_accuracy): train.l2 = {float(best):g}" in text and "lambda_1se" in text

    # The folds' validation sets are disjoint and together the pool the refit trained on (from the split files).
    def images(name: str, split: str) -> set[bytes]:
        run(project, "dvc", "exp", "apply", name)
        return {image.tobytes() for image in load_split(project / "data" / "processed" / f"{split}.npz")[0]}

    l2_zero = sorted((r for r in folds if r.data.params["train.l2"] == "0.0"), key=lambda r: r.data.params["data.fold"])
    vals = [images(r.info.run_name, "val") for r in l2_zero]
    pool = images(refit.info.run_name, "train")
    assert sum(map(len, vals)) == len(pool) == 300 and set().union(*vals) == pool

    # A fold point reproduces: applied, then trained and evaluated again, its numbers to the last digit.
    run(project, "dvc", "exp", "apply", l2_zero[1].info.run_name)
    run(project, "dvc", "repro", "-f", "train", "evaluate")
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == l2_zero[1].data.metrics["test_accuracy"]
    assert metrics["weight_norm"]["total"] == l2_zero[1].data.metrics["weight_norm.total"]


@pytest.mark.e2e
@pytest.mark.fault
def test_bad_fold_options_are_refused_before_anything_starts(bare: Path) -> None:
    from project import run

    for args, says in ((["--folds", "40", "-S", "data.train_size=250"],
                        "data.folds: 40 folds of the pool's 300 images"),
                       (["--folds", "1"], "--folds must be at least 2, got 1"),
                       (["--refit", "min"],
                        "--refit picks a point by cross-validation: give --folds K as well"),
                       (["--folds", "3", "-S", "data.fold=1"],
                        "--folds sets data.folds and data.fold for every point")):
        swept = run(bare, "l2lab", "sweep", "--l2", "0", *args, check=False)
        assert swept.returncode == 1 and "Traceback" not in swept.stderr
        (line,) = [line for line in swept.stderr.splitlines() if "error:" in line]
        assert says in line, swept.stderr
    assert not (bare / "mlflow.db").exists() and not (bare / "optuna.journal").exists()
