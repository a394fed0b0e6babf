"""Sweep benchmark: a lambda grid as `l2lab sweep --jobs 1`, the same with warm stages off
(L2LAB_WARM=0: every stage imports for itself; the baseline), as `--jobs 2`, as a plain reference
(each point's l2lab `fit()` in a fresh process on the same processed arrays: no DVC, no MLflow, no
evaluation), and as the README's plain-DVC grid (`dvc exp run --queue -S train.l2=...` per value, then
`dvc queue start -j 1`, waited for until the queue is empty), interleaved, in a throwaway clone of
this checkout. The default is the study's regime: 5,000 training images, 10 epochs, 4 lambdas. A
benchmark, not a test: it asserts no timing.

    python bench/sweep_speed.py [--archive cifar-10-python.tar.gz] [--train-size 5000] [--epochs 10]
                                [--l2 0,1e-4,1e-3,1e-2] [--pairs 1] [--max-isa avx2]
                                [--legs jobs1,jobs1_cold,jobs2,plain,dvc_queue] [--checkout PATH]
                                [--out reports/sweep_bench.json]

Without --archive it generates a small CIFAR-format archive (synthetic shapes) so that it runs
anywhere; the figures that matter come from the full CIFAR-10 copy (../shared/datasets). The clone
runs `dvc repro preprocess` and commits `dvc.lock` first, as a team does, so no point needs to re-run
preprocess; a point that still does is counted.

`--max-isa avx2` runs every leg with the kernels of a CPU without AVX-512 (as bench/train_speed.py).
`--checkout PATH` measures another checkout of l2lab (an earlier commit's worktree, for a before/after):
every leg runs the clone's own code, the sweep's orchestration included (its src first on PYTHONPATH;
a PYTHONPATH given to the benchmark follows it).

Writes JSON with the wall times, `sweep_vs_plain` (the `--jobs 1` wall over the plain reference's),
`cold_vs_warm` (the warm-stages-off `--jobs 1` wall over the `--jobs 1` wall),
`jobs2_speedup` (`--jobs 1` wall over `--jobs 2` wall), `dvc_queue_vs_sweep` (the plain-DVC grid's wall
over the `--jobs 1` wall), `training_share` (the share of the `--jobs 1`
points' time spent in training epochs) and, per `--jobs 1` point, its time by phase, read from its
MLflow run: `before_training` (experiment set-up, stages skipped or re-run, imports and tracing up to
the first epoch), `training` (the epochs), `after_training` (saving and logging the model, DVC's commit,
the evaluate stage's start-up) and `evaluation` (the evaluate stage); `before_training` counts from
the previous point's end (the gap between points included), the first point's from the
sweep's start. And the CPU's ISA flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))

from train_speed import ISA_CAPS, isa_flags  # noqa: E402

# --jobs 1, the same with warm stages off, --jobs 2, plain fit()s, and the README's plain-DVC grid (dvc exp run
# --queue, then dvc queue start -j 1)
LEGS = ("jobs1", "jobs1_cold", "jobs2", "plain", "dvc_queue")
RESULT_METRICS = ("val_accuracy", "test_accuracy", "test_loss", "train_accuracy",
                  "weight_norm.total")  # per point, logged

PLAIN = r"""
import json, sys, time
from pathlib import Path
from l2lab.imports import quiet_tensorflow
quiet_tensorflow()
from l2lab.data import load_split
from l2lab.fit import fit, input_pipelines
from l2lab.params import load_params, parse_params

raw = load_params(sys.argv[1]).model_dump()
raw["train"].update(l2=float(sys.argv[3]), epochs=int(sys.argv[4]))
train = parse_params(raw).train
processed = Path(sys.argv[2])
data, val = input_pipelines(train, load_split(processed / "train.npz"), load_split(processed / "val.npz"))
epochs = []
model, history = fit(train, data, val, lambda epoch, logs: epochs.append(logs["epoch_seconds"]))
print(json.dumps({"val_accuracy": history["val_accuracy"][-1], "epoch_seconds": sum(epochs)}))
"""


def sh(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def clone(dest: Path, checkout: Path) -> Path:
    """The checkout's tracked and untracked-but-not-ignored files, as a fresh git repo."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=checkout, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (checkout / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(checkout / name, dest / name)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench copy"]):
        sh(dest, "git", *args, env=git_env())
    return dest


def git_env() -> dict[str, str]:
    ident = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "bench",
             "GIT_COMMITTER_EMAIL": "b@b"}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    return base | ident | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
                           "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}


def prepare(work: Path, archive: Path, train_size: int | None, val_size: int, checkout: Path = REPO) -> Path:
    """The clone, pointed at the archive, with preprocess run and dvc.lock committed."""
    from ruamel.yaml import YAML

    project = clone(work / "repo", checkout)
    yaml = YAML()
    doc = yaml.load(project / "params.yaml")
    doc["data"]["url"] = archive.resolve().as_uri()
    doc["data"]["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    doc["data"]["train_size"] = train_size
    doc["data"]["val_size"] = val_size
    with (project / "params.yaml").open("w") as f:
        yaml.dump(doc, f)
    sh(project, "dvc", "repro", "preprocess", env=git_env())
    sh(project, "git", "add", "-A", env=git_env())
    sh(project, "git", "commit", "-qm", "data", env=git_env())
    return project


def own_code(project: Path) -> dict[str, str]:
    """The environment under which `l2lab` runs the clone's code, not the installed checkout's (its src
    first on the path; a PYTHONPATH given to the benchmark comes after it)."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(project / "src"), os.environ.get("PYTHONPATH")]))}


def sweep_leg(project: Path, l2: str, epochs: int, jobs: int, warm: bool = True) -> dict:
    started = time.monotonic()
    env = git_env() | own_code(project) | ({} if warm else {"L2LAB_WARM": "0"})
    proc = subprocess.run(["l2lab", "sweep", "--l2", l2, "--jobs", str(jobs), "-S", f"train.epochs={epochs}"],
                          cwd=project, capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"l2lab sweep --jobs {jobs} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    sweep_id = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("Sweep "))
    return {"wall_s": wall, "sweep_id": sweep_id, "preprocess_reruns": preprocess_reruns(project, sweep_id)}


def preprocess_reruns(project: Path, sweep_id: str) -> int:
    """How many of the sweep's points ran preprocess again (their output says so): each point's output file
    (reports/sweep/<id>/logs/), or, for a checkout whose sweeps ran on DVC's queue, `dvc queue logs`."""
    folder = project / "reports" / "sweep" / sweep_id / "logs"
    if folder.is_dir():
        logs = [path.read_text() for path in folder.glob("*.log")]
    else:
        status = sh(project, "dvc", "queue", "status", env=git_env()).stdout
        names = [line.split()[1] for line in status.splitlines() if sweep_id in line and len(line.split()) > 1]
        logs = [subprocess.run(["dvc", "queue", "logs", name], cwd=project, capture_output=True, text=True,
                               env=git_env()).stdout for name in names]
    return sum("Running stage 'preprocess'" in log for log in logs)


def dvc_queue_leg(project: Path, l2_values: list[str], epochs: int, jobs: int = 1) -> dict:
    """The README's plain-DVC grid: `dvc exp run --queue -S train.l2=...` per value, `dvc queue start -j N`, then
    waiting until the queue has nothing queued or running. Its stages import for themselves (no warm server)."""
    started = time.monotonic()
    env = git_env() | own_code(project)
    for l2 in l2_values:
        sh(project, "dvc", "exp", "run", "--queue", "-S", f"train.l2={l2}", "-S", f"train.epochs={epochs}", env=env)
    sh(project, "dvc", "queue", "start", "-j", str(jobs), env=env)
    while True:
        status = sh(project, "dvc", "queue", "status", env=env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(1.0)
    wall = time.monotonic() - started
    failed = status.count("Failed")
    sh(project, "dvc", "queue", "remove", "--all", env=env)  # its entries, so that the next round counts its own
    return {"wall_s": wall, "failed": failed}


def phases(project: Path, sweep_id: str, started_wall: float) -> list[dict]:
    """Per point of a --jobs 1 sweep, in the order they ran: seconds by phase, from its MLflow run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cifar10-l2")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`l2lab.sweep_id` = '{sweep_id}' "
                              "and tags.`l2lab.role` = 'point'")
    points = []
    for run in runs:
        epochs = sorted(client.get_metric_history(run.info.run_id, "epoch_seconds"), key=lambda m: m.step)
        first_epoch_start = epochs[0].timestamp / 1000 - epochs[0].value
        last_epoch_end = epochs[-1].timestamp / 1000
        evaluate_start = float(run.data.tags["l2lab.pid_started"])  # the evaluate stage took the run up last
        end = run.info.end_time / 1000
        points.append({"name": run.info.run_name, "first_epoch_start": first_epoch_start,
                       "training": sum(m.value for m in epochs), "after_training": evaluate_start - last_epoch_end,
                       "evaluation": end - evaluate_start, "end": end,
                       # what the run produced, to compare a before and an after bit for bit
                       "l2": run.data.params.get("train.l2"),
                       "metrics": {k: run.data.metrics.get(k) for k in RESULT_METRICS}})
    points.sort(key=lambda p: p["first_epoch_start"])
    previous_end = started_wall
    for point in points:
        # The point's start is the previous one's end (one worker): everything up to its first epoch.
        point["before_training"] = point["first_epoch_start"] - previous_end
        previous_end = point["end"]
    return points


def plain_leg(project: Path, l2_values: list[str], epochs: int) -> dict:
    started = time.monotonic()
    results = []
    for l2 in l2_values:
        proc = subprocess.run([sys.executable, "-c", PLAIN, str(project / "params.yaml"),
                               str(project / "data" / "processed"), l2, str(epochs)],
                              capture_output=True, text=True, env=git_env() | own_code(project))
        if proc.returncode != 0:
            raise SystemExit(f"plain fit exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {"wall_s": time.monotonic() - started, "points": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, help="a CIFAR-10 python archive (default: a generated small one)")
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--l2", default="0,1e-4,1e-3,1e-2")
    parser.add_argument("--pairs", type=int, default=1, help="interleaved rounds of the legs")
    parser.add_argument("--max-isa", choices=sorted(ISA_CAPS), help="cap the kernels' ISA for every leg")
    parser.add_argument("--legs", default=",".join(LEGS), help=f"which legs to run, of {','.join(LEGS)}")
    parser.add_argument("--checkout", type=Path, default=REPO, help="the l2lab checkout to measure (default: this one)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "sweep_bench.json")
    args = parser.parse_args()
    legs = args.legs.split(",")
    if "jobs1" not in legs or set(legs) - set(LEGS):
        parser.error(f"--legs: jobs1 and any of {', '.join(LEGS[1:])}")
    if args.max_isa:
        os.environ.update(ISA_CAPS[args.max_isa])  # every leg's processes inherit it
    l2_values = args.l2.split(",")
    with tempfile.TemporaryDirectory(prefix="l2lab-sweep-bench-") as tmp:
        work = Path(tmp)
        archive = args.archive
        if archive is None:
            from l2lab.synthetic import write_cifar_archive

            archive = write_cifar_archive(work / "cifar-10-python.tar.gz", per_batch=400, test_size=1000, seed=1)
            args.train_size, args.val_size = min(args.train_size, 1500), min(args.val_size, 500)
        project = prepare(work, archive, args.train_size, args.val_size, args.checkout.resolve())
        rounds = []
        for pair in range(args.pairs):
            one_round = {}
            for leg in legs:
                started = time.time()
                if leg == "plain":
                    one_round[leg] = plain_leg(project, l2_values, args.epochs)
                    continue
                if leg == "dvc_queue":
                    one_round[leg] = dvc_queue_leg(project, l2_values, args.epochs)
                    continue
                result = sweep_leg(project, args.l2, args.epochs, jobs=2 if leg == "jobs2" else 1,
                                   warm=leg != "jobs1_cold")
                if leg != "jobs2":
                    result["points"] = phases(project, result["sweep_id"], started)
                one_round[leg] = result
            rounds.append(one_round)
            print(f"round {pair + 1}: " + ", ".join(f"{leg} {one_round[leg]['wall_s']:.0f} s" for leg in legs),
                  flush=True)
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    jobs1, cold, jobs2, plain, dvc_queue = (median([r[leg]["wall_s"] for r in rounds]) if leg in legs else None
                                            for leg in LEGS)
    ratio = lambda a, b: a / b if a is not None and b is not None else None  # noqa: E731
    phase_names = ("before_training", "training", "after_training", "evaluation")

    def share_and_phases(leg: str) -> tuple[float, dict[str, float]]:
        points = [p for r in rounds for p in r[leg]["points"]]
        point_time = sum(p[phase] for p in points for phase in phase_names)
        return (sum(p["training"] for p in points) / point_time,
                {phase: sum(p[phase] for p in points) / len(points) for phase in phase_names})

    share, by_phase = share_and_phases("jobs1")
    cold_share, cold_phases = share_and_phases("jobs1_cold") if "jobs1_cold" in legs else (None, None)
    report = {
        "sweep_vs_plain": ratio(jobs1, plain), "jobs2_speedup": ratio(jobs1, jobs2), "training_share": share,
        "cold_vs_warm": ratio(cold, jobs1), "cold_sweep_vs_plain": ratio(cold, plain),
        "cold_training_share": cold_share, "dvc_queue_vs_sweep": ratio(dvc_queue, jobs1),
        "wall_s": {"jobs1": jobs1, "jobs1_cold": cold, "jobs2": jobs2, "plain": plain, "dvc_queue": dvc_queue},
        "per_point_s_by_phase": by_phase, "cold_per_point_s_by_phase": cold_phases,
        "preprocess_reruns": sum(r[leg]["preprocess_reruns"] for r in rounds for leg in legs
                                 if leg not in ("plain", "dvc_queue")),
        "grid": {"l2": l2_values, "epochs": args.epochs, "train_size": args.train_size, "val_size": args.val_size,
                 "archive": str(args.archive) if args.archive else "generated (synthetic shapes)",
                 "checkout": str(args.checkout.resolve()), "legs": legs},
        "machine": {"isa_flags": isa_flags(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "kernel_isa_cap": args.max_isa},
        "rounds": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    shown = lambda key: "-" if report[key] is None else f"{report[key]:.2f}"  # noqa: E731
    print(f"sweep_vs_plain {shown('sweep_vs_plain')} (cold {shown('cold_sweep_vs_plain')}), cold_vs_warm "
          f"{shown('cold_vs_warm')}, jobs2_speedup {shown('jobs2_speedup')}, dvc_queue_vs_sweep "
          f"{shown('dvc_queue_vs_sweep')}, training_share "
          f"{shown('training_share')} (cold {shown('cold_training_share')}); per point: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in by_phase.items()) + f"; written to {args.out}")


if __name__ == "__main__":
    main()
