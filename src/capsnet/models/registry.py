"""Named model configurations: ``create_model(name, **overrides)``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from .._checks import check_choice

__all__ = ["register_model", "create_model", "list_models", "is_capsule_model"]

_MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {}


def register_model(name: str, builder: Callable[..., nn.Module], **config: Any) -> None:
    """Register ``builder(**config, **overrides)`` under ``name``; warns when a name is redefined."""
    if name in _MODELS:
        warnings.warn(f"model {name!r} is registered twice; the later definition wins", stacklevel=2)
    _MODELS[name] = (builder, config)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; keyword ``overrides`` replace the config's values (``None`` ones are ignored,
    so unset command-line flags keep the config's defaults).

    Example:
        >>> model = create_model("capsnet-mnist", routing_iterations=1)
        >>> model.digits.routing
        DynamicRouting(iterations=1, detach_intermediate=True)
    """
    builder, config = _MODELS[check_choice(name, "model", _MODELS)]
    return builder(**{**config, **{key: value for key, value in overrides.items() if value is not None}})


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def is_capsule_model(name: str) -> bool:
    """Whether the model registered as ``name`` is a :class:`~capsnet.CapsNet` (returns capsules, takes the
    capsule options and losses) rather than a plain classifier returning logits.

    Example:
        >>> is_capsule_model("capsnet-mnist"), is_capsule_model("baseline-cnn")
        (True, False)
    """
    from .capsnet import CapsNet  # the registry module itself stays free of concrete models

    builder, _ = _MODELS[check_choice(name, "model", _MODELS)]
    return isinstance(builder, type) and issubclass(builder, CapsNet)
