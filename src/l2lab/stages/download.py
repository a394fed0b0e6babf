"""The download stage: fetch data.url (http(s), file:// or a local path) to the raw archive path, verified
by data.sha256."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlsplit

import requests

from l2lab.errors import L2labError
from l2lab.files import file_sha256
from l2lab.params import load_params
from l2lab.process import run_stage

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per file read
NET_CHUNK = 1 << 16  # bytes per network read: a dropped connection loses at most this much
OFFLINE_HINT = (
    "without internet access, point data.url at a local copy, e.g. {activate}"
    "dvc exp run --temp -S data.url=file:///abs/path/cifar-10-python.tar.gz -S data.sha256=<its sha256>"
)


def offline_hint() -> str:
    """OFFLINE_HINT, runnable as printed: with the project's virtual environment activated first (make repro
    runs the stage with it on PATH; the user's shell may not have it)."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix == sys.base_prefix or not activate.exists():
        return OFFLINE_HINT.format(activate="")
    try:
        shown = activate.relative_to(Path.cwd())
    except ValueError:
        shown = activate
    return OFFLINE_HINT.format(activate=f". {shown} && ")


class DownloadError(L2labError):
    """The archive could not be fetched or did not match its checksum."""


class _Transient(Exception):
    """A failure worth retrying (timeout, dropped connection, 5xx); carries the cause."""


@dataclass(frozen=True)
class Retry:
    connect_timeout: float = 10.0  # seconds to open a connection
    read_timeout: float = 30.0  # seconds without a byte before one attempt gives up
    attempts: int = 6  # tries in all, each resuming where the last one stopped
    backoff: float = 1.0  # seconds before the 2nd try, doubling after
    stall_limit: float = 100.0  # seconds without a new byte, waits included, before giving up


def fetch(url: str, dest: Path, sha256: str, retry: Retry = Retry()) -> None:
    """Download url to dest, keeping it only if its sha256 matches.

    Bytes stream into `<dest>.part`; an interrupted transfer resumes from there
    (HTTP Range) on the next try or the next run. dest appears, by rename, only
    once the checksum matches; on a mismatch the partial file is deleted.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    source = local_path(url)
    if source is not None:
        _copy_local(source, part)
    else:
        _download_http(url, part, retry)
    got = file_sha256(part)
    if got != sha256.lower():
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {got}; "
            "the downloaded file was deleted"
        )
    os.replace(part, dest)
    log.info("fetched %s (%d bytes, sha256 %s) to %s", url, dest.stat().st_size, got, dest)


def local_path(url: str) -> Path | None:
    """The filesystem path a file:// URL or plain path names; None for http(s)."""
    parts = urlsplit(url)
    if parts.scheme.lower() in ("http", "https"):
        return None
    if parts.scheme.lower() == "file":
        if parts.netloc not in ("", "localhost"):
            raise DownloadError(f"cannot fetch {url}: file:// URLs must name a local path")
        return Path(unquote(parts.path))
    return Path(url).expanduser()


def _copy_local(source: Path, part: Path) -> None:
    try:
        with source.open("rb") as src, part.open("wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot read {source}: {exc.strerror or exc}") from None


def _download_http(url: str, part: Path, retry: Retry) -> None:
    last_progress = time.monotonic()
    cause = "no attempt made"
    tries = 0
    with requests.Session() as session:
        while tries < retry.attempts:
            if tries:
                time.sleep(retry.backoff * 2 ** (tries - 1))
            # Every wait is capped by what is left of the stall budget, so a silent
            # server ends the download stall_limit seconds after the last byte.
            left = retry.stall_limit - (time.monotonic() - last_progress)
            if left <= 0:
                break
            before = part.stat().st_size if part.exists() else 0
            tries += 1
            try:
                _attempt(session, url, part, (min(retry.connect_timeout, left), min(retry.read_timeout, left)))
                return
            except _Transient as exc:
                cause = str(exc)
            if part.exists() and part.stat().st_size > before:
                last_progress = time.monotonic()
            log.warning("download of %s interrupted (%s); retrying", url, cause)
    raise DownloadError(f"cannot fetch {url}: {cause} after {tries} tries; {offline_hint()}")


def _attempt(session: requests.Session, url: str, part: Path, timeout: tuple[float, float]) -> None:
    """One GET (resuming from part's size where the server allows); raises _Transient to retry."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with session.get(url, stream=True, timeout=timeout, headers=headers) as resp:
            if resp.status_code == 416:  # our partial file is stale or complete; start over
                part.unlink()
                raise _Transient("server refused to resume (HTTP 416)")
            _raise_for_status(url, resp)
            resumed = offset > 0 and resp.status_code == 206
            if offset and not resumed:
                log.info("server does not support resume; restarting %s", url)
            total = _expected_size(resp, offset if resumed else 0)
            with part.open("ab" if resumed else "wb") as out, _progress(total, offset if resumed else 0) as bar:
                for block in resp.iter_content(NET_CHUNK):
                    out.write(block)
                    bar(len(block))
    except requests.exceptions.ConnectTimeout:
        raise _Transient(f"timed out connecting ({timeout[0]:g} s)") from None
    except requests.exceptions.Timeout:
        raise _Transient(f"timed out waiting for data ({timeout[1]:g} s)") from None
    except requests.exceptions.ConnectionError as exc:
        raise _classify_connection_error(url, exc) from None
    except requests.exceptions.ChunkedEncodingError:
        raise _Transient("connection dropped mid-transfer") from None
    except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
            requests.exceptions.TooManyRedirects) as exc:  # e.g. a redirect to file:// or ftp://
        raise DownloadError(f"cannot fetch {url}: the server sent us to a URL we do not follow ({exc}); "
                            "point data.url at the final http(s) address") from None


def _raise_for_status(url: str, resp: requests.Response) -> None:
    if resp.status_code < 400:
        return
    status = f"HTTP {resp.status_code} {resp.reason or ''}".strip()
    if resp.status_code >= 500 or resp.status_code == 429:
        raise _Transient(status)
    raise DownloadError(f"cannot fetch {url}: {status}")


def _expected_size(resp: requests.Response, offset: int) -> int | None:
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _classify_connection_error(url: str, exc: requests.exceptions.ConnectionError) -> Exception:
    """Refused or unresolvable hosts fail at once; dropped connections are retried."""
    text = str(exc)
    fatal = {
        "Connection refused": "connection refused",
        "Name or service not known": "no network (cannot resolve host)",
        "Temporary failure in name resolution": "no network (cannot resolve host)",
        "NameResolutionError": "no network (cannot resolve host)",
        "Network is unreachable": "no network (network is unreachable)",
        "No route to host": "no network (no route to host)",
    }
    for needle, cause in fatal.items():
        if needle in text:
            return DownloadError(f"cannot fetch {url}: {cause}; {offline_hint()}")
    return _Transient("connection dropped")


@contextmanager
def _progress(total: int | None, initial: int) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on a terminal; otherwise a log line at each 10% (or each 16 MiB)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc="download") as bar:
            yield bar.update
        return
    state = {"done": initial, "next": initial}
    step = max(total // 10, CHUNK) if total else 16 * CHUNK

    def advance(n: int) -> None:
        state["done"] += n
        if state["done"] >= state["next"]:
            state["next"] += step
            of = f" of {total}" if total else ""
            log.info("downloaded %d%s bytes", state["done"], of)

    yield advance


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
