"""The `l2lab` command: `l2lab sweep` runs a grid of DVC experiments, `l2lab report` sums one up."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from l2lab.errors import L2labError
from l2lab.stages import run_stage

log = logging.getLogger("l2lab")

GRID_OPTIONS = {"l2": "train.l2", "l1": "train.l1", "weight_decay": "train.weight_decay", "seeds": "seed"}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="l2lab", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="queue a grid as DVC experiments and run it")
    sweep.add_argument("--l2", help="comma-separated lambdas, e.g. 0,1e-5,1e-4,1e-3,1e-2")
    sweep.add_argument("--l1", help="comma-separated L1 lambdas")
    sweep.add_argument("--weight-decay", help="comma-separated decoupled weight decays")
    sweep.add_argument("--seeds", help="comma-separated seeds: every point runs once per seed")
    sweep.add_argument("--jobs", "-j", type=int, default=2,
                       help="parallel queue workers (default 2: faster than 1 on 2 cores, see README)")
    sweep.add_argument("-S", "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="params.yaml override for every point, as for dvc exp run -S")
    report = sub.add_parser("report", help="table, plots and champion of a sweep")
    report.add_argument("--sweep", help="sweep id (default: the latest)")
    report.add_argument("--out", type=Path, default=None, help="folder for the report files (default reports/sweep)")
    return top


def sweep_command(args: argparse.Namespace) -> int:
    from l2lab.report import REPORT_DIR, make_report
    from l2lab.sweep import parse_sets, parse_values, run_sweep

    axes = {key: parse_values(f"--{opt.replace('_', '-')}", getattr(args, opt))
            for opt, key in GRID_OPTIONS.items() if getattr(args, opt)}
    if not axes:
        raise L2labError("give at least one grid: --l2, --l1, --weight-decay or --seeds")
    if args.jobs < 1:
        raise L2labError(f"--jobs must be at least 1, got {args.jobs}")
    sweep_id, results = run_sweep(axes, parse_sets(args.sets), args.jobs, Path.cwd())
    report = make_report(sweep_id, REPORT_DIR)
    print_report(report)
    failed = sorted(name for name, status in results.items() if status != "Success")
    if failed:
        log.error("error: %d of %d points failed: %s (see `dvc queue logs <name>`)",
                  len(failed), len(results), ", ".join(failed))
        return 1
    return 0


def report_command(args: argparse.Namespace) -> int:
    from l2lab.report import REPORT_DIR, make_report

    print_report(make_report(args.sweep, args.out or REPORT_DIR))
    return 0


def print_report(report) -> None:
    from l2lab.report import champion_line

    shown = ["experiment", report.axis, "val_accuracy", "test_accuracy", "generalization_gap", "weight_norm_total", "status"]
    print(f"\nSweep {report.sweep_id} ({len(report.table)} runs), files in {report.folder}")
    print(report.table[[c for c in shown if c in report.table]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(champion_line(report.champion, report.axis, report.champion_version))


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    commands = {"sweep": sweep_command, "report": report_command}
    run_stage(lambda: commands[args.command](args))


if __name__ == "__main__":
    main()
