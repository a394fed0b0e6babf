"""Cross-validation's picks (glmnet's cv.glmnet, in accuracy): per point the mean validation accuracy and loss over
its folds with their standard errors; lambda_min, the point with the best mean; lambda_1se, the strongest
penalty whose mean lies within one standard error of the best."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

FOLD, FOLDS = "data.fold", "data.folds"  # the params.yaml keys of a fold point
RULES = ("min", "1se")


@dataclass(frozen=True)
class Picks:
    """The two picks of a cross-validated sweep (summary rows), and the rule's threshold."""

    best: pd.Series  # lambda_min: the best mean val_accuracy (ties: lower mean val_loss, then the weaker penalty)
    one_se: pd.Series  # lambda_1se: the strongest penalty with mean val_accuracy >= threshold
    threshold: float  # best mean val_accuracy minus its standard error over folds

    def row(self, rule: str) -> pd.Series:
        return self.best if rule == "min" else self.one_se


def at_chance(table: pd.DataFrame) -> pd.Series:
    """Which of a sweep table's runs collapsed to chance (its "collapsed" column, from the tag); none where the
    table has no such column. Such a run is in no pick: a training that failed, whatever its status says."""
    return table["collapsed"].astype(bool) if "collapsed" in table else pd.Series(False, index=table.index)


def summary(table: pd.DataFrame, keys: list[str], folds: int) -> pd.DataFrame:
    """One row per point (its values of keys): folds finished, mean and standard error over folds of
    val_accuracy and val_loss (a fold's several seeds averaged first). Points with a fold missing (failed, or
    collapsed to chance) are kept, with complete False: no pick considers them."""
    done = table[(table["status"] == "FINISHED") & table["val_accuracy"].notna()]
    done = done[~at_chance(done)]  # a collapsed fold counts as missing
    per_fold = done.groupby([*keys, FOLD], observed=True)[["val_accuracy", "val_loss"]].mean().reset_index()
    grouped = per_fold.groupby(keys, observed=True)
    out = grouped[["val_accuracy", "val_loss"]].mean().add_suffix("_mean")
    spread = grouped[["val_accuracy", "val_loss"]].std(ddof=1)
    counts = grouped.size()
    for column in ("val_accuracy", "val_loss"):
        out[f"{column}_se"] = spread[column] / counts.map(math.sqrt)
    out.insert(0, "folds", counts)
    out["complete"] = counts == folds
    return out.reset_index()


def picks(cv: pd.DataFrame, axis: str) -> Picks | None:
    """lambda_min and lambda_1se among the complete points; axis is the penalty whose larger values make the
    simpler model (train.l2, train.weight_decay or train.l1). None when no point has all its folds."""
    eligible = cv[cv["complete"]]
    if eligible.empty:
        return None
    ranked = eligible.sort_values(["val_accuracy_mean", "val_loss_mean", axis], ascending=[False, True, True])
    best = ranked.iloc[0]
    threshold = best["val_accuracy_mean"] - (0.0 if pd.isna(best["val_accuracy_se"]) else best["val_accuracy_se"])
    within = eligible[eligible["val_accuracy_mean"] >= threshold]
    one_se = within.sort_values([axis, "val_accuracy_mean"], ascending=[False, False]).iloc[0]
    return Picks(best, one_se, float(threshold))
