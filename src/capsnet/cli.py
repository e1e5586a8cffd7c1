"""The ``capsnet`` command: ``train``, ``evaluate`` and ``download``.

Every flag of ``capsnet train`` comes from :class:`capsnet.config.TrainConfig`, its help text and default
included. Bad input ends with one ``capsnet: error: ...`` line and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from .config import DEVICES, PRECISIONS, TrainConfig, check_positive_flag
from .data import DATASETS, DataError, download_dataset, get_dataset_class
from .models import create_model
from .training import CheckpointError, TrainingError, TrainingInterrupted, evaluate, load_checkpoint, resolve_device
from .training.distributed import shutdown_distributed
from .training.engine import Trainer
from .training.precision import resolve_precision

# OSError: unreadable or unwritable files and full disks are the user's to fix, not a bug to trace back.
_USER_ERRORS = (ValueError, DataError, CheckpointError, TrainingError, OSError)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is MISSING else f.default
        kinds = (hints[f.name], *typing.get_args(hints[f.name]))  # X | None -> (X | None, X, NoneType)
        help_text = f.metadata["help"] + ("" if default is None else f" (default: {default})")
        if bool in kinds:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            base = next(t for t in (int, float, str) if t in kinds)
            parser.add_argument(flag, type=base, default=default, choices=f.metadata.get("choices"), help=help_text)


def _train(args: argparse.Namespace) -> None:
    config = TrainConfig.from_dict(vars(args))
    try:
        _run_training(config)
    finally:
        shutdown_distributed()


def _run_training(config: TrainConfig) -> None:
    trainer = Trainer(config)
    say = print if trainer.distributed.is_main else (lambda *args, **kwargs: None)  # one voice under torchrun
    settings = trainer.settings()
    processes = f" x {settings['world_size']} processes" if settings["world_size"] > 1 else ""
    say(f"training {config.model} on {config.dataset} ({len(trainer.train_labels)} images) on "
        f"{settings['device']}{processes}, precision {settings['precision']}; run folder {trainer.run_dir}")
    try:
        history = trainer.fit()
    except TrainingInterrupted as stop:
        say(f"\ninterrupted: checkpoint saved to {stop.checkpoint}; continue with --resume --output-dir {trainer.run_dir}",
            file=sys.stderr)
        raise SystemExit(130) from None
    if not history:
        say(f"nothing to do: {trainer.run_dir} has already trained {trainer.progress.epoch} epochs; raise --epochs")
    else:
        say(f"done: test error {history[-1]['test_error']:.2%} after {trainer.progress.epoch} epochs; "
              f"best {trainer.progress.best_error:.2%}; checkpoints in {trainer.run_dir}")


def _evaluate(args: argparse.Namespace) -> None:
    check_positive_flag("--batch-size", args.batch_size)
    check_positive_flag("--limit-test", args.limit_test)
    checkpoint = load_checkpoint(args.checkpoint)
    config = checkpoint["config"]
    device = resolve_device(args.device)
    model = create_model(checkpoint["model_name"], **checkpoint["model_kwargs"]).to(device)
    model.load_state_dict(checkpoint["model"])
    test = get_dataset_class(config["dataset"])(args.data_dir or config["data_dir"], train=False)
    images, labels = test.images[: args.limit_test].to(device), test.labels[: args.limit_test].to(device)
    result = evaluate(model, images, labels, batch_size=args.batch_size, num_classes=len(checkpoint["classes"]),
                      precision=resolve_precision(args.precision, device), progress=True)
    print(f"{args.checkpoint}: test error {result['error']:.2%} on {result['examples']} {config['dataset']} test images "
          f"(epoch {checkpoint['progress']['epoch']})")
    for name, accuracy in zip(checkpoint["classes"], result["per_class_accuracy"]):
        print(f"  {name:>12}: {accuracy:.2%}")


def _download(args: argparse.Namespace) -> None:
    folder = download_dataset(args.dataset, args.data_dir)
    print(f"{args.dataset} is ready in {folder}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capsnet", description="Capsule networks with dynamic routing (Sabour et al. 2017).")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a CapsNet (defaults: the paper's MNIST recipe)")
    _add_config_flags(train)
    train.set_defaults(func=_train)

    evaluate_cmd = commands.add_parser("evaluate", help="test error and per-class accuracy of a checkpoint")
    evaluate_cmd.add_argument("checkpoint", type=Path, help="a last.pt or best.pt written by capsnet train")
    evaluate_cmd.add_argument("--data-dir", help="folder with the dataset (default: the one used in training)")
    evaluate_cmd.add_argument("--device", default=TrainConfig.device, choices=DEVICES)
    evaluate_cmd.add_argument("--batch-size", type=int, default=TrainConfig.eval_batch_size)
    evaluate_cmd.add_argument("--precision", default=TrainConfig.precision, choices=PRECISIONS,
                              help="autocast precision (auto: bf16 on CUDA, 32 on CPU)")
    evaluate_cmd.add_argument("--limit-test", type=int, default=None, help="only the first N test images")
    evaluate_cmd.set_defaults(func=_evaluate)

    download = commands.add_parser("download", help="fetch a dataset ahead of training (checksums verified)")
    download.add_argument("dataset", choices=tuple(DATASETS))
    download.add_argument("--data-dir", help="where to put it (default: $CAPSNET_DATA, else ~/.cache/capsnet)")
    download.set_defaults(func=_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``capsnet`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except _USER_ERRORS as exc:
        print(f"capsnet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C: nothing was saved
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0
