"""Downloads of the MovieLens archives from GroupLens: resumable, checksummed, atomic.

A download goes to `NAME.zip.part` (resumed with an HTTP Range request when it is there) and
becomes `NAME.zip` only once its checksum matches, so a `.zip` in the folder is always whole.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pinlab_data._loaders import load_movielens
from pinlab_data._store import check_writable, make_directory
from pinlab_data.contracts import InteractionFilters, LoadReport, PinlabDataError

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0

MovieLensName = Literal[
    "movielens-100k",
    "movielens-1m",
    "movielens-20m",
    "movielens-25m",
    "movielens-32m",
    "movielens-latest-small",
]
Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None) as a download proceeds."""


@dataclass(frozen=True)
class Archive:
    """One GroupLens archive and how to check it."""

    file: str
    size: int | None
    sha256: str | None
    """None: checked against the `.zip.md5` GroupLens publishes beside the archive instead."""


# SHA-256 digests and sizes as TensorFlow Datasets records them for these same URLs
# (tensorflow_datasets/url_checksums/movielens.txt); they could not be recomputed here, offline.
# ml-32m is newer than that list, and "latest" archives are refreshed by GroupLens, so those two
# are checked against the .md5 file published next to each zip.
MOVIELENS_ARCHIVES: dict[MovieLensName, Archive] = {
    "movielens-100k": Archive(
        "ml-100k.zip", 4924029, "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
    ),
    "movielens-1m": Archive(
        "ml-1m.zip", 5917549, "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
    ),
    "movielens-20m": Archive(
        "ml-20m.zip",
        198702078,
        "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
    ),
    "movielens-25m": Archive(
        "ml-25m.zip",
        261978986,
        "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
    ),
    "movielens-32m": Archive("ml-32m.zip", None, None),
    "movielens-latest-small": Archive("ml-latest-small.zip", None, None),
}

_MD5 = re.compile(r"\b[0-9a-fA-F]{32}\b")
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def fetch_movielens(
    name: MovieLensName,
    out: Path,
    *,
    cache: Path,
    base_url: str = GROUPLENS,
    progress: Progress | None = None,
    filters: InteractionFilters | None = None,
    overwrite: bool = False,
) -> LoadReport:
    """Download a MovieLens archive into `cache` and convert it to a dataset at `out`.

    `out` is checked first, so a refusal comes before a long download, not after it.
    """
    check_writable(Path(out).resolve(), overwrite)
    archive = download_movielens(name, cache, base_url=base_url, progress=progress)
    return load_movielens(archive, out, filters=filters, overwrite=overwrite)


def download_movielens(
    name: MovieLensName,
    folder: Path,
    *,
    base_url: str = GROUPLENS,
    progress: Progress | None = None,
) -> Path:
    """Download a MovieLens archive into `folder` (resuming a partial one) and return its path.

    An archive already there and matching its checksum is not fetched again. Unreachable
    servers, HTTP errors and checksum mismatches raise PinlabDataError saying what to do; a
    mismatching download is deleted so the next attempt starts clean.
    """
    if name not in MOVIELENS_ARCHIVES:
        raise PinlabDataError(
            f"unknown MovieLens archive {name!r}; choose one of {', '.join(MOVIELENS_ARCHIVES)}"
        )
    archive = MOVIELENS_ARCHIVES[name]
    url = f"{base_url.rstrip('/')}/{archive.file}"
    make_directory(folder)
    target = folder / archive.file
    part = folder / f"{archive.file}.part"
    try:
        if target.is_file():
            if _matches(target, archive, url):
                return target
            target.unlink()  # damaged or outdated: fetch it again
        _fetch(url, part, archive.size, progress)
        if not _matches(part, archive, url):
            expected, actual = _expected_and_actual(part, archive, url)
            part.unlink()
            raise PinlabDataError(
                f"{archive.file} from {url} does not match its published checksum (expected "
                f"{expected}, got {actual}); the download was deleted, run the command again"
            )
    except _NETWORK_ERRORS as exc:
        raise _unreachable(url, archive.file, exc) from exc
    part.replace(target)
    return target


def _fetch(url: str, part: Path, size: int | None, progress: Progress | None) -> None:
    """Fetch `url` into `part`, continuing from its current length when the server allows."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have == size:
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = _open(request)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing past what we have: the part is whole
            return
        raise
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else size
        with part.open("ab" if resumed else "wb") as sink:
            done = have
            if progress:
                progress(done, total)
            while block := response.read(CHUNK_BYTES):
                sink.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
            sink.flush()
            os.fsync(sink.fileno())
        if total is not None and done < total:
            raise http.client.IncompleteRead(b"", total - done)


def _open(request: urllib.request.Request) -> http.client.HTTPResponse:
    # A fresh opener each time, so proxy settings are read from the environment as it is now.
    response: http.client.HTTPResponse = urllib.request.build_opener().open(
        request, timeout=TIMEOUT_S
    )
    return response


def _matches(path: Path, archive: Archive, url: str) -> bool:
    expected, actual = _expected_and_actual(path, archive, url)
    return expected == actual


def _expected_and_actual(path: Path, archive: Archive, url: str) -> tuple[str, str]:
    if archive.size is not None and path.stat().st_size != archive.size:
        return f"{archive.size} bytes", f"{path.stat().st_size} bytes"
    if archive.sha256 is not None:
        return f"sha256 {archive.sha256}", f"sha256 {_digest(path, 'sha256')}"
    return f"md5 {_published_md5(url)}", f"md5 {_digest(path, 'md5')}"


def _published_md5(url: str) -> str:
    """The digest in GroupLens's `ARCHIVE.zip.md5` (`md5sum` or BSD `md5` layout)."""
    with _open(urllib.request.Request(f"{url}.md5")) as response:
        text = response.read(4096).decode("ascii", errors="replace")
    found = _MD5.search(text)
    if found is None:
        raise PinlabDataError(
            f"{url}.md5 holds no MD5 digest ({text[:60]!r}); download the archive by hand and "
            "run `pinlab data load movielens PATH --out DIR`"
        )
    return found.group(0).lower()


def _digest(path: Path, algorithm: str) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _unreachable(url: str, file: str, exc: BaseException) -> PinlabDataError:
    host = urlparse(url).netloc or url
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        reason = str(exc.reason)
    elif isinstance(exc, http.client.IncompleteRead | TimeoutError | ConnectionError):
        return PinlabDataError(
            f"the download of {file} from {host} stopped ({type(exc).__name__}); run the "
            "command again to resume it"
        )
    else:
        reason = str(exc) or type(exc).__name__
    return PinlabDataError(
        f"cannot reach {host} ({reason}); download {file} elsewhere and run "
        f"`pinlab data load movielens PATH --out DIR`"
    )
