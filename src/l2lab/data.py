"""The stratified split, and the split files on disk."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from l2lab.errors import L2labError, first_line
from l2lab.params import NUM_CLASSES
def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), both sorted; val holds val_size images in each class's proportion.

    scikit-learn's stratified train_test_split, seeded by data.split_seed alone, so
    training seeds never move the validation set.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < val_size < len(labels):
        raise ValueError(f"val_size must be in 1..{len(labels) - 1} for {len(labels)} images, got {val_size}")
    train, val = train_test_split(np.arange(len(labels)), test_size=val_size, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(val)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of `size` items keeping each class's proportion (scikit-learn, seeded)."""
    from sklearn.model_selection import train_test_split

    if size >= len(labels):
        return np.arange(len(labels))
    keep, _ = train_test_split(np.arange(len(labels)), train_size=size, random_state=seed, stratify=labels)
    return np.sort(keep)


def fold_split(labels: np.ndarray, pool: np.ndarray, folds: int, fold: int | str,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of one cross-validation fold of pool (sorted indices into labels): scikit-learn's
    StratifiedKFold over the pool, shuffled and seeded by data.split_seed; fold i validates, the others
    train. Fold "all": the whole pool trains and nothing validates (a refit)."""
    from sklearn.model_selection import StratifiedKFold

    if fold == "all":
        return pool, np.empty(0, dtype=pool.dtype)
    parts = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(pool, labels[pool])
    train, val = next(part for i, part in enumerate(parts) if i == fold)
    return pool[train], pool[val]


def save_split(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write x and y uncompressed: loading is a plain read, no inflate."""
    with path.open("wb") as f:
        np.savez(f, x=x, y=y)


TENSOR_ALIGNMENT = 64  # bytes: TensorFlow can use a numpy array's memory as a tensor's only at this alignment


IMAGE_SHAPE = (32, 32, 3)  # height, width, RGB


class SplitError(L2labError):
    """A split file is missing, unreadable or not what preprocess writes."""


def load_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """x (N, 32, 32, 3) uint8 and y (N,) int64 labels in 0..9 from a split file, each read into 64-byte
    aligned memory, so that training can use it as a tensor without a copy (fit.host_table).

    Anything else (a truncated file, float images, another shape) is one SplitError naming the file.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y = (_read_aligned(f.zip, name) for name in ("x", "y"))
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        why = ": ".join(filter(None, [type(exc).__name__, first_line(exc)]))
        raise SplitError(f"{path} is not a readable split file ({why}); {SPLIT_FIX}") from None
    problem = split_problem(x, y)
    if problem:
        raise SplitError(f"{path}: {problem}; {SPLIT_FIX}")
    return x, y


SPLIT_FIX = "restore it with `dvc checkout`, or write it again with `dvc repro -f preprocess`"


def split_problem(x: np.ndarray, y: np.ndarray) -> str | None:
    """What makes (x, y) something other than preprocess's output; None when it is that."""
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        return f"x must be uint8 images of shape (N, 32, 32, 3), got {x.dtype} {x.shape}"
    if y.dtype != np.int64 or y.shape != (len(x),):
        return f"y must be {len(x)} int64 labels, got {y.dtype} {y.shape}"
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
        return f"labels must be in 0..{NUM_CLASSES - 1}, got {y.min()}..{y.max()}"
    return None



def _read_aligned(archive: Any, name: str) -> np.ndarray:
    """One .npy member of an .npz, read straight into an aligned array (np.load's own may start anywhere)."""
    with archive.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"{name}: .npy format {version} is not one np.savez writes here")
        shape, fortran_order, dtype = readers[version](member)
        if dtype.hasobject or fortran_order:
            raise ValueError(f"{name}: not a plain C-ordered array")
        out = aligned_empty(shape, dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            got = member.readinto(view[done:])
            if not got:
                raise ValueError(f"{name}: the file ends early")
            done += got
        return out


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on a TENSOR_ALIGNMENT boundary."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + TENSOR_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)
