"""Where a training step of the paper's MNIST CapsNet spends its time and memory, layer by layer.

Runs torch.profiler over a few training steps (batch 128 by default) and prints:
  1. forward time per layer (record_function ranges opened and closed by module hooks), then the loss,
     the backward pass and the optimizer step as a whole;
  2. the operators with the most self time, backward ones included (the backward of a layer shows up as
     its autograd nodes, e.g. ConvolutionBackward0);
  3. memory per layer: the bytes autograd saves for the backward pass (counted by a saved-tensors hook;
     parameters, which are kept anyway, excluded) and the size of the layer's output.

Usage:
    python benchmarks/profile_step.py [--batch-size 128] [--steps 3] [--device cpu|cuda] [--precision 32|bf16]
                                      [--append docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import collections
from contextlib import ExitStack

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import capsnet
from capsnet.runtime import retain_freed_memory
from capsnet.training.precision import autocast

from _report import append_section


LAYERS = {"conv1": "Conv1", "primary": "PrimaryCaps (conv + squash)", "digits": "DigitCaps (u_hat + routing)",
          "digits.routing": "  of which routing", "decoder": "Decoder"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=4, help="unprofiled steps first")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "16-mixed"])
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    parser.add_argument("--append", metavar="FILE", help="append a markdown section with the results to FILE")
    return parser.parse_args()


class LayerRecorder:
    """Opens a profiler range named after each watched module for the duration of its forward, and counts the
    bytes autograd saves for backward while that module runs (each storage once)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.saved = collections.Counter()
        self.output_bytes = {}
        self._open: list[tuple[str, ExitStack]] = []
        self._parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}  # held anyway
        self._seen: set[int] = set()
        modules = dict(model.named_modules())
        for name in LAYERS:
            modules[name].register_forward_pre_hook(lambda module, args, name=name: self._enter(name))
            modules[name].register_forward_hook(lambda module, args, output, name=name: self._exit(name, output))

    def _enter(self, name: str) -> None:
        stack = ExitStack()
        stack.enter_context(record_function(f"layer: {name}"))
        self._open.append((name, stack))

    def _exit(self, name: str, output) -> None:
        _, stack = self._open.pop()
        stack.close()
        tensors = output if isinstance(output, tuple) else (output,)
        self.output_bytes[name] = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = tensor.untyped_storage().data_ptr()
        if key not in self._seen and key not in self._parameters:
            self._seen.add(key)
            owners = [name for name, _ in self._open] or ["other"]  # nested ranges (digits.routing) count it too
            for name in owners:
                self.saved[name] += tensor.untyped_storage().nbytes()
        return tensor

    def reset(self) -> None:
        self.saved.clear()
        self._seen.clear()


def profile_steps(args: argparse.Namespace):
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = capsnet.CapsNet().to(device)
    loss_fn = capsnet.CapsuleLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    images = torch.rand(args.batch_size, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    recorder = LayerRecorder(model)

    def step() -> None:
        recorder.reset()
        with torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda t: t):
            with record_function("forward (whole)"), autocast(args.precision, device):
                output = model(images, labels)
            with record_function("loss"), autocast(args.precision, device):
                loss = loss_fn(output, images, labels)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer step"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):  # the allocator reaches its steady state (no page faults) after ~3 steps
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, profile_memory=True) as prof:
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return prof, recorder


def summarize(prof, recorder: LayerRecorder, args: argparse.Namespace) -> str:
    events = {e.key: e for e in prof.key_averages()}
    use_cuda = args.device == "cuda"
    per_step = lambda e: (e.device_time_total if use_cuda else e.cpu_time_total) / 1000 / args.steps  # noqa: E731
    step_ms = sum(per_step(events[k]) for k in ("forward (whole)", "loss", "backward", "optimizer step"))
    rows = [(label, per_step(events[f"layer: {name}"]), recorder.saved[name] / 2**20, recorder.output_bytes[name] / 2**20)
            for name, label in LAYERS.items()]
    rows.append(("ReLU after Conv1, masking, loss (outside the layers above)",
                 per_step(events["forward (whole)"]) - sum(r[1] for r in rows if not r[0].startswith(" "))
                 + per_step(events["loss"]), recorder.saved["other"] / 2**20, None))
    rows += [(part, per_step(events[part]), None, None) for part in ("backward", "optimizer step")]
    clock = "GPU" if use_cuda else "CPU"
    decimals = 3 if use_cuda else 1  # a GPU step takes milliseconds, its parts microseconds
    lines = [f"| part | {clock} ms / step | share | saved for backward (MiB) | output (MiB) |", "|---|---:|---:|---:|---:|"]
    for label, ms, saved, out in rows:
        extra = "| | |" if saved is None else f"| {saved:.1f} | {'' if out is None else f'{out:.1f}'} |"
        lines.append(f"| {label} | {ms:.{decimals}f} | {ms / step_ms:.0%} {extra}")
    saved_mib = sum(v for n, v in recorder.saved.items() if "." not in n) / 2**20
    lines.append(f"| **whole step** | **{step_ms:.{decimals}f}** | 100% | **{saved_mib:.1f}** | |")
    sort_key = "self_device_time_total" if use_cuda else "self_cpu_time_total"
    ops = sorted((e for e in prof.key_averages() if not e.key.startswith(("layer:", "forward", "loss", "backward",
                                                                          "optimizer", "ProfilerStep"))),
                 key=lambda e: getattr(e, sort_key), reverse=True)[: args.top]
    lines += ["", f"| operator (top {args.top} by self {clock} time) | self ms / step | calls / step | self memory (MiB / step) |",
              "|---|---:|---:|---:|"]
    for e in ops:
        self_ms = getattr(e, sort_key) / 1000 / args.steps
        memory = (e.self_device_memory_usage if use_cuda else e.self_cpu_memory_usage) / 2**20 / args.steps
        lines.append(f"| `{e.key}` | {self_ms:.{decimals}f} | {e.count / args.steps:.0f} | {memory:.1f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.device == "cpu":
        retain_freed_memory()
    prof, recorder = profile_steps(args)
    table = summarize(prof, recorder, args)
    print(table)
    if args.append:
        append_section(args, f"batch {args.batch_size}, precision {args.precision}, mean of {args.steps} profiled steps. "
                             "Times are inclusive; the profiler adds some overhead of its own.", table)

if __name__ == "__main__":
    main()
