"""Data-parallel training on PyTorch's own engine: ``torchrun`` starts the processes, DDP averages gradients.

``torchrun --nproc-per-node N -m capsnet train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address in each process's environment; :func:`init_distributed` reads them. Without them the
run is a single process and every helper here is a no-op.
"""

from __future__ import annotations

import functools
import gc
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import TrainingError

__all__ = ["DistributedContext", "init_distributed", "in_process_group", "is_main_process", "shutdown_distributed"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control_group: Any = None  # a gloo group for CPU-side flags: agreeing on them costs no GPU sync

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and progress bars."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The GPU of this process on its node when training on CUDA; ``device`` otherwise."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.control_group)

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over all ranks, in place; returns it."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (e.g. one of them got Ctrl-C)."""
        return bool(self.max_each(int(flag))[0])

    def max_each(self, *values: int) -> list[int]:
        """The largest of each integer over all ranks, agreed in one exchange."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.control_group)
        return tensor.tolist()

    def gather(self, value: _T) -> list[_T]:
        """``value`` of every rank, in rank order, on every rank (any picklable object holding CPU tensors)."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value, group=self.control_group)
        return values

    def shard(self, tensor: Tensor) -> Tensor:
        """This rank's contiguous part of ``tensor``'s first dim (parts differ in size by at most one)."""
        return tensor.tensor_split(self.world_size)[self.rank] if self.enabled else tensor


def is_main_process() -> bool:
    """Whether this is rank 0 of ``torchrun``'s processes (or the only process), before any process group exists."""
    return os.environ.get("RANK", "0") == "0"


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment; a single process if none.

    The backend is NCCL on CUDA and gloo on CPU. Calling it again in a process that already joined reuses
    the group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise TrainingError(f"torchrun started process {local_rank} of this machine, but it has "
                                    f"{torch.cuda.device_count()} GPUs: --nproc-per-node must be at most that")
            torch.cuda.set_device(local_rank)  # before NCCL starts, so each process talks from its own GPU
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        control_group=_control_group(dist.group.WORLD),
    )


@functools.cache
def _control_group(world: Any) -> Any:
    """A gloo group beside NCCL for CPU-side flags, made once per process group ``world``.

    Every ``new_group`` is a collective call that opens sockets to all ranks, so a process that trains
    several runs (``capsnet reproduce`` under ``torchrun``) shares one rather than leaking one per run.
    """
    return dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None


def in_process_group() -> bool:
    """Whether this process has joined a process group (``torch.distributed`` initialized)."""
    return dist.is_available() and dist.is_initialized()


def shutdown_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if in_process_group():
        _control_group.cache_clear()
        # A finished Trainer can sit in a reference cycle (DDP's constructor leaves frames behind in torch 2.13)
        # that keeps its DDP wrapper, and with it the group, alive. Collected only as the interpreter shuts down,
        # gloo's threads then abort the process ("terminate called without an active exception"): free it now.
        gc.collect()
        dist.destroy_process_group()
