"""Keeping old spellings of the public API working, with a warning, for a release after they change."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

Function = TypeVar("Function", bound=Callable[..., Any])


def renamed_keyword(old: str, new: str) -> Callable[[Function], Function]:
    """Let callers still pass the argument ``new`` by its former keyword ``old``, with a ``FutureWarning``
    (shown by default, unlike a ``DeprecationWarning`` raised inside a library)."""

    def decorate(function: Function) -> Function:
        @functools.wraps(function)
        def accepting_old_keyword(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                name = function.__qualname__
                if new in kwargs:
                    raise TypeError(f"{name}() got both {old}= and {new}=; {old} is the former name of {new}")
                warnings.warn(f"{name}(): {old}= is now called {new}=; the old name will stop working in a later "
                              f"release", FutureWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return accepting_old_keyword  # type: ignore[return-value]

    return decorate
