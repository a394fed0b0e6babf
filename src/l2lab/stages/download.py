"""DVC stage: fetch data.url to the raw archive path, verified by data.sha256."""

import argparse
from pathlib import Path

from l2lab.download import fetch
from l2lab.params import load_params
from l2lab.stages import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="where the archive goes")
    args = parser.parse_args()

    def body() -> None:
        data = load_params(args.params).data
        fetch(data.url, args.out, data.sha256)

    run_stage(body)


if __name__ == "__main__":
    main()
