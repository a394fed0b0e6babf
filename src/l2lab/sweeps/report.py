"""`l2lab report`: a sweep's (or a tune's) table and plots, and the champion chosen on validation accuracy."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from l2lab.errors import L2labError, first_line
from l2lab.files import atomic_outputs
from l2lab.studies import PRUNED_TAG, TRIAL_TAG
from l2lab.sweeps.figures import (best_cell, cv_figure, heatmap_figure, save_figure, series_groups, sweep_figures,
                                  weight_distribution_figure)
from l2lab.sweeps.cv import FOLD, Picks, at_chance, picks, summary as cv_summary
from l2lab.sweeps.grid import AXES as GRID_AXES, MATCHED_DECAY, SEED, Sweep, slug
from l2lab.tracking.owners import end_stale_runs
from l2lab.tracking.registry import CHAMPION_ALIAS, REGISTERED_MODEL, log_report, register_champion
from l2lab.tracking.store import connect
from l2lab.tracking.runs import COLLAPSED_TAG, HISTOGRAMS
from l2lab.tracking.sweep_runs import (axis_value, latest_sweep, sweep_axes, sweep_parent_id, sweep_runs, sweep_versus,
                                   table_artifact, tune_space)

log = logging.getLogger(__name__)

AXES = tuple(GRID_AXES.values())  # the params.yaml keys a sweep may vary; SEED is one of repeats, not of the plots
PENALTY, STRENGTH = "penalty", "l2_equivalent"  # the keys of a --versus-adamw report
OPTIMIZER = "train.optimizer"
COLUMNS = {  # report column -> MLflow metric
    "val_accuracy": "val_accuracy",
    "test_accuracy": "test_accuracy",
    "train_accuracy": "train_accuracy",
    "generalization_gap": "generalization_gap",
    "weight_norm_total": "weight_norm.total",
    "sparsity_total": "sparsity.total",
    "val_loss": "val_loss",
}


@dataclass(frozen=True)
class Report:
    sweep_id: str
    keys: list[str]  # what tells the sweep's points apart, seeds aside: [axis], or [penalty, axis]
    table: pd.DataFrame
    champion: pd.Series | None  # the row chosen by validation accuracy
    champion_version: str | None  # its version of the registered model
    folder: Path
    best_per_row: pd.DataFrame | None = None  # two numeric axes: the best x for each y (best_per_row)
    heat_axes: tuple[str, str] | None = None  # those axes, (x, y), where the sweep has them
    picks: str = ""  # a cross-validated sweep's lambda_min and lambda_1se, as a sentence
    refit_rule: str | None = None  # the champion is a refit: its rule (lambda_1se, lambda_min)


def sweep_table(runs: list[dict[str, Any]], axes: Sequence[str] = ()) -> pd.DataFrame:
    """One row per child run: swept params (the sweep's axes, and the penalties and seed of every sweep),
    epochs, accuracies, gap, norm, sparsity, names."""
    keys = list(dict.fromkeys((*axes, *AXES)))  # the sweep's axes first, then the others every sweep has
    rows = []
    for run in runs:
        row: dict[str, Any] = {key: (run["params"][key] if key == FOLD else axis_value(run["params"][key]))
                               for key in keys if key in run["params"]}  # a fold is 0..K-1 or "all": text
        if OPTIMIZER in run["params"]:  # names a --versus-adamw report's penalties
            row.setdefault(OPTIMIZER, run["params"][OPTIMIZER])
        row["epochs"] = int(run["params"].get("train.epochs", 0))
        row.update({col: run["metrics"].get(metric) for col, metric in COLUMNS.items()})
        row.update(experiment=run["name"], status=run["status"], mlflow_run_id=run["run_id"],
                   collapsed=run.get("tags", {}).get(COLLAPSED_TAG) == "true")
        rows.append(row)
    if not rows:
        raise L2labError("the sweep has no runs yet")
    return pd.DataFrame(rows).sort_values([k for k in keys if k in rows[0]]).reset_index(drop=True)


PENALTIES = ("train.l2", "train.weight_decay", "train.l1")  # what the lambda plots put on x, first found first
REPEATS = (SEED, FOLD)  # axes whose runs repeat a point: its seeds, its cross-validation folds


def plot_axis(recorded: dict[str, list[Any]]) -> str:
    """The axis the plots put on x: the first penalty the sweep varied, else its first numeric axis, else
    its first (train.l2 if it varied only seeds)."""
    varied = [key for key in recorded if key not in REPEATS]
    numeric = [key for key in varied
               if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in recorded[key])]
    return next((key for key in PENALTIES if key in varied), next(iter(numeric or varied), "train.l2"))


def point_keys(recorded: dict[str, list[Any]]) -> list[str]:
    """What tells a sweep's points apart, seeds and folds aside: every other axis in grid order, the plot axis
    last."""
    axis = plot_axis(recorded)
    return [key for key in recorded if key not in (*REPEATS, axis)] + [axis]


def versus_columns(table: pd.DataFrame) -> pd.DataFrame:
    """A --versus-adamw sweep's table with penalty ("none", "L2 (Adam)" and "AdamW", or under SGD "L2 (SGD)" and
    "SGDW") and l2_equivalent: train.l2, or the L2 lambda whose SGD update the decoupled weight_decay matches
    (weight_decay / 2)."""
    l2, decay = table["train.l2"], table["train.weight_decay"]
    sgd = table.get(OPTIMIZER, pd.Series("adam", index=table.index)) == "sgd"
    penalty = np.where(decay > 0, np.where(sgd, "SGDW", "AdamW"),
                       np.where(l2 > 0, np.where(sgd, "L2 (SGD)", "L2 (Adam)"), "none"))
    order = [name for name in ("none", "L2 (Adam)", "AdamW", "L2 (SGD)", "SGDW") if name in set(penalty)]
    ordered = pd.Categorical(penalty, categories=order, ordered=True)  # table order
    return table.assign(**{PENALTY: ordered, STRENGTH: l2 + decay / MATCHED_DECAY})


def _keys(by: str | Sequence[str]) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


def _matches(frame: pd.DataFrame, keys: list[str], values: tuple) -> pd.Series:
    """Rows whose keys equal values."""
    return (frame[keys] == pd.Series(values, index=keys)).all(axis=1)


def point_label(row: pd.Series, by: str | Sequence[str]) -> str:
    """"train.l2 = 0.001", or "penalty = AdamW, l2_equivalent = 0.001"."""
    return ", ".join(f"{k} = {row[k]:g}" if isinstance(row[k], float) else f"{k} = {row[k]}" for k in _keys(by))


def choose_champion(table: pd.DataFrame, by: str | Sequence[str]) -> pd.Series | None:
    """Best mean validation accuracy over seeds, then that point's best run; ties go to lower val_loss.

    by: the column(s) that tell points apart. The test set plays no part: it stays an
    unbiased estimate for the chosen model.
    """
    keys = _keys(by)
    # Evaluated runs only: one whose experiment failed after training has no test metrics (older sweeps
    # left such runs FINISHED).
    done = table[(table["status"] == "FINISHED") & table["val_accuracy"].notna() & table["test_accuracy"].notna()]
    done = done[~at_chance(done)]
    if PRUNED in done:  # a pruned trial's accuracy is that of a shortened training: never the champion
        done = done[done[PRUNED].isna()]
    if done.empty:
        return None
    means = done.groupby(keys, observed=True).agg(val=("val_accuracy", "mean"), loss=("val_loss", "mean"))
    best = means.sort_values(["val", "loss"], ascending=[False, True]).index[0]
    candidates = done[_matches(done, keys, best if isinstance(best, tuple) else (best,))]
    return candidates.sort_values(["val_accuracy", "val_loss"], ascending=[False, True]).iloc[0]


SUMMARIZED = ("val_accuracy", "test_accuracy", "train_accuracy", "generalization_gap", "weight_norm_total",
              "sparsity_total", "zero_share")
ZERO_BELOW = 1e-6  # |w| under this is zero for the report's zero_share: the first histogram bin


def summary_table(table: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """Per point (value of the column(s) by), over its finished runs (seeds): n, and mean and std of
    each SUMMARIZED column. std is the sample standard deviation (ddof 1); NaN with a single run.
    """
    keys = _keys(by)
    done = table[table["status"] == "FINISHED"]
    columns = [c for c in SUMMARIZED if c in table]  # zero_share only where runs logged histograms
    grouped = done.assign(**{c: pd.to_numeric(done[c]) for c in columns}).groupby(keys, observed=True)[columns]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    summary.insert(0, "n", done.groupby(keys, observed=True).size())
    ordered = ["n", *(f"{c}_{s}" for c in columns for s in ("mean", "std"))]
    return summary[ordered].reset_index()


def summary_markdown(summary: pd.DataFrame, by: str | Sequence[str]) -> str:
    """The summary as 'mean ± std (n runs)' cells."""
    def cell(row: pd.Series, column: str) -> str:
        mean, std = row[f"{column}_mean"], row[f"{column}_std"]
        return f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"

    columns = [c for c in SUMMARIZED if f"{c}_mean" in summary]
    shown = pd.DataFrame({**{k: summary[k] for k in _keys(by)}, "runs": summary["n"],
                          **{c: [cell(r, c) for _, r in summary.iterrows()] for c in columns}})
    return markdown(shown)


def noise_line(summary: pd.DataFrame, by: str | Sequence[str], champion: float | str | tuple) -> str:
    """Whether the champion's point (its value of by) beats the runner-up by more than the seed-to-seed spread."""
    keys = _keys(by)
    ranked = summary.sort_values("val_accuracy_mean", ascending=False).reset_index(drop=True)
    if len(ranked) < 2:
        return "Only one value finished: nothing to compare."
    best, second = ranked.iloc[0], ranked.iloc[1]
    is_champion = _matches(ranked, keys, champion if isinstance(champion, tuple) else (champion,))
    if not is_champion.iloc[0]:  # the champion is chosen on mean val_accuracy too; ties go by val_loss
        best, second = ranked[is_champion].iloc[0], ranked.iloc[0]
    gap = best["val_accuracy_mean"] - second["val_accuracy_mean"]
    spread = max(best["val_accuracy_std"], second["val_accuracy_std"])
    if pd.isna(spread):
        return (f"One run per value: {point_label(best, keys)} leads {point_label(second, keys)} by {gap:.4f} "
                "val_accuracy, with no seed-to-seed spread to compare with; rerun with --seeds before trusting "
                "the ranking.")
    verdict = "within the noise of" if gap <= spread else "ahead of"
    return (f"{point_label(best, keys)} is {verdict} the runner-up {point_label(second, keys)}: mean val_accuracy "
            f"{best['val_accuracy_mean']:.4f} vs {second['val_accuracy_mean']:.4f} (difference {gap:.4f}; "
            f"std over seeds up to {spread:.4f}).")


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-style Markdown table."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def make_report(sweep: Sweep, out_root: Path) -> Report:
    """Build a sweep's report, register its champion, log the report to the sweep's parent run."""
    store = connect()
    end_stale_runs(store)
    sweep_id, parent_id = sweep.id, sweep.parent_run_id
    runs = sweep_runs(store, parent_id)
    space = tune_space(store, parent_id)
    # A tune's values are drawn, one per trial: its keys are the searched ones.
    recorded = sweep_axes(store, parent_id) if space is None else {key: [] for key in space}
    table = sweep_table(runs, list(recorded))
    if space is not None:
        table = with_trials(table, runs)
    for key in recorded:  # a point that failed before training, in a sweep that did not tag it
        if key not in table:
            table[key] = np.nan
    histograms = final_histograms(store, table)
    table["zero_share"] = [zero_share(histograms[r]) if r in histograms else None for r in table["mlflow_run_id"]]
    if sweep_versus(store, parent_id):
        table, keys = versus_columns(table), [PENALTY, STRENGTH]
    else:
        keys = point_keys(recorded)
    folds = len(recorded.get(FOLD, []))
    grid = table[table[FOLD] != "all"] if folds else table  # a refit is no point of the grid
    cv = cv_summary(grid, keys, folds) if folds else None
    chosen = picks(cv, keys[-1]) if cv is not None else None
    champion = refit_row(table) if folds else None
    rule = next((r["tags"].get("l2lab.refit") for r in runs if r["run_id"] == champion["mlflow_run_id"]), None) \
        if champion is not None else None
    if champion is None:
        champion = choose_champion(grid, keys)
    version = register_champion(store, champion["mlflow_run_id"]) if champion is not None else None
    folder = out_root / sweep_id
    best, heat_axes = write_files(folder, grid, keys, {r["name"]: r["val_curve"] for r in runs}, champion, version,
                                  lines=space is None, cv=cv, chosen=chosen, every=table, refit=rule)
    if space is not None:
        tune_figures(sweep_id, folder)
    if histograms and (len(keys) == 1 or sweep_versus(store, parent_id)):  # one axis (or coupled vs decoupled)
        save_figure(weight_distribution_figure(distributions(grid, keys, histograms), keys[-1]),
                    folder / "weight_distributions.png")
    log_report(store, parent_id, folder)
    picked = cv_section(cv, keys, chosen).split("\n\n")[-2] if cv is not None else ""
    return Report(sweep_id, keys, table, champion, version, folder, best, heat_axes, picked, rule)


def collapsed_line(table: pd.DataFrame) -> str:
    """How many runs collapsed to chance (tag l2lab.collapsed), and that they are in no pick; "" when none."""
    gone = table[at_chance(table)]
    if gone.empty:
        return ""
    return (f"{len(gone)} run(s) collapsed: validation accuracy at chance (tag {COLLAPSED_TAG}), left out of the "
            f"champion and the picks: {', '.join(gone['experiment'])}")


def refit_row(table: pd.DataFrame) -> pd.Series | None:
    """A cross-validated sweep's refit run (data.fold all), evaluated: the champion by the sweep's rule."""
    done = table[(table[FOLD] == "all") & (table["status"] == "FINISHED") & table["test_accuracy"].notna()]
    return done.iloc[0] if len(done) else None


def distributions(table: pd.DataFrame, keys: list[str], histograms: dict[str, pd.DataFrame]
                  ) -> dict[str, dict[float, pd.DataFrame]]:
    """The histograms a weight-distribution figure draws: per series (penalty; "" when the sweep has
    one), per value of the axis, those of its first seed's run. The unpenalized point ("none")
    stands in every series, as the baseline each is compared with."""
    axis, series = keys[-1], (keys[0] if len(keys) > 1 else None)
    first = table[table["mlflow_run_id"].isin(histograms)].sort_values([axis, *([SEED] if SEED in table else [])])
    first = first.drop_duplicates([*keys])
    return {name: {row[axis]: histograms[row["mlflow_run_id"]] for _, row in rows.iterrows()}
            for name, rows in series_groups(first, series, axis).items()}


def final_histograms(store: Any, table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Run id -> the last epoch's |w| histograms (rows: layer, bin_low, bin_high, count), for finished runs."""
    found = {}
    for run_id in table.loc[table["status"] == "FINISHED", "mlflow_run_id"]:
        rows = table_artifact(store, run_id, HISTOGRAMS)
        if rows:
            frame = pd.DataFrame(rows)
            found[run_id] = frame[frame["epoch"] == frame["epoch"].max()]
    return found


def zero_share(histogram: pd.DataFrame) -> float:
    """The share of kernel weights with |w| < 1e-6 (the histogram's first bin), all layers together."""
    return float(histogram.loc[histogram["bin_high"] <= ZERO_BELOW, "count"].sum() / histogram["count"].sum())


def write_files(folder: Path, table: pd.DataFrame, keys: list[str], curves: dict[str, list[float]],
                champion: pd.Series | None, version: str | None, lines: bool = True, cv: pd.DataFrame | None = None,
                chosen: Picks | None = None, every: pd.DataFrame | None = None, refit: str | None = None
                ) -> tuple[pd.DataFrame | None, tuple[str, str] | None]:
    """table.csv, summary.csv, table.md (summary, runs, champion and noise lines) and the PNG plots; with two
    numeric axes also best_per_row.csv and heatmaps. Returns the best-per-row table and its (x, y), if any.
    lines=False (a tune: drawn values, not a grid): no line plots, heatmaps or best-per-row table.
    cv: a cross-validated sweep's summary over folds (cv.csv, its section of table.md, cv_curve.png), with its
    picks; table is then the fold runs, every the fold runs and the refit (table.csv)."""
    folder.mkdir(parents=True, exist_ok=True)
    every = table if every is None else every
    summary = summary_table(table, keys)
    noise = noise_line(summary, keys, tuple(champion[k] for k in keys)) if champion is not None and not refit else ""
    cv_text = cv_section(cv, keys, chosen) if cv is not None else ""
    gone = collapsed_line(every)
    grid2 = two_axes(summary, keys) if lines else None
    best = best_per_row(summary_table(table[~at_chance(table)], keys), keys, *grid2) if grid2 else None
    best_text = best_title(*grid2) + "\n\n" + markdown(best) + "\n" if grid2 else ""
    outputs = (folder / "table.csv", folder / "summary.csv", folder / "table.md")
    with atomic_outputs(*outputs) as (csv_tmp, sum_tmp, md_tmp):
        every.to_csv(csv_tmp, index=False)
        summary.to_csv(sum_tmp, index=False)
        md_tmp.write_text(cv_text + "Mean ± std over seeds (sample std; none with one run):\n\n"
                          + summary_markdown(summary, keys)
                          + "\n" + best_text + "\nEvery run:\n\n" + markdown(every) + "\n"
                          + champion_line(champion, keys, version, refit) + "\n\n" + noise + "\n"
                          + (f"\n{gone}\n" if gone else ""))
    if cv is not None:
        with atomic_outputs(folder / "cv.csv") as (cv_tmp,):
            cv.to_csv(cv_tmp, index=False)
    if best is not None:
        with atomic_outputs(folder / "best_per_row.csv") as (best_tmp,):
            best.to_csv(best_tmp, index=False)
    several_seeds = SEED in table and table[SEED].nunique() > 1
    labels = {row["experiment"]: point_label(row, keys) + (f", seed {row[SEED]:g}" if several_seeds else "")
              for _, row in table.iterrows()}
    ordered = {labels[name]: curves[name] for name in table["experiment"] if name in curves}
    values = {labels[row["experiment"]]: row[keys[-1]] for _, row in table.iterrows()}
    if summary.empty:  # no finished run: the tables say so, and there is nothing to plot
        return best, grid2
    if lines and pd.api.types.is_numeric_dtype(summary[keys[-1]]):  # lines against a number; names have the tables
        lines, series = with_series(summary, keys)
        over = "folds" if cv is not None else "seeds"
        for name, figure in sweep_figures(lines, keys[-1], ordered, series, values, over).items():
            save_figure(figure, folder / name)
    if grid2:
        for name, (cells, title) in heatmap_panels(summary, keys, *grid2).items():
            save_figure(heatmap_figure(cells, *grid2, title), folder / name)
    if cv is not None and chosen is not None and pd.api.types.is_numeric_dtype(cv[keys[-1]]):
        cv_lines, series = with_series(cv, keys)
        save_figure(cv_figure(cv_lines, keys[-1], chosen, series), folder / "cv_curve.png")
    return best, grid2


def cv_section(cv: pd.DataFrame, keys: list[str], chosen: Picks | None) -> str:
    """table.md's cross-validation part: per point, mean ± standard error over folds, the two picks, the rule."""
    def cell(row: pd.Series, column: str) -> str:
        mean, se = row[f"{column}_mean"], row[f"{column}_se"]
        return f"{mean:.4f}" if pd.isna(se) else f"{mean:.4f} ± {se:.4f}"

    shown = pd.DataFrame({**{k: cv[k] for k in keys}, "folds": cv["folds"],
                          **{c: [cell(r, c) for _, r in cv.iterrows()] for c in ("val_accuracy", "val_loss")}})
    text = ("Cross-validation: mean ± standard error over folds (a fold's seeds averaged first; standard error = "
            "sample std / sqrt(folds)):\n\n" + markdown(shown) + "\n")
    if chosen is None:
        return text + "No point has all its folds finished: no lambda_min, no lambda_1se.\n\n"
    return text + (f"lambda_min (best mean val_accuracy): {point_label(chosen.best, keys)}, "
                   f"{chosen.best['val_accuracy_mean']:.4f}. lambda_1se (the largest {keys[-1]}, the simpler model, "
                   f"whose mean val_accuracy is at least the best mean minus its standard error, "
                   f"{chosen.threshold:.4f}): {point_label(chosen.one_se, keys)}, "
                   f"{chosen.one_se['val_accuracy_mean']:.4f}. Only points with every fold finished are "
                   "considered; the test set plays no part.\n\n")


TRIAL, PRUNED = "trial", "pruned_at_epoch"  # a tune's columns: the trial's number, the epoch its pruner stopped it at
TUNE_FIGURES = {  # file -> Optuna's own matplotlib plot of the study
    "optimization_history.png": "plot_optimization_history",
    "parallel_coordinate.png": "plot_parallel_coordinate",
    "param_importances.png": "plot_param_importances",
    "intermediate_values.png": "plot_intermediate_values",
}


def with_trials(table: pd.DataFrame, runs: list[dict[str, Any]]) -> pd.DataFrame:
    """A tune's table with each run's trial number and, for a pruned one, the epoch it stopped at; by trial."""
    tags = {r["run_id"]: r["tags"] for r in runs}
    trial = [tags[r].get(TRIAL_TAG) for r in table["mlflow_run_id"]]
    pruned = [tags[r].get(PRUNED_TAG) for r in table["mlflow_run_id"]]
    table = table.assign(**{TRIAL: pd.array([int(t) if t is not None else None for t in trial], dtype="Int64"),
                            PRUNED: pd.array([int(p) if p is not None else None for p in pruned], dtype="Int64")})
    table = table[[TRIAL, PRUNED, *(c for c in table.columns if c not in (TRIAL, PRUNED))]]
    return table.sort_values(TRIAL).reset_index(drop=True)


def tune_figures(study_name: str, folder: Path) -> list[str]:
    """Optuna's optimization history, parallel coordinates, parameter importances and intermediate values
    (each trial's val_accuracy per epoch) of the tune's study, as PNGs; returns the files drawn. A plot Optuna
    cannot draw yet (importances need two finished trials) is said in one line and left out."""
    import warnings

    import optuna
    import optuna.visualization.matplotlib as plots

    from l2lab.imports import pyplot
    from l2lab.studies import load_study

    try:
        study = load_study(study_name)
    except (KeyError, L2labError) as exc:
        log.warning("the tune's Optuna study %s was not found (%s): its Optuna plots are left out", study_name, exc)
        return []
    pyplot()  # the non-interactive backend
    drawn = []
    for name, function in TUNE_FIGURES.items():
        try:
            with warnings.catch_warnings():
                # "matplotlib backend: experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = getattr(plots, function)(study)
        except (ValueError, RuntimeError) as exc:
            log.info("%s not drawn: %s", name, first_line(exc))
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        save_figure(figure, folder / name)
        drawn.append(name)
    return drawn


def best_title(x: str, y: str) -> str:
    """The heading of the best-per-row table, in table.md and as `l2lab sweep` prints it."""
    return f"Best {x} for each {y} (by mean validation accuracy):"


SERIES = "series"  # the line label of a sweep over three axes or more: every axis but the plotted one


def with_series(summary: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, str | None]:
    """The summary and the column whose values are the lines of its plots: none for one axis, the other
    axis for two (or a --versus-adamw sweep's penalty), a label of all the others for more."""
    if len(keys) <= 2:
        return summary, (keys[0] if len(keys) > 1 else None)
    labels = [", ".join(f"{k.split('.')[-1]}={_shown(row[k])}" for k in keys[:-1]) for _, row in summary.iterrows()]
    return summary.assign(**{SERIES: labels}), SERIES


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def two_axes(summary: pd.DataFrame, keys: list[str]) -> tuple[str, str] | None:
    """(x, y) of a sweep's heatmaps: two numeric axes, x the plotted one (the penalty), y the other
    (e.g. train.learning_rate); None when the sweep has fewer than two numeric axes of several values."""
    numeric = [k for k in keys
               if k in summary and pd.api.types.is_numeric_dtype(summary[k]) and summary[k].nunique() > 1]
    if len(numeric) < 2 or keys[-1] not in numeric:
        return None
    return keys[-1], next(k for k in numeric if k != keys[-1])


def heatmap_panels(summary: pd.DataFrame, keys: list[str], x: str, y: str) -> dict[str, tuple[pd.DataFrame, str]]:
    """File name -> (the summary rows of one heatmap, its title): heatmap_<y>_<x>.png
    (heatmap_learning_rate_l2.png), or one per value of the other axes
    (heatmap_learning_rate_l2_optimizer=sgd.png)."""
    rest = [k for k in keys if k not in (x, y)]
    stem = f"heatmap_{y.split('.')[-1]}_{x.split('.')[-1]}"
    if not rest:
        return {f"{stem}.png": (summary, "")}
    panels = {}
    for values, cells in summary.groupby(rest, observed=True):
        values = values if isinstance(values, tuple) else (values,)
        label = "_".join(f"{k.split('.')[-1]}={slug(_shown(v))}" for k, v in zip(rest, values))
        panels[f"{stem}_{label}.png"] = (cells, ", ".join(f"{k} = {_shown(v)}" for k, v in zip(rest, values)))
    return panels


def best_per_row(summary: pd.DataFrame, keys: list[str], x: str, y: str) -> pd.DataFrame:
    """For each value of y (and of any other axis): the x with the best mean validation accuracy, and its
    mean validation and test accuracy. Ties go to the lower x (the weaker penalty)."""
    rest = [k for k in keys if k not in (x, y)]
    rows = []
    for _, cells in summary.groupby([*rest, y], observed=True):
        top = best_cell(cells, x)
        rows.append({**{k: top[k] for k in (*rest, y)}, f"best {x}": top[x], "runs": top["n"],
                     "val_accuracy_mean": top["val_accuracy_mean"], "test_accuracy_mean": top["test_accuracy_mean"]})
    # Its columns even with no row (every run collapsed): the CSV keeps its header.
    return pd.DataFrame(rows, columns=[*rest, y, f"best {x}", "runs", "val_accuracy_mean", "test_accuracy_mean"])


def champion_line(champion: pd.Series | None, keys: list[str], version: str | None, refit: str | None = None) -> str:
    if champion is None:
        return "No finished run: no champion."
    registered = f"; registered as {REGISTERED_MODEL} version {version} (alias {CHAMPION_ALIAS})" if version else ""
    if refit:  # trained on the whole pool: no validation accuracy of its own
        return (f"Champion (the {refit} refit, trained on every train and val image): {point_label(champion, keys)}, "
                f"test_accuracy {champion['test_accuracy']:.4f}, experiment {champion['experiment']}, MLflow run "
                f"{champion['mlflow_run_id']}{registered}")
    return (f"Champion (best validation accuracy): {point_label(champion, keys)}, val_accuracy "
            f"{champion['val_accuracy']:.4f}, test_accuracy {champion['test_accuracy']:.4f}, "
            f"experiment {champion['experiment']}, MLflow run {champion['mlflow_run_id']}{registered}")


def find_sweep(sweep_id: str | None) -> Sweep:
    """The sweep with this id, or the latest one: for `l2lab report`, which names a sweep by its id."""
    store = connect()
    if sweep_id is None:
        sweep_id, parent_id = latest_sweep(store)
    else:
        parent_id = sweep_parent_id(store, sweep_id)
    return Sweep(sweep_id, parent_id)
