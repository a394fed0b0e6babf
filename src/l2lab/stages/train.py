"""DVC stage: train the CNN with the L2 strength from params.yaml; MLflow records the run."""

import argparse
from pathlib import Path

from l2lab.params import load_params
from l2lab.noise import quiet_tensorflow
from l2lab.stages import run_stage


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
        from l2lab.train import TrainPaths, train

        train(params, TrainPaths(args.data_dir, args.data_summary, args.model, args.run_info, args.history))

    run_stage(body)


if __name__ == "__main__":
    main()
