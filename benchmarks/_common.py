"""What the benchmarks share: the --device/--append/--json flags, the paper's model on a random batch, peak memory,
and the one way results are kept: a markdown section (command, machine, torch, date, table) and a JSON file with
the same facts."""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
from datetime import date
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import capsnet
from capsnet.runtime import describe_machine

SKIPPED = {"append", "json", "one"}  # flags that are not part of the measurement


def add_report_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--append", metavar="FILE", help="append a markdown section with the results to FILE")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE, with the command, machine, "
                                                       "device, torch version and date")


def paper_model_and_batch(
    batch_size: int, device: torch.device
) -> tuple[capsnet.CapsNet, capsnet.CapsuleLoss, torch.optim.Optimizer, Tensor, Tensor]:
    """The paper's MNIST CapsNet (seed 0), its loss, fused Adam as the training app uses it, and a random batch:
    images ``(batch_size, 1, 28, 28)`` in [0, 1), labels ``(batch_size,)``."""
    torch.manual_seed(0)
    model = capsnet.CapsNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    images = torch.rand(batch_size, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    return model, capsnet.CapsuleLoss(), optimizer, images, labels


def peak_memory_mib(device: str | torch.device) -> float:
    """Peak memory of this process so far: ``max_memory_allocated`` on a GPU, the peak RSS on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, rebuilt from the parsed flags."""
    flags = []
    for key, value in vars(args).items():
        if key in SKIPPED or value is None:
            continue
        name = key.replace("_", "-")
        if isinstance(value, bool):  # the benchmarks' boolean flags are BooleanOptionalActions
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            values = value if isinstance(value, list) else [value]
            flags.append(f"--{name} {' '.join(shlex.quote(str(v)) for v in values)}")
    return " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *flags])


def save_results(args: argparse.Namespace, setting: str, table: str, results: Any) -> None:
    """Keep a run as its flags ask: ``--append`` a ``### date: `command` `` section with the machine, ``setting``
    (one sentence) and the markdown ``table``; ``--json`` the same facts with the ``results`` as data."""
    machine = describe_machine(args.device)
    if args.append:
        with open(args.append, "a") as f:
            f.write(f"\n### {date.today().isoformat()}: `{command_line(args)}`\n\n{machine}, "
                    f"torch {torch.__version__}, {setting}\n\n{table}\n")
    if args.json:
        record = {"command": command_line(args), "date": date.today().isoformat(), "machine": machine,
                  "device": args.device, "torch": torch.__version__, "setting": setting, "results": results}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
