"""Speed and memory of the paper's MNIST CapsNet against its own convolutions (the lower bound).

For every (precision, batch size) it times, interleaved so machine noise hits all alike (median of --repeats):
  conv fwd      Conv1 + PrimaryCaps convolution, forward, no grad
  inference     the whole model, no grad (routing, lengths, decoder from the longest capsule)
  conv step     Conv1 + PrimaryCaps convolution, forward and backward
  train step    forward with decoder, margin + reconstruction loss, backward, fused Adam step
and, for a low precision, the fp32 conv step too (the yardstick of a low precision's speed-up). Each configuration runs
in a fresh process, so its peak memory (RSS on CPU, max_memory_allocated on GPU) is its own.

Usage:
    python benchmarks/train_step.py [--batch-sizes 32 128 512] [--precisions 32 bf16] [--device cpu|cuda]
                                    [--repeats 10] [--warmup 3] [--threads N] [--allocator retain|default]
                                    [--append docs/benchmarks.md] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from capsnet.runtime import retain_freed_memory
from capsnet.training.precision import autocast

from _common import add_report_flags, paper_model_and_batch, peak_memory_mib, save_results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--precisions", nargs="+", default=["32"], choices=["32", "bf16", "16-mixed"])
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions of each measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--allocator", choices=["retain", "default"], default="retain",
        help="CPU: retain = capsnet.runtime.retain_freed_memory() as the training app does; default = glibc as is",
    )
    add_report_flags(parser)
    parser.add_argument("--one", nargs=2, metavar=("PRECISION", "BATCH"), help=argparse.SUPPRESS)  # worker mode
    return parser.parse_args(argv)


def make_steps(batch_size: int, precision: str, device: torch.device) -> dict[str, Callable[[], object]]:
    model, loss_fn, optimizer, images, labels = paper_model_and_batch(batch_size, device)

    def convolutions(x):
        return model.primary.conv(F.relu(model.conv1(x)))

    conv_grad = torch.randn_like(convolutions(images))

    def conv_fwd():
        with torch.no_grad(), autocast(precision, device):
            convolutions(images)

    def inference():
        with torch.no_grad(), autocast(precision, device):
            model(images)

    def conv_step(precision=precision):
        with autocast(precision, device):
            out = convolutions(images)
        out.backward(conv_grad.to(out.dtype))
        model.zero_grad(set_to_none=True)

    def train_step():
        with autocast(precision, device):
            loss = loss_fn(model(images, labels), images, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps = {"conv fwd": conv_fwd, "inference": inference, "conv step": conv_step, "train step": train_step}
    if precision != "32":
        steps["fp32 conv step"] = lambda: conv_step("32")
    return steps


def measure(steps: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each step, interleaving the steps in every round."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run_one(args: argparse.Namespace) -> dict:
    """Worker: one (precision, batch) configuration in this process."""
    precision, batch = args.one[0], int(args.one[1])
    device = torch.device(args.device)
    seconds = measure(make_steps(batch, precision, device), args.repeats, args.warmup, device)
    result = {
        "precision": precision, "batch_size": batch,
        "ms": {k: round(v * 1000, 3) for k, v in seconds.items()},
        "images_per_s": {k: round(batch / v, 1) for k, v in seconds.items()},
        "train_over_conv_step": round(seconds["train step"] / seconds["conv step"], 3),
        "inference_over_conv_fwd": round(seconds["inference"] / seconds["conv fwd"], 3),
        "peak_memory_mib": round(peak_memory_mib(device)),
    }
    if "fp32 conv step" in seconds:
        result["train_over_fp32_conv_step"] = round(seconds["train step"] / seconds["fp32 conv step"], 3)
    return result


def run_all(args: argparse.Namespace) -> list[dict]:
    results = []
    for precision in args.precisions:
        for batch in args.batch_sizes:
            argv = [sys.executable, __file__, "--one", precision, str(batch), "--device", args.device,
                    "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--allocator", args.allocator]
            if args.threads:
                argv += ["--threads", str(args.threads)]
            output = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
            print(table_row(results[-1]), flush=True)
    return results


HEADER = ("| precision | batch | conv fwd ms | inference ms | conv step ms | train step ms | train img/s "
          "| inference img/s | train / conv step | inference / conv fwd | peak memory MiB |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def table_row(r: dict) -> str:
    ms = {name: f"{value:.3g}" if value < 100 else f"{value:.0f}" for name, value in r["ms"].items()}  # GPU: ~1 ms
    ips = r["images_per_s"]
    ratio = f"**{r['train_over_conv_step']:.2f}x**"
    if "train_over_fp32_conv_step" in r:
        ratio += f" ({r['train_over_fp32_conv_step']:.2f}x the fp32 conv step, {ms['fp32 conv step']} ms)"
    return (f"| {r['precision']} | {r['batch_size']} | {ms['conv fwd']} | {ms['inference']} | {ms['conv step']} "
            f"| {ms['train step']} | {ips['train step']:.0f} | {ips['inference']:.0f} | {ratio} "
            f"| **{r['inference_over_conv_fwd']:.2f}x** | {r['peak_memory_mib']} |")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    applied = args.device == "cpu" and args.allocator == "retain" and retain_freed_memory()
    if args.one:
        print(json.dumps(run_one(args)))
        return
    print(HEADER)
    results = run_all(args)
    allocator = "" if args.device == "cuda" else f", allocator: {'retain' if applied else 'glibc default'}"
    save_results(args, f"median of {args.repeats} interleaved repetitions, each configuration in a fresh "
                       f"process{allocator}.", f"{HEADER}\n" + "\n".join(map(table_row, results)), results)


if __name__ == "__main__":
    main()
