"""MovieLens downloads against a local HTTP server: checksums, resumption, and failures."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pinlab_data import (
    MOVIELENS_ARCHIVES,
    PinlabDataError,
    download_movielens,
    fetch_movielens,
    load_dataset,
    validate_dataset,
)

RATINGS = b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n2,1,3.5,1445714835\n"
MOVIES = b"movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"


def tiny_zip() -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as archive:
        archive.writestr("ml-latest-small/ratings.csv", RATINGS)
        archive.writestr("ml-latest-small/movies.csv", MOVIES)
        archive.writestr("ml-latest-small/README.txt", b"x" * 20_000)  # some bytes to resume
    return sink.getvalue()


@dataclass
class Server:
    """Files by path; honours Range; can cut a response short once."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    cut_after: int | None = None
    base: str = ""


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            wanted = self.headers.get("Range")
            if wanted:
                start = int(wanted.removeprefix("bytes=").rstrip("-"))
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if state.cut_after is not None:
                self.wfile.write(body[start : start + state.cut_after])
                state.cut_after = None
                self.close_connection = True
                return
            self.wfile.write(body[start:])

        def log_message(self, format: str, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}/movielens"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def publish(server: Server, name: str, body: bytes, md5: str | None = None) -> None:
    server.files[f"/movielens/{name}"] = body
    digest = md5 or hashlib.md5(body).hexdigest()
    server.files[f"/movielens/{name}.md5"] = f"{digest}  {name}\n".encode()


def test_download_checks_the_published_md5_and_converts(server: Server, tmp_path: Path) -> None:
    body = tiny_zip()
    publish(server, "ml-latest-small.zip", body)
    seen: list[tuple[int, int | None]] = []
    report = fetch_movielens(
        "movielens-latest-small",
        tmp_path / "ds",
        cache=tmp_path / "cache",
        base_url=server.base,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert (tmp_path / "cache" / "ml-latest-small.zip").read_bytes() == body
    assert not (tmp_path / "cache" / "ml-latest-small.zip.part").exists()
    assert seen[-1] == (len(body), len(body))
    assert (report.layout, report.num_interactions) == ("csv", 2)
    assert load_dataset(tmp_path / "ds").manifest.name == "ml-latest-small"
    assert validate_dataset(tmp_path / "ds").ok

    server.requests.clear()  # a second time, the archive is checked, not fetched
    download_movielens("movielens-latest-small", tmp_path / "cache", base_url=server.base)
    assert [path for path, _ in server.requests] == ["/movielens/ml-latest-small.zip.md5"]


def test_a_partial_download_resumes_with_a_range_request(server: Server, tmp_path: Path) -> None:
    body = tiny_zip()
    publish(server, "ml-32m.zip", body)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-32m.zip.part").write_bytes(body[:7000])
    path = download_movielens("movielens-32m", cache, base_url=server.base)
    assert path.read_bytes() == body
    assert ("/movielens/ml-32m.zip", "bytes=7000-") in server.requests


def test_a_dropped_connection_keeps_the_part_and_the_next_run_resumes(
    server: Server, tmp_path: Path
) -> None:
    body = tiny_zip()
    publish(server, "ml-32m.zip", body)
    server.cut_after = 5000
    with pytest.raises(PinlabDataError, match=r"stopped .* run the command again to resume"):
        download_movielens("movielens-32m", tmp_path, base_url=server.base)
    assert (tmp_path / "ml-32m.zip.part").stat().st_size == 5000
    assert download_movielens("movielens-32m", tmp_path, base_url=server.base).read_bytes() == body
    assert ("/movielens/ml-32m.zip", "bytes=5000-") in server.requests


def test_a_checksum_mismatch_deletes_the_download(server: Server, tmp_path: Path) -> None:
    publish(server, "ml-32m.zip", tiny_zip(), md5="0" * 32)
    with pytest.raises(PinlabDataError) as info:
        download_movielens("movielens-32m", tmp_path, base_url=server.base)
    assert "does not match its published checksum (expected md5 " + "0" * 32 in str(info.value)
    assert "the download was deleted, run the command again" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_known_archives_are_checked_against_their_sha256_table(
    server: Server, tmp_path: Path
) -> None:
    publish(server, "ml-100k.zip", tiny_zip())  # not the real archive: wrong size
    expected = MOVIELENS_ARCHIVES["movielens-100k"]
    assert expected.sha256 is not None and len(expected.sha256) == 64
    with pytest.raises(PinlabDataError, match=rf"expected {expected.size} bytes"):
        download_movielens("movielens-100k", tmp_path, base_url=server.base)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_and_missing_say_so_in_one_line(server: Server, tmp_path: Path) -> None:
    with pytest.raises(PinlabDataError) as info:
        download_movielens("movielens-1m", tmp_path, base_url="http://127.0.0.1:1/movielens")
    message = str(info.value)
    assert message.startswith("cannot reach 127.0.0.1:1 (")
    assert message.endswith(
        "download ml-1m.zip elsewhere and run `pinlab data load movielens PATH --out DIR`"
    )
    with pytest.raises(PinlabDataError, match=r"cannot reach 127\.0\.0\.1:\d+ \(HTTP 404"):
        download_movielens("movielens-1m", tmp_path, base_url=server.base)
    assert not (tmp_path / "ml-1m.zip").exists()


def test_fetch_refuses_an_existing_dataset_before_downloading(
    server: Server, tmp_path: Path
) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "x").write_text("mine")
    with pytest.raises(PinlabDataError, match="already exists"):
        fetch_movielens(
            "movielens-32m", tmp_path / "ds", cache=tmp_path / "cache", base_url=server.base
        )
    assert server.requests == []
