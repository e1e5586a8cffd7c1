"""Time of the routing algorithms alone, at the paper's DigitCaps sizes: what choosing one over another costs.

Votes ``u_hat`` are random ``(b, 1152, 10, 16)`` tensors stored in ``(i, b, j, d)`` order, as ``RoutedCapsules``
makes them. For every batch size it times, interleaved so that machine noise hits all alike (median of --repeats):
  forward          no grad, as in evaluation
  train            forward and backward to u_hat (and the routing's own parameters)
for dynamic routing with 1 and 3 iterations (the default stop-gradient, and 3 without it) and self-attention
routing with its learned prior.

Usage:
    python benchmarks/routing.py [--batch-sizes 128] [--repeats 10] [--warmup 2] [--threads N] [--device cpu|cuda]
                                 [--append docs/benchmarks.md] [--json results.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from capsnet import DynamicRouting, Routing, SelfAttentionRouting
from capsnet.runtime import retain_freed_memory

from _common import add_report_flags, save_results

IN_CAPS, OUT_CAPS, OUT_DIM = 1152, 10, 16  # the paper's DigitCaps on 28x28 images


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions of each measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    add_report_flags(parser)
    return parser.parse_args(argv)


def routings(device: torch.device) -> dict[str, Routing]:
    return {
        "dynamic, 1 iteration": DynamicRouting(1),
        "dynamic, 3 iterations": DynamicRouting(3),
        "dynamic, 3 iterations, no stop-gradient": DynamicRouting(3, detach_intermediate=False),
        "self-attention, with prior": SelfAttentionRouting(IN_CAPS, OUT_CAPS, device=device),
    }


def make_steps(routing: Routing, votes: torch.Tensor) -> dict[str, Callable[[], object]]:
    u_hat = votes.transpose(0, 1)  # (b, i, j, d) view of (i, b, j, d) memory

    def forward():
        with torch.no_grad():
            return routing(u_hat)

    def train():
        poses, _ = routing(u_hat)
        poses.square().sum().backward()
        votes.grad = None

    return {"forward": forward, "train": train}


def timed(step: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(batch_size: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    votes = (torch.randn(IN_CAPS, batch_size, OUT_CAPS, OUT_DIM, device=device) * 0.05).requires_grad_()
    steps = {(name, kind): step for name, routing in routings(device).items()
             for kind, step in make_steps(routing, votes).items()}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for repeat in range(args.warmup + args.repeats):
        for key, step in steps.items():  # interleaved: a slow moment of the machine hits every routing
            elapsed = timed(step, device)
            if repeat >= args.warmup:
                times[key].append(elapsed * 1e3)
    names = dict.fromkeys(name for name, _ in steps)
    return [{"routing": name, "batch": batch_size, "forward_ms": statistics.median(times[name, "forward"]),
             "train_ms": statistics.median(times[name, "train"])} for name in names]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        retain_freed_memory()  # as the training app does
    results = [row for batch_size in args.batch_sizes for row in measure(batch_size, args, device)]
    baseline = {row["batch"]: row for row in results if row["routing"] == "dynamic, 3 iterations"}
    lines = ["| routing | batch | forward ms | forward + backward ms | vs dynamic, 3 iterations (fwd + bwd) |",
             "|---|---:|---:|---:|---:|"]
    for row in results:
        ratio = row["train_ms"] / baseline[row["batch"]]["train_ms"]
        lines.append(f"| {row['routing']} | {row['batch']} | {row['forward_ms']:.0f} | {row['train_ms']:.0f} | "
                     f"{ratio:.2f}x |")
    table = "\n".join(lines)
    print(table)
    save_results(args, f"median of {args.repeats} interleaved repetitions", table, results)


if __name__ == "__main__":
    main()
