"""The one way every benchmark appends its results to a markdown file: command, machine, torch, date, table."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import torch

from capsnet.runtime import describe_machine

SKIPPED = {"append", "one"}  # flags that are not part of the measurement


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
            flags.append(f"--{name} {' '.join(map(str, value)) if isinstance(value, list) else value}")
    return " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *flags])


def append_section(args: argparse.Namespace, setting: str, body: str) -> None:
    """Append a ``### date: `command` `` section with the machine, ``setting`` (one sentence) and ``body``."""
    with open(args.append, "a") as f:
        f.write(f"\n### {date.today().isoformat()}: `{command_line(args)}`\n\n{describe_machine(args.device)}, "
                f"torch {torch.__version__}, {setting}\n\n{body}\n")
