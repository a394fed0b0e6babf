"""Sweep grid building and validation, and the report's table and champion choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from l2lab.errors import L2labError
from l2lab.params import ParamsError
from l2lab.sweeps.report import choose_champion, markdown, plot_axis, sweep_table
from l2lab.sweeps.grid import grid, parse_sets, parse_values, validate

REPO = Path(__file__).resolve().parents[1]


def test_parse_values_and_sets() -> None:
    assert parse_values("--l2", "0, 1e-5,1e-4,") == ["0", "1e-5", "1e-4"]
    with pytest.raises(L2labError, match="--l2: 'abc' is not a number"):
        parse_values("--l2", "0,abc")
    with pytest.raises(L2labError, match="--l2: give at least one value"):
        parse_values("--l2", " , ")
    with pytest.raises(L2labError, match="--l2: 1e-3 and 0.001 are the same value; give each value once"):
        parse_values("--l2", "0,1e-3,0.001")
    assert parse_sets(["train.epochs=1", "train.seed = 7"]) == {"train.epochs": "1", "train.seed": "7"}
    with pytest.raises(L2labError, match="expected key=value"):
        parse_sets(["train.epochs"])


def test_grid_is_the_cartesian_product_with_fixed_overrides() -> None:
    points = grid("sw1", {"train.l2": ["0", "1e-4"], "train.seed": ["1", "2"]}, {"train.epochs": "1"})
    assert [p.name for p in points] == ["l2=0_seed=1_sw1", "l2=0_seed=2_sw1", "l2=1e-4_seed=1_sw1",
                                        "l2=1e-4_seed=2_sw1"]
    assert points[3].sets == {"train.epochs": "1", "train.l2": "1e-4", "train.seed": "2"}


@pytest.mark.parametrize(
    ("axes", "fixed", "message"),
    [
        ({"train.l2": ["-1"]}, {}, "train.l2: Input should be greater than or equal to 0"),
        ({"train.l2": ["0"]}, {"train.epochs": "0"}, "train.epochs: Input should be greater than or equal to 1"),
        ({"train.l2": ["0"]}, {"train.beta_1": "0.9"}, "train.beta_1: unknown key"),
    ],
)
def test_validate_rejects_bad_points_before_queueing(axes: dict, fixed: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        validate(REPO / "params.yaml", grid("sw", axes, fixed))


def run(name: str, l2: float, val: float | None, test: float | None, status: str = "FINISHED", seed: int = 42,
        val_loss: float = 1.0) -> dict:
    metrics = {} if val is None else {"val_accuracy": val, "test_accuracy": test, "train_accuracy": 0.9,
                                      "generalization_gap": 0.9 - test, "weight_norm.total": 10.0,
                                      "sparsity.total": 0.1, "val_loss": val_loss}
    params = {"train.l2": str(l2), "train.l1": "0.0", "train.weight_decay": "0.0", "train.seed": str(seed),
              "train.epochs": "3"}
    return {"run_id": f"id-{name}", "name": name, "status": status, "params": params, "metrics": metrics,
            "val_curve": []}


def test_champion_is_chosen_on_validation_never_on_test() -> None:
    table = sweep_table([
        run("a", 0.0, val=0.60, test=0.70),  # best test accuracy: must not matter
        run("b", 1e-3, val=0.65, test=0.62),
        run("c", 1e-2, val=0.50, test=0.50),
        run("d", 1e-1, val=None, test=None, status="FAILED"),
    ])
    assert list(table["train.l2"]) == [0.0, 1e-3, 1e-2, 1e-1]
    assert choose_champion(table, "train.l2")["experiment"] == "b"


def test_champion_uses_mean_over_seeds_and_breaks_ties_on_val_loss() -> None:
    table = sweep_table([
        run("a1", 0.0, val=0.70, test=0.6, seed=1), run("a2", 0.0, val=0.50, test=0.6, seed=2),  # mean 0.60
        run("b1", 1e-3, val=0.62, test=0.6, seed=1), run("b2", 1e-3, val=0.64, test=0.6, seed=2),  # mean 0.63
    ])
    assert choose_champion(table, "train.l2")["experiment"] == "b2"
    tied = sweep_table([run("x", 0.0, val=0.6, test=0.5, val_loss=1.2),
                        run("y", 1e-3, val=0.6, test=0.5, val_loss=1.1)])
    assert choose_champion(tied, "train.l2")["experiment"] == "y"
    assert choose_champion(sweep_table([run("f", 0.0, None, None, status="FAILED")]), "train.l2") is None


def test_markdown_table() -> None:
    text = markdown(pd.DataFrame({"a": [1.23456, 2.0], "b": ["x", "y"]}))
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | x |", "| 2 | y |"]


def test_plot_axis_is_the_recorded_penalty_not_the_seeds() -> None:
    assert plot_axis({"train.seed": [1, 2], "train.l1": [0, 1e-4]}) == "train.l1"
    assert plot_axis({"train.seed": [1, 2]}) == "train.l2"
    assert plot_axis({"train.weight_decay": [0, 1e-3]}) == "train.weight_decay"


def test_jobs_are_clamped_to_points_and_cores(caplog: pytest.LogCaptureFixture) -> None:
    from l2lab.sweeps.run import worker_count

    assert worker_count(1000, points=5, cores=2) == 2
    assert "--jobs 1000: starting 2 worker(s) (5 point(s), 2 core(s))" in caplog.text
    assert worker_count(4, points=3, cores=16) == 3
    assert worker_count(2, points=8, cores=2) == 2


def test_progress_line_shows_each_running_point_and_the_time_left() -> None:
    from l2lab.sweeps.follow import Progress, progress_line

    line = progress_line(1, 4, 0, {"l2=0.01_sw": Progress(5, 10, 0.6123)}, elapsed=300.0)
    # 1.45 points done in 300 s (a running point's epochs count for 90% of it): 2.55 left take 528 s
    assert line == "1/4 done (0 failed), 1 running; l2=0.01_sw: epoch 5/10, val_accuracy 0.6123; about 9 min left"
    assert (progress_line(0, 2, 0, {"a": Progress(0, 10, None)}, elapsed=20.0)
            == "0/2 done (0 failed), 1 running; a: epoch 0/10")
    assert progress_line(2, 2, 1, {}, elapsed=50.0) == "2/2 done (1 failed), 0 running"


def test_summary_is_mean_and_sample_std_over_seeds() -> None:
    from l2lab.sweeps.report import summary_markdown, summary_table

    table = sweep_table([
        run("a1", 0.0, val=0.60, test=0.5, seed=1), run("a2", 0.0, val=0.64, test=0.7, seed=2),
        run("b1", 1e-3, val=0.70, test=0.6, seed=1),
        run("c1", 1e-2, val=None, test=None, status="FAILED", seed=1),
    ])
    summary = summary_table(table, "train.l2")
    assert list(summary["train.l2"]) == [0.0, 1e-3] and list(summary["n"]) == [2, 1]
    assert summary.loc[0, "val_accuracy_mean"] == pytest.approx(0.62)
    assert summary.loc[0, "val_accuracy_std"] == pytest.approx(np.std([0.60, 0.64], ddof=1))
    assert pd.isna(summary.loc[1, "val_accuracy_std"])  # one run: no spread, not a zero
    text = summary_markdown(summary, "train.l2")
    assert "| 0 | 2 | 0.6200 ± 0.0283 |" in text and "| 0.001 | 1 | 0.7000 |" in text


def test_the_report_says_when_the_champion_is_within_noise() -> None:
    from l2lab.sweeps.report import noise_line, summary_table

    close = summary_table(sweep_table([
        run("a1", 0.0, val=0.60, test=0.5, seed=1), run("a2", 0.0, val=0.66, test=0.5, seed=2),
        run("b1", 1e-3, val=0.62, test=0.5, seed=1), run("b2", 1e-3, val=0.65, test=0.5, seed=2),
    ]), "train.l2")
    line = noise_line(close, "train.l2", 1e-3)
    assert line.startswith("train.l2 = 0.001 is within the noise of the runner-up train.l2 = 0: "
                           "mean val_accuracy 0.6350 vs 0.6300")
    clear = summary_table(sweep_table([
        run("a1", 0.0, val=0.60, test=0.5, seed=1), run("a2", 0.0, val=0.61, test=0.5, seed=2),
        run("b1", 1e-3, val=0.70, test=0.5, seed=1), run("b2", 1e-3, val=0.71, test=0.5, seed=2),
    ]), "train.l2")
    assert "is ahead of the runner-up" in noise_line(clear, "train.l2", 1e-3)
    single = summary_table(sweep_table([run("a", 0.0, val=0.6, test=0.5), run("b", 1e-3, val=0.7, test=0.5)]),
                           "train.l2")
    assert "rerun with --seeds" in noise_line(single, "train.l2", 1e-3)


def test_weight_distribution_figure_draws_every_layer_and_value(tmp_path: Path) -> None:
    from l2lab.norms import ABS_EDGES
    from l2lab.sweeps.figures import save_figure, weight_distribution_figure

    def rows(zeros: int) -> pd.DataFrame:
        return pd.DataFrame([{"layer": layer, "bin_low": lo, "bin_high": hi, "count": zeros if lo == 0 else 5}
                             for layer in ("conv1", "dense1") for lo, hi in zip(ABS_EDGES[:-1], ABS_EDGES[1:])])

    figure = weight_distribution_figure({"": {0.0: rows(0), 1e-3: rows(900)}}, "train.l1")
    assert [ax.get_title() for ax in figure.axes] == ["conv1", "dense1"]
    assert len(figure.axes[0].get_lines()) == 2 and figure.axes[0].get_yscale() == "log"
    save_figure(figure, tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 10_000
    paired = weight_distribution_figure({"AdamW": {0.0: rows(0), 1e-3: rows(1)}, "L2 (Adam)": {0.0: rows(0)}},
                                        "l2_equivalent")
    assert [ax.get_title() for ax in paired.axes] == ["AdamW: conv1", "AdamW: dense1",
                                                      "L2 (Adam): conv1", "L2 (Adam): dense1"]
    assert [len(ax.get_lines()) for ax in paired.axes] == [2, 2, 1, 1]


def test_versus_adamw_pairs_each_lambda_with_its_matched_decay() -> None:
    points = grid("sw", {"train.l2": ["0", "1e-4", "1e-3"], "train.seed": ["1", "2"]}, {"train.epochs": "1"},
                  versus_adamw=True)
    assert [p.name for p in points] == [
        "l2=0_seed=1_sw", "l2=0_seed=2_sw", "l2=1e-4_seed=1_sw", "l2=1e-4_seed=2_sw", "l2=1e-3_seed=1_sw",
        "l2=1e-3_seed=2_sw", "weight_decay=0.0002_seed=1_sw", "weight_decay=0.0002_seed=2_sw",
        "weight_decay=0.002_seed=1_sw", "weight_decay=0.002_seed=2_sw"]
    assert points[2].sets == {"train.epochs": "1", "train.l2": "1e-4", "train.weight_decay": "0", "train.seed": "1"}
    assert points[-1].sets == {"train.epochs": "1", "train.l2": "0", "train.weight_decay": "0.002", "train.seed": "2"}
    validate(REPO / "params.yaml", points)  # every point is a valid params.yaml


def test_versus_report_groups_by_penalty_and_matched_strength(tmp_path: Path) -> None:
    from l2lab.sweeps.report import noise_line, summary_markdown, summary_table, versus_columns, write_files

    def adamw(name: str, decay: float, val: float, seed: int) -> dict:
        r = run(name, 0.0, val=val, test=0.5, seed=seed)
        r["params"]["train.weight_decay"] = str(decay)
        return r

    table = versus_columns(sweep_table([
        run("n1", 0.0, val=0.60, test=0.5, seed=1), run("n2", 0.0, val=0.62, test=0.5, seed=2),
        run("c1", 1e-3, val=0.55, test=0.5, seed=1), run("c2", 1e-3, val=0.57, test=0.5, seed=2),
        adamw("d1", 2e-3, 0.64, 1), adamw("d2", 2e-3, 0.66, 2),
    ]))
    keys = ["penalty", "l2_equivalent"]
    assert list(table["penalty"]) == ["none", "none", "AdamW", "AdamW", "L2 (Adam)", "L2 (Adam)"]
    assert list(table["l2_equivalent"]) == pytest.approx([0, 0, 1e-3, 1e-3, 1e-3, 1e-3])
    champion = choose_champion(table, keys)
    assert champion["experiment"] == "d2"
    summary = summary_table(table, keys)
    assert list(zip(summary["penalty"], summary["n"])) == [("none", 2), ("L2 (Adam)", 2), ("AdamW", 2)]
    assert "| AdamW | 0.001 | 2 | 0.6500 ± 0.0141 |" in summary_markdown(summary, keys)
    assert noise_line(summary, keys, ("AdamW", 1e-3)).startswith(
        "penalty = AdamW, l2_equivalent = 0.001 is ahead of the runner-up penalty = none, l2_equivalent = 0: "
        "mean val_accuracy 0.6500 vs 0.6100")
    write_files(tmp_path, table, keys, {r: [0.5, 0.6] for r in table["experiment"]}, champion, None)

    for r in (sgd := [run("n", 0.0, 0.6, 0.5), run("c", 1e-3, 0.6, 0.5), adamw("d", 2e-3, 0.6, 1)]):
        r["params"]["train.optimizer"] = "sgd"  # --versus-adamw -S train.optimizer=sgd: not Adam's names
    assert sorted(versus_columns(sweep_table(sgd))["penalty"]) == ["L2 (SGD)", "SGDW", "none"]
    assert ("Champion (best validation accuracy): penalty = AdamW, l2_equivalent = 0.001"
            in (tmp_path / "table.md").read_text())
    assert (tmp_path / "accuracy_vs_lambda.png").stat().st_size > 10_000


def test_zero_share_is_the_first_bin_over_all_layers() -> None:
    from l2lab.norms import ABS_EDGES
    from l2lab.sweeps.report import zero_share

    rows = pd.DataFrame([{"layer": layer, "bin_low": lo, "bin_high": hi, "count": (30 if lo == 0 else 1)}
                         for layer in ("a", "b") for lo, hi in zip(ABS_EDGES[:-1], ABS_EDGES[1:])])
    bins = len(ABS_EDGES) - 1
    assert zero_share(rows) == pytest.approx(60 / (60 + 2 * (bins - 1)))


@pytest.mark.parametrize("argv", [["--l1", "1e-3", "--versus-adamw"],
                                  ["--l2", "1e-3", "--weight-decay", "1", "--versus-adamw"]])
def test_versus_adamw_needs_l2_and_no_weight_decay(argv: list[str]) -> None:
    from l2lab.cli import parser, sweep_command

    with pytest.raises(L2labError, match="--versus-adamw pairs each --l2 lambda with its matched weight decay"):
        sweep_command(parser().parse_args(["sweep", *argv]))


@pytest.mark.fault
def test_a_sweep_whose_every_point_failed_reports_them_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`l2lab sweep --l2 0.2,0.3 -S data.train_size=5`: every point failed in preprocess, before training,
    so no run has params; the report said KeyError: 'train.l2'."""
    from l2lab.sweeps.grid import Sweep
    from l2lab.sweeps.report import make_report
    from l2lab.tracking.store import connect
    from l2lab.tracking.sweep_runs import end_unlanded, reserve, sweep_parent

    monkeypatch.chdir(tmp_path)
    store = connect(tmp_path)
    points = grid("sw", {"train.l2": ["0.2", "0.3"]}, {"data.train_size": "5"})
    with sweep_parent(store, "sw", {"train.l2": ["0.2", "0.3"]}, {"data.train_size": "5"}) as parent:
        for point in points:
            end_unlanded(store, reserve(store, parent.run_id, "sw", point.name, point.sets), "failed in preprocess")
        parent.failed = True
    report = make_report(Sweep("sw", parent.run_id), tmp_path / "reports")
    assert report.champion is None
    assert sorted(report.table["train.l2"]) == [0.2, 0.3] and set(report.table["status"]) == {"FAILED"}
    text = (report.folder / "table.md").read_text()
    assert "No finished run: no champion." in text and "l2=0.2_sw" in text
    assert not list(report.folder.glob("*.png"))  # nothing finished, nothing drawn


def test_point_keys_put_the_penalty_last_and_names_are_axes_too() -> None:
    from l2lab.sweeps.report import point_keys

    recorded = {"train.learning_rate": [3e-4, 1e-3], "train.l2": [0.0, 1e-3], "train.optimizer": ["adam", "sgd"],
                "train.seed": [1.0, 2.0]}
    assert point_keys(recorded) == ["train.learning_rate", "train.optimizer", "train.l2"]
    assert plot_axis({"train.optimizer": ["adam", "sgd"], "train.learning_rate": [1e-3, 3e-3]}) == "train.learning_rate"
    assert plot_axis({"train.augment": ["none", "flip_crop"]}) == "train.augment"


def test_best_lambda_per_learning_rate_and_one_heatmap_per_optimizer() -> None:
    from l2lab.sweeps.report import best_per_row, heatmap_panels, summary_table, two_axes

    rows = []
    for optimizer in ("adam", "sgd"):
        for lr in (1e-3, 1e-2):
            for l2 in (0.0, 1e-4, 1e-3):
                # the best lambda grows with the rate under sgd; under adam it is always 0
                good = (l2 == 0.0) if optimizer == "adam" else (l2 == (1e-4 if lr == 1e-3 else 1e-3))
                rows.append({"train.optimizer": optimizer, "train.learning_rate": lr, "train.l2": l2,
                             "status": "FINISHED", "val_accuracy": 0.6 if good else 0.5, "test_accuracy": 0.55,
                             "val_loss": 1.0, "weight_norm_total": 10.0, "experiment": f"{optimizer}-{lr}-{l2}"})
    keys = ["train.learning_rate", "train.optimizer", "train.l2"]
    summary = summary_table(pd.DataFrame(rows), keys)
    assert two_axes(summary, keys) == ("train.l2", "train.learning_rate")
    best = best_per_row(summary, keys, "train.l2", "train.learning_rate")
    assert best[["train.optimizer", "train.learning_rate", "best train.l2"]].values.tolist() == [
        ["adam", 1e-3, 0.0], ["adam", 1e-2, 0.0], ["sgd", 1e-3, 1e-4], ["sgd", 1e-2, 1e-3]]
    panels = heatmap_panels(summary, keys, "train.l2", "train.learning_rate")
    assert sorted(panels) == ["heatmap_learning_rate_l2_optimizer=adam.png",
                              "heatmap_learning_rate_l2_optimizer=sgd.png"]
    assert len(panels["heatmap_learning_rate_l2_optimizer=sgd.png"][0]) == 6  # 2 rates x 3 lambdas
    assert two_axes(summary, ["train.optimizer", "train.l2"]) is None  # one numeric axis: no heatmap


def test_lambda_plots_draw_one_labelled_line_per_learning_rate() -> None:
    from l2lab.sweeps.figures import sweep_figures
    from l2lab.sweeps.report import summary_table, with_series

    rows = [{"train.learning_rate": lr, "train.l2": l2, "status": "FINISHED", "val_accuracy": 0.5, "test_accuracy": 0.5,
             "train_accuracy": 0.6, "generalization_gap": 0.1, "weight_norm_total": 10.0, "val_loss": 1.0}
            for lr in (1e-3, 3e-3, 1e-2, 3e-2, 0.1) for l2 in (0.0, 1e-3)]  # five rates: more lines than line styles
    keys = ["train.learning_rate", "train.l2"]
    lines, series = with_series(summary_table(pd.DataFrame(rows), keys), keys)
    figures = sweep_figures(lines, "train.l2", {}, series)
    legend = [t.get_text() for t in figures["gap_vs_lambda.png"].axes[0].get_legend().get_texts()]
    assert legend == ["learning_rate=0.001", "learning_rate=0.003", "learning_rate=0.01", "learning_rate=0.03",
                      "learning_rate=0.1"]


def test_learning_curves_of_a_values_seeds_share_its_colour_and_no_two_lines_look_alike() -> None:
    """Round 3's 4 lambdas x 3 seeds drew 12 lines in a 10-colour cycle: lambda 0's seed 1 and 1e-2's seed 2
    came out the same blue."""
    from matplotlib.colors import to_rgba

    from l2lab.sweeps.figures import sweep_figures
    from l2lab.sweeps.report import summary_table

    rows = [{"train.l2": l2, "status": "FINISHED", "val_accuracy": 0.5, "test_accuracy": 0.5, "train_accuracy": 0.6,
             "generalization_gap": 0.1, "weight_norm_total": 10.0, "val_loss": 1.0} for l2 in (0.0, 1e-4, 1e-3, 1e-2)]
    summary = summary_table(pd.DataFrame(rows), ["train.l2"])
    for lambdas, seeds in (((0.0, 1e-4, 1e-3, 1e-2), (1, 2, 3)), (tuple(i * 1e-4 for i in range(11)), (1,))):
        labels = {f"l2={l2:g}, seed {s}": l2 for l2 in lambdas for s in seeds}
        curves = {label: [0.3, 0.4] for label in labels}
        ax = sweep_figures(summary, "train.l2", curves, values=labels)["val_accuracy_curves.png"].axes[0]
        looks = [(to_rgba(line.get_color()), line.get_linestyle()) for line in ax.get_lines()]
        assert len(looks) == len(labels) and len(set(looks)) == len(looks), looks
        colour_of = {}
        for (colour, _), l2 in zip(looks, labels.values()):
            colour_of.setdefault(l2, set()).add(colour)
        assert all(len(c) == 1 for c in colour_of.values())  # a value's seeds: one colour
        assert len({next(iter(c)) for c in colour_of.values()}) == len(lambdas)  # values: different colours
        assert len(ax.get_legend().get_texts()) == len(labels)


@pytest.mark.parametrize("l2", [0.005, 0.0, 3e-4])
def test_a_one_point_sweeps_plots_label_its_value(l2: float) -> None:
    """symlog's own ticks are decades: a lone 0.005 fell between them and the axis had no label at all."""
    from l2lab.sweeps.figures import sweep_figures
    from l2lab.sweeps.report import summary_table

    rows = [{"train.l2": l2, "status": "FINISHED", "val_accuracy": 0.5, "test_accuracy": 0.5, "train_accuracy": 0.6,
             "generalization_gap": 0.1, "weight_norm_total": 10.0, "val_loss": 1.0}]
    figures = sweep_figures(summary_table(pd.DataFrame(rows), ["train.l2"]), "train.l2", {})
    for name in ("accuracy_vs_lambda.png", "gap_vs_lambda.png", "weight_norm_vs_lambda.png"):
        ax = figures[name].axes[0]
        ax.figure.canvas.draw()
        shown = [t.get_text() for t in ax.get_xticklabels()
                 if ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
        assert shown == [f"{l2:g}"], (name, shown)


def test_a_run_at_chance_is_collapsed_and_in_no_pick() -> None:
    """SGD at rates of 0.1 and above ended at chance (10%) without a flag and could be reported like any run."""
    from l2lab.scores import collapsed
    from l2lab.sweeps.cv import picks, summary
    from l2lab.sweeps.report import collapsed_line

    assert collapsed(0.1, 5000, 10) and collapsed(0.108, 5000, 10) and not collapsed(0.12, 5000, 10)
    assert collapsed(0.18, 50, 10) and not collapsed(0.2, 50, 10)  # few images: chance spreads wider
    rows = [run("a", 0.0, 0.5, 0.5), run("b", 1e-3, 0.9, 0.2), run("c", 1e-2, 0.4, 0.4)]
    rows[1]["tags"] = {"l2lab.collapsed": "true"}  # whatever its numbers say, it is no result
    table = sweep_table(rows)
    assert choose_champion(table, "train.l2")["train.l2"] == 0.0
    assert collapsed_line(table).startswith("1 run(s) collapsed: validation accuracy at chance") and ": b" in \
        collapsed_line(table)
    folds = table.assign(**{"data.fold": ["0", "0", "0"]})
    cv = summary(folds, ["train.l2"], 1)
    assert 1e-3 not in set(cv.loc[cv["complete"], "train.l2"])  # its one fold collapsed: no mean to pick
    assert picks(summary(folds, ["train.l2"], 1), "train.l2").best["train.l2"] == 0.0


def test_a_learning_rate_whose_runs_all_collapsed_has_no_best_lambda(tmp_path: Path) -> None:
    """Round 2's SGD rows at rates 0.1 and 0.3 were at chance in every cell; the best-per-row table still named a
    lambda for them."""
    from l2lab.sweeps.report import write_files

    runs = []
    for lr in (1e-3, 0.3):
        for l2 in (0.0, 1e-3):
            r = run(f"lr={lr}_l2={l2}", l2, val=0.1 if lr == 0.3 else 0.5 + l2, test=0.5)
            r["params"]["train.learning_rate"] = str(lr)
            r["tags"] = {"l2lab.collapsed": "true"} if lr == 0.3 else {}
            runs.append(r)
    keys = ["train.learning_rate", "train.l2"]
    table = sweep_table(runs, keys)
    best, grid2 = write_files(tmp_path, table, keys, {}, choose_champion(table, keys), None)
    assert grid2 == ("train.l2", "train.learning_rate")
    assert best["train.learning_rate"].tolist() == [1e-3] and best["best train.l2"].tolist() == [1e-3]
    assert "2 run(s) collapsed" in (tmp_path / "table.md").read_text()
