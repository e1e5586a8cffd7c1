"""Named model configurations: ``create_model(name, **overrides)``."""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, overload

from torch import nn

from .._checks import check_choice, check_run_name
from .._registration import importing_module

if TYPE_CHECKING:  # for the types of create_model only: the registry itself stays free of concrete models
    from .capsnet import CapsNet
    from .cnn import BaselineCNN

__all__ = ["register_model", "create_model", "list_models", "is_capsule_model", "registered_default", "registering_module",
           "CapsNetName", "BaselineCNNName"]

# The built-in names (registered in capsnet.models), so that a type checker knows what create_model builds them as;
# a name registered again with another builder keeps its overload (register_model warns).
CapsNetName = Literal["capsnet-mnist", "capsnet-mnist-official", "capsnet-tiny", "capsnet-self-attention",
                      "capsnet-self-attention-tiny"]
BaselineCNNName = Literal["baseline-cnn", "baseline-cnn-affnist", "baseline-cnn-affnist-11m", "baseline-cnn-tiny"]


class _Entry(NamedTuple):
    builder: Callable[..., nn.Module]
    config: dict[str, Any]
    capsule_model: bool
    module: str  # the __name__ of the module that called register_model


_MODELS: dict[str, _Entry] = {}


def register_model(
    name: str, builder: Callable[..., nn.Module], *, capsule_model: bool | None = None, **config: Any
) -> None:
    """Register ``builder(**config, **overrides)`` under ``name``; warns when a name is redefined.

    ``capsule_model`` says whether the builder returns a :class:`~capsnet.CapsNet` (trained with the capsule
    losses, takes the capsule options) rather than a classifier returning logits; by default, whether ``builder``
    is the ``CapsNet`` class or a subclass: a function returning a ``CapsNet`` needs ``capsule_model=True``, and
    takes ``CapsNet``'s keyword arguments (the Trainer passes ``routing_iterations``, ``reconstruction`` and the
    other capsule options besides the image shape), e.g. by passing ``**kwargs`` on to it.
    Module values in ``config`` (a routing, say) are copied for every model built, so that models built from one
    name share no parameters.
    """
    check_run_name(name, "model")
    if not callable(builder):
        raise TypeError(f"register_model takes a builder, a class or function returning the model, got "
                        f"{type(builder).__name__}")
    if capsule_model is None:
        from .capsnet import CapsNet  # the registry module itself stays free of concrete models

        capsule_model = isinstance(builder, type) and issubclass(builder, CapsNet)
    if name in _MODELS:
        warnings.warn(f"model {name!r} is registered twice; the later definition wins", stacklevel=2)
    _MODELS[name] = _Entry(builder, config, capsule_model, importing_module())


@overload
def create_model(name: CapsNetName, **overrides: Any) -> CapsNet: ...


@overload
def create_model(name: BaselineCNNName, **overrides: Any) -> BaselineCNN: ...


@overload
def create_model(name: str, **overrides: Any) -> nn.Module: ...


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; keyword ``overrides`` replace the config's values (``None`` ones are ignored,
    so unset command-line flags keep the config's defaults).

    Example:
        >>> model = create_model("capsnet-mnist", routing_iterations=1)
        >>> model.digits.routing
        DynamicRouting(iterations=1, detach_intermediate=True)
    """
    entry = _MODELS[check_choice(name, "model", _MODELS)]
    builder, config = entry.builder, entry.config
    own = {key: copy.deepcopy(value) if isinstance(value, nn.Module) else value for key, value in config.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = builder(**{**own, **{key: value for key, value in overrides.items() if value is not None}})
    for warning in caught:
        if warning.filename == __file__:  # the builder blamed its caller (this file) for an argument: blame ours
            warnings.warn(warning.message, warning.category, stacklevel=2)
        else:  # raised elsewhere (torch's own, say): kept where it was
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def is_capsule_model(name: str) -> bool:
    """Whether the model registered as ``name`` is a :class:`~capsnet.CapsNet` (returns capsules, takes the
    capsule options and losses) rather than a plain classifier returning logits (see :func:`register_model`).

    Example:
        >>> is_capsule_model("capsnet-mnist"), is_capsule_model("baseline-cnn")
        (True, False)
    """
    return _MODELS[check_choice(name, "model", _MODELS)].capsule_model


def registered_default(name: str, argument: str, fallback: Any) -> Any:
    """The ``argument`` that ``create_model(name)`` builds with when not given: the registered config's value,
    else the builder's default for it, else ``fallback`` (for a builder that takes it through ``**kwargs``).

    Example:
        >>> registered_default("capsnet-tiny", "conv_channels", None), registered_default("capsnet-tiny", "out_dim", None)
        (32, 16)
    """
    entry = _MODELS[check_choice(name, "model", _MODELS)]
    if argument in entry.config:
        return entry.config[argument]
    try:
        parameter = inspect.signature(entry.builder).parameters.get(argument)
    except (TypeError, ValueError):  # a builder whose signature Python cannot tell (some callables of C code)
        return fallback
    return fallback if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def registering_module(name: str) -> str:
    """The ``__name__`` of the module that registered the model ``name`` (``"__main__"`` for a script): what a
    checkpoint records so that loading it elsewhere can say what to import.

    Example:
        >>> registering_module("capsnet-mnist")
        'capsnet.models'
    """
    return _MODELS[check_choice(name, "model", _MODELS)].module
