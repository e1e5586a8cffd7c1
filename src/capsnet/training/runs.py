"""Run folders: where a new run goes, its ``config.json`` (written, and the settings a resumed or repeated run reads
back) and its ``metrics.jsonl`` (a line per finished epoch: appended, read, truncated to the checkpoint's)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._files import check_writable, removed_if_left_empty, write_atomically
from ..config import TrainConfig, dataset_defaults
from .errors import TrainingError

__all__ = [
    "resume_config", "config_from_file", "read_metrics", "check_run_dir", "make_run_dir", "write_run_config",
    "append_metrics", "truncate_metrics",
]


# Settings of one invocation rather than of the run: a resumed run does not read them back from its folder.
_INVOCATION_SETTINGS = ("output_dir", "resume", "time_limit", "progress")
# In config.json beside the settings, but not TrainConfig fields.
_RECORDED_BESIDE_SETTINGS = ("model_kwargs", "parameters", "resolved", "initial_weights", "derived")


def resume_config(run_dir: str | Path, **changes: Any) -> TrainConfig:
    """The settings of the run in ``run_dir``, read back from its ``config.json`` and updated by ``changes``,
    to continue it: ``Trainer(resume_config("runs/x", epochs=20)).fit()``.

    ``time_limit`` and ``progress`` belong to one invocation and are not read back. A change to a setting
    that defines the run (dataset, model, learning rate, ...) is refused when the trainer loads the checkpoint.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise TrainingError(f"nothing to resume: {path} does not exist")
    saved = _read_settings(path)
    return TrainConfig.from_dict({**_saved_settings(saved), **changes, "output_dir": str(run_dir), "resume": True},
                                 derived=saved.get("derived", ()))


def config_from_file(path: str | Path, *, defaults: dict[str, Any] | None = None, **changes: Any) -> TrainConfig:
    """A new run with the settings of the JSON file ``path``, updated by ``changes``: a run's ``config.json``
    (train again as that run did, e.g. with another seed; the run folder will do) or a file of settings
    written by hand, e.g. ``{"epochs": 5, "routing_iterations": 1}``. ``defaults`` are settings that apply
    unless the file sets them (``capsnet train`` draws progress bars only on a terminal unless told).

    From a run's ``config.json``, as for :func:`resume_config`, the run folder, ``resume``, ``time_limit`` and
    ``progress`` are not read; a file written by hand may set the run folder, ``time_limit`` and ``progress``
    (``resume`` it may not).
    """
    path = Path(path)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise TrainingError(f"config file {path} does not exist")
    if changes.get("resume"):
        raise ValueError("config_from_file starts a new run; resume_config continues one")
    settings = _read_settings(path)
    if any(key in settings for key in _RECORDED_BESIDE_SETTINGS):  # a run's config.json
        derived = settings.get("derived")  # derived anew, from the dataset given now if it is another
        if derived is None:  # written before 2026-11-29: a value equal to its dataset's default was likely derived
            derived = [name for name, value in dataset_defaults(settings.get("dataset", TrainConfig.dataset)).items()
                       if settings.get(name) == value]
        settings = {key: value for key, value in _saved_settings(settings).items() if key not in derived}
    elif settings.get("resume"):
        raise TrainingError(f"{path} sets resume: a file of settings starts a new run; continue one with capsnet "
                            f"train --resume --output-dir RUN_FOLDER")
    # Strict here, not when resuming: a typo in a hand-written file must not pass unseen, while a run saved by an
    # older version, with a setting since removed, must still resume.
    unknown = settings.keys() - TrainConfig.setting_names()
    if unknown:
        raise TrainingError(f"{path} has unknown settings {sorted(unknown)}; see capsnet train --help")
    return TrainConfig.from_dict({**(defaults or {}), **settings, **changes})


def _saved_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run's ``config.json``, less those of one invocation and what a run records beside them."""
    return {key: value for key, value in saved.items() if key not in (*_INVOCATION_SETTINGS, *_RECORDED_BESIDE_SETTINGS)}


def _read_settings(path: Path) -> dict[str, Any]:
    """The JSON object of settings in ``path``."""
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(saved, dict):
        raise TrainingError(f"{path} must hold a JSON object of settings, e.g. {{\"epochs\": 5}}")
    return saved


def check_run_dir(path: Path, *, resume: bool, named_by_time: bool) -> None:
    """Refuse, before the data loads, a run folder that cannot serve: nothing in it to resume, a run in it already,
    or no way to write it. Makes nothing: :func:`make_run_dir` does, once the run can start."""
    if resume and not (path / "last.pt").is_file():
        raise TrainingError(f"nothing to resume: {path / 'last.pt'} does not exist")
    if not resume and not named_by_time and (path / "last.pt").exists():  # a default name gets -2, -3, ... instead
        raise TrainingError(f"{path} already holds a run; pass --resume to continue it or choose another --output-dir")
    existing = next(folder for folder in (path, *path.absolute().parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):  # before the data loads, maybe downloads
        raise TrainingError(f"cannot write to the output folder {path}: {existing} is not a writable folder")


def make_run_dir(path: Path, *, named_by_time: bool) -> Path:
    """The run folder, made if needed and checked writable. A folder named after the second its run started
    (no --output-dir) is made new: runs started in the same second get ``-2``, ``-3``, ... after the name."""
    try:
        with removed_if_left_empty(path):  # an unwritable folder: no empty folders left on the way to it
            path = _new_folder(path) if named_by_time else path
            path.mkdir(parents=True, exist_ok=True)
            check_writable(path)
    except OSError as exc:
        raise TrainingError(f"cannot write to the output folder {path}: {exc.strerror or exc}") from None
    return path


def _new_folder(path: Path) -> Path:
    """Make ``path``, or the first of ``path-2``, ``path-3``, ... that does not exist; atomic, so two processes
    never get the same one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        candidate = path if number == 1 else path.with_name(f"{path.name}-{number}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


def write_run_config(run_dir: Path, config: TrainConfig, **recorded: Any) -> None:
    """``config.json``: the settings and, beside them, what the run records (``model_kwargs``, ``parameters``,
    ``resolved``, ``initial_weights``, ``derived``), which a resumed or repeated run does not read back as settings
    (``derived`` names the settings that ``--config`` derives anew). Written
    whole or not at all: ``resume_config`` may read it while rank 0 rewrites it."""
    unknown = recorded.keys() - set(_RECORDED_BESIDE_SETTINGS)
    if unknown:
        raise TypeError(f"config.json records no {sorted(unknown)}; a setting belongs in TrainConfig")
    values = {**config.to_dict(), **recorded, "derived": sorted(config.derived - set(_INVOCATION_SETTINGS))}
    write_atomically(run_dir / "config.json", lambda file: file.write((json.dumps(values, indent=2) + "\n").encode()))


def append_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Add one finished epoch's line to ``metrics.jsonl``."""
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The metrics of every finished epoch of a run folder (its ``metrics.jsonl``), epoch 1 first."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise TrainingError(f"{run_dir} has no metrics.jsonl: not a run folder")
    return read_records(path, "epoch")


def read_records(path: Path, key: str) -> list[dict[str, Any]]:
    """The JSON objects with ``key``, one per line of ``path`` (``metrics.jsonl``, ``machines.jsonl``), skipping
    lines torn by a crash while they were appended."""
    return [record for record in (_record_of(line, key) for line in path.read_text().splitlines()) if record]


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric lines of epochs the checkpoint does not include (written just before a crash)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if (_record_of(line, "epoch") or {}).get("epoch") in range(1, epochs_done + 1)]
    if kept != lines:  # rewritten whole, so that a kill now cannot take the finished epochs' lines with it
        write_atomically(path, lambda file: file.write("".join(line + "\n" for line in kept).encode()))


def _record_of(line: str, key: str) -> dict[str, Any] | None:
    """The JSON object of one line if it has ``key``, else ``None`` (a line torn by a crash)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and key in record else None
