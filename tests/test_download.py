"""download_dataset against a local HTTP server serving archives built from shared/data."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from lipsweep.data import load_split
from lipsweep.download import DownloadError, archive_url, download_dataset

TINY_CLASSES = 3  # the zip holds the first few Tiny ImageNet classes, to stay fast


class ArchiveServer(ThreadingHTTPServer):
    """Serves `files` by path; optionally honours Range and drops the first transfers."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.support_range = True
        self.drops_left = 0  # how many responses to cut off half-way
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class Handler(BaseHTTPRequestHandler):
    server: ArchiveServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.server.requests.append((self.path, range_header))
        body = self.server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        start = 0
        if range_header and self.server.support_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        rest = body[start:]
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        if self.server.drops_left > 0:
            self.server.drops_left -= 1
            self.wfile.write(rest[: len(rest) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(rest)


@pytest.fixture
def server() -> Iterator[ArchiveServer]:
    srv = ArchiveServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _tar_gz(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
        tf.add(folder, arcname=folder.name)
    return buf.getvalue()


def _tiny_zip(folder: Path) -> bytes:
    """A zip of tiny-imagenet-200 cut down to its first TINY_CLASSES classes."""
    wnids = (folder / "wnids.txt").read_text().split()[:TINY_CLASSES]
    lines = [
        line
        for line in (folder / "val" / "val_annotations.txt").read_text().splitlines()
        if line.split("\t")[1] in wnids
    ]
    root = folder.name
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/wnids.txt", "\n".join(wnids) + "\n")
        zf.writestr(f"{root}/val/val_annotations.txt", "\n".join(lines) + "\n")
        for line in lines:
            name = line.split("\t")[0]
            zf.write(folder / "val" / "images" / name, f"{root}/val/images/{name}")
        for wnid in wnids:
            for jpeg in sorted((folder / "train" / wnid / "images").glob("*.JPEG")):
                zf.write(jpeg, f"{root}/train/{wnid}/images/{jpeg.name}")
    return buf.getvalue()


@pytest.fixture(scope="module")
def cifar10_archive(shared_data: Path) -> bytes:
    return _tar_gz(shared_data / "cifar-10-batches-py")


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _leftovers(data_dir: Path) -> list[str]:
    """Anything in data_dir besides finished dataset folders."""
    return sorted(p.name for p in data_dir.iterdir() if p.name.startswith(".") or ".part" in p.name)


def test_download_unpacks_and_loads(server, cifar10_archive, tmp_path: Path) -> None:
    server.files["cifar-10-python.tar.gz"] = cifar10_archive
    folder = download_dataset(
        "cifar10", tmp_path, url=server.url, progress=False, md5=_md5(cifar10_archive)
    )
    assert folder == tmp_path / "cifar-10-batches-py"
    assert len(load_split("cifar10", "train", tmp_path)) == 4660
    assert _leftovers(tmp_path) == []
    assert server.requests == [("/cifar-10-python.tar.gz", None)]


def test_interrupted_download_resumes(server, cifar10_archive, tmp_path: Path) -> None:
    server.files["cifar-10-python.tar.gz"] = cifar10_archive
    server.drops_left = 1
    md5 = _md5(cifar10_archive)
    with pytest.raises(DownloadError, match="interrupted") as err:
        download_dataset("cifar10", tmp_path, server.url, progress=False, md5=md5, retries=0)
    assert "\n" not in str(err.value)
    part = tmp_path / "cifar-10-python.tar.gz.part"
    half = len(cifar10_archive) // 2
    assert part.stat().st_size == half
    assert not (tmp_path / "cifar-10-batches-py").exists()
    download_dataset("cifar10", tmp_path, server.url, progress=False, md5=md5, retries=0)
    assert server.requests[-1] == ("/cifar-10-python.tar.gz", f"bytes={half}-")
    test = load_split("cifar10", "test", tmp_path)
    assert len(test) == 846
    assert _leftovers(tmp_path) == []


def test_retries_resume_within_one_call(server, cifar10_archive, tmp_path: Path) -> None:
    server.files["cifar-10-python.tar.gz"] = cifar10_archive
    server.drops_left = 2
    download_dataset(
        "cifar10", tmp_path, server.url, progress=False, md5=_md5(cifar10_archive), retries=3
    )
    assert len(server.requests) == 3
    assert [r is not None for _, r in server.requests] == [False, True, True]
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()


def test_server_ignoring_range_restarts(server, cifar10_archive, tmp_path: Path) -> None:
    server.files["cifar-10-python.tar.gz"] = cifar10_archive
    server.support_range = False
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(b"stale bytes from elsewhere")
    download_dataset("cifar10", tmp_path, server.url, progress=False, md5=_md5(cifar10_archive))
    assert server.requests[0][1] == "bytes=26-"
    assert (tmp_path / "cifar-10-batches-py" / "batches.meta").is_file()


def test_corrupt_archive_is_refused(server, cifar10_archive, tmp_path: Path) -> None:
    corrupt = bytearray(cifar10_archive)
    corrupt[1000] ^= 0xFF
    server.files["cifar-10-python.tar.gz"] = bytes(corrupt)
    expected = _md5(cifar10_archive)
    with pytest.raises(DownloadError) as err:
        download_dataset("cifar10", tmp_path, server.url, progress=False, md5=expected)
    msg = str(err.value)
    assert "\n" not in msg
    assert "cifar-10-python.tar.gz" in msg and expected in msg and _md5(bytes(corrupt)) in msg
    assert list(tmp_path.iterdir()) == []  # no .part, no dataset folder, no temp folder


def test_official_md5_is_checked_by_default(server, cifar10_archive, tmp_path: Path) -> None:
    server.files["cifar-10-python.tar.gz"] = cifar10_archive
    with pytest.raises(DownloadError, match="c58f30108f718f92721af3b95e74349a"):
        download_dataset("cifar10", tmp_path, server.url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_is_not_downloaded(server, tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python").mkdir()
    folder = download_dataset("cifar100", tmp_path, server.url, progress=False)
    assert folder == tmp_path / "cifar-100-python"
    assert server.requests == []


def test_tiny_imagenet_zip(server, shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LIPSWEEP_CACHE_DIR", "")
    archive = _tiny_zip(shared_data / "tiny-imagenet-200")
    server.files["tiny-imagenet-200.zip"] = archive
    monkeypatch.setenv("LIPSWEEP_DOWNLOAD_URL", server.url.rstrip("/"))
    download_dataset("tiny-imagenet", tmp_path / "data", progress=False, md5=_md5(archive))
    train = load_split("tiny-imagenet", "train", tmp_path / "data")
    test = load_split("tiny-imagenet", "test", tmp_path / "data")
    assert len(train.classes) == TINY_CLASSES and len(train) == 20 * TINY_CLASSES
    assert len(test) == 50 * TINY_CLASSES
    full = load_split("tiny-imagenet", "train", shared_data)
    assert torch.equal(train.images, full.images[: len(train)])


def test_path_traversal_is_refused(server, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n0\n")
        zf.writestr("tiny-imagenet-200/../../evil.txt", "owned")
    server.files["tiny-imagenet-200.zip"] = buf.getvalue()
    data_dir = tmp_path / "data"
    with pytest.raises(DownloadError, match="unsafe"):
        download_dataset(
            "tiny-imagenet", data_dir, server.url, progress=False, md5=_md5(buf.getvalue())
        )
    assert not (tmp_path / "evil.txt").exists()
    assert list(data_dir.iterdir()) == []

    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w:gz") as tf:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"owned"))
    server.files["cifar-100-python.tar.gz"] = tbuf.getvalue()
    with pytest.raises(DownloadError, match="unsafe"):
        download_dataset(
            "cifar100", data_dir, server.url, progress=False, md5=_md5(tbuf.getvalue())
        )
    assert not (tmp_path / "evil.txt").exists()
    assert list(data_dir.iterdir()) == []


def test_archive_without_dataset_folder(server, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("something-else/readme.txt", "hi")
    server.files["tiny-imagenet-200.zip"] = buf.getvalue()
    with pytest.raises(DownloadError, match="does not contain the folder tiny-imagenet-200"):
        download_dataset(
            "tiny-imagenet", tmp_path, server.url, progress=False, md5=_md5(buf.getvalue())
        )
    assert list(tmp_path.iterdir()) == []


def test_http_errors_are_one_line(server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download_dataset("cifar10", tmp_path, server.url, progress=False)
    assert "\n" not in str(err.value)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    with pytest.raises(DownloadError, match="cannot download"):
        download_dataset("cifar10", tmp_path, f"http://127.0.0.1:{port}/", progress=False)


def test_unknown_dataset_and_urls(monkeypatch) -> None:
    with pytest.raises(DownloadError, match="unknown dataset"):
        download_dataset("mnist", Path("/nonexistent"), progress=False)
    monkeypatch.delenv("LIPSWEEP_DOWNLOAD_URL", raising=False)
    assert archive_url("cifar100") == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert archive_url("cifar10", "http://m/x/") == "http://m/x/cifar-10-python.tar.gz"
    assert archive_url("cifar10", "http://m/a.tar.gz") == "http://m/a.tar.gz"
    monkeypatch.setenv("LIPSWEEP_DOWNLOAD_URL", "http://mirror/d")
    assert archive_url("tiny-imagenet") == "http://mirror/d/tiny-imagenet-200.zip"


def test_progress_bar_runs(server, cifar10_archive, tmp_path: Path) -> None:
    server.files["cifar-10-python.tar.gz"] = cifar10_archive
    download_dataset("cifar10", tmp_path, server.url, progress=True, md5=_md5(cifar10_archive))
    assert (tmp_path / "cifar-10-batches-py").is_dir()
