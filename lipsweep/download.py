"""Download, verify and unpack the official dataset archives.

`download_dataset` streams the archive to ``<data_dir>/<file>.part`` (resuming with an HTTP
Range request when a partial file exists), checks its md5, unpacks it into a temporary folder
inside `data_dir` and renames the dataset folder into place, so a dataset folder is either
complete or absent. Every failure is a :class:`DownloadError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lipsweep.data import FOLDERS

CHUNK = 1 << 20
URL_ENV = "LIPSWEEP_DOWNLOAD_URL"


class DownloadError(RuntimeError):
    """A download that failed; the message is one line meant for the user."""


@dataclass(frozen=True)
class Archive:
    """An official dataset archive."""

    url: str
    md5: str
    folder: str  # the folder the archive unpacks to

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        FOLDERS["cifar10"],
    ),
    "cifar100": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        FOLDERS["cifar100"],
    ),
    "tiny-imagenet": Archive(
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        "90528d7ca1a48142e341f4ef8d21d0de",
        FOLDERS["tiny-imagenet"],
    ),
}


def archive_url(name: str, url: str | None = None) -> str:
    """The URL to fetch: `url` if given (a full URL ending in .tar.gz or .zip, or a base URL
    to which the official file name is appended), else $LIPSWEEP_DOWNLOAD_URL (a base URL)
    plus the file name, else the official URL."""
    archive = ARCHIVES[name]
    if url and url.endswith((".tar.gz", ".zip")):
        return url
    base = url or os.environ.get(URL_ENV)
    return f"{base.rstrip('/')}/{archive.filename}" if base else archive.url


def download_dataset(
    name: str,
    data_dir: Path,
    url: str | None = None,
    progress: bool = True,
    *,
    md5: str | None = None,
    retries: int = 3,
) -> Path:
    """Fetch dataset `name` into `data_dir` and return its folder (kept if already there).

    `url` overrides where the archive comes from (see `archive_url`), `md5` the checksum it
    must have, `retries` how many times an interrupted transfer is resumed in this call.
    """
    if name not in ARCHIVES:
        raise DownloadError(f"unknown dataset {name!r}; downloadable: {', '.join(ARCHIVES)}")
    archive = ARCHIVES[name]
    data_dir = Path(data_dir)
    target = data_dir / archive.folder
    if target.is_dir():
        return target
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {data_dir}: {e.strerror}") from None
    part = data_dir / f"{archive.filename}.part"
    source = archive_url(name, url)
    _fetch_with_retries(source, part, progress, retries)
    _check_md5(part, md5 or archive.md5)
    try:
        _unpack_into_place(part, archive, target)
    finally:
        part.unlink(missing_ok=True)
    return target


def _fetch_with_retries(url: str, part: Path, progress: bool, retries: int) -> None:
    """`_fetch`, resuming up to `retries` more times after an interrupted transfer."""
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, progress)
            return
        except _Interrupted as e:
            if attempt == retries:
                raise DownloadError(
                    f"download of {url} interrupted ({e}); run the command again to resume "
                    f"from {part}"
                ) from None


class _Interrupted(Exception):
    """A transfer that stopped early; the .part file holds what arrived."""


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Stream `url` into `part`, appending with a Range request when `part` exists."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "lipsweep"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing left to fetch: the .part is complete
            return
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"cannot download {url}: {reason}") from None
    with response:
        if start and response.status != 206:  # the server ignored Range: start again
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        _stream(response, part, start, total, progress)


def _stream(response: IO[bytes], part: Path, start: int, total: int | None, progress: bool) -> None:
    """Copy the response body to `part` (appending after `start` bytes) with a progress bar."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    done = start
    with Progress(*columns, disable=not progress) as bar, part.open("ab" if start else "wb") as f:
        task = bar.add_task(part.name.removesuffix(".part"), total=total, completed=start)
        try:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                done += len(chunk)
                bar.update(task, completed=done)
        except OSError as e:  # connection reset, timeout, IncompleteRead
            raise _Interrupted(f"{done} bytes received: {e}") from None
    if total is not None and done < total:
        raise _Interrupted(f"{done} of {total} bytes received")


def file_md5(path: Path) -> str:
    """The md5 hex digest of a file."""
    h = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_md5(part: Path, expected: str) -> None:
    """Delete `part` and raise if its md5 is not `expected`."""
    actual = file_md5(part)
    if actual != expected.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"corrupt download {part.name}: md5 {actual}, expected {expected}; it was deleted"
        )


def _unpack_into_place(path: Path, archive: Archive, target: Path) -> None:
    """Unpack `path` into a temporary folder next to `target`, then rename into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.folder}.unpack-", dir=target.parent))
    try:
        _extract(path, tmp)
        unpacked = tmp / archive.folder
        if not unpacked.is_dir():
            raise DownloadError(f"{path.name} does not contain the folder {archive.folder}/")
        os.replace(unpacked, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(path: Path, dest: Path) -> None:
    """Extract a .tar.gz or .zip into `dest`, refusing members that would land outside it."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                root = dest.resolve()
                for member in zf.namelist():
                    if not (root / member).resolve().is_relative_to(root):
                        raise DownloadError(f"{path.name}: unsafe path {member!r} in archive")
                zf.extractall(dest)
        else:
            with tarfile.open(path, "r:*") as tf:
                tf.extractall(dest, filter="data")
    except tarfile.FilterError as e:
        raise DownloadError(f"{path.name}: unsafe archive member ({e})") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DownloadError(f"{path.name}: cannot unpack ({e})") from None
