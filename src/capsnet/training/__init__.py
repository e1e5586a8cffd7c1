"""The training application: loop, evaluation and checkpoints on top of the core library."""

from .checkpoint import CheckpointError, checkpoint_file, load_checkpoint, load_model_weights, save_checkpoint
from .engine import (
    Trainer, TrainingError, TrainingInterrupted, config_from_file, evaluate, read_metrics, resolve_device,
    resume_config, train,
)

__all__ = [
    "Trainer", "TrainingError", "TrainingInterrupted", "train", "resume_config", "config_from_file", "evaluate",
    "read_metrics", "resolve_device",
    "CheckpointError", "checkpoint_file", "load_checkpoint", "load_model_weights", "save_checkpoint",
]
