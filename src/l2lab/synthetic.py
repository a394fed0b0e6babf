"""A small, learnable stand-in for CIFAR-10 in the official archive format.

Used by the tests and by `make demo`, where the real archive cannot be downloaded.
Each class is a shape drawn in a class colour over a noisy background, so a CNN
learns it in an epoch or two. The pickles are written the way Python 2 wrote the
official ones (byte-string keys and values, numpy.core globals), so the loader is
exercised on the same format as the real files.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from l2lab.archive import SYNTHETIC_MARK

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# A colour per class (10, 3) RGB; classes k and k+5 share a shape, not a colour.
PALETTE = np.array(
    [[220, 60, 60], [60, 200, 60], [70, 90, 230], [230, 210, 60], [200, 70, 210],
     [60, 210, 210], [240, 140, 40], [150, 150, 150], [120, 60, 20], [250, 250, 250]],
    dtype=np.int16,
)
MTIME = 1244000000  # fixed member times: the same inputs give the same archive bytes


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings and numpy globals as numpy 1.x named them."""

    def _save_py2str(self, raw: bytes) -> None:
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(raw)

    def save_str(self, obj: str) -> None:
        self._save_py2str(obj.encode("latin1"))

    def save_bytes(self, obj: bytes) -> None:
        self._save_py2str(bytes(obj))

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if getattr(obj, "__module__", None) == "numpy._core.multiarray":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n" + (name or obj.__name__).encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[str] = save_str
    dispatch[bytes] = save_bytes


def py2_pickle(obj: Any) -> bytes:
    """Pickle obj as Python 2's cPickle (protocol 2) would have."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def draw_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images (N, 32, 32, 3) uint8: class shape and colour over noise, jittered in place and tone."""
    n = len(labels)
    yy, xx = np.mgrid[0:32, 0:32]  # (32, 32) pixel coordinates
    images = rng.integers(0, 90, size=(n, 32, 32, 3)).astype(np.int16)  # dark noisy background
    for i, label in enumerate(labels):
        cy, cx = rng.integers(10, 22, size=2)  # shape centre
        r = rng.integers(6, 10)  # shape size, pixels
        mask = _shape_mask(int(label) % 5, yy - cy, xx - cx, r)
        colour = PALETTE[label] + rng.integers(-30, 31, size=3)
        images[i][mask] = colour
    return np.clip(images, 0, 255).astype(np.uint8)


def _shape_mask(kind: int, dy: np.ndarray, dx: np.ndarray, r: int) -> np.ndarray:
    if kind == 0:  # disc
        return dy**2 + dx**2 <= r**2
    if kind == 1:  # square
        return (abs(dy) <= r) & (abs(dx) <= r)
    if kind == 2:  # horizontal bar
        return (abs(dy) <= r // 3) & (abs(dx) <= r + 4)
    if kind == 3:  # vertical bar
        return (abs(dx) <= r // 3) & (abs(dy) <= r + 4)
    return (abs(dy - dx) <= 2) & (abs(dy) <= r + 2)  # diagonal stroke


def batch_payload(label: str, images: np.ndarray, labels: np.ndarray) -> bytes:
    """One batch pickle: data (N, 3072) uint8 in CHW row order, labels a list of ints."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, 32, 32, 3) -> (N, 3072)
    names = [f"{CLASSES[y]}_{i:05d}.png" for i, y in enumerate(labels)]
    return py2_pickle({"batch_label": label, "labels": [int(y) for y in labels], "data": data, "filenames": names})


def write_tar_gz(path: Path, members: dict[str, bytes]) -> None:
    """A gzipped tar of regular files (name -> bytes), with reproducible bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), MTIME, 0o644
            tar.addfile(info, io.BytesIO(payload))
    with path.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())


def cifar_members(per_batch: int, test_size: int, seed: int) -> dict[str, bytes]:
    """Archive members in the official layout: 5 training batches of per_batch images, one test batch."""
    rng = np.random.default_rng(seed)
    members = {}
    for name, label, n in [*((f"data_batch_{b}", f"training batch {b} of 5", per_batch) for b in range(1, 6)),
                           ("test_batch", "testing batch 1 of 1", test_size)]:
        labels = rng.permutation(np.arange(n) % len(CLASSES))  # balanced classes, shuffled
        members[f"cifar-10-batches-py/{name}"] = batch_payload(label, draw_images(labels, rng), labels)
    meta = {"num_cases_per_batch": per_batch, "label_names": CLASSES, "num_vis": 3072, "l2lab_note": SYNTHETIC_MARK}
    members["cifar-10-batches-py/batches.meta"] = py2_pickle(meta)
    return members


def write_cifar_archive(path: Path, per_batch: int = 200, test_size: int = 200, seed: int = 0) -> Path:
    """Write a synthetic CIFAR-format archive to path and return path."""
    write_tar_gz(path, cifar_members(per_batch, test_size, seed))
    return path
