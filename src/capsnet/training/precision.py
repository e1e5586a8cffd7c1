"""Numeric precision and the other per-device speed settings of a run: autocast, compile, channels-last."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_choice

__all__ = ["resolve_precision", "autocast", "grad_scaler", "resolve_channels_last", "CompiledOrEager"]

_AUTOCAST_DTYPES = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """``"auto"`` -> the fastest precision that keeps accuracy on ``device``; other names are returned as they are.

    CPU: ``"32"``. Without native bf16 instructions (AVX512-BF16 or AMX) PyTorch emulates bf16, and the
    MNIST CapsNet's convolutions measured ~6x (forward) to ~15x (training) slower in bf16 than in fp32 on an
    AVX2 CPU (docs/benchmarks.md). CUDA: ``"bf16"`` where the GPU supports it (tensor cores, no loss
    scaling), else ``"16-mixed"``.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        # Native bf16 only (Ampere and newer): older GPUs would emulate it, slowly.
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    return "32"


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
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


class CompiledOrEager:
    """Calls ``torch.compile(module)``; if compiling fails, warns once and runs ``module`` eagerly from then on.

    Compilation happens at the first call, and can fail for reasons outside the user's model: no C++
    compiler, a Python version Dynamo does not support, an operator a backend lacks.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.compiled: Callable[..., Any] | None = None
        try:
            self.compiled = torch.compile(module)
        except Exception as exc:  # e.g. RuntimeError on Python versions without Dynamo support
            self._fall_back(exc)
        self._succeeded = False

    def __call__(self, *args: Tensor) -> Any:
        if self.compiled is None:
            return self.module(*args)
        try:
            output = self.compiled(*args)
        except Exception as exc:
            if self._succeeded:  # it compiled before: this is an error of the run, not of compilation
                raise
            self._fall_back(exc)
            return self.module(*args)
        self._succeeded = True
        return output

    def _fall_back(self, exc: Exception) -> None:
        self.compiled = None
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"torch.compile is not available here ({message[:200]}); training without it", stacklevel=3)
