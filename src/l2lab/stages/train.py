"""The train stage: read the train and val splits, fit the CNN with the L2 strength from params.yaml, save
the model, and record it all in MLflow."""

from __future__ import annotations

from l2lab.warm import hand_over

if __name__ == "__main__":  # DVC ran the stage: a sweep's warm server runs it instead, when there is one
    hand_over("l2lab.stages.train")  # (l2lab.warm), before the imports below: the server has them

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

from l2lab.data import load_split  # noqa: E402
from l2lab.errors import L2labError  # noqa: E402
from l2lab.files import atomic_outputs, file_sha256, write_history  # noqa: E402
from l2lab.imports import quiet_tensorflow  # noqa: E402
from l2lab.params import Params, load_params  # noqa: E402
from l2lab.process import run_stage  # noqa: E402

log = logging.getLogger(__name__)
DEVICE_TAG = "l2lab.device"  # where the run trained: "CPU" or "GPU:0 (<name>)"


@dataclass(frozen=True)
class TrainPaths:
    data_dir: Path  # holds train.npz and val.npz (never test.npz)
    data_summary: Path  # preprocess's summary: dataset kind and source sha256
    model: Path  # the trained model, .keras
    run_info: Path  # JSON with the MLflow run id, read by evaluate
    history: Path  # per-epoch learning curves, CSV for dvc plots


def train(params: Params, paths: TrainPaths) -> str:
    """Train on train, validate on val each epoch, save the model; return the MLflow run id."""
    # TensorFlow and MLflow load here, not at the top: main() checks params.yaml before either loads.
    from l2lab.devices import prepare_device
    from l2lab.fit import StopWhen, WeightHistograms, fit, input_pipelines
    from l2lab.studies import PRUNED_TAG, trial_link
    from l2lab.tracking.runs import HISTOGRAMS, training_run
    from l2lab.tracking.store import EXPERIMENT, connect

    store = connect()  # a broken or locked store fails here, before any work
    device = prepare_device()
    log.info("training on %s, precision %s", device.label, params.train.precision)
    summary = json.loads(paths.data_summary.read_text())
    files = {split: paths.data_dir / f"{split}.npz" for split in ("train", "val")}
    val_xy = load_split(files["val"])
    data, val = input_pipelines(params.train, load_split(files["train"]), val_xy, device.name)
    split_sha256 = {split: file_sha256(path) for split, path in files.items()}
    with training_run(store, params.flat(), summary, split_sha256) as run:
        run.set_tags({DEVICE_TAG: device.label})
        run.log_splits(split_sha256, summary)
        histograms = WeightHistograms()
        callbacks = [histograms]
        trial = trial_link(store.client.get_run(run.run_id).data.tags)  # None unless an l2lab tune's trial
        if trial is not None and val is None:
            raise L2labError("a tune's trial is pruned on its validation accuracy: data.fold all validates on nothing")
        if trial is not None:
            callbacks.append(pruning := StopWhen(trial.report, params.train.epochs))
        model, history = fit(params.train, data, val, lambda epoch, logs: run.log_metrics(logs, step=epoch), callbacks)
        if trial is not None and pruning.stopped_at is not None:  # it keeps its model, history and metrics
            run.set_tags({PRUNED_TAG: str(pruning.stopped_at)})
        import pandas as pd  # after training: the loop itself never needs it (l2lab.imports)

        run.log_table(pd.DataFrame(histograms.rows), HISTOGRAMS)
        with atomic_outputs(paths.model, paths.run_info) as (model_tmp, info_tmp):
            model.save(model_tmp)
            run.log_model(model, summary["classes"])
            info_tmp.write_text(json.dumps({"run_id": run.run_id, "experiment": EXPERIMENT}, indent=2) + "\n")
        write_history(paths.history, history)
    return run.run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with train.npz and val.npz")
    parser.add_argument("--data-summary", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="where the .keras model goes")
    parser.add_argument("--run-info", type=Path, required=True, help="JSON holding the MLflow run id")
    parser.add_argument("--history", type=Path, required=True, help="CSV of per-epoch metrics")
    args = parser.parse_args()

    def body() -> None:
        params = load_params(args.params)  # validate before TensorFlow is even imported
        quiet_tensorflow()
        train(params, TrainPaths(args.data_dir, args.data_summary, args.model, args.run_info, args.history))

    run_stage(body)


if __name__ == "__main__":
    main()
