"""File helpers shared by the data downloads and the training checkpoints."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def open_temp_beside(dest: Path) -> BinaryIO:
    """A new file in ``dest``'s folder to write ``dest`` into and then ``os.replace`` it (an atomic rename on one
    filesystem). Created like any file ``open`` creates, so ``dest`` gets the permissions of the umask and the
    folder's default ACL: ``tempfile``'s files are 0600, which would lock a group out of a shared folder."""
    return open(dest.with_name(f"{dest.name}.{secrets.token_hex(8)}.partial"), "xb")


def check_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``, raising the ``OSError`` that writing there gives (full disk,
    read-only filesystem, permissions, ACLs): ``os.access`` would miss the first two and the last."""
    probe = open_temp_beside(folder / "write-check")
    probe.close()
    os.unlink(probe.name)


def write_atomically(dest: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``dest`` whole or not at all: ``write`` fills a new file beside it, which is flushed to disk and renamed
    over ``dest``; on any error, Ctrl-C included, that file is removed and ``dest`` keeps what it held."""
    tmp = open_temp_beside(dest)
    try:
        with tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())  # the rename must not outlive the data after a power loss
        os.replace(tmp.name, dest)
    finally:
        Path(tmp.name).unlink(missing_ok=True)  # after the rename the name no longer exists


@contextmanager
def removed_if_left_empty(folder: Path) -> Iterator[None]:
    """If the block fails, remove the folders on the way to ``folder`` that did not exist before it and are empty,
    so that a failed download or run folder leaves no empty folders behind."""
    missing = []  # deepest first
    for path in (folder := Path(folder).absolute(), *folder.parents):
        if path.exists():
            break
        missing.append(path)
    try:
        yield
    except BaseException:
        for path in missing:
            try:
                path.rmdir()  # refuses a folder that is not empty; the ones above it hold it, so stop there
            except OSError:
                break
        raise
