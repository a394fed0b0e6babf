"""A clone that team mode can use: committed, with the shared remotes and the team's tracking server."""

from __future__ import annotations

import subprocess
from pathlib import Path

from l2lab.commands import dvc_command, git
from l2lab.errors import L2labError
from l2lab.tracking.store import tracking_uri


def check_clone(clone: Path, dirty: str | None = None) -> None:
    """A clone for team mode: a git remote named origin and a default DVC remote (where experiments and
    outputs go); with dirty (why that matters), no uncommitted changes to tracked files."""
    if dirty and git("status", "--porcelain", "--untracked-files=no", cwd=clone):
        raise L2labError(f"{clone} has uncommitted changes; {dirty}")
    if "origin" not in git("remote", cwd=clone).split():
        raise L2labError("no git remote named origin: team mode shares experiments through it "
                         "(git remote add origin …)")
    default = subprocess.run([dvc_command(), "remote", "default"], cwd=clone, capture_output=True, text=True)
    if default.returncode != 0 or not default.stdout.strip():
        raise L2labError("no default DVC remote: add the team's (dvc remote add -d team s3://…) "
                         "and commit .dvc/config")


def check_shared_tracking(clone: Path) -> None:
    """Team mode logs to the team's tracking server (checked before any store is touched): a local
    store would hide the runs from everyone else."""
    uri = tracking_uri(clone)
    if not uri.startswith(("http://", "https://")):
        raise L2labError(f"team mode needs the team's MLflow tracking server, not {uri}: "
                         "set MLFLOW_TRACKING_URI=http(s)://… (l2lab team up prints it for the local stack)")


def pushed_commit(cwd: Path) -> str:
    """The commit a team sweep runs on: HEAD, with no uncommitted changes, and on the git remote origin."""
    check_clone(cwd, "team workers run the sweep's commit, not your workspace: commit (and push) first")
    commit = git("rev-parse", "HEAD", cwd=cwd)
    git("fetch", "-q", "origin", cwd=cwd)
    if not git("branch", "-r", "--contains", commit, cwd=cwd):
        raise L2labError(f"commit {commit[:12]} is not on origin: workers on other machines could not check it "
                         "out; git push first")
    return commit
