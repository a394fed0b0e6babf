"""`make demo`: the whole pipeline offline, on a generated archive, as a temporary DVC experiment.

The workspace is left as it was: the run lands in `dvc exp show` and in the repo's
MLflow database, named and noted as a demo on synthetic data.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import time
from pathlib import Path

from l2lab.commands import dvc_command, set_args
from l2lab.files import file_sha256
from l2lab.process import run_stage
from l2lab.synthetic import write_cifar_archive

log = logging.getLogger(__name__)


def demo_command(archive: Path, sha256: str, name: str, val_size: int, epochs: int) -> list[str]:
    """The `dvc exp run --temp` command line that trains on the demo archive."""
    sets = {"data.url": archive.resolve().as_uri(), "data.sha256": sha256, "data.val_size": val_size,
            "train.epochs": epochs}
    return [dvc_command(), "exp", "run", "--temp", "-n", name, *set_args({k: str(v) for k, v in sets.items()})]


def run_demo(workdir: Path, per_batch: int, epochs: int) -> int:
    """Write the demo archive under workdir, run the experiment, return dvc's exit status."""
    workdir.mkdir(parents=True, exist_ok=True)
    archive = write_cifar_archive(workdir / "cifar-10-demo.tar.gz", per_batch=per_batch, test_size=1000, seed=0)
    name = time.strftime("demo-%Y%m%d-%H%M%S")
    val_size = per_batch // 2  # 10% of the five training batches, as for CIFAR-10
    command = demo_command(archive, file_sha256(archive), name, val_size, epochs)
    log.info("running: %s", " ".join(command))
    status = subprocess.call(command)
    if status == 0:
        log.info("done: see `dvc exp show` (experiment %s) and `make ui` (MLflow run %s)", name, name)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("data/demo"), help="where the demo archive goes")
    parser.add_argument("--per-batch", type=int, default=1000, help="images per training batch (5 batches)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    run_stage(lambda: run_demo(args.workdir, args.per_batch, args.epochs))


if __name__ == "__main__":
    main()
