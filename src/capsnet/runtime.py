"""Process-wide settings that make CPU training faster (the trainer applies them unless
``TrainConfig(retain_memory=False)``), and the machine description used in reports."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

import torch

__all__ = ["retain_freed_memory", "describe_machine"]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on free, so each
    training step page-faults its large activations (the ``u_hat`` of the MNIST CapsNet is 94 MB at
    batch 128) in again: measured here, an element-wise product of two such tensors took 47 ms into
    a new tensor but 7.5 ms into an existing one. This turns ``mmap`` off and never trims the heap,
    so the process keeps its peak memory. Returns ``True`` if applied (glibc Linux only), else ``False``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False


def describe_machine(device: torch.device | str = "cpu") -> str:
    """One line naming the hardware a result came from, e.g. for results tables and benchmark reports."""
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
