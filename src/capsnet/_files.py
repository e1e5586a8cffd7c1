"""File helpers shared by the data downloads and the training checkpoints."""

from __future__ import annotations

import os
from pathlib import Path


def publish(tmp: str | Path, dest: str | Path) -> None:
    """Rename the finished temporary file ``tmp`` to ``dest`` atomically, with the permissions ``open`` would have
    given ``dest`` (``mkstemp`` and ``NamedTemporaryFile`` make files only their owner can read: a shared run or
    data folder must stay readable by the group the umask allows)."""
    umask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)
