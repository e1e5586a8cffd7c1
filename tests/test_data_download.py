"""Downloads against a local HTTP server on 127.0.0.1; these tests never touch the internet.

The server serves the real archives from ``shared/data`` (beside the repository root) plus two broken
routes: ``/short/<file>`` announces the full Content-Length but sends half and closes, ``/corrupt/<file>``
sends the right length with one byte changed. Anything else that does not exist is a 404.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import socket
import stat
import threading
from pathlib import Path

import pytest

import capsnet._files
from capsnet.data import MNIST, DataError, download_dataset
from capsnet.data import download as download_module
from capsnet.data.download import download_file, sha256_file

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

LABELS = "t10k-labels-idx1-ubyte.gz"  # 4.5 KB, keeps the download tests fast
LABELS_SHA256 = "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        for prefix, send in (("/short/", self._send_short), ("/corrupt/", self._send_corrupt)):
            if self.path.startswith(prefix):
                return send((SHARED_DATA / self.path[len(prefix) :]).read_bytes())
        return super().do_GET()

    def _send_short(self, data: bytes) -> None:
        self._headers(len(data))
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def _send_corrupt(self, data: bytes) -> None:
        self._headers(len(data))
        self.wfile.write(data[:-1] + bytes([data[-1] ^ 0xFF]))

    def _headers(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()


@pytest.fixture(scope="module")
def server():
    """Base URL of a local server over ``shared/data``; ``server.requests`` records the paths asked for."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real MNIST archives not found in {SHARED_DATA}")
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(SHARED_DATA))
    )
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _url(httpd, path: str) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/{path}"


@pytest.fixture
def refused_url():
    """A URL on a port nobody listens on (connection refused, no waiting)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{LABELS}"


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_first_mirror_404_second_serves(server, tmp_path, group_readable_umask):
    dest = tmp_path / "sub" / LABELS
    urls = [_url(server, f"missing/{LABELS}"), _url(server, f"mnist/{LABELS}")]
    assert download_file(urls, dest, LABELS_SHA256, progress=False) == dest
    assert sha256_file(dest) == LABELS_SHA256
    assert sorted(p.name for p in dest.parent.iterdir()) == [LABELS]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640  # as open() would make it, not the temp file's 0600


def test_short_read_leaves_nothing_and_names_the_url(server, tmp_path):
    url = _url(server, f"short/mnist/{LABELS}")
    with pytest.raises(DataError, match="connection closed after 2271 of 4542 bytes") as info:
        download_file([url], tmp_path / LABELS, LABELS_SHA256, progress=False)
    assert url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_checksum_is_rejected(server, tmp_path):
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        download_file([_url(server, f"mnist/{LABELS}")], tmp_path / LABELS, "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_all_mirrors_failing_gives_one_line_naming_each(server, tmp_path, refused_url):
    urls = [
        _url(server, f"missing/{LABELS}"),
        _url(server, f"short/mnist/{LABELS}"),
        _url(server, f"corrupt/mnist/{LABELS}"),
        refused_url,
    ]
    with pytest.raises(DataError) as info:
        download_file(urls, tmp_path / LABELS, LABELS_SHA256, progress=False)
    message = str(info.value)
    assert "\n" not in message
    for url, reason in zip(urls, ["HTTP 404", "connection closed", "SHA-256 mismatch", "Connection refused"]):
        assert f"{url} ({reason}" in message
    assert "CAPSNET_DATA" in message and "--data-dir" in message
    assert list(tmp_path.iterdir()) == []


def test_unreachable_mirror_needs_no_server_and_leaves_no_empty_folders(tmp_path, refused_url):
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"\(Connection refused\)"):
        download_file([refused_url], tmp_path / "data" / "new" / "mnist" / LABELS, LABELS_SHA256, progress=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]  # the folders it made are gone, the one it found stays
    assert list((tmp_path / "data").iterdir()) == []


def test_failed_download_keeps_an_existing_file(server, tmp_path):
    dest = tmp_path / LABELS
    dest.write_bytes(b"old")
    with pytest.raises(DataError):
        download_file([_url(server, f"short/mnist/{LABELS}")], dest, LABELS_SHA256, progress=False)
    assert dest.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [dest]


def test_interrupt_removes_the_temp_file(server, tmp_path, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(capsnet._files.os, "replace", interrupt)  # the rename into place
    with pytest.raises(KeyboardInterrupt):
        download_file([_url(server, f"mnist/{LABELS}")], tmp_path / LABELS, LABELS_SHA256, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination(tmp_path, refused_url):
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(DataError, match="cannot write into"):
        download_file([refused_url], tmp_path / "a-file" / LABELS, LABELS_SHA256, progress=False)


def test_a_folder_that_refuses_new_files_fails_before_any_mirror_is_asked(server, tmp_path, monkeypatch):
    def refuse(dest):  # as a read-only filesystem or an ACL refuses, which chmod and os.access cannot show as root
        raise OSError(errno.EROFS, "Read-only file system", str(dest))

    monkeypatch.setattr(capsnet._files, "open_temp_beside", refuse)
    server.requests.clear()
    with pytest.raises(DataError, match=r"cannot write into .* \(Read-only file system\); choose a writable folder"):
        download_file([_url(server, f"mnist/{LABELS}")], tmp_path / LABELS, LABELS_SHA256, progress=False)
    assert server.requests == []


def test_a_disk_that_fills_up_is_not_blamed_on_the_mirrors(server, tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_module, "_copy", full)
    server.requests.clear()
    urls = [_url(server, f"mnist/{LABELS}"), _url(server, f"mnist/{LABELS}")]
    with pytest.raises(DataError, match=r"cannot write into .* \(No space left on device\)"):
        download_file(urls, tmp_path / LABELS, LABELS_SHA256, progress=False)
    assert len(server.requests) == 1  # the second mirror would fill the same disk
    assert list(tmp_path.iterdir()) == []


def test_needs_a_url(tmp_path):
    with pytest.raises(ValueError, match="at least one URL"):
        download_file([], tmp_path / LABELS, LABELS_SHA256)


def test_mnist_downloads_a_split_end_to_end(server, tmp_path, monkeypatch, refused_url):
    monkeypatch.setattr(MNIST, "mirrors", [_url(server, "missing/"), _url(server, "mnist/")])
    test_set = MNIST(root=tmp_path, train=False, download=True, progress=False)
    assert len(test_set) == 10000
    assert test_set.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert test_set.folder == tmp_path / "mnist"
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    # Present files are used offline.
    monkeypatch.setattr(MNIST, "mirrors", [refused_url.rsplit("/", 1)[0] + "/"])
    assert len(MNIST(root=tmp_path, train=False, download=True, progress=False)) == 10000


def test_download_dataset_fetches_everything_once(server, tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "mirrors", [_url(server, "mnist/")])
    root = tmp_path / "new-root"
    server.requests.clear()
    assert download_dataset("mnist", root, progress=False) == root / "mnist"
    assert len(server.requests) == 4
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(
        r.filename for split in MNIST.resources.values() for r in split
    )
    assert download_dataset("mnist", root, progress=False) == root / "mnist"
    assert len(server.requests) == 4  # the second call only verified what was there


def test_the_expected_checksum_may_be_given_in_capitals(server, tmp_path):
    dest = tmp_path / LABELS
    assert download_file([_url(server, f"mnist/{LABELS}")], dest, LABELS_SHA256.upper(), progress=False) == dest
    assert sha256_file(dest) == LABELS_SHA256
