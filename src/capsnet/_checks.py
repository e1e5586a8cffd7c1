"""Validation helpers shared by the public API: errors name the argument, what was expected and what arrived."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable, Sequence

import torch


def check_choice(value: str, name: str, valid: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``valid``, else raise a ``ValueError`` listing the valid values."""
    valid = sorted(valid)
    if value not in valid:
        raise ValueError(f"unknown value {value!r} for {name}; valid values are {', '.join(map(repr, valid))}")
    return value


def check_run_name(name: str, what: str) -> str:
    """Raise a ``TypeError`` unless ``name`` is a string, a ``ValueError`` unless it can be part of a run folder's
    name (as model and dataset names are)."""
    if not isinstance(name, str):
        raise TypeError(f"a {what} name is a string, got {type(name).__name__}")
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"a {what} name is letters, digits, '_', '.' and '-', got {name!r}")
    return name


def check_generator(generator: object) -> None:
    """Name a ``generator=`` that is not a ``torch.Generator`` before torch's own, vaguer error does."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__} ({generator!r})")


def check_positive(value: int | float, name: str) -> int | float:
    """Return ``value`` if it is > 0 and finite (NaN is neither), else raise a ``ValueError`` naming ``name``."""
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def check_int(value: int, name: str, minimum: int) -> int:
    """Return ``value`` as an ``int`` if it is a whole number >= ``minimum``, else raise a ``ValueError``.

    NumPy and torch integer scalars pass (``operator.index``); bools, floats (even whole ones) and arrays do not.
    """
    is_bool = isinstance(value, bool) or getattr(value, "dtype", None) == torch.bool
    try:
        number = None if is_bool or getattr(value, "ndim", 0) != 0 else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def check_shape(tensor: torch.Tensor, name: str, pattern: str, ndim: int, sizes: Sequence[int | None] = ()) -> None:
    """Raise a ``ValueError`` unless ``tensor`` has ``ndim`` dims and the given sizes (``None`` = any).

    ``pattern`` is the expected shape in words, e.g. ``"(b, i, j, d_out)"``; it is quoted in the message.
    """
    shape = tuple(tensor.shape)
    ok = len(shape) == ndim and all(s is None or s == n for s, n in zip(sizes, shape))
    if not ok:
        wanted = f"{pattern} = ({', '.join('*' if s is None else str(s) for s in sizes)})" if sizes else pattern
        raise ValueError(f"expected {name} of shape {wanted}, got {shape}")


def check_image_size(size: int | Sequence[int], name: str = "image_size") -> tuple[int, int]:
    """``(height, width)`` from an int (a square) or a pair of ints >= 1, else a ``ValueError`` naming ``name``."""
    pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    try:
        height, width = pair
        return check_int(height, name, 1), check_int(width, name, 1)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer >= 1 or a pair of them (height, width), got {size!r}") from None


def values_outside(tensor: torch.Tensor, low: int, high: int) -> tuple[int, int] | None:
    """``(lowest, highest)`` of ``tensor``'s values when any falls outside ``[low, high]``, else ``None``."""
    if tensor.numel():
        lowest, highest = int(tensor.min()), int(tensor.max())
        if not low <= lowest <= highest <= high:
            return lowest, highest
    return None


def check_integer_dtype(indices: torch.Tensor, name: str) -> None:
    """Raise a ``TypeError`` unless ``indices`` holds integers (not bool): float labels would be truncated silently,
    and a float or bool ``(b, k)`` matrix is likely multi-hot, which index-only functions would misread."""
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise TypeError(f"{name} must be integer class indices, got {indices.dtype}; for a multi-hot (b, k) matrix "
                        f"with n ones per row pass its indices: {name}.nonzero()[:, 1].view(-1, n)")


_INDICES_OF = "for a one-hot matrix pass its .argmax(1), for a multi-hot one with n ones per row .nonzero()[:, 1].view(-1, n)"


def check_class_indices(indices: torch.Tensor, name: str, classes: int, *, distinct: bool = True,
                        hint: str = _INDICES_OF) -> None:
    """Raise a ``ValueError`` unless every value of ``indices`` is a class index in ``[0, classes)`` and, for
    ``(b, n)`` indices (n objects per example) when ``distinct``, the n of each example differ; ``hint`` ends
    the message of the latter."""
    if outside := values_outside(indices, 0, classes - 1):
        raise ValueError(f"{name} must be class indices in [0, {classes}), got values from {outside[0]} to {outside[1]}")
    if distinct and indices.dim() == 2 and indices.shape[1] > 1:
        ordered = indices.sort(dim=1).values
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1).nonzero()
        if len(repeats):  # a one-hot matrix read as indices would say "classes 0 and 1" for every example
            example = int(repeats[0])
            raise ValueError(f"{name} of shape (b, n) = {tuple(indices.shape)} hold n class indices per example, which "
                             f"must differ, but example {example} has {indices[example].tolist()} ({hint})")


def values_are_cheap_to_read(tensor: torch.Tensor) -> bool:
    """Whether checking ``tensor``'s values costs little: a plain tensor in eager mode on the CPU. On an
    accelerator reading them would make every step wait for it (torch's own device-side asserts catch bad indices
    there); inside a compiled graph it would break the graph; under ``vmap`` and fake tensors there are no values."""
    return (
        tensor.device.type == "cpu"
        and type(tensor) is torch.Tensor  # not a FakeTensor or another subclass
        and not torch.compiler.is_compiling()
        and not torch._C._functorch.is_functorch_wrapped_tensor(tensor)  # vmap's batched tensors
    )
