"""The code a sweep's points run: the workspace as the sweep found it, checked out where edits cannot reach.

A sweep records its commit and, when the workspace differs from it, a snapshot: a commit of the
workspace made through a throwaway index (every change to tracked files, and the untracked files
git does not ignore: what `dvc exp run --queue` would stash), kept under refs/l2lab/<sweep id>
while the sweep runs. A worker runs points from a git worktree of its repository at that commit
with the snapshot's files on top (so each experiment's baseline is the commit, as with DVC's
queue), sharing the repository's DVC cache. Editing the workspace meanwhile changes nothing a
point runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from l2lab.commands import checked, dvc, git
from l2lab.errors import L2labError

log = logging.getLogger(__name__)

PLACE = Path(".dvc") / "tmp" / "l2lab"  # under the repository; git and DVC ignore .dvc/tmp
SNAPSHOT_REFS = "refs/l2lab/"


@dataclass(frozen=True)
class Code:
    commit: str  # the experiments' baseline
    snapshot: str  # a commit whose tree the points run: the commit itself for a clean workspace


def snapshot(repo: Path, sweep_id: str) -> Code:
    """The workspace as it is now (see the module's docstring)."""
    head = git("rev-parse", "HEAD", cwd=repo)
    index = Path(git("rev-parse", "--path-format=absolute", "--git-path", "index", cwd=repo))
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "index"
        env = {**os.environ, "GIT_INDEX_FILE": str(scratch)}
        if index.exists():
            shutil.copyfile(index, scratch)  # what is staged, and git's stat cache: only changed files are hashed
        else:
            checked(["git", "read-tree", head], "git read-tree", repo, env)
        checked(["git", "add", "-A"], "git add -A (into a scratch index)", repo, env)
        tree = checked(["git", "write-tree"], "git write-tree", repo, env).stdout.strip()
    if tree == git("rev-parse", f"{head}^{{tree}}", cwd=repo):
        return Code(head, head)
    commit = git("commit-tree", tree, "-p", head, "-m", f"l2lab {sweep_id}: the workspace at its start", cwd=repo)
    git("update-ref", f"{SNAPSHOT_REFS}{sweep_id}", commit, cwd=repo)  # kept from git gc while the sweep runs
    log.info("the workspace differs from commit %s: the points run it as it is now (snapshot %s)", head[:12],
             commit[:12])
    return Code(head, commit)


def forget(repo: Path, sweep_id: str) -> None:
    """Drop the sweep's snapshot ref (its experiments hold the same files)."""
    subprocess.run(["git", "update-ref", "-d", f"{SNAPSHOT_REFS}{sweep_id}"], cwd=repo, capture_output=True)


@contextlib.contextmanager
def worktree(repo: Path, sweep_id: str, code: Code, fetch: bool = False) -> Iterator[Path]:
    """A worktree of repo holding code, for the block; removed after it. fetch: get the commit from the
    git remote origin first (a team's worker, whose clone may not have it yet).

    The folder's lock is held while the block runs: a sweep or worker that finds a folder whose lock
    is free (its process was killed) removes it.
    """
    place = repo / PLACE
    place.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(repo)
    path = place / f"{sweep_id}-{os.getpid()}"
    with open(place / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if fetch:
            git("fetch", "-q", "origin", cwd=repo)
        git("worktree", "add", "-q", "--detach", str(path), code.commit, cwd=repo)
        try:
            if code.snapshot != code.commit:
                git("read-tree", "-u", "--reset", code.snapshot, cwd=path)  # HEAD stays the commit
            dvc("cache", "dir", "--local", cache_dir(repo), cwd=path)  # one cache: `dvc exp apply` finds the outputs
            yield path
        finally:
            remove(repo, path)
    Path(lock.name).unlink(missing_ok=True)


def cache_dir(repo: Path) -> str:
    """The repository's DVC cache folder, as DVC resolves it; one line if DVC could not write it into a
    config (it writes config files as ASCII: an experiment in a temporary copy fails on any other path)."""
    found = dvc("cache", "dir", cwd=repo).stdout.strip()
    if not found.isascii():
        raise L2labError(f"DVC's cache is under a path with letters other than ASCII ({found}); DVC cannot write "
                         "that path into an experiment's config (UnicodeEncodeError), so no point could run: move "
                         "the repository, or give DVC an ASCII cache folder (dvc cache dir /abs/ascii/path)")
    return found


def remove(repo: Path, path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def sweep_leftovers(repo: Path) -> None:
    """Remove the worktrees of sweeps and workers that were killed (their lock is free), and git's records of them."""
    place = repo / PLACE
    for lock_file in place.glob("*.lock"):
        with open(lock_file, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use
            remove(repo, place / lock_file.stem)
            lock_file.unlink(missing_ok=True)
    checked(["git", "worktree", "prune"], "git worktree prune", repo)


@contextlib.contextmanager
def sweep_code(repo: Path, sweep_id: str, shared: bool) -> Iterator[tuple[Code, Path | None]]:
    """(the code a new sweep runs, the worktree its workers on this machine run it from) for the block.
    Team mode (shared): HEAD, committed and pushed, and no worktree here. Otherwise the workspace's snapshot,
    checked out, with a warm stage server started there: its imports (TensorFlow) overlap the sweep's own."""
    if shared:
        from l2lab.team.clone import pushed_commit

        commit = pushed_commit(repo)
        yield Code(commit, commit), None
        return
    from l2lab.warm_server import warm_server

    code = snapshot(repo, sweep_id)
    try:
        with worktree(repo, sweep_id, code) as place, warm_server(place):
            yield code, place
    finally:
        forget(repo, sweep_id)
