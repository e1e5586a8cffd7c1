"""Images/s of the paper's MNIST CapsNet against its own convolutions (the lower bound), on CPU.

Measures, interleaved in one run so machine noise hits all alike (median of --repeats):
  conv fwd      Conv1 + PrimaryCaps convolution, forward, no grad
  inference     the whole model, no grad (routing, lengths, decoder from the longest capsule)
  conv step     Conv1 + PrimaryCaps convolution, forward and backward
  train step    forward with decoder, margin + reconstruction loss, backward, fused Adam step

Usage:
    python benchmarks/train_step.py [--batch-size 128] [--repeats 10] [--allocator retain|default]
                                    [--append docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date

import torch
import torch.nn.functional as F

import capsnet
from capsnet.runtime import retain_freed_memory


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions of each measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--allocator", choices=["retain", "default"], default="retain",
        help="retain: capsnet.runtime.retain_freed_memory() as the training app does; default: glibc as is",
    )
    parser.add_argument("--append", metavar="FILE", help="append a markdown section with the results to FILE")
    return parser.parse_args()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def make_steps(batch_size: int) -> dict[str, callable]:
    torch.manual_seed(0)
    model = capsnet.CapsNet()
    loss_fn = capsnet.CapsuleLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    images = torch.rand(batch_size, 1, 28, 28)
    labels = torch.randint(0, 10, (batch_size,))

    def convolutions(x):
        return model.primary.conv(F.relu(model.conv1(x)))

    conv_grad = torch.randn_like(convolutions(images))

    def conv_fwd():
        with torch.no_grad():
            convolutions(images)

    def inference():
        with torch.no_grad():
            model(images)

    def conv_step():
        convolutions(images).backward(conv_grad)
        model.zero_grad(set_to_none=True)

    def train_step():
        loss = loss_fn(model(images, labels), images, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"conv fwd": conv_fwd, "inference": inference, "conv step": conv_step, "train step": train_step}


def measure(steps: dict, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each step, interleaving the steps in every round."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(seconds: dict[str, float], args: argparse.Namespace, allocator_applied: bool) -> dict:
    batch = args.batch_size
    return {
        "batch_size": batch,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "images_per_s": {k: round(batch / v, 1) for k, v in seconds.items()},
        "train_over_conv_step": round(seconds["train step"] / seconds["conv step"], 3),
        "inference_over_conv_fwd": round(seconds["inference"] / seconds["conv fwd"], 3),
        "allocator": "retain" if allocator_applied else "glibc default",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": f"{cpu_name()}, {os.cpu_count()} cores",
        "date": date.today().isoformat(),
    }


def markdown(result: dict, command: str) -> str:
    rows = "\n".join(
        f"| {name} | {result['seconds'][name] * 1000:.0f} | {result['images_per_s'][name]:.0f} |"
        for name in result["seconds"]
    )
    return (
        f"\n### {result['date']}: `{command}`\n\n"
        f"{result['cpu']}, {result['threads']} threads, torch {result['torch']}, allocator: {result['allocator']}, "
        f"batch {result['batch_size']}, median of {result['repeats']} interleaved repetitions.\n\n"
        f"| measurement | ms | images/s |\n|---|---:|---:|\n{rows}\n\n"
        f"Training step / convolutions-alone step: **{result['train_over_conv_step']:.2f}x**; "
        f"inference / convolutions' forward: **{result['inference_over_conv_fwd']:.2f}x**.\n"
    )


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    applied = args.allocator == "retain" and retain_freed_memory()
    result = report(measure(make_steps(args.batch_size), args.repeats, args.warmup), args, applied)
    result["repeats"] = args.repeats
    print(f"{'measurement':<12} {'ms':>8} {'images/s':>10}")
    for name, sec in result["seconds"].items():
        print(f"{name:<12} {sec * 1000:>8.1f} {result['images_per_s'][name]:>10.1f}")
    print(f"train step / conv step: {result['train_over_conv_step']:.3f}x   "
          f"inference / conv fwd: {result['inference_over_conv_fwd']:.3f}x")
    print(json.dumps(result))
    if args.append:
        command = "python benchmarks/train_step.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "append"
        )
        with open(args.append, "a") as f:
            f.write(markdown(result, command))


if __name__ == "__main__":
    main()
