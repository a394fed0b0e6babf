"""DVC stage: score the trained model on train, val and test; log to the training's MLflow run."""

import argparse
from pathlib import Path

from l2lab.noise import quiet_tensorflow
from l2lab.stages import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with {train,val,test}.npz")
    parser.add_argument("--data-summary", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--run-info", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="JSON for dvc metrics")
    parser.add_argument("--confusion", type=Path, required=True, help="CSV for the confusion plot")
    parser.add_argument("--per-class", type=Path, required=True, help="CSV: precision, recall, f1 per class")
    args = parser.parse_args()

    def body() -> None:
        quiet_tensorflow()
        from l2lab.evaluate import EvalPaths, evaluate

        evaluate(EvalPaths(args.data_dir, args.data_summary, args.model, args.run_info, args.metrics,
                           args.confusion, args.per_class))

    run_stage(body)


if __name__ == "__main__":
    main()
