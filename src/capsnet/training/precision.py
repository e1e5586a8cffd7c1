"""Numeric precision and the other per-device speed settings of a run: autocast, compile, channels-last."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from .._checks import check_choice

__all__ = [
    "resolve_precision", "autocast", "grad_scaler", "resolve_channels_last", "compile_mode", "CompiledOrEager",
]

_AUTOCAST_DTYPES = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}


def resolve_precision(name: str) -> str:
    """``"auto"`` -> ``"32"``, the fastest precision that keeps accuracy wherever we measured; other names are
    returned as they are (docs/benchmarks.md has the numbers).

    CPU: without native bf16 instructions (AVX512-BF16 or AMX) PyTorch emulates bf16, and the MNIST CapsNet's
    convolutions measured ~38x (forward) and ~20x (forward + backward) slower in bf16 than in fp32 on an AVX2 CPU.
    CUDA: at the paper's batch of 128 an eager step is mostly kernel launches rather than arithmetic (on an
    H200 it took 5.4 ms in fp32, 2.8 ms once compiled with CUDA graphs), and autocast's casts made it
    slower: 6.1 ms in bf16 (cuDNN convolutions use TF32 in fp32). bf16 pays from larger batches (8.5 ms against
    11.7 ms at batch 512): choose it there.
    """
    return "32" if name == "auto" else name


def autocast(precision: str, device: torch.device) -> AbstractContextManager[None]:
    """The ``torch.autocast`` context for ``precision`` (a no-op for ``"32"``).

    Autocast runs matrix products and convolutions in the low precision; squash, capsule lengths and the
    losses compute in float32 whatever their input dtype, so they neither overflow nor lose their small terms.
    """
    dtype = _AUTOCAST_DTYPES[check_choice(precision, "precision", _AUTOCAST_DTYPES)]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for float16 (its gradients underflow without it); disabled, a pass-through, otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")


def resolve_channels_last(choice: bool | None, device: torch.device) -> bool:
    """``None`` -> channels-last on CUDA (what tensor-core convolutions want), not on CPU (measured slower there)."""
    return device.type == "cuda" if choice is None else choice


def compile_mode(choice: bool | None, device: torch.device, *, distributed: bool) -> str | None:
    """The ``torch.compile`` mode of a training step on ``device``, or ``None`` to run it eagerly.

    ``"reduce-overhead"`` (CUDA graphs) on a single GPU: at the paper's batch of 128 the eager step launches
    a few hundred small kernels, and replaying them as graphs removes the per-launch cost (an MNIST epoch on
    an H200: 1.32 s of training against 2.05 s eager, after ~17 s of compiling). ``"default"`` elsewhere: on
    CPU there are no graphs, and under DDP its gradient hooks communicate between the graph's kernels.
    ``choice=None`` (auto) compiles on a single GPU only: on our CPU compiling made steps slower, and under
    DDP it has not been measured.
    """
    single_gpu = device.type == "cuda" and not distributed
    if choice is False or (choice is None and not single_gpu):
        return None
    return "reduce-overhead" if single_gpu else "default"


class CompiledOrEager:
    """Calls ``torch.compile(function, mode=mode)``, falling back to ``function`` (with one warning) if compiling fails.

    Compilation happens at the first call and again for each new input shape (an epoch's smaller last batch),
    and can fail for reasons outside the user's model: no C++ compiler, a Python version Dynamo does not
    support, an operator a backend lacks. After a failure the function runs eagerly from then on.
    """

    def __init__(self, function: Callable[..., Any], *, mode: str = "default") -> None:
        self.function = function
        self.compiled: Callable[..., Any] | None = None
        try:
            # dynamic=False: one static graph per batch size (two per epoch) rather than a slower symbolic one.
            self.compiled = torch.compile(function, mode=mode, dynamic=False)
        except Exception as exc:  # e.g. RuntimeError on Python versions without Dynamo support
            self._fall_back(exc)
        self._succeeded = False

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.function(*args)
        try:
            output = self.compiled(*args)
        except Exception as exc:
            # Once a call has succeeded, only the compiler's own errors (a later recompilation failing) fall
            # back; anything else is an error of the run, which eager mode would raise as well.
            if self._succeeded and not _raised_by_compiler(exc):
                raise
            self._fall_back(exc)
            return self.function(*args)
        self._succeeded = True
        return output

    def _fall_back(self, exc: Exception) -> None:
        self.compiled = None
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"torch.compile is not available here ({message[:200]}); training without it", stacklevel=3)


def _raised_by_compiler(exc: Exception) -> bool:
    """Whether ``exc`` is one of Dynamo's or Inductor's exception classes (checked without importing them)."""
    return any(cls.__module__.startswith(("torch._dynamo", "torch._inductor")) for cls in type(exc).__mro__)
