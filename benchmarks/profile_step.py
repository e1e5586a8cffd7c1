"""Where a training step of the paper's MNIST CapsNet spends its time and memory, layer by layer.

Prints:
  1. time per layer forward, then the loss, the backward pass and the optimizer step as a whole, timed over
     unprofiled steps with clock marks that module hooks set around each layer: CUDA events on a GPU (they
     time the kernels in stream order, including the backward kernels that autograd launches from its own
     thread), the wall clock on the CPU (where operators run synchronously);
  2. the operators with the most self time over a few more steps under torch.profiler, backward ones
     included (the backward of a layer shows up as its autograd operators, e.g. convolution_backward);
  3. memory per layer: the bytes autograd saves for the backward pass (counted by a saved-tensors hook;
     parameters, which are kept anyway, excluded) and the size of the layer's output.

Usage:
    python benchmarks/profile_step.py [--batch-size 128] [--steps 3] [--warmup 4] [--top 12] [--device cpu|cuda]
                                      [--precision 32|bf16|16-mixed] [--append docs/benchmarks.md] [--json results.json]
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Callable, Union

import torch
from torch.profiler import ProfilerActivity, profile

from capsnet.runtime import retain_freed_memory
from capsnet.training.precision import autocast

from _common import add_report_flags, paper_model_and_batch, save_results


LAYERS = {"conv1": "Conv1", "primary": "PrimaryCaps (conv + squash)", "digits": "DigitCaps (u_hat + routing)",
          "digits.routing": "  of which routing", "decoder": "Decoder"}
PHASES = ("forward", "loss", "backward", "optimizer step")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps, then as many profiled ones")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "16-mixed"])
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    add_report_flags(parser)
    return parser.parse_args()


Mark = Union[float, torch.cuda.Event]


class Clock:
    """Marks points of a step in the device's own order and measures the milliseconds between two marks.

    On a GPU the time between two events includes any idle gaps, so a step that the host's kernel launches
    hold back reads as the launch time, not the kernels' busy time (the operator table has the latter).
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Mark:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def synchronize(self) -> None:
        """Wait for the device, after which the events' times can be read."""
        if self.cuda:
            torch.cuda.synchronize()

    def elapsed_ms(self, start: Mark, end: Mark) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1000


class LayerRecorder:
    """Marks the start and end of each watched module's forward, and counts the bytes autograd saves for
    backward while that module runs (each storage once)."""

    def __init__(self, model: torch.nn.Module, clock: Clock) -> None:
        self.clock = clock
        self.spans: list[tuple[str, Mark, Mark]] = []
        self.saved = collections.Counter()
        self.output_bytes = {}
        self._open: list[tuple[str, Mark]] = []
        self._parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}  # held anyway
        self._seen: set[int] = set()
        modules = dict(model.named_modules())
        for name in LAYERS:
            modules[name].register_forward_pre_hook(lambda module, args, name=name: self._enter(name))
            modules[name].register_forward_hook(lambda module, args, output, name=name: self._exit(output))

    def _enter(self, name: str) -> None:
        self._open.append((name, self.clock.mark()))

    def _exit(self, output) -> None:
        name, start = self._open.pop()
        self.spans.append((name, start, self.clock.mark()))
        tensors = output if isinstance(output, tuple) else (output,)
        self.output_bytes[name] = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = tensor.untyped_storage().data_ptr()
        if key not in self._seen and key not in self._parameters:
            self._seen.add(key)
            owners = [name for name, _ in self._open] or ["other"]  # nested layers (digits.routing) count it too
            for name in owners:
                self.saved[name] += tensor.untyped_storage().nbytes()
        return tensor

    def reset(self) -> None:
        self.spans.clear()
        self.saved.clear()
        self._seen.clear()


def build_step(args: argparse.Namespace, clock: Clock) -> tuple[Callable[[], list[Mark]], LayerRecorder]:
    """A training step of the paper's model on random data that returns its marks: start, after the forward,
    the loss, the backward and the optimizer step; and the recorder of its layers."""
    device = torch.device(args.device)
    model, loss_fn, optimizer, images, labels = paper_model_and_batch(args.batch_size, device)
    recorder = LayerRecorder(model, clock)

    def step() -> list[Mark]:
        recorder.reset()
        marks = [clock.mark()]
        with torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda t: t):
            with autocast(args.precision, device):
                output = model(images, labels)
                marks.append(clock.mark())
                loss = loss_fn(output, images, labels)
                marks.append(clock.mark())
        loss.backward()
        marks.append(clock.mark())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(clock.mark())
        return marks

    return step, recorder


def time_steps(step: Callable[[], list[Mark]], recorder: LayerRecorder, clock: Clock, steps: int) -> dict[str, float]:
    """Mean milliseconds per step of every phase and every watched layer."""
    totals = collections.Counter()
    for _ in range(steps):
        marks = step()
        clock.synchronize()
        totals.update({phase: clock.elapsed_ms(a, b) for phase, a, b in zip(PHASES, marks, marks[1:])})
        totals.update({name: clock.elapsed_ms(a, b) for name, a, b in recorder.spans})
    return {key: ms / steps for key, ms in totals.items()}


def profile_steps(step: Callable[[], list[Mark]], clock: Clock, steps: int) -> profile:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if clock.cuda else [])
    with profile(activities=activities, profile_memory=True) as prof:
        for _ in range(steps):
            step()
        clock.synchronize()
    return prof


def summarize(times: dict[str, float], recorder: LayerRecorder, prof: profile, args: argparse.Namespace) -> str:
    use_cuda = args.device == "cuda"
    step_ms = sum(times[phase] for phase in PHASES)
    rows = [(label, times[name], recorder.saved[name] / 2**20, recorder.output_bytes[name] / 2**20)
            for name, label in LAYERS.items()]
    rows.append(("ReLU after Conv1, masking, loss (outside the layers above)",
                 times["forward"] - sum(r[1] for r in rows if not r[0].startswith(" ")) + times["loss"],
                 recorder.saved["other"] / 2**20, None))
    rows += [(phase, times[phase], None, None) for phase in ("backward", "optimizer step")]
    clock_name = "GPU" if use_cuda else "CPU"
    decimals = 3 if use_cuda else 1  # a GPU step takes milliseconds, its parts microseconds
    lines = [f"| part | {clock_name} ms / step | share | saved for backward (MiB) | output (MiB) |", "|---|---:|---:|---:|---:|"]
    for label, ms, saved, out in rows:
        extra = "| | |" if saved is None else f"| {saved:.1f} | {'' if out is None else f'{out:.1f}'} |"
        lines.append(f"| {label} | {ms:.{decimals}f} | {ms / step_ms:.0%} {extra}")
    saved_mib = sum(v for n, v in recorder.saved.items() if "." not in n) / 2**20
    lines.append(f"| **whole step** | **{step_ms:.{decimals}f}** | 100% | **{saved_mib:.1f}** | |")
    sort_key = "self_device_time_total" if use_cuda else "self_cpu_time_total"
    # operators only: on a GPU the profiler also lists each kernel under its (long, mangled) name
    ops = sorted((e for e in prof.key_averages() if e.key.startswith("aten::")),
                 key=lambda e: getattr(e, sort_key), reverse=True)[: args.top]
    lines += ["", f"| operator (top {args.top} by self {clock_name} time, profiled) | self ms / step | calls / step | "
                  "self memory (MiB / step) |", "|---|---:|---:|---:|"]
    for e in ops:
        self_ms = getattr(e, sort_key) / 1000 / args.steps
        memory = (e.self_device_memory_usage if use_cuda else e.self_cpu_memory_usage) / 2**20 / args.steps
        lines.append(f"| `{e.key}` | {self_ms:.{decimals}f} | {e.count / args.steps:.0f} | {memory:.1f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.device == "cpu":
        retain_freed_memory()
    clock = Clock(torch.device(args.device))
    step, recorder = build_step(args, clock)
    for _ in range(args.warmup):  # the allocator reaches its steady state (no page faults) after ~3 steps
        step()
    times = time_steps(step, recorder, clock, args.steps)
    table = summarize(times, recorder, profile_steps(step, clock, args.steps), args)
    print(table)
    clock_name = "CUDA events" if args.device == "cuda" else "wall clock"
    results = {"ms_per_step": times, "saved_for_backward_mib": {k: v / 2**20 for k, v in recorder.saved.items()}}
    allocator = ", allocator: retain (as the training app)" if args.device == "cpu" else ""
    save_results(args, f"batch {args.batch_size}, precision {args.precision}{allocator}: layer and phase times are "
                       f"the mean of {args.steps} unprofiled steps ({clock_name}), the operator table is from "
                       f"{args.steps} more steps under torch.profiler, whose bookkeeping inflates small operators.",
                 table, results)


if __name__ == "__main__":
    main()
