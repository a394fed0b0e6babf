"""CIFAR batches to arrays, the stratified split, and the split files on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from l2lab.archive import ArchiveError

NUM_CLASSES = 10
PIXELS = 32 * 32 * 3  # values per image in a batch row: 1024 R, 1024 G, 1024 B


def batch_arrays(batch: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 from one unpickled batch."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ArchiveError(f"{name}: 'data' must be a uint8 array of shape (N, {PIXELS}), got {got}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        count = len(labels) if isinstance(labels, (list, np.ndarray)) else type(labels).__name__
        raise ArchiveError(f"{name}: expected {len(data)} labels, got {count}")
    y = np.asarray(labels)
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= NUM_CLASSES):
        raise ArchiveError(f"{name}: labels must be integers in 0..{NUM_CLASSES - 1}")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 3, 32, 32) CHW -> (N, 32, 32, 3) HWC
    return np.ascontiguousarray(x), y.astype(np.int64)


def class_names(meta: dict[str, Any]) -> list[str]:
    """The ten label names from batches.meta."""
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES or not all(isinstance(n, str) for n in names):
        raise ArchiveError(f"batches.meta: 'label_names' must be a list of {NUM_CLASSES} names")
    return names


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


def save_split(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write x and y uncompressed: loading is a plain read, no inflate."""
    with path.open("wb") as f:
        np.savez(f, x=x, y=y)


TENSOR_ALIGNMENT = 64  # bytes: TensorFlow can use a numpy array's memory as a tensor's only at this alignment


def load_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """x (N, 32, 32, 3) uint8 and y (N,) int64 from a split file, each read into 64-byte aligned memory,
    so that training can use it as a tensor without a copy (fit.host_table)."""
    with np.load(path, allow_pickle=False) as f:
        return tuple(_read_aligned(f.zip, name) for name in ("x", "y"))


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
