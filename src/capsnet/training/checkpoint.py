"""Checkpoints: written atomically, recognisable, and carrying what is needed to rebuild the model."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import write_atomically
from .._registration import registration_hint
from ..models import create_model, list_models
from .devices import resolve_device

__all__ = [
    "CheckpointError", "save_checkpoint", "load_checkpoint", "load_model", "build_model", "load_model_weights",
    "checkpoint_file",
]

FORMAT = "capsnet-checkpoint"
VERSION = 2  # 2: one random state per process ("rng" is a list); 1 held a single one


class CheckpointError(RuntimeError):
    """A file that is not a capsnet checkpoint, or one that does not fit the requested run."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` via a temporary file and a rename, so a crash never leaves half a file."""
    write_atomically(Path(path), lambda file: torch.save({"format": FORMAT, "version": VERSION, **payload}, file))


def checkpoint_file(path: str | Path) -> Path:
    """``path``, or the ``best.pt`` in it when it is a run folder."""
    path = Path(path)
    return path / "best.pt" if path.is_dir() else path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (a run folder: its ``best.pt``); raise
    :class:`CheckpointError` for anything else."""
    path = checkpoint_file(path)
    if not path.is_file():
        unfinished = path.name == "best.pt" and (path.parent / "last.pt").is_file()
        raise CheckpointError(f"checkpoint {path} does not exist" + (
            f": the run has not finished an epoch yet; its {path.parent / 'last.pt'} holds where it stopped"
            if unfinished else ""))
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean the same to the user
        first_line = (str(exc).strip().splitlines() or [""])[0]  # torch's messages run to several paragraphs
        if first_line.startswith("Weights only load failed"):
            # torch goes on to suggest weights_only=False, which would run any code the file holds: not for us
            first_line = "it holds Python objects that a capsnet checkpoint never has"
        raise CheckpointError(f"{path} is not a capsnet checkpoint, a last.pt or best.pt written by capsnet train "
                              f"({type(exc).__name__}: {first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        looks_like_state_dict = isinstance(payload, dict) and bool(payload) and all(
            isinstance(value, torch.Tensor) for value in payload.values())
        raise CheckpointError(f"{path} is not a capsnet checkpoint (no '{FORMAT}' marker)" + (
            "; it looks like a state dict saved with torch.save: build its model and call "
            "model.load_state_dict(torch.load(path))" if looks_like_state_dict else ""))
    if payload.get("version") not in (1, VERSION):
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, this capsnet reads 1 to {VERSION}")
    if payload["version"] == 1 and "rng" in payload:
        payload["rng"] = [payload["rng"]]  # the state of the only process, or of rank 0
    return {**payload, "version": VERSION}


def load_model_weights(
    model: nn.Module, checkpoint: dict[str, Any], path: str | Path, model_name: str | None = None
) -> None:
    """Load ``checkpoint``'s weights into ``model``; raise :class:`CheckpointError` if their layers differ.

    ``model_name`` names ``model`` when it need not be the checkpoint's own model (``--init-from``); without it,
    layers that differ mean the checkpoint's model name has changed its layers since it was written.
    """
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        # torch's first line only names the class; the next ones name the layers that differ.
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        saved_name = checkpoint.get("model_name")
        if model_name is None:
            target = f"the model {saved_name!r} as this version of capsnet builds it (was it written by another version?)"
        else:
            target = f"the model {model_name!r} of this run (they are from {saved_name!r})"
        hint = f" (to start from them: --model {saved_name})" if model_name not in (None, saved_name) else ""
        raise CheckpointError(f"{path}: its weights do not fit {target}: {'; '.join(details[:2]) or exc}{hint}") from None


def build_model(checkpoint: dict[str, Any], path: str | Path, *, command_line: bool = False) -> nn.Module:
    """The model of a checkpoint read by :func:`load_checkpoint` (from ``path``), built by the name and settings
    it records, its weights loaded, in eval mode and on the CPU.

    A model registered outside capsnet must be registered again first; the error for one that is not says how,
    with an import or, for ``command_line``, with ``--plugins``.
    """
    name = checkpoint["model_name"]
    if name not in list_models():
        raise CheckpointError(f"{path} holds the model {name!r}, which is not registered; "
                              f"{_registration_hint(checkpoint, command_line)}")
    with torch.random.fork_rng(devices=[]):  # its random initial weights are overwritten: leave the caller's seed be
        model = create_model(name, **checkpoint["model_kwargs"])
    load_model_weights(model, checkpoint, path)
    warn_if_built_differently(model, checkpoint, path, stacklevel=2 if command_line else 3)  # load_model's caller
    return model.eval()


def _registration_hint(checkpoint: dict[str, Any], command_line: bool) -> str:
    """What to import so that a checkpoint's model name is registered (model modules recorded since 2026-11-29)."""
    module = checkpoint.get("model_module", "")
    if module.partition(".")[0] == __name__.partition(".")[0]:  # a model of capsnet's own, since removed
        return "this version of capsnet does not define it (was it written by another version?)"
    return registration_hint(checkpoint["config"].get("plugins"), module, command_line)


def warn_if_built_differently(model: nn.Module, checkpoint: dict[str, Any], path: str | Path, *,
                              stacklevel: int = 1) -> None:
    """Warn when ``model``, built by the checkpoint's model name, differs from the model it saved (its
    ``repr``): a name registered again with other settings that keep the weights' shapes (another routing
    module, say) loads the weights into a model that computes something else. ``stacklevel`` as for
    ``warnings.warn``, counted from the line that calls this function (1)."""
    saved = checkpoint.get("model_repr")  # absent in checkpoints saved before 2026-11-29
    if saved is None:
        return
    saved, built = _what_it_computes(saved), _what_it_computes(repr(model))
    if saved == built:
        return
    change = next((f"{now.strip()} where it had {before.strip()}" for now, before
                   in zip(built.splitlines(), saved.splitlines()) if now != before), "its layers differ")
    warnings.warn(f"{path}: the model {checkpoint['model_name']!r} is built differently now than when it was saved "
                  f"({change}, as their printed forms say); its weights fit, but it may compute something else",
                  stacklevel=stacklevel + 1)


def _what_it_computes(printed: str) -> str:
    """A model's printed form without ``inplace=True``, which changes where a layer writes, not what (the decoder's
    and BaselineCNN's ReLUs had it in checkpoints saved before the CHANGELOG's entry on hooks)."""
    return printed.replace("(inplace=True)", "()")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model in a checkpoint written by ``capsnet train`` (a run folder: its ``best.pt``), weights
    loaded, in eval mode, on ``device`` (``"auto"``: CUDA when available).

    Example::

        model = capsnet.load_model("runs/mnist/last.pt")
        test = capsnet.data.MNIST(train=False)
        capsnet.evaluate(model, test.images, test.labels)  # {"error": ..., "examples": 10000, ...}
    """
    path = checkpoint_file(path)
    return build_model(load_checkpoint(path), path).to(resolve_device(device))
