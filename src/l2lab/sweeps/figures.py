"""A sweep report's figures: metrics against the swept value, learning curves, weight distributions."""

from __future__ import annotations

import itertools
from pathlib import Path

from l2lab.files import atomic_outputs
from l2lab.imports import pyplot


AXIS_LABELS = {"l2_equivalent": "L2 lambda (AdamW: at weight_decay = 2 x lambda)"}


LEGEND_MAX = 12  # lines a legend names; past this, a colour scale by value (a legend of 60 hid the plot)


def line_colors(fig, ax, values: list, axis: str) -> list:
    """One colour per line, in order. Up to LEGEND_MAX lines, named by a legend: one colour per value where
    values repeat (a value's seeds or folds, told apart by line_styles), else a distinct colour per line (the
    default cycle repeats after 10). Past LEGEND_MAX, a colour scale over the values (log-like, 0 shown), named
    by a colour bar."""
    import matplotlib as mpl

    if len(values) <= LEGEND_MAX:
        distinct = list(dict.fromkeys(values))
        if None not in distinct and len(distinct) < len(values) and len(distinct) <= 10:
            return [f"C{distinct.index(v)}" for v in values]
        if len(values) > 10:
            return [mpl.colormaps["tab20"](i) for i in range(len(values))]
        return [None] * len(values)
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    if len(numbers) != len(values) or len(set(numbers)) < 2:  # names, or one value: colour by position
        cmap = mpl.colormaps["viridis"].resampled(len(values))
        return [cmap(i) for i in range(len(values))]
    positive = [v for v in numbers if v > 0]
    norm = (mpl.colors.SymLogNorm(linthresh=min(positive), vmin=min(numbers), vmax=max(numbers)) if positive
            else mpl.colors.Normalize(vmin=min(numbers), vmax=max(numbers)))
    cmap = mpl.colormaps["viridis"]
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=AXIS_LABELS.get(axis, axis))
    return [cmap(norm(v)) for v in numbers]


def line_styles(values: list) -> list[str]:
    """Each line's style: its place among the lines of the same value (a value's first seed solid, its second
    dashed, ...), so lines that share a value's colour stay apart."""
    seen: dict = {}
    styles = []
    for v in values:
        styles.append(("-", "--", ":", "-.")[seen.get(v, 0) % 4])
        seen[v] = seen.get(v, 0) + 1
    return styles


def _lambda_axis(ax, values) -> None:
    """Log scale that still shows lambda = 0: linear below the smallest non-zero value."""
    positive = [v for v in values if v > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    distinct = sorted(set(values))
    if len(distinct) == 1:  # a one-point sweep: its value, wherever the scale's own ticks would fall
        ax.set_xticks(distinct, [f"{v:g}" for v in distinct])


def sweep_figures(summary, axis: str, curves: dict[str, list[float]], series: str | None = None,
                  values: dict[str, object] | None = None, over: str = "seeds") -> dict[str, object]:
    """PNG-ready figures: accuracy, gap and weight norm against the swept value, with the std over
    seeds as error bars where a value has several runs; val curves per point (values: each curve's
    swept value, which colours them past LEGEND_MAX curves). over: what a point's several runs are (seeds; a
    cross-validated sweep's folds).

    series: a column that splits the summary into lines of their own (a --versus-adamw sweep's
    penalty); its "none" rows, the unpenalized baseline, start every line.
    """
    plt = pyplot()
    figures = {}
    panels = [
        ("accuracy_vs_lambda.png", "accuracy", ["train_accuracy", "val_accuracy", "test_accuracy"]),
        ("gap_vs_lambda.png", "train - test accuracy", ["generalization_gap"]),
        ("weight_norm_vs_lambda.png", "total kernel L2 norm", ["weight_norm_total"]),
    ]
    several = bool((summary["n"] > 1).any())
    lines = series_groups(summary, series, axis)
    for name, ylabel, columns in panels:
        fig, ax = plt.subplots(figsize=(6, 4))
        for column in columns:
            for (label, rows), style in zip(lines.items(), itertools.cycle(("-", "--", ":", "-."))):
                errors = rows[f"{column}_std"].fillna(0.0) if several else None
                color = f"C{columns.index(column)}" if len(columns) > 1 else None
                ax.errorbar(rows[axis], rows[f"{column}_mean"], yerr=errors, marker="o", capsize=3, linestyle=style,
                            color=color, label=" ".join(filter(None, [column if len(columns) > 1 else "", label])))
        _lambda_axis(ax, summary[axis])
        ax.set_xlabel(AXIS_LABELS.get(axis, axis))
        ax.set_ylabel(ylabel + (f" (mean ± std over {over})" if several else ""))
        ax.grid(True, alpha=0.3)
        if len(columns) > 1 or len(lines) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        figures[name] = fig
    fig, ax = plt.subplots(figsize=(6, 4))
    of = [(values or {}).get(label) for label in curves]
    for (label, curve), color, style in zip(curves.items(), line_colors(fig, ax, of, axis), line_styles(of)):
        # in the table's order: by swept value
        ax.plot(range(1, len(curve) + 1), curve, marker=".", label=label, color=color, linestyle=style)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_accuracy")
    ax.grid(True, alpha=0.3)
    if 0 < len(curves) <= LEGEND_MAX:
        ax.legend(fontsize=7)
    fig.tight_layout()
    figures["val_accuracy_curves.png"] = fig
    return figures


def cv_figure(cv, axis: str, chosen, series: str | None = None):
    """The cross-validation curve: mean val_accuracy over folds ± one standard error against the penalty (log
    axis, 0 shown), one line per value of series; lambda_min and lambda_1se marked, the 1se threshold drawn."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, rows in series_groups(cv, series, axis).items():
        ax.errorbar(rows[axis], rows["val_accuracy_mean"], yerr=rows["val_accuracy_se"].fillna(0.0), marker="o",
                    capsize=3, label=label or "mean ± 1 s.e. over folds")
    _lambda_axis(ax, cv[axis])
    ax.set_xlim(ax.get_xlim())  # the points' range: the marks below would widen it (past 0, to negative lambdas)
    for row, style, name in ((chosen.best, "-", "lambda_min"), (chosen.one_se, "--", "lambda_1se")):
        ax.axvline(row[axis], color="C3" if name == "lambda_min" else "C2", linestyle=style,
                   label=f"{name} = {row[axis]:g}")
    ax.axhline(chosen.threshold, color="grey", linestyle=":", linewidth=1, label="best mean - 1 s.e.")
    ax.set_xlabel(AXIS_LABELS.get(axis, axis))
    ax.set_ylabel("val accuracy (mean ± 1 s.e. over folds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


HEATMAPS = (("val_accuracy_mean", "mean val accuracy"), ("test_accuracy_mean", "mean test accuracy"),
            ("weight_norm_total_mean", "mean total kernel norm"))


def best_cell(cells, x: str):
    """The row of cells with the best mean validation accuracy; ties go to the lower x (the weaker penalty)."""
    return cells.sort_values(["val_accuracy_mean", x], ascending=[False, True]).iloc[0]


def heatmap_figure(cells, x: str, y: str, title: str = ""):
    """Mean validation accuracy, test accuracy and total kernel norm over a grid of two axes, one panel each;
    x and y in grid order (a log-spaced grid shows as a log axis, 0 included); the cell with the best
    mean validation accuracy outlined in every panel."""
    import numpy as np
    from matplotlib.patches import Rectangle

    plt = pyplot()
    xs, ys = sorted(cells[x].unique()), sorted(cells[y].unique())
    fig, axes = plt.subplots(1, len(HEATMAPS), figsize=(5.2 * len(HEATMAPS), 4.4))
    best = best_cell(cells, x)
    for ax, (column, label) in zip(axes, HEATMAPS):
        grid = np.full((len(ys), len(xs)), np.nan)
        for _, row in cells.iterrows():
            grid[ys.index(row[y]), xs.index(row[x])] = row[column]
        image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, shrink=0.85)
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.3f}" if value < 10 else f"{value:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if value < np.nanmean(grid) else "black")
        ax.add_patch(Rectangle((xs.index(best[x]) - 0.5, ys.index(best[y]) - 0.5), 1, 1, fill=False, edgecolor="red",
                               linewidth=2.5))
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs], rotation=45, ha="right")
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(label)
    fig.suptitle((title + ": " if title else "") + f"best mean val accuracy outlined ({x} = {best[x]:g}, "
                 f"{y} = {best[y]:g})", fontsize=10)
    fig.tight_layout()
    return fig


def series_groups(frame, series: str | None, axis: str) -> dict[str, object]:
    """label -> rows, sorted by axis: one unlabelled group, or one per value of series with its
    "none" rows (the unpenalized baseline of a --versus-adamw sweep) in each."""
    import pandas as pd

    if series is None:
        return {"": frame.sort_values(axis)}
    base = frame[frame[series] == "none"]
    return {_series_label(series, name): pd.concat([base, group]).sort_values(axis)
            for name, group in frame[frame[series] != "none"].groupby(series, observed=True)}


def _series_label(series: str, value: object) -> str:
    """A line's legend label: a name as it is ("AdamW"), a number with its key ("learning_rate=0.001")."""
    return value if isinstance(value, str) else f"{series.split('.')[-1]}={value:g}"


def weight_distribution_figure(histograms: dict[str, dict[float, object]], axis: str):
    """Per layer, the final |w| histogram of each swept value, side by side; log-scale counts so a spike
    at zero shows. histograms: series ("" for a sweep with one) -> value -> rows (layer, bin_low,
    bin_high, count) of one run's last epoch; one row of panels per series."""
    plt = pyplot()
    layers = sorted({layer for group in histograms.values() for rows in group.values() for layer in rows["layer"]})
    width, height = max(len(layers), 1), max(len(histograms), 1)
    fig, axes = plt.subplots(height, width, figsize=(4 * width, 3.6 * height), squeeze=False)
    for row_axes, (series, group) in zip(axes, histograms.items()):
        for ax, layer in zip(row_axes, layers):
            colors = line_colors(fig, ax, list(group), axis)
            for (value, rows), color in zip(group.items(), colors):
                mine = rows[rows["layer"] == layer].sort_values("bin_low")
                # The first bin, [0, 1e-6), is drawn at 1e-7: "zero" on a log axis.
                left = mine["bin_low"].where(mine["bin_low"] > 0, 1e-7)
                ax.step(left, mine["count"].clip(lower=0.8), where="post", label=f"{axis}={value:g}", color=color)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{series}: {layer}" if series else layer)
            ax.set_xlabel("|w| (leftmost step: |w| < 1e-6)")
            ax.grid(True, alpha=0.3)
        row_axes[0].set_ylabel("weights (log scale)")
        if len(group) <= LEGEND_MAX:
            row_axes[0].legend(fontsize=7)
    fig.suptitle(f"Final kernel weight distributions by {axis}")
    fig.tight_layout()
    return fig


def save_figure(figure, path: Path) -> None:
    """Write a figure as PNG, atomically, and free it."""
    plt = pyplot()
    with atomic_outputs(path) as (tmp,):
        figure.savefig(tmp, dpi=110)
    plt.close(figure)
