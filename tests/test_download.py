"""fetch(): checksums, resume, retries and clear failures, against a real loopback server."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from l2lab.stages.download import DownloadError, Retry, fetch, local_path
from loopback import LoopbackServer, Route, free_port

BODY = bytes(range(256)) * 4096  # 1 MiB of known bytes
SHA = hashlib.sha256(BODY).hexdigest()
FAST = Retry(connect_timeout=2, read_timeout=1, attempts=3, backoff=0.05, stall_limit=10)


def test_http_success(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add("/a.tar.gz", Route(body=BODY))
    dest = tmp_path / "raw" / "a.tar.gz"
    fetch(url, dest, SHA, FAST)
    assert dest.read_bytes() == BODY
    assert list(dest.parent.iterdir()) == [dest]  # no partial file left behind


@pytest.mark.fault
def test_wrong_checksum_deletes_download(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add("/a.tar.gz", Route(body=BODY))
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(DownloadError, match=f"expected sha256 {'0' * 64}, got {SHA}"):
        fetch(url, dest, "0" * 64, FAST)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fault
def test_truncated_transfer_resumes_with_range(server: LoopbackServer, tmp_path: Path) -> None:
    route = Route(body=BODY, drop_after=300_000, drops=2)
    url = server.add("/a.tar.gz", route)
    fetch(url, tmp_path / "a.tar.gz", SHA, FAST)
    assert (tmp_path / "a.tar.gz").read_bytes() == BODY
    ranges = [r.get("Range") for r in route.requests]
    assert ranges[0] is None and len(ranges) == 3
    offsets = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:]]
    assert 0 < offsets[0] <= 300_000 < offsets[1] <= 600_000  # each try picks up where the last one stopped


@pytest.mark.fault
def test_truncated_transfer_restarts_when_server_ignores_range(server: LoopbackServer, tmp_path: Path) -> None:
    route = Route(body=BODY, ranges=False, drop_after=300_000, drops=1)
    url = server.add("/a.tar.gz", route)
    fetch(url, tmp_path / "a.tar.gz", SHA, FAST)
    assert (tmp_path / "a.tar.gz").read_bytes() == BODY
    assert len(route.requests) == 2


@pytest.mark.fault
def test_partial_file_from_an_earlier_run_is_resumed(server: LoopbackServer, tmp_path: Path) -> None:
    route = Route(body=BODY)
    url = server.add("/a.tar.gz", route)
    (tmp_path / "a.tar.gz.part").write_bytes(BODY[:123_456])
    fetch(url, tmp_path / "a.tar.gz", SHA, FAST)
    assert (tmp_path / "a.tar.gz").read_bytes() == BODY
    assert route.requests[0]["Range"] == "bytes=123456-"


@pytest.mark.fault
def test_truncated_for_good_fails_on_checksum(server: LoopbackServer, tmp_path: Path) -> None:
    # The server declares the short length, so every try "succeeds"; the checksum decides.
    url = server.add("/a.tar.gz", Route(body=BODY[:1000]))
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch(url, tmp_path / "a.tar.gz", SHA, FAST)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fault
def test_http_404_fails_at_once_naming_url_and_status(server: LoopbackServer, tmp_path: Path) -> None:
    route = Route(status=404)
    url = server.add("/missing", route)
    with pytest.raises(DownloadError, match=rf"cannot fetch {url}: HTTP 404"):
        fetch(url, tmp_path / "a", SHA, FAST)
    assert len(route.requests) == 1


@pytest.mark.fault
def test_http_503_is_retried_then_reported(server: LoopbackServer, tmp_path: Path) -> None:
    route = Route(status=503)
    url = server.add("/busy", route)
    with pytest.raises(DownloadError, match=r"HTTP 503 .* after 3 tries; without internet access, point data.url"):
        fetch(url, tmp_path / "a", SHA, FAST)
    assert len(route.requests) == 3


@pytest.mark.fault
def test_refused_connection_fails_fast(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/x.tar.gz"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=rf"cannot fetch {url}: connection refused; .*data.url=file://"):
        fetch(url, tmp_path / "a", SHA, FAST)
    assert time.monotonic() - started < 5


@pytest.mark.fault
def test_silent_server_times_out(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add("/stall", Route(stall=30))
    started = time.monotonic()
    with pytest.raises(DownloadError, match=rf"cannot fetch {url}: timed out waiting for data \(1 s\) after 3 tries"):
        fetch(url, tmp_path / "a", SHA, FAST)
    assert time.monotonic() - started < 10


@pytest.mark.fault
def test_stall_limit_bounds_the_whole_download_not_each_try(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add("/stall", Route(stall=30))
    patient = Retry(connect_timeout=2, read_timeout=1.5, attempts=100, backoff=0.1, stall_limit=3)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        fetch(url, tmp_path / "a", SHA, patient)
    assert 3 <= time.monotonic() - started < 5


def test_file_url_and_plain_path(small_archive: Path, small_archive_sha256: str, tmp_path: Path) -> None:
    fetch(small_archive.as_uri(), tmp_path / "a.tar.gz", small_archive_sha256, FAST)
    fetch(str(small_archive), tmp_path / "b.tar.gz", small_archive_sha256, FAST)
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes() == small_archive.read_bytes()


@pytest.mark.fault
def test_missing_local_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="cannot read /nonexistent/x.tar.gz: No such file"):
        fetch("file:///nonexistent/x.tar.gz", tmp_path / "a", SHA, FAST)
    assert list(tmp_path.iterdir()) == []


def test_local_path_parsing() -> None:
    assert local_path("https://example.org/a") is None
    assert local_path("file:///data/a%20b.tar.gz") == Path("/data/a b.tar.gz")
    assert local_path("rel/a.tar.gz") == Path("rel/a.tar.gz")


def test_credentials_come_from_netrc_not_the_url(server: LoopbackServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    url = server.add("/private.tgz", Route(body=BODY, auth="Basic " + base64.b64encode(b"alice:s3cretPW").decode()))
    with pytest.raises(DownloadError):  # no credentials anywhere: the server says 401
        fetch(url, tmp_path / "a", SHA, FAST)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password s3cretPW\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    fetch(url, tmp_path / "a", SHA, FAST)
    assert (tmp_path / "a").read_bytes() == BODY


@pytest.mark.fault
def test_a_password_in_data_url_is_refused_and_never_echoed() -> None:
    from l2lab.params import ParamsError, load_params, parse_params

    raw = load_params(Path(__file__).resolve().parents[1] / "params.yaml").model_dump()
    raw["data"]["url"] = "http://alice:s3cretPW@127.0.0.1:9/cifar-10-python.tar.gz"
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    text = str(info.value)
    assert text.startswith("params.yaml: data.url: must not hold a user name or password") and "~/.netrc" in text
    assert "s3cretPW" not in text and "alice" not in text and "http://***@127.0.0.1:9/" in text


@pytest.mark.fault
@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/cifar-10-python.tar.gz"])
def test_a_redirect_to_another_scheme_is_one_clear_error(server: LoopbackServer, tmp_path: Path, target: str) -> None:
    url = server.add("/moved.tgz", Route(redirect=target))
    with pytest.raises(DownloadError,
                       match=rf"^cannot fetch {url}: the server sent us to a URL we do not follow") as info:
        fetch(url, tmp_path / "a", SHA, FAST)
    assert "\n" not in str(info.value) and not (tmp_path / "a").exists()
