"""Read the CIFAR-10 python archive without trusting it: safe members, restricted pickles, checked batches."""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from l2lab.data import NUM_CLASSES
from l2lab.errors import L2labError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
SYNTHETIC_MARK = "l2lab synthetic demo data (not CIFAR-10)"  # batches.meta's l2lab_note in demo archives
# A CIFAR-10 batch pickle is 30,730,000 bytes give or take a few hundred, batches.meta a few
# hundred: no member of a real archive comes near this, and nothing larger is ever read.
MAX_MEMBER_BYTES = 64 * 2**20

# The only globals a CIFAR batch pickle refers to: numpy array reconstruction.
# Both module spellings: numpy 1.x wrote numpy.core, numpy 2 writes numpy._core.
_ALLOWED_GLOBALS = {
    (module, name): obj
    for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy")
    for name, obj in (("_reconstruct", _reconstruct), ("ndarray", np.ndarray), ("dtype", np.dtype))
    if module != "numpy" or name != "_reconstruct"
}


class ArchiveError(L2labError):
    """The archive is corrupt, unsafe, or not in the CIFAR-10 python layout."""


class UnsafePickleError(ArchiveError):
    """A pickle asked for something other than numpy array reconstruction."""


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed numpy globals; never imports anything."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to load {module}.{name}") from None


def load_pickle(raw: bytes, name: str) -> dict[str, Any]:
    """Unpickle one batch written by Python 2 (or 3); keys come back as str."""
    try:
        # latin1: Python 2 byte strings holding array data must map 1:1 onto bytes.
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{name}: {exc}") from None
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise ArchiveError(f"{name}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ArchiveError(f"{name}: expected a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse links, special files, absolute paths and paths that climb out."""
    path = PurePosixPath(member.name)
    if member.issym() or member.islnk():
        why = "is a link"
    elif not (member.isfile() or member.isdir()):
        why = "is not a regular file or folder"
    elif path.is_absolute() or member.name.startswith(("/", "\\")) or ":" in path.parts[0]:
        why = "has an absolute path"
    elif ".." in path.parts or "\\" in member.name:
        why = "points outside the target folder"
    else:
        return
    raise ArchiveError(f"refusing unsafe archive member {member.name!r}: it {why}")


def check_size(member: tarfile.TarInfo) -> None:
    """Refuse a member that declares more bytes than any CIFAR-10 file (a decompression bomb), before reading it."""
    if member.size > MAX_MEMBER_BYTES:
        raise ArchiveError(f"refusing archive member {member.name!r}: it declares {member.size:,} bytes; no CIFAR-10 "
                           f"file is over {MAX_MEMBER_BYTES:,} (a CIFAR-10 batch is about 30.7 MB)")


def read_capped(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A member's bytes, never more than MAX_MEMBER_BYTES whatever its header says."""
    data = tar.extractfile(member).read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise ArchiveError(f"refusing archive member {member.name!r}: over {MAX_MEMBER_BYTES:,} bytes")
    return data


def read_batches(archive: Path) -> dict[str, bytes]:
    """Check every member, then return the raw bytes of each CIFAR batch by base name.

    Nothing is written to disk: the batches are read straight from the stream,
    so a hostile member can never land anywhere.
    """
    wanted = {f"{BATCH_DIR}/{name}" for name in (*TRAIN_BATCHES, TEST_BATCH, META)}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                check_member(member)
                check_size(member)
                key = str(PurePosixPath(member.name))
                if key in wanted and member.isfile():
                    found[PurePosixPath(key).name] = read_capped(tar, member)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ArchiveError(f"{archive}: corrupt or truncated archive ({exc})") from None
    missing = sorted(name for name in wanted if PurePosixPath(name).name not in found)
    if missing:
        raise ArchiveError(f"{archive}: not the CIFAR-10 python layout; missing {', '.join(missing)}")
    return found


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
