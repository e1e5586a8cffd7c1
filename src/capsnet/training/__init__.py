"""The training application: loop, evaluation, run folders and checkpoints on top of the core library."""

from .checkpoint import (
    CheckpointError, checkpoint_file, load_checkpoint, load_model, load_model_weights, save_checkpoint,
)
from .devices import resolve_device
from .engine import Trainer, train
from .errors import TrainingError, TrainingInterrupted
from .evaluation import evaluate
from .runs import config_from_file, read_metrics, resume_config

__all__ = [
    "Trainer", "TrainingError", "TrainingInterrupted", "train", "resume_config", "config_from_file", "evaluate",
    "read_metrics", "resolve_device",
    "CheckpointError", "checkpoint_file", "load_checkpoint", "load_model", "load_model_weights",
    "save_checkpoint",
]
