"""Download a file from a list of mirrors, verified by SHA-256.

Bytes are streamed into a temporary file beside the destination and moved into place with ``os.replace``
only after the checksum matched, so the destination is either absent or complete and verified; an
interrupted or failed download leaves nothing behind.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from capsnet._files import check_writable, removed_if_left_empty, write_atomically
from capsnet.data.idx import DataError

__all__ = ["download_file", "sha256_file"]

TIMEOUT_S = 30.0
_CHUNK = 1 << 20
# Some servers refuse urllib's default agent string.
_HEADERS = {"User-Agent": "capsnet (python urllib)"}
# Errors of writing the file here, not of the mirror: a disk or quota that fills up during the download.
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class _MirrorError(Exception):
    """One mirror failed (short read or wrong checksum); the next one is tried."""


def sha256_file(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """Return the hex SHA-256 of a file, read in chunks so memory stays small."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    urls: Sequence[str], dest: str | Path, sha256: str | None, *, progress: bool = True, timeout: float = TIMEOUT_S
) -> Path:
    """Download ``dest`` from the first of ``urls`` that delivers bytes with the expected SHA-256.

    Args:
        urls: full URLs of the same file, tried in order.
        dest: where the file goes; its folder is created if needed.
        sha256: expected hex digest (case-insensitive); ``None`` for a file whose checksum nobody has pinned
            yet: then only a complete transfer is checked, and the caller should record the digest.
        progress: show a progress bar (only on a terminal).
        timeout: seconds to wait for a server before giving up on it.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        DataError: every mirror failed (one line naming each URL and its reason), or the destination
            folder is not writable or filled up (no other mirror is tried then).
    """
    if not urls:
        raise ValueError("download_file needs at least one URL")
    dest = Path(dest)
    with removed_if_left_empty(dest.parent):
        _make_writable_folder(dest.parent)  # an unwritable folder is the user's to fix, not a mirror's failure
        return _fetch_from_first(urls, dest, sha256 and sha256.lower(), progress=progress, timeout=timeout)


def _fetch_from_first(urls: Sequence[str], dest: Path, sha256: str | None, *, progress: bool, timeout: float) -> Path:
    failures = []
    for url in urls:
        try:
            _fetch(url, dest, sha256, progress=progress, timeout=timeout)
            return dest
        except (_MirrorError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in _FULL_OR_READ_ONLY:  # no other mirror would do better
                raise _cannot_write(dest.parent, exc) from exc
            failures.append(f"{url} ({_reason(exc)})")
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # an HTTPError holds the open response
    raise DataError(
        f"could not download {dest.name}: tried {'; '.join(failures)}. If you have a copy of the file, put it in "
        f"{dest.parent} or point --data-dir or the CAPSNET_DATA environment variable at the folder that holds it"
    )


def _fetch(url: str, dest: Path, sha256: str | None, *, progress: bool, timeout: float) -> None:
    """Stream ``url`` into a new file beside ``dest``, which replaces ``dest`` only if the checksum matches."""

    def write(out: BinaryIO) -> None:
        with urllib.request.urlopen(urllib.request.Request(url, headers=_HEADERS), timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected_size = int(length) if length and length.isdigit() else None
            received, digest = _copy(response, out, expected_size, dest.name, progress)
        # http.client returns b"" instead of raising when a server closes early, so count the bytes ourselves.
        if expected_size is not None and received != expected_size:
            raise _MirrorError(f"connection closed after {received} of {expected_size} bytes")
        if sha256 is not None and digest != sha256:
            raise _MirrorError(f"SHA-256 mismatch: got {digest}, expected {sha256}")

    write_atomically(dest, write)


def _make_writable_folder(folder: Path) -> None:
    """Make ``folder`` and check that files can be written there, before any mirror is asked."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_writable(folder)
    except OSError as exc:
        raise _cannot_write(folder, exc) from exc


def _cannot_write(folder: Path, exc: OSError) -> DataError:
    return DataError(
        f"cannot write into {folder} ({exc.strerror or exc}); choose a writable folder with --data-dir or the "
        f"CAPSNET_DATA environment variable"
    )


def _copy(response: BinaryIO, out: BinaryIO, total: int | None, label: str, progress: bool) -> tuple[int, str]:
    """Copy ``response`` to ``out`` chunk by chunk; return the byte count and hex SHA-256."""
    digest = hashlib.sha256()
    received = 0
    # disable=None lets tqdm hide the bar when stderr is not a terminal (logs, CI).
    with tqdm(
        total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
        disable=None if progress else True,
    ) as bar:
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received, digest.hexdigest()


def _reason(exc: BaseException) -> str:
    """A short one-line reason for a failed mirror."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = getattr(exc.reason, "strerror", None) or str(exc.reason)
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
