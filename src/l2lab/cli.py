"""The `l2lab` command: `l2lab sweep` runs a grid of DVC experiments, `l2lab tune` an Optuna search of them,
`l2lab worker` runs their points, `l2lab report` sums one up."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from l2lab.errors import L2labError
from l2lab.process import run_stage

log = logging.getLogger("l2lab")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="l2lab", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="run a grid, every point a DVC experiment and an MLflow run")
    sweep.add_argument("--l2", help="comma-separated lambdas, e.g. 0,1e-5,1e-4,1e-3,1e-2")
    sweep.add_argument("--l1", help="comma-separated L1 lambdas")
    sweep.add_argument("--weight-decay", help="comma-separated decoupled weight decays")
    sweep.add_argument("--versus-adamw", action="store_true",
                       help="run every non-zero --l2 lambda also as AdamW at train.weight_decay = 2 x lambda "
                       "(the same step under plain SGD): one report of coupled against decoupled decay")
    sweep.add_argument("--seeds", help="comma-separated training seeds (train.seed): every point runs once per "
                       "seed, on the same validation split")
    sweep.add_argument("--folds", type=int, default=0, metavar="K",
                       help="K-fold cross-validation: every point runs once per fold (data.folds = K, data.fold = "
                       "0..K-1), the report gives mean ± standard error over folds, lambda_min and lambda_1se")
    sweep.add_argument("--refit", choices=["min", "1se", "none"], default=None,
                       help="with --folds: once the folds are done, train the picked point (lambda_1se by default, "
                       "or lambda_min) on the whole pool and evaluate it once on test: the sweep's champion")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="any params.yaml key as an axis, numbers or names, e.g. --grid train.learning_rate="
                       "3e-4,1e-3 --grid train.optimizer=adam,sgd (repeatable; grids multiply)")
    sweep.add_argument("--jobs", "-j", type=int, default=2,
                       help="workers on this machine (default 2: faster than 1 on 2 cores, see docs/performance.md)")
    sweep.add_argument("--storage", help="the sweep's Optuna storage: a file (default $L2LAB_STORAGE, else "
                       "optuna.journal beside mlflow.db), or a database URL (postgresql+psycopg2://…): team mode, "
                       "`l2lab worker`s on any machine run the points")
    sweep.add_argument("-S", "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="params.yaml override for every point, as for dvc exp run -S")
    tune = sub.add_parser("tune", help="an Optuna search (sampler and pruner): every trial a DVC experiment and an "
                          "MLflow run (docs/sweeps.md)")
    tune.add_argument("--trials", type=int, required=True, help="how many trials in all")
    tune.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                      help="a params.yaml key and its range: log:LO:HI (log-uniform), LO:HI (uniform) or a,b,c "
                      "(a choice), e.g. --space train.l2=log:1e-6:1e-1 (repeatable)")
    tune.add_argument("--sampler", choices=["tpe", "random", "gp"], default="tpe",
                      help="Optuna's sampler (default tpe; gp needs PyTorch and SciPy)")
    tune.add_argument("--pruner", choices=["hyperband", "median", "none"], default="hyperband",
                      help="stops poor trials early, from their val_accuracy after each epoch (default hyperband)")
    tune.add_argument("--jobs", "-j", type=int, default=2, help="trials at once, one worker each (default 2)")
    tune.add_argument("--seed", type=int, default=None, help="the sampler's seed: with --jobs 1, the same trials again")
    tune.add_argument("--storage", help="the study's Optuna storage: a file (default $L2LAB_STORAGE, else "
                      "optuna.journal beside mlflow.db), or a database URL: team mode, `l2lab worker`s run the trials")
    tune.add_argument("-S", "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                      help="params.yaml override for every trial, as for dvc exp run -S")
    report = sub.add_parser("report", help="table, plots and champion of a sweep or a tune")
    report.add_argument("--sweep", help="sweep id (default: the latest)")
    report.add_argument("--out", type=Path, default=None, help="folder for the report files (default reports/sweep)")
    worker = sub.add_parser("worker", help="run sweeps' points from this repository until none is left (team mode: "
                            "from a clone of its own, on any machine)")
    worker.add_argument("--storage", help="the sweeps' Optuna storage (default $L2LAB_STORAGE, else optuna.journal)")
    worker.add_argument("--sweep", help="take points of this sweep only (default: any sweep)")
    worker.add_argument("--checkout", type=Path, help=argparse.SUPPRESS)  # the worktree its sweep made for it
    team = sub.add_parser("team", help="a local team stack for trying team mode: PostgreSQL, S3, mlflow server")
    team.add_argument("action", choices=["up", "down"])
    team.add_argument("--dir", type=Path, default=Path(".team"), help="its data, logs and env file (default .team)")
    sub.add_parser("gc", help="end KILLED every run left RUNNING by a process that is gone (kill -9, OOM)")
    ui = sub.add_parser("ui", help="the MLflow UI for this repo's runs, on 127.0.0.1 only")
    ui.add_argument("--port", type=int, default=5000)
    serve = sub.add_parser("serve", help="a logged model over HTTP on 127.0.0.1, bounded requests (docs/pipeline.md)")
    serve.add_argument("--model", default=None, help="models:/… or runs:/<run id>/model (default: the sweep champion, "
                       "models:/cifar10-cnn@champion)")
    serve.add_argument("--port", type=int, default=5001)
    return top


def sweep_command(args: argparse.Namespace) -> int:
    from l2lab.studies import storage_url
    from l2lab.sweeps.grid import AXES, parse_grid, parse_sets, parse_values, plan

    axes = {key: parse_values(f"--{opt.replace('_', '-')}", getattr(args, opt))
            for opt, key in AXES.items() if getattr(args, opt)}
    for key, values in parse_grid(args.grid).items():
        if key in axes:
            option = next(f"--{opt.replace('_', '-')}" for opt, k in AXES.items() if k == key)
            raise L2labError(f"--grid {key}=... and {option} both vary {key}; give it once")
        axes[key] = values
    if not axes:
        raise L2labError("give at least one grid: --l2, --l1, --weight-decay, --seeds or --grid KEY=V1,V2")
    if args.versus_adamw and ("train.l2" not in axes or "train.weight_decay" in axes):
        raise L2labError("--versus-adamw pairs each --l2 lambda with its matched weight decay: give --l2, "
                         "and no --weight-decay")
    check_jobs(args.jobs)
    fixed = parse_sets(args.sets)
    refit = cross_validation(args, axes, fixed)
    sweep_id, points, epochs = plan(axes, fixed, Path.cwd(), args.versus_adamw)  # every point checked before any work
    return run_sweep(args, storage_url(args.storage), sweep_id, "points", points=points, epochs=epochs, axes=axes,
                     fixed=fixed, versus_adamw=args.versus_adamw, refit=refit)


def cross_validation(args: argparse.Namespace, axes: dict[str, list[str]], fixed: dict[str, str]) -> str | None:
    """--folds K: data.fold an axis of 0..K-1 and data.folds = K for every point; return the refit's rule
    (None without folds, or with --refit none)."""
    from l2lab.sweeps.cv import FOLD, FOLDS

    if not args.folds:
        if args.refit:
            raise L2labError("--refit picks a point by cross-validation: give --folds K as well")
        return None
    if args.folds < 2:
        raise L2labError(f"--folds must be at least 2, got {args.folds}")
    taken = [key for key in (FOLD, FOLDS) if key in axes or key in fixed]
    if taken:
        raise L2labError(f"--folds sets {FOLDS} and {FOLD} for every point; give {taken[0]} no other way")
    axes[FOLD] = [str(fold) for fold in range(args.folds)]
    fixed[FOLDS] = str(args.folds)
    rule = args.refit or "1se"
    return None if rule == "none" else rule


def tune_command(args: argparse.Namespace) -> int:
    from l2lab.studies import storage_url
    from l2lab.sweeps.grid import new_sweep_id, parse_sets
    from l2lab.sweeps.space import check_choices, parse_space, tune_epochs

    check_jobs(args.jobs)
    fixed = parse_sets(args.sets)
    space = parse_space(args.space, Path.cwd() / "params.yaml", fixed)
    check_choices(args.trials, args.sampler, args.pruner)
    from l2lab.sweeps.run import Tune

    tune = Tune({k: d.distribution() for k, d in space.items()}, {k: d.text for k, d in space.items()}, args.trials,
                args.sampler, args.pruner, args.seed, tune_epochs(Path.cwd(), fixed))
    return run_sweep(args, storage_url(args.storage), new_sweep_id("tune"), "trials", points=[], epochs={}, axes={},
                     fixed=fixed, tune=tune)


def check_jobs(jobs: int) -> None:
    if jobs < 1:
        raise L2labError(f"--jobs must be at least 1, got {jobs}")


def run_sweep(args: argparse.Namespace, storage_url: str, sweep_id: str, what: str, **sweeping) -> int:
    """Run a sweep or a tune from this repository's code (its workspace's snapshot, or in team mode its pushed
    commit), report it, and return its exit status. Its study comes first: a name taken is one line, and a
    start that fails before the study is open to workers leaves no study behind."""
    from l2lab.studies import is_shared, open_storage
    from l2lab.sweeps import trials
    from l2lab.sweeps.checkout import sweep_code

    storage = open_storage(storage_url)
    study = trials.new_study(storage, sweep_id)
    try:
        with sweep_code(Path.cwd(), sweep_id, is_shared(storage_url)) as (code, place):
            from l2lab.sweeps.run import Sweeping, run  # MLflow's imports, beside the warm server's

            sweep = run(Sweeping(sweep_id, **sweeping), args.jobs, Path.cwd(), storage_url, storage, study, code, place)
    except BaseException:
        trials.drop_unopened(storage, study)
        raise
    return report_and_status(sweep, what)


def report_and_status(sweep, what: str) -> int:
    """Print the sweep's (or tune's) report; 1 with one error line naming its failed points, else 0."""
    from l2lab.sweeps.grid import REPORT_DIR
    from l2lab.sweeps.report import make_report

    print_report(make_report(sweep, REPORT_DIR))
    failed = sorted(name for name, status in sweep.results.items() if status != "Success")
    if failed:
        log.error("error: %d of %d %s failed: %s (each one's output: %s/<name>.log, and its run's logs/)",
                  len(failed), len(sweep.results), what, ", ".join(failed), REPORT_DIR / sweep.id / "logs")
        return 1
    return 0


def worker_command(args: argparse.Namespace) -> int:
    from l2lab.studies import storage_url
    from l2lab.sweeps.worker import work

    return 1 if work(storage_url(args.storage), args.sweep, Path.cwd(), args.checkout) else 0


def team_command(args: argparse.Namespace) -> int:
    import importlib.util

    try:
        from l2lab.team import stack
    except ModuleNotFoundError as exc:  # mirakuru, port-for: the team extras, not in a plain `make install`
        raise L2labError(f"`l2lab team` needs the team extras ({exc.name} is not installed): "
                         "run make install-team") from None
    if args.action == "up" and importlib.util.find_spec("boto3") is None:  # the extra leaves it to make install-team
        raise L2labError("`l2lab team up` needs boto3 (not installed): run make install-team, which installs the boto3 "
                         "that matches dvc-s3's botocore")

    if args.action == "down":
        stack.down(args.dir)
        return 0
    started = stack.up(args.dir)
    env_file = Path(started.folder) / "env"
    print(f"Team stack up (data in {started.folder}; stop it with `l2lab team down --dir {args.dir}`):\n"
          f"  MLflow UI and tracking server  {started.tracking_uri}\n"
          f"  S3 store                       {started.s3_endpoint} (bucket {stack.BUCKET})\n"
          f"  PostgreSQL                     127.0.0.1:{started.pg_port} (databases {', '.join(stack.DATABASES)})\n"
          f"Export the variables clients need (they hold passwords; the file is yours only):\n"
          f"  . {env_file}\n"
          f"and give the repo the DVC remote once (then commit .dvc/config):\n"
          f"  dvc remote add -d team s3://{stack.BUCKET}/dvc")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from l2lab.sweeps.grid import REPORT_DIR
    from l2lab.sweeps.report import find_sweep, make_report

    print_report(make_report(find_sweep(args.sweep), args.out or REPORT_DIR))
    return 0


def gc(args: argparse.Namespace) -> int:
    """End the runs whose process is gone; say how many."""
    from l2lab.tracking.owners import end_stale_runs
    from l2lab.tracking.store import connect

    ended = end_stale_runs(connect())
    log.info("%d stale run(s) ended KILLED", len(ended))
    return 0


# MLflow 3.17 starts 4 web workers plus a job runner and queue consumers (GenAI scorers,
# trace roll-ups), which compete with training for the cores. One user browsing runs needs
# one worker and no jobs (docs/sweeps.md has the timings).
UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_command(store_uri: str, port: int) -> list[str]:
    """`mlflow ui` on loopback only (docs/sweeps.md: how to share it safely), one worker."""
    return ["mlflow", "ui", "--backend-store-uri", store_uri, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]


def ui(args: argparse.Namespace) -> int:
    """Create the store first (l2lab's one creation point, under its lock), then start the UI on it.

    Started on a missing database, the UI would create and migrate it itself, racing
    any pipeline stage that does the same.
    """
    from l2lab.tracking.store import connect

    store = connect()
    command = ui_command(store.uri, args.port)
    # workflowType: MLflow 3.17's UI opens in its GenAI mode (traces) until told otherwise.
    log.info("MLflow UI for %s: open http://127.0.0.1:%d/#/experiments/%s?workflowType=machine_learning",
             store.uri, args.port, store.experiment_id)
    os.execvpe(command[0], command, {**os.environ, **UI_ENV})
    return 0  # not reached: exec replaces this process


def print_report(report) -> None:
    from l2lab.sweeps.report import best_title, champion_line

    shown = ["trial", "experiment", *report.keys, "data.fold", "pruned_at_epoch", "val_accuracy", "test_accuracy",
             "generalization_gap", "weight_norm_total", "status"]
    print(f"\nSweep {report.sweep_id} ({len(report.table)} runs), files in {report.folder}")
    table = report.table[[c for c in shown if c in report.table]]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if report.heat_axes is not None:
        print(best_title(*report.heat_axes))
        print(report.best_per_row.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if report.picks:
        print(report.picks)
    from l2lab.sweeps.report import collapsed_line

    if collapsed_line(report.table):
        print(collapsed_line(report.table))
    print(champion_line(report.champion, report.keys, report.champion_version, report.refit_rule))


def serve_command(args: argparse.Namespace) -> int:
    from l2lab.serve import serve
    from l2lab.tracking.registry import CHAMPION_ALIAS, REGISTERED_MODEL

    serve(args.model or f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}", args.port)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    commands = {"sweep": sweep_command, "tune": tune_command, "report": report_command, "ui": ui, "gc": gc,
                "worker": worker_command, "serve": serve_command, "team": team_command}
    run_stage(lambda: commands[args.command](args))


if __name__ == "__main__":
    main()
