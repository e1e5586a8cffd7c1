"""Seconds per MNIST epoch end to end: what `capsnet train --epochs 1` costs, test pass included.

Trains the paper's model through the training app (data on the device, augmentation, fused Adam, the
test pass over all 10,000 images) and reports for the last epoch the training seconds, the test pass's
seconds, their sum, and images/s; then the first epoch's sum (when compiled, it includes compiling), the
wall-clock time from start-up to the last saved checkpoint, peak memory and the test error.

Usage:
    python benchmarks/epoch.py --data-dir ../shared/data [--device cpu|cuda] [--precision auto] [--[no-]compile]
                               [--epochs N] [--batch-size 128] [--limit-train N] [--limit-test N]
                               [--output-dir /tmp/capsnet-epoch]
                               [--append docs/benchmarks.md] [--json results.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from capsnet import TrainConfig, Trainer
from capsnet.training.precision import compile_mode

from _common import add_report_flags, peak_memory_mib, save_results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the step (default: the training app's, on a single CUDA GPU only)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs to train; the last one is reported (default: 2 when the step is compiled, so "
                             "that the reported one does not include compiling; else 1)")
    parser.add_argument("--limit-train", type=int, default=None, help="only the first N training images (a quick check)")
    parser.add_argument("--limit-test", type=int, default=None, help="only the first N test images")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--output-dir", default=None, help="run folder (default: a new temporary folder)")
    add_report_flags(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="capsnet-epoch-")
    compiled = compile_mode(args.compile, torch.device(args.device), distributed=False) is not None
    config = TrainConfig(
        epochs=args.epochs if args.epochs is not None else (2 if compiled else 1), data_dir=args.data_dir, device=args.device,
        precision=args.precision, compile=args.compile, batch_size=args.batch_size, limit_train=args.limit_train,
        limit_test=args.limit_test, output_dir=output_dir, progress=False,
    )
    trainer = Trainer(config)
    history = trainer.fit()
    wall = time.perf_counter() - start
    memory_mib = peak_memory_mib(args.device)
    memory = f"{memory_mib:.0f} MiB {'max_memory_allocated' if args.device == 'cuda' else 'peak RSS'}"
    settings, first, last = trainer.settings(), history[0], history[-1]
    row = (f"| {settings['device']} | {settings['precision']} | {settings['compile']} | {args.batch_size} | {last['epoch']} "
           f"| {last['epoch_seconds']:.2f} | {last['test_seconds']:.2f} | "
           f"**{last['epoch_seconds'] + last['test_seconds']:.2f}** | {last['train_images_per_second']:.0f} "
           f"| {first['epoch_seconds'] + first['test_seconds']:.1f} | {wall:.1f} | {memory} | {last['test_error']:.2%} |")
    header = ("| device | precision | compile | batch | epoch | training s | test s | epoch s | train img/s "
              "| epoch 1 s | wall s (start-up to checkpoint) | memory | test error |\n"
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    print(header + "\n" + row)
    results = {"settings": settings, "epochs": history, "wall_seconds": round(wall, 1), "peak_memory_mib": round(memory_mib)}
    save_results(args, f"compile {settings['compile']}, {config.epochs} epoch(s) of the paper's model "
                       f"({last['step'] // last['epoch']} steps each) plus the test pass over "
                       f"{last['test_examples']:,} images, seed 0; the last epoch is reported.", f"{header}\n{row}", results)


if __name__ == "__main__":
    main()
