"""Tests for mnc_teach/data/download.py against a local HTTP server on 127.0.0.1.

The server (a fixture below) serves files from a temporary folder, honours
``Range: bytes=N-`` (unless told not to), records every request, and can cut the
connection after N bytes of its first response to simulate an interrupted download.
Checksums are computed here with hashlib, independently of the code under test.
"""

from __future__ import annotations

import hashlib
import io
import random
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mnc_teach.data.download import (
    MIRROR_ENV_VAR,
    RESOURCES,
    ChecksumError,
    DownloadError,
    Resource,
    download_dataset,
    download_file,
)

ARCHIVE_NAME = "toyset.tar.gz"
MARKER = "toyset/dataset"
PAYLOAD_FILE_B = f"{MARKER}/sub/b.bin"
# Incompressible payload so the .tar.gz is ~200 KB and "midway" is well inside it.
PAYLOAD = {
    f"{MARKER}/a.txt": b"hello VOC\n",
    PAYLOAD_FILE_B: random.Random(0).randbytes(200_000),
}


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.serve_dir``; Range-aware; can drop the first response midway."""

    def log_message(self, format, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        server = self.server
        range_header = self.headers.get("Range")
        record = {"path": self.path, "range": range_header, "status": None, "bytes_sent": 0}
        server.requests.append(record)
        file = server.serve_dir / self.path.lstrip("/")
        if not file.is_file():
            record["status"] = 404
            self.send_error(404)
            return
        data = file.read_bytes()
        start = 0
        if range_header and not server.ignore_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                record["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            record["status"] = 206
        else:
            self.send_response(200)
            record["status"] = 200
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_first_after is not None and len(server.requests) == 1:
            body = body[: server.cut_first_after]  # promise everything, send a part, hang up
            self.wfile.write(body)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.wfile.write(body)
        record["bytes_sent"] = len(body)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Make sure urllib talks to 127.0.0.1 directly even where a proxy is configured."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(MIRROR_ENV_VAR, raising=False)


@pytest.fixture
def server(tmp_path):
    serve_dir = tmp_path / "served"
    serve_dir.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.serve_dir = serve_dir
    httpd.requests = []
    httpd.cut_first_after = None
    httpd.ignore_range = False
    httpd.url = f"http://127.0.0.1:{httpd.server_port}/"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _make_tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def toy(server):
    """Serve a good toy archive; return (archive bytes, Resource describing it)."""
    data = _make_tar_gz(PAYLOAD)
    (server.serve_dir / ARCHIVE_NAME).write_bytes(data)
    resource = Resource(
        name="toyset",
        url=server.url + ARCHIVE_NAME,
        filename=ARCHIVE_NAME,
        md5=hashlib.md5(data).hexdigest(),
        extracted_marker=MARKER,
        size_bytes=len(data),
    )
    return data, resource


def _assert_payload_extracted(root: Path) -> None:
    for name, data in PAYLOAD.items():
        assert (root / name).read_bytes() == data


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_official_resources_match_torchvision():
    from torchvision.datasets import SBDataset
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    voc = DATASET_YEAR_DICT["2012"]
    # md5 and file name must match exactly; hosts have moved between torchvision versions.
    voc_ours, sbd_ours = RESOURCES["voc2012"], RESOURCES["sbd"]
    assert (voc_ours.md5, voc_ours.filename) == (voc["md5"], voc["filename"])
    assert voc_ours.url.endswith("/pascal/VOC/voc2012/" + voc["filename"])
    assert (sbd_ours.md5, sbd_ours.filename) == (SBDataset.md5, SBDataset.filename)
    assert sbd_ours.url.endswith("/semantic_contours/" + SBDataset.filename)


def test_full_download_and_extraction(server, toy, tmp_path, capsys):
    data, resource = toy
    root = tmp_path / "data"
    out = download_dataset("toyset", root, progress=False, resource=resource)
    assert out == root / MARKER
    _assert_payload_extracted(root)
    assert (root / ".toyset.complete").read_text().strip() == hashlib.md5(data).hexdigest()
    assert (root / ARCHIVE_NAME).read_bytes() == data  # keep_archive=True by default
    assert not (root / (ARCHIVE_NAME + ".part")).exists()
    assert [p.name for p in root.iterdir() if p.name.startswith(".toyset.tar.gz.")] == []
    assert [(r["range"], r["status"]) for r in server.requests] == [(None, 200)]
    assert str(root / ARCHIVE_NAME) in capsys.readouterr().out


def test_resume_after_interrupted_download(server, toy, tmp_path):
    data, resource = toy
    root = tmp_path / "data"
    cut = len(data) // 2
    server.cut_first_after = cut
    with pytest.raises(DownloadError, match="re-running resumes"):
        download_dataset("toyset", root, progress=False, resource=resource)
    part = root / (ARCHIVE_NAME + ".part")
    assert part.read_bytes() == data[:cut]
    assert not (root / ARCHIVE_NAME).exists() and not (root / "toyset").exists()

    download_dataset("toyset", root, progress=False, resource=resource)
    second = server.requests[1]
    assert second["range"] == f"bytes={cut}-"
    assert (second["status"], second["bytes_sent"]) == (206, len(data) - cut)
    assert (root / ARCHIVE_NAME).read_bytes() == data
    _assert_payload_extracted(root)


def test_server_ignoring_range_restarts_cleanly(server, toy, tmp_path):
    data, resource = toy
    root = tmp_path / "data"
    cut = len(data) // 3
    server.cut_first_after = cut
    server.ignore_range = True
    with pytest.raises(DownloadError):
        download_dataset("toyset", root, progress=False, resource=resource)
    download_dataset("toyset", root, progress=False, resource=resource)
    second = server.requests[1]
    assert second["range"] == f"bytes={cut}-"  # we asked to resume ...
    assert (second["status"], second["bytes_sent"]) == (200, len(data))  # ... got everything
    assert (root / ARCHIVE_NAME).read_bytes() == data  # not the first third twice
    _assert_payload_extracted(root)


def test_complete_part_file_gets_416_and_is_verified(server, toy, tmp_path):
    data, resource = toy
    dest = tmp_path / ARCHIVE_NAME
    Path(str(dest) + ".part").write_bytes(data)
    download_file(resource.url, dest, md5=resource.md5, progress=False)
    assert dest.read_bytes() == data
    assert [(r["range"], r["status"]) for r in server.requests] == [(f"bytes={len(data)}-", 416)]

    # An oversized stale .part cannot be right: it is dropped and the file fetched afresh.
    dest.unlink()
    Path(str(dest) + ".part").write_bytes(data + b"junk")
    download_file(resource.url, dest, md5=resource.md5, progress=False)
    assert dest.read_bytes() == data
    assert [(r["range"], r["status"]) for r in server.requests[1:]] == [
        (f"bytes={len(data) + 4}-", 416),
        (None, 200),
    ]


def test_corrupted_download_is_refused_before_extraction(server, toy, tmp_path):
    data, resource = toy
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    (server.serve_dir / ARCHIVE_NAME).write_bytes(bytes(bad))
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as excinfo:
        download_dataset("toyset", root, progress=False, resource=resource)
    message = str(excinfo.value)
    assert ARCHIVE_NAME in message
    assert resource.md5 in message and hashlib.md5(bad).hexdigest() in message
    assert sorted(p.name for p in root.iterdir()) == [ARCHIVE_NAME + ".corrupt"]
    assert (root / (ARCHIVE_NAME + ".corrupt")).read_bytes() == bytes(bad)

    # Once the server is fixed, the next run starts from zero (no Range) and succeeds.
    (server.serve_dir / ARCHIVE_NAME).write_bytes(data)
    download_dataset("toyset", root, progress=False, resource=resource)
    assert server.requests[-1]["range"] is None
    _assert_payload_extracted(root)


def test_rerun_downloads_nothing(server, toy, tmp_path, capsys):
    _, resource = toy
    root = tmp_path / "data"
    first = download_dataset("toyset", root, progress=False, resource=resource)
    n_requests = len(server.requests)
    capsys.readouterr()
    assert download_dataset("toyset", root, progress=False, resource=resource) == first
    assert "already there" in capsys.readouterr().out
    # Without the stamp, the verified archive is re-extracted but not re-downloaded.
    (root / ".toyset.complete").unlink()
    (root / PAYLOAD_FILE_B).unlink()
    download_dataset("toyset", root, progress=False, resource=resource, keep_archive=False)
    assert len(server.requests) == n_requests
    _assert_payload_extracted(root)
    assert not (root / ARCHIVE_NAME).exists()
    # keep_archive=False deleted the archive, yet the stamp still makes re-runs free.
    assert download_dataset("toyset", root, progress=False, resource=resource) == first
    assert len(server.requests) == n_requests


def test_offline_gives_helpful_error(tmp_path):
    port = _closed_port()
    url = f"http://127.0.0.1:{port}/{ARCHIVE_NAME}"
    resource = Resource("toyset", url, ARCHIVE_NAME, "0" * 32, MARKER)
    root = tmp_path / "data"
    root.mkdir()
    part = root / (ARCHIVE_NAME + ".part")
    part.write_bytes(b"x" * 10)
    with pytest.raises(DownloadError) as excinfo:
        download_dataset("toyset", root, progress=False, resource=resource)
    message = str(excinfo.value)
    assert "offline" in message and "unreachable" in message
    assert url in message and str(root / ARCHIVE_NAME) in message  # how to fetch by hand
    assert str(part) in message and "re-running resumes" in message
    assert part.read_bytes() == b"x" * 10  # partial download kept untouched


def test_http_error_names_status(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url + "missing.tar", tmp_path / "missing.tar", progress=False)


def test_mirror_from_argument_or_environment(server, toy, tmp_path, monkeypatch):
    data, resource = toy
    # The official URL is a closed port: success proves the mirror was used.
    offline = Resource(
        "toyset", f"http://127.0.0.1:{_closed_port()}/x", ARCHIVE_NAME, resource.md5, MARKER
    )
    download_dataset("toyset", tmp_path / "a", url=server.url, progress=False, resource=offline)
    monkeypatch.setenv(MIRROR_ENV_VAR, server.url.rstrip("/"))
    download_dataset("toyset", tmp_path / "b", progress=False, resource=offline)
    assert [r["path"] for r in server.requests] == [f"/{ARCHIVE_NAME}"] * 2
    assert (tmp_path / "b" / ARCHIVE_NAME).read_bytes() == data
