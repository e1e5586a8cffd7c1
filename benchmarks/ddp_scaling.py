"""Scaling of data-parallel training: training images/s with 1, 2, ... processes started by torchrun.

Runs `capsnet train` for two epochs on the first --limit-train MNIST images once per process count (the
global batch stays --batch-size, so every run takes the same steps), uncompiled in every run (a single GPU
process would otherwise compile and the torchrun ones not), and reports the second epoch's images/s (the
first warms up) and the scaling efficiency, (images/s with N processes) / (N / M x images/s with M, the
fewest processes given; M is 1 by default). On a CPU the processes share the machine's cores: torchrun
gives each one thread, while the single process uses all of them.

Usage:
    python benchmarks/ddp_scaling.py --data-dir ../shared/data [--processes 1 2] [--device cpu|cuda]
                                     [--model capsnet-mnist] [--batch-size 128] [--limit-train 2560]
                                     [--append docs/benchmarks.md]
                                     [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import add_report_flags, save_results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="capsnet-mnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--limit-train", type=int, default=2560)
    add_report_flags(parser)
    return parser.parse_args()


def images_per_second(processes: int, args: argparse.Namespace, run_dir: Path) -> float:
    train = ["capsnet", "train", "--model", args.model, "--device", args.device, "--epochs", "2", "--no-compile",
             "--batch-size", str(args.batch_size), "--limit-train", str(args.limit_train), "--limit-test", "500",
             "--no-progress", "--output-dir", str(run_dir)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m"]
    subprocess.run(launcher + train if processes > 1 else [sys.executable, "-m", *train], check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["train_images_per_second"]


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="capsnet-ddp-") as scratch:
        rates = {n: images_per_second(n, args, Path(scratch) / f"n{n}") for n in args.processes}
    base = rates[min(rates)] / min(rates)  # images/s per process with the fewest processes
    header = "| processes | train images/s | speed-up | scaling efficiency |\n|---:|---:|---:|---:|"
    rows = "\n".join(f"| {n} | {rate:.1f} | {rate / rates[min(rates)]:.2f}x | {rate / (n * base):.0%} |"
                     for n, rate in rates.items())
    print(header + "\n" + rows)
    save_results(args, f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} for the single process "
                       f"(torchrun sets 1 per process), {args.model}, global batch {args.batch_size}, uncompiled, the "
                       f"second of two epochs of {args.limit_train} images.", f"{header}\n{rows}",
                 {"train_images_per_second": {str(n): rate for n, rate in rates.items()}})


if __name__ == "__main__":
    main()
