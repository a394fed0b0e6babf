"""Archive reading, restricted unpickling, validation and the split files."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from l2lab.archive import MAX_MEMBER_BYTES, ArchiveError, UnsafePickleError, load_pickle, read_batches
from l2lab.data import load_split, stratified_split
from l2lab.errors import L2labError
from l2lab.stages.preprocess import preprocess
from l2lab.synthetic import CLASSES, batch_payload, cifar_members, py2_pickle, write_tar_gz
from conftest import PER_BATCH, TEST_SIZE


def run(archive: Path, out: Path, val_size: int = 50) -> dict:
    return preprocess(archive, out / "processed", out / "data.json", val_size, split_seed=42)


def test_splits_shapes_counts_and_summary(small_archive: Path, small_archive_sha256: str, tmp_path: Path) -> None:
    summary = run(small_archive, tmp_path)
    sizes = {"train": 5 * PER_BATCH - 50, "val": 50, "test": TEST_SIZE}
    for split, n in sizes.items():
        x, y = load_split(tmp_path / "processed" / f"{split}.npz")
        assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
        assert y.shape == (n,) and np.issubdtype(y.dtype, np.integer)
        assert summary[split]["total"] == n
        assert sum(summary[split][c] for c in CLASSES) == n
    assert summary["source_sha256"] == small_archive_sha256
    assert json.loads((tmp_path / "data.json").read_text()) == summary
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == ["test.npz", "train.npz", "val.npz"]


def test_images_keep_their_pixels_and_labels(tmp_path: Path) -> None:
    # One known image per batch: row-major CHW in the pickle must come out HWC.
    image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    labels = np.array([3])
    members = {f"cifar-10-batches-py/data_batch_{b}": batch_payload("b", image[None], labels) for b in range(1, 6)}
    members["cifar-10-batches-py/test_batch"] = batch_payload("t", image[None], labels)
    members["cifar-10-batches-py/batches.meta"] = py2_pickle({"label_names": CLASSES})
    write_tar_gz(tmp_path / "a.tar.gz", members)
    run(tmp_path / "a.tar.gz", tmp_path, val_size=1)
    x, y = load_split(tmp_path / "processed" / "test.npz")
    assert np.array_equal(x[0], image) and y.tolist() == [3]


def test_python3_pickles_with_str_keys_load_too(tmp_path: Path) -> None:
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    assert load_pickle(pickle.dumps(batch), "b")["labels"] == [0, 1]
    assert list(load_pickle(py2_pickle(batch), "b")) == ["data", "labels"]


@pytest.mark.fault
def test_pickle_asking_for_other_callables_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with pytest.raises(UnsafePickleError, match="data_batch_1: refusing to load pathlib.Path.touch"):
        load_pickle(pickle.dumps({"data": Evil()}), "data_batch_1")
    payload = pickle.dumps(Evil())
    members = cifar_members(10, 10, 0) | {"cifar-10-batches-py/data_batch_3": payload}
    write_tar_gz(tmp_path / "evil.tar.gz", members)
    with pytest.raises(UnsafePickleError, match="data_batch_3"):
        run(tmp_path / "evil.tar.gz", tmp_path, val_size=5)
    assert not marker.exists()
    assert not (tmp_path / "processed").exists() or not any((tmp_path / "processed").iterdir())


@pytest.mark.fault
@pytest.mark.parametrize("os_system", ["os\nsystem", "posix\nsystem", "builtins\neval"])
def test_raw_global_opcodes_are_refused(os_system: str) -> None:
    payload = b"c" + os_system.encode() + b"\n(S'echo hi'\ntR."
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        load_pickle(payload, "x")


def _tar_with(tmp_path: Path, info: tarfile.TarInfo, payload: bytes = b"") -> Path:
    path = tmp_path / "hostile.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"hi"))
        info.size = len(payload) if info.isfile() else 0
        tar.addfile(info, io.BytesIO(payload) if payload else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.fault
@pytest.mark.parametrize(
    ("info", "why"),
    [
        (_member("../escape.txt"), "points outside the target folder"),
        (_member("cifar-10-batches-py/../../escape.txt"), "points outside the target folder"),
        (_member("/etc/cron.d/evil"), "has an absolute path"),
        (_member("cifar-10-batches-py/data_batch_1", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_member("cifar-10-batches-py/test_batch", tarfile.LNKTYPE, "cifar-10-batches-py/readme.html"), "is a link"),
        (_member("cifar-10-batches-py/fifo", tarfile.FIFOTYPE), "is not a regular file"),
    ],
)
def test_hostile_members_are_refused_by_name(tmp_path: Path, info: tarfile.TarInfo, why: str) -> None:
    archive = _tar_with(tmp_path, info, b"x" if info.isfile() else b"")
    with pytest.raises(ArchiveError, match=f"refusing unsafe archive member '{info.name}': it {why}"):
        read_batches(archive)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar.gz"]


@pytest.mark.fault
def test_corrupt_and_truncated_archives_name_the_file(small_archive: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(small_archive.read_bytes()[: small_archive.stat().st_size // 2])
    with pytest.raises(ArchiveError, match=f"{truncated}: corrupt or truncated"):
        read_batches(truncated)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveError, match=f"{garbage}: corrupt or truncated"):
        read_batches(garbage)


@pytest.mark.fault
def test_wrong_layout_names_what_is_missing(tmp_path: Path) -> None:
    members = {k.replace("cifar-10-batches-py", "other"): v for k, v in cifar_members(10, 10, 0).items()}
    write_tar_gz(tmp_path / "a.tar.gz", members)
    with pytest.raises(ArchiveError, match="not the CIFAR-10 python layout; missing cifar-10-batches-py/batches.meta"):
        read_batches(tmp_path / "a.tar.gz")


@pytest.mark.fault
@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]},
         r"'data' must be a uint8 array of shape \(N, 3072\)"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "'data' must be a uint8 array"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "expected 2 labels, got 1"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, r"labels must be integers in 0..9"),
    ],
)
def test_bad_batches_say_what_is_wrong(tmp_path: Path, batch: dict, message: str) -> None:
    members = cifar_members(10, 10, 0) | {"cifar-10-batches-py/data_batch_2": py2_pickle(batch)}
    write_tar_gz(tmp_path / "a.tar.gz", members)
    with pytest.raises(ArchiveError, match=f"data_batch_2: {message}"):
        run(tmp_path / "a.tar.gz", tmp_path, val_size=5)
    assert not (tmp_path / "processed").exists() or not any((tmp_path / "processed").iterdir())


def test_split_is_stratified_seeded_and_disjoint() -> None:
    labels = np.repeat(np.arange(10), [500, 400, 300, 600, 500, 500, 700, 500, 500, 1000])  # 5500, uneven
    train, val = stratified_split(labels, 550, seed=7)
    assert len(val) == 550 and len(train) == 5500 - 550
    assert not np.intersect1d(train, val).size and np.union1d(train, val).size == 5500
    per_class = np.bincount(labels[val], minlength=10)
    assert per_class.tolist() == [50, 40, 30, 60, 50, 50, 70, 50, 50, 100]  # exactly 10% of each class
    assert np.array_equal(stratified_split(labels, 550, seed=7)[1], val)
    assert not np.array_equal(stratified_split(labels, 550, seed=8)[1], val)


def test_split_rounding_still_sums_to_val_size() -> None:
    labels = np.repeat(np.arange(3), [7, 7, 7])
    _, val = stratified_split(labels, 5, seed=0)
    counts = np.bincount(labels[val], minlength=3)
    assert counts.sum() == 5 and counts.max() - counts.min() <= 1


@pytest.mark.fault
def test_val_size_larger_than_the_archive_is_refused(small_archive: Path, tmp_path: Path) -> None:
    with pytest.raises(L2labError, match="data.val_size: 300 leaves no training images"):
        run(small_archive, tmp_path, val_size=5 * PER_BATCH)


def _bomb(path: Path, declared: int, sent: int) -> Path:
    """A gzip of a tar whose data_batch_1 header declares `declared` bytes, followed by `sent` zero bytes."""
    import gzip

    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.size = declared
    with gzip.open(path, "wb", compresslevel=9) as gz:
        gz.write(info.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(sent // 2**20):
            gz.write(bytes(2**20))
    return path


@pytest.mark.fault
@pytest.mark.parametrize("declared", [6 * 2**30, MAX_MEMBER_BYTES + 1])
def test_a_decompression_bomb_is_refused_before_it_is_read(tmp_path: Path, declared: int) -> None:
    import tracemalloc

    archive = _bomb(tmp_path / "bomb.tar.gz", declared, sent=80 * 2**20)  # 80 MB of zeros: ~80 KB on disk
    assert archive.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError, match=f"refusing archive member 'cifar-10-batches-py/data_batch_1': "
                                               f"it declares {declared:,} bytes"):
            read_batches(archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # refused from its header: nothing of it was read into memory


@pytest.mark.fault
def test_val_size_below_the_number_of_classes_is_one_clear_error(small_archive: Path, tmp_path: Path) -> None:
    with pytest.raises(L2labError, match=r"^data.val_size: cannot split 300 images into 295 train and 5 val with "
                                         r"every class in both: The test_size = 5 should be greater or equal"):
        run(small_archive, tmp_path, val_size=5)


@pytest.mark.fault
def test_a_val_size_that_leaves_few_training_images_is_warned_about(small_archive: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    run(small_archive, tmp_path, val_size=280)
    assert "data.val_size = 280 leaves 20 training images (2 in the smallest class)" in caplog.text
    caplog.clear()
    run(small_archive, tmp_path / "b", val_size=50)
    assert "leaves" not in caplog.text


def test_train_size_keeps_a_stratified_subset_and_leaves_val_and_test_alone(small_archive: Path,
                                                                            tmp_path: Path) -> None:
    full = preprocess(small_archive, tmp_path / "a", tmp_path / "a.json", 50, split_seed=42)
    part = preprocess(small_archive, tmp_path / "b", tmp_path / "b.json", 50, split_seed=42, train_size=100)
    assert part["train"]["total"] == 100 and full["train"]["total"] == 250
    assert [part["train"][c] for c in CLASSES] == [10] * 10  # 10% of each class, as in the full split
    for split in ("val", "test"):
        a, b = load_split(tmp_path / "a" / f"{split}.npz"), load_split(tmp_path / "b" / f"{split}.npz")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    kept = load_split(tmp_path / "b" / "train.npz")[0]
    every = {img.tobytes() for img in load_split(tmp_path / "a" / "train.npz")[0]}
    assert all(img.tobytes() in every for img in kept)  # a subset of the training split, nothing else


@pytest.mark.fault
@pytest.mark.parametrize(("size", "message"), [(251, "data.train_size: 251 is more than the 250 training images"),
                                               (5, "data.train_size: cannot keep 5 images with every class in them")])
def test_impossible_train_sizes_are_one_clear_error(small_archive: Path, tmp_path: Path, size: int,
                                                    message: str) -> None:
    with pytest.raises(L2labError, match=message):
        preprocess(small_archive, tmp_path / "p", tmp_path / "s.json", 50, split_seed=42, train_size=size)
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())
