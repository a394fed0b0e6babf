"""The preprocess stage: archive -> stratified train/val/test split files and a summary of what went where."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from l2lab.archive import (META, SYNTHETIC_MARK, TEST_BATCH, TRAIN_BATCHES, batch_arrays, class_names, load_pickle,
                           read_batches)
from l2lab.data import fold_split, save_split, stratified_split, stratified_subset
from l2lab.errors import L2labError
from l2lab.files import atomic_outputs, file_sha256, write_json
from l2lab.params import load_params
from l2lab.process import run_stage

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def load_cifar(archive: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], bool]:
    """({"train": (x, y), "test": (x, y)}, class names, synthetic?) from the archive.

    "train" holds all five training batches; "synthetic" is true for l2lab's demo archives.
    """
    raw = read_batches(archive)
    meta = load_pickle(raw.pop(META), META)
    names = class_names(meta)
    parts = [batch_arrays(load_pickle(raw.pop(name), name), name) for name in TRAIN_BATCHES]
    x_train = np.concatenate([x for x, _ in parts])  # (50000, 32, 32, 3) uint8 for the full set
    y_train = np.concatenate([y for _, y in parts])
    del parts
    test = batch_arrays(load_pickle(raw.pop(TEST_BATCH), TEST_BATCH), TEST_BATCH)
    return {"train": (x_train, y_train), "test": test}, names, meta.get("l2lab_note") == SYNTHETIC_MARK


def preprocess(archive: Path, out_dir: Path, summary_path: Path, val_size: int, split_seed: int,
               train_size: int | None = None, folds: int = 0, fold: int | str = 0) -> dict[str, Any]:
    """Write {train,val,test}.npz under out_dir and the summary; return the summary.

    train_size keeps a stratified subset of the training split (the overfitting regime);
    the validation split and the test set are the same whatever it is. folds >= 2: the
    fixed split's train and val together are the pool, and fold (of folds) validates
    (data.fold; "all": the whole pool trains, nothing validates). The test set is never
    in the pool.
    """
    sets, names, synthetic = load_cifar(archive)
    x, y = sets.pop("train")
    if not val_size < len(y):
        raise L2labError(f"data.val_size: {val_size} leaves no training images ({len(y)} in the archive)")
    try:
        train_idx, val_idx = stratified_split(y, val_size, split_seed)
    except ValueError as exc:  # scikit-learn: too few images for a stratified split
        raise L2labError(f"data.val_size: cannot split {len(y)} images into {len(y) - val_size} train and "
                         f"{val_size} val with every class in both: {exc}") from None
    if train_size is not None:
        train_idx = training_subset(y, train_idx, train_size, split_seed)
    if train_size is None and len(train_idx) < len(val_idx):  # a train_size is asked for: no surprise
        fewest = int(np.bincount(y[train_idx]).min())
        log.warning("data.val_size = %d leaves %d training images (%d in the smallest class), fewer than it "
                    "validates on: is that meant? (CIFAR-10's usual split holds out 5000)",
                    val_size, len(train_idx), fewest)
    pool = len(train_idx) + len(val_idx)
    if folds:
        train_idx, val_idx = cross_validation_fold(y, np.union1d(train_idx, val_idx), folds, fold, split_seed)
    sets["train"] = (x[train_idx], y[train_idx])
    sets["val"] = (x[val_idx], y[val_idx])
    del x
    paths = [out_dir / f"{split}.npz" for split in SPLITS]
    with atomic_outputs(*paths) as temps:
        for split, tmp in zip(SPLITS, temps):
            save_split(tmp, *sets[split])
    summary = summarize(sets, names, file_sha256(archive))
    summary["dataset"] = "synthetic demo data (not CIFAR-10)" if synthetic else "cifar-10"
    summary["synthetic"] = synthetic
    summary["folds"], summary["fold"], summary["pool"] = folds, fold, pool  # fold `fold` of `folds` (0: fixed split)
    write_json(summary_path, summary)
    for split in SPLITS:
        log.info("%s: %d images", split, summary[split]["total"])
    return summary


def cross_validation_fold(y: np.ndarray, pool: np.ndarray, folds: int, fold: int | str,
                          split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of one fold of the pool; one line when a class has fewer images than folds."""
    try:
        return fold_split(y, pool, folds, fold, split_seed)
    except ValueError as exc:  # scikit-learn: a class with fewer members than folds
        fewest = int(np.bincount(y[pool]).min())
        raise L2labError(f"data.folds: {folds} folds need at least {folds} images of each class in the pool "
                         f"(data.train_size + data.val_size); its smallest class has {fewest}: {exc}") from None


def training_subset(y: np.ndarray, train_idx: np.ndarray, size: int, split_seed: int) -> np.ndarray:
    """The indices of a stratified subset of `size` of the training split's images (data.train_size)."""
    if size > len(train_idx):
        raise L2labError(f"data.train_size: {size} is more than the {len(train_idx)} training images left after "
                         "holding out data.val_size")
    try:
        return train_idx[stratified_subset(y[train_idx], size, split_seed)]
    except ValueError as exc:  # scikit-learn: fewer images than classes
        raise L2labError(f"data.train_size: cannot keep {size} images with every class in them: {exc}") from None


def summarize(sets: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], sha256: str) -> dict[str, Any]:
    """Counts per class per split, and the source archive's checksum."""
    summary: dict[str, Any] = {"source_sha256": sha256}
    for split in SPLITS:
        labels = sets[split][1]
        counts = np.bincount(labels, minlength=len(names))
        summary[split] = {"total": int(len(labels)), **{n: int(c) for n, c in zip(names, counts)}}
    summary["classes"] = names
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for {train,val,test}.npz")
    parser.add_argument("--summary", type=Path, required=True, help="JSON summary of the splits")
    args = parser.parse_args()

    def body() -> None:
        data = load_params(args.params).data
        preprocess(args.archive, args.out_dir, args.summary, data.val_size, data.split_seed, data.train_size,
                   data.folds, data.fold)

    run_stage(body)


if __name__ == "__main__":
    main()
