"""The training application's exceptions (a checkpoint's own is :class:`.checkpoint.CheckpointError`)."""

from __future__ import annotations

import signal
from pathlib import Path

__all__ = ["TrainingError", "TrainingInterrupted"]


class TrainingError(RuntimeError):
    """A run that cannot start or go on: unusable output folder, nothing to resume, diverged loss."""


class TrainingInterrupted(KeyboardInterrupt):
    """A stop signal (``signum``: SIGINT for Ctrl-C, SIGTERM, SIGHUP) stopped :meth:`Trainer.fit` after it saved
    ``checkpoint``; ``--resume`` continues from there."""

    def __init__(self, checkpoint: Path, signum: int = signal.SIGINT) -> None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        super().__init__(f"interrupted by {name}: checkpoint saved to {checkpoint}")
        self.checkpoint, self.signum = checkpoint, signum
