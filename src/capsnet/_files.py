"""File helpers shared by the data downloads and the training checkpoints."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import BinaryIO


def open_temp_beside(dest: Path) -> BinaryIO:
    """A new file in ``dest``'s folder to write ``dest`` into and then ``os.replace`` it (an atomic rename on one
    filesystem). Created like any file ``open`` creates, so ``dest`` gets the permissions of the umask and the
    folder's default ACL: ``tempfile``'s files are 0600, which would lock a group out of a shared folder."""
    return open(dest.with_name(f"{dest.name}.{secrets.token_hex(8)}.partial"), "xb")
