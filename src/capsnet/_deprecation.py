"""Keeping old spellings of the public API working, with a warning, for a release after they change."""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

Function = TypeVar("Function", bound=Callable[..., Any])

# A layer's forward is reached through nn.Module.__call__: its frames are not the caller's line.
_MODULE_MACHINERY = str(Path(torch.nn.modules.module.__file__).parent)


def renamed_keyword(old: str, new: str) -> Callable[[Function], Function]:
    """Let callers still pass the argument ``new`` by its former keyword ``old``, with a ``FutureWarning``
    (shown by default, unlike a ``DeprecationWarning`` raised inside a library) that points at their line."""

    def decorate(function: Function) -> Function:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def accepting_old_keyword(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                name = function.__qualname__
                if new in kwargs or new in signature.bind_partial(*args).arguments:
                    raise TypeError(f"{name}() got both {old}= and {new}=; {old} is the former name of {new}")
                if not torch.compiler.is_compiling():  # Dynamo cannot trace warnings.warn: fullgraph would fail
                    warnings.warn(f"{name}(): {old}= is now called {new}=; the old name will stop working in a "
                                  f"later release", FutureWarning, stacklevel=_caller_stacklevel())
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return accepting_old_keyword  # type: ignore[return-value]

    return decorate


def _caller_stacklevel() -> int:
    """``warnings.warn``'s stacklevel, from the wrapper that calls it, of the first frame outside torch.nn's
    module machinery."""
    level, frame = 2, sys._getframe(2)  # 0: this function, 1: the wrapper, 2: the wrapper's caller
    while frame is not None and frame.f_code.co_filename.startswith(_MODULE_MACHINERY):
        level, frame = level + 1, frame.f_back
    return level
