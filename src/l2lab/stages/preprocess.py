"""DVC stage: archive -> stratified train/val/test split files and a data summary."""

import argparse
from pathlib import Path

from l2lab.params import load_params
from l2lab.preprocess import preprocess
from l2lab.stages import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for {train,val,test}.npz")
    parser.add_argument("--summary", type=Path, required=True, help="JSON summary for dvc metrics")
    args = parser.parse_args()

    def body() -> None:
        params = load_params(args.params)
        data = params.data
        preprocess(args.archive, args.out_dir, args.summary, data.val_size, data.split_seed, data.train_size)

    run_stage(body)


if __name__ == "__main__":
    main()
