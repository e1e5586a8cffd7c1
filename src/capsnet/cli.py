"""The ``capsnet`` command: ``train``, ``evaluate``, ``reproduce``, ``figures``, ``curves`` and ``download``.

Every flag of ``capsnet train`` comes from :class:`capsnet.config.TrainConfig`, its help text and default
included. Bad input ends with one ``capsnet: error: ...`` line and exit status 2, without a traceback
(``--traceback`` after the command's name shows it, for a bug report). A stop signal during training saves a
checkpoint and exits with 128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP (under
``torchrun`` its workers do; torchrun itself exits with a status of its own).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shlex
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import torch
from torch import Tensor

from . import __version__
from .config import (
    DEVICES, EXTRA_TEST_SETS, PRECISIONS, TrainConfig, check_positive_flag, flag_name, import_plugins,
)
from .experiments import EXPERIMENTS, results_markdown, run_experiment
from .data import DATASETS, DataError, download_dataset, list_datasets
from ._registration import registration_hint
from .data.affnist import download_affnist
from . import figures
from .models import CapsNet
from .training import (
    CheckpointError, Trainer, TrainingError, TrainingInterrupted, checkpoint_file, config_from_file, evaluate,
    load_checkpoint, read_metrics, resolve_device, resume_config,
)
from .training.checkpoint import build_model
from .training.distributed import shutdown_distributed
from .data.testsets import TestSet, check_extra_test, load_test_set
from .training.precision import resolve_precision

_CONFIG_FIELDS = {f.name: f for f in fields(TrainConfig)}
# The settings of `capsnet reproduce` shared by all rows; the rows set model, routing and reconstruction.
_REPRODUCE_SETTINGS = ("data_dir", "epochs", "time_limit", "save_every", "stop_at_error", "extra_test", "batch_size",
                       "lr_decay_steps", "lr_warmup_steps", "seed", "device", "precision", "compile", "channels_last",
                       "limit_train", "limit_test", "progress")
# Where an experiment sets a setting for its rows, the flag's help says so.
_REPRODUCE_HELP = {
    "time_limit": "stop each row after the first epoch that ends past this many minutes of its training and testing "
                  "(a limit per row, not for the whole command: with several rows, give --rows one at a time to "
                  "budget them); run the command again to continue; 0: none",
    "extra_test": "affnist only: the 40x40 test set reported besides 40x40 MNIST: affnist-synthetic (the default; "
                  "drawn from MNIST's test digits) or affnist (the real set; needs scipy)",
    "stop_at_error": "early stopping: stop each row at the first epoch end whose test error is at or below this many "
                     "percent; 0: off (default: 0.78 for affnist, as the paper's 99.22 percent accuracy; off for the "
                     "others)",
}

# OSError: unreadable or unwritable files and full disks are the user's to fix, not a bug to trace back.
_USER_ERRORS = (ValueError, DataError, CheckpointError, TrainingError, OSError, ImportError)


def _config_help(name: str) -> str:
    """The help text of a TrainConfig setting, with its default."""
    f = _CONFIG_FIELDS[name]
    default = f.metadata.get("cli_default", f.default)  # the command line's own, where it has one
    return f.metadata["help"] + ("" if default in (None, MISSING) else f" (default: {default})")


def _add_config_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                      help_texts: dict[str, str] | None = None) -> None:
    """A flag for each TrainConfig setting (``only`` these), with its help text unless ``help_texts`` has one."""
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flag = flag_name(f.name)
        kinds = (hints[f.name], *typing.get_args(hints[f.name]))  # X | None -> (X | None, X, NoneType)
        help_text = (help_texts or {}).get(f.name) or _config_help(f.name)
        # A flag not given stays None, so that a resumed run's own settings and an experiment's defaults apply.
        if bool in kinds:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            base = next(t for t in (int, float, str) if t in kinds)
            parser.add_argument(flag, type=base, choices=f.metadata.get("choices"), metavar=f.metadata.get("metavar"),
                                help=help_text)


def _terminal_progress() -> dict[str, bool]:
    """Progress bars by default only on a terminal: in a log file (nohup, a cluster job) each update is a line."""
    return {"progress": sys.stderr.isatty()}


def _train(args: argparse.Namespace) -> None:
    given = {key: value for key, value in vars(args).items() if value is not None and key != "config"}
    if args.resume and args.config:
        raise ValueError("--config starts a new run; --resume reads the settings of the run in --output-dir")
    if args.resume and args.init_from:
        raise ValueError("--init-from starts a new run from a checkpoint's weights; --resume continues the run in "
                         "--output-dir from its last.pt")
    resuming = args.resume and args.output_dir  # else TrainConfig says what is missing
    if resuming:
        config = resume_config(args.output_dir, **{**_terminal_progress(), **given})
    elif args.config:  # a file written by hand may set progress itself
        config = config_from_file(args.config, defaults=_terminal_progress(), **given)
    else:
        config = TrainConfig.from_dict({**_terminal_progress(), **given})
    try:
        _run_training(config)
    finally:
        shutdown_distributed()


def _run_training(config: TrainConfig) -> None:
    trainer = Trainer(config)
    say = print if trainer.distributed.is_main else (lambda *args, **kwargs: None)  # one voice under torchrun
    settings = trainer.settings()
    processes = f" x {settings['world_size']} processes" if settings["world_size"] > 1 else ""
    compiled = "" if settings["compile"] == "off" else f", compiled ({settings['compile']}; the first steps compile)"
    say(f"training {config.model} ({trainer.parameter_count:,} parameters) on {config.dataset} "
        f"({len(trainer.train_labels)} images) on {settings['device']}{processes}, precision {settings['precision']}"
        f"{compiled}; run folder {trainer.run_dir}")
    start = _where_it_starts(trainer)
    if start:
        say(start)
    try:
        history = trainer.fit()
    except TrainingInterrupted as stop:
        say(f"\n{stop}; continue with --resume --output-dir {_quoted(trainer.run_dir)}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None  # as a shell reports a process that the signal ended
    if not history:
        done = (f"reached --stop-at-error {config.stop_at_error}%" if trainer.reached_target
                else f"has already trained {_epochs(trainer.progress.epoch)}; raise --epochs")
        say(f"nothing to do: {trainer.run_dir} {done}")
    else:
        epochs = _epochs(trainer.progress.epoch)
        say(f"done: test error {history[-1]['test_error']:.2%} after {epochs}; "
            f"best {trainer.progress.best_error:.2%}; checkpoints in {trainer.run_dir}")
        if trainer.progress.epoch < config.epochs:
            say(f"stopped early: test error at or below --stop-at-error {config.stop_at_error}%"
                if trainer.reached_target else
                f"stopped by --time-limit after epoch {trainer.progress.epoch} of {config.epochs}; continue with "
                f"--resume --output-dir {_quoted(trainer.run_dir)}")


def _quoted(path: str | Path) -> str:
    """``path`` as a shell word, so that a hint with it can be copied as it is."""
    return shlex.quote(str(path))


def _where_it_starts(trainer: Trainer) -> str | None:
    """What a run continues or starts from, when it is not from scratch."""
    progress, source = trainer.progress, trainer.initial_weights
    if progress.epoch + progress.batch:
        return f"resuming after {_epochs_and_batches(progress.epoch, progress.batch)}"
    if source:
        saved = ("" if source["epoch"] is None
                 else f" (saved after {_epochs_and_batches(source['epoch'], source['batch'])})")
        return f"starting from the weights of {trainer.config.init_from}{saved}"
    return None


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def _epochs_and_batches(epochs: int, batches: int) -> str:
    return f"{batches} batch{'' if batches == 1 else 'es'} of epoch {epochs + 1}" if batches else f"epoch {epochs}"


def _evaluate(args: argparse.Namespace) -> None:
    check_positive_flag("--batch-size", args.batch_size)
    args.limit_test = _test_limit(args.limit_test)
    checkpoint, model, _ = _load_trained(args.checkpoint, args.device, args.plugins)
    config = checkpoint["config"]
    extra_test = None if args.extra_test == "none" else args.extra_test or config.get("extra_test")
    test = _test_set(checkpoint, args.data_dir, args.limit_test, extra_test)
    options = dict(batch_size=args.batch_size, num_classes=len(checkpoint["classes"]),
                   precision=resolve_precision(args.precision))
    result = evaluate(model, test.images, test.labels, progress=sys.stderr.isatty(), **options)  # batches to the device
    print(f"{args.checkpoint}: test error {result['error']:.2%} on {result['examples']} {config['dataset']} test images "
          f"(saved after {_epochs_and_batches(checkpoint['progress']['epoch'], checkpoint['progress']['batch'])})")
    if test.extra_images is not None:
        extra = evaluate(model, test.extra_images, test.extra_labels, **options)
        print(f"  {extra_test}: error {extra['error']:.2%} on {extra['examples']} images")
    print(f"  accuracy per class ({config['dataset']} test set):")
    for name, accuracy in zip(checkpoint["classes"], result["per_class_accuracy"]):
        print(f"    {name:>12}: {'no test images' if math.isnan(accuracy) else f'{accuracy:.2%}'}")


def _reproduce(args: argparse.Namespace) -> None:
    given = {key: value for key, value in vars(args).items() if key in _REPRODUCE_SETTINGS and value is not None}
    settings = {**_terminal_progress(), **given}
    try:
        results = run_experiment(args.experiment, args.runs_dir, rows=args.rows, tiny=args.tiny, **settings)
    except TrainingInterrupted as stop:
        print(f"\n{stop}; run the same command again to continue", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    finally:
        shutdown_distributed()
    if results:  # rank 0 only under torchrun
        print(results_markdown(EXPERIMENTS[args.experiment], results))
        print(f"written to {Path(args.runs_dir) / args.experiment / 'results.md'}")


def _load_trained(path: Path, device_name: str, plugins: str | None) -> tuple[dict, torch.nn.Module, torch.device]:
    """A checkpoint written by ``capsnet train`` and its model, weights loaded, in eval mode."""
    checkpoint = load_checkpoint(path)
    import_plugins(plugins)
    # Unlike --resume, which imports the plugins of the run's own config.json, a checkpoint names modules that
    # are imported only when asked: checkpoints are read with weights_only, so that loading one runs no code.
    device = resolve_device(device_name)
    model = build_model(checkpoint, checkpoint_file(path), command_line=True).to(device)
    return checkpoint, model, device


def _test_split(checkpoint: dict, data_dir: str | None, limit: int | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """The test images (uint8) and labels as the checkpoint's run saw them; ``data_dir`` overrides the training one."""
    test = _test_set(checkpoint, data_dir, limit)
    return test.images.to(device), test.labels.to(device)


def _test_set(checkpoint: dict, data_dir: str | None, limit: int | None, extra_test: str | None = None) -> TestSet:
    config = checkpoint["config"]
    if config["dataset"] not in list_datasets():
        hint = registration_hint(config.get("plugins"), checkpoint.get("dataset_module") or "", command_line=True)
        raise ValueError(f"this checkpoint was trained on the dataset {config['dataset']!r}, which is not registered; "
                         f"{hint}")
    try:
        check_extra_test(extra_test, config["dataset"], config.get("canvas"))
    except ValueError as exc:  # says what the training needed: evaluate has no --canvas or --dataset to give
        canvas = f"--canvas {config['canvas']}" if config.get("canvas") else "no --canvas"
        raise ValueError(f"{exc} in training; this checkpoint was trained with --dataset {config['dataset']} and "
                         f"{canvas}") from None
    recorded = config["data_dir"]
    if data_dir is None and recorded is not None and not Path(recorded).is_dir():  # trained on another machine
        raise ValueError(f"the run was trained with the data in {recorded}, which is not on this machine: pass "
                         f"--data-dir with a folder that holds {config['dataset']} (or one to download it into)")
    return load_test_set(config["dataset"], data_dir or recorded, canvas=config.get("canvas"), limit=limit,
                         extra_test=extra_test, progress=sys.stderr.isatty())  # a download, if needed, shows on a terminal


def _test_limit(limit: int | None) -> int | None:
    """``--limit-test`` of evaluate and figures: a positive number of images, or 0 or nothing for all, as in train."""
    if limit is not None and limit < 0:
        raise ValueError(f"--limit-test must be a positive integer (0: all), got {limit}")
    return limit or None


def _figures(args: argparse.Namespace) -> None:
    figures.require_matplotlib()  # before the model and the test set are loaded for nothing
    check_positive_flag("--examples", args.examples)
    args.limit_test = _test_limit(args.limit_test)
    checkpoint, model, device = _load_trained(args.checkpoint, args.device, args.plugins)
    if not isinstance(model, CapsNet):
        raise ValueError(f"{args.checkpoint} holds a {checkpoint['model_name']}, not a CapsNet: no capsules to draw")
    images, labels = _test_split(checkpoint, args.data_dir, args.limit_test, device)
    images = images.float() / 255
    if not 0 <= args.index < len(labels):
        raise ValueError(f"--index must be in [0, {len(labels)}), got {args.index}")
    if args.capsule is not None and not 0 <= args.capsule < len(checkpoint["classes"]):
        raise ValueError(f"--capsule must be a class index in [0, {len(checkpoint['classes'])}), got {args.capsule}")
    out = Path(args.out or Path(args.checkpoint).parent / "figures")
    out.mkdir(parents=True, exist_ok=True)
    classes, example = checkpoint["classes"], images[args.index]
    written = [figures.plot_coupling(model, example, out / "routing_coupling.png", classes=classes)]
    if model.decoder is not None:
        written += [
            figures.plot_segmentation(model, images, labels, out / "fig5_segmentation.png", classes=classes,
                                      count=args.examples)
            if labels.dim() == 2 else
            figures.plot_reconstructions(model, images, labels, out / "fig3_reconstructions.png", classes=classes,
                                         count=args.examples),
            figures.plot_perturbations(model, example, out / "fig4_perturbations.png", classes=classes,
                                       capsule=args.capsule),
        ]
    else:
        print("this model has no decoder (trained without reconstruction): Figures 3, 4 and 5 need one",
              file=sys.stderr)
    run_dir = Path(args.checkpoint).parent
    epochs = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    if epochs:  # none finished yet when the checkpoint was saved by Ctrl-C in the first epoch
        curves = _error_curves(run_dir, epochs, run_dir.resolve().name)  # resolved: "." has no name
        progress = checkpoint.get("progress", {})
        at_epoch_end = progress.get("batch") == 0  # a save within an epoch holds weights between two points
        written.append(figures.plot_learning_curves(curves, out / "learning_curve.png",
                                                    checkpoint_epoch=progress.get("epoch") if at_epoch_end else None))
    for path in written:
        print(f"wrote {path}")


def _curves(args: argparse.Namespace) -> None:
    figures.require_matplotlib()
    if args.target is not None and not 0 < args.target < 100:
        raise ValueError(f"--target must be a test error in percent, above 0 and below 100, got {args.target}")
    labels = args.labels or [run.resolve().name for run in args.runs]  # resolved: "." has no name
    if len(labels) != len(args.runs):
        raise ValueError(f"--labels names {len(labels)} runs, but {len(args.runs)} run folders were given")
    repeated = [label for label, count in collections.Counter(labels).items() if count > 1]
    if repeated:
        raise ValueError(f"several runs would share the label {repeated[0]!r}: name them with --labels")
    curves = {}
    for run, label in zip(args.runs, labels):
        epochs = read_metrics(run)
        if not epochs:
            raise ValueError(f"{run} has no finished epoch yet")
        curves.update(_error_curves(run, epochs, label))
    target = None if args.target is None else args.target / 100
    args.out.parent.mkdir(parents=True, exist_ok=True)
    path = figures.plot_learning_curves(curves, args.out, target=target)
    print(f"wrote {path}: {', '.join(curves)}")


def _error_curves(run_dir: Path, epochs: list[dict[str, typing.Any]], label: str) -> dict[str, list[float]]:
    """The test error after every epoch of a run (its ``read_metrics``), and the extra test set's if it has one;
    the labels say so when ``--limit-test`` cut the test sets short."""
    config = run_dir / "config.json"
    limit = json.loads(config.read_text()).get("limit_test") if config.is_file() else None
    if limit is not None and epochs[-1].get("test_examples") == limit:  # else the limit was above the set's size
        label = f"{label}, first {limit} test images"
    names = dict.fromkeys(key for epoch in epochs for key in epoch if key.endswith("_error"))
    return {label if name == "test_error" else f"{label} ({name.removesuffix('_error')})":
            [epoch[name] for epoch in epochs if name in epoch] for name in names}


def _download(args: argparse.Namespace) -> None:
    if args.dataset == "affnist":
        folder = download_affnist(args.data_dir).parent
    else:
        folder = download_dataset(args.dataset, args.data_dir)
    print(f"{args.dataset} is ready in {folder}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capsnet", description="Capsule networks with dynamic routing (Sabour et al. 2017).")
    parser.add_argument("--version", action="version", version=f"capsnet {__version__} (torch {torch.__version__})")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (defaults: the paper's MNIST CapsNet and recipe)")
    train.add_argument("--config", metavar="FILE", help="start from the settings of a JSON file: a run's config.json "
                       "(or its folder), to train again like it, or one written by hand; flags given override it")
    _add_config_flags(train)
    train.set_defaults(func=_train)

    evaluate_cmd = commands.add_parser("evaluate", help="test error and per-class accuracy of a checkpoint")
    evaluate_cmd.add_argument("checkpoint", type=checkpoint_file,
                              help="a last.pt or best.pt written by capsnet train, or its run folder (its best.pt)")
    evaluate_cmd.add_argument("--data-dir", help="folder with the dataset (default: the one used in training)")
    evaluate_cmd.add_argument("--device", default=TrainConfig.device, choices=DEVICES, help=_config_help("device"))
    evaluate_cmd.add_argument("--batch-size", type=int, default=TrainConfig.eval_batch_size,
                              help=_config_help("eval_batch_size"))
    evaluate_cmd.add_argument("--precision", default=TrainConfig.precision, choices=PRECISIONS,
                              help="autocast precision: auto (32), or bf16, which pays on GPUs from batch 512 "
                                   "(default: auto)")
    evaluate_cmd.add_argument("--limit-test", type=int, default=None, help="only the first N test images (0: all)")
    evaluate_cmd.add_argument("--extra-test", choices=(*EXTRA_TEST_SETS, "none"), default=None,
                              help="also report this 40x40 test set (default: the run's --extra-test; none: no "
                                   "other set than the run's own test set)")
    evaluate_cmd.set_defaults(func=_evaluate)

    reproduce = commands.add_parser(
        "reproduce", help="run one of the paper's experiments, or the routing comparison (resumable: run it "
                          "again to continue)",
        description="Train every row of an experiment in RUNS_DIR/EXPERIMENT/ROW and write a results table. "
                    "Running the same command again continues unfinished rows from their last checkpoint.",
        epilog="rows: " + "; ".join(f"{name}: {', '.join(row.name for row in experiment.rows)}"
                                    for name, experiment in EXPERIMENTS.items()),
    )
    reproduce.add_argument("experiment", choices=tuple(EXPERIMENTS), help="; ".join(
        f"{name}: {experiment.title}" for name, experiment in EXPERIMENTS.items()))
    reproduce.add_argument("--runs-dir", default="runs/reproduce",
                           help="where the rows' run folders go (default: runs/reproduce)")
    reproduce.add_argument("--rows", nargs="+", metavar="ROW",
                           help="train only these rows, in this order (run folder names; default: all)")
    reproduce.add_argument("--tiny", action="store_true",
                           help="narrow models instead of the paper's: a quick check of the pipeline, not a reproduction")
    _add_config_flags(reproduce, only=_REPRODUCE_SETTINGS, help_texts=_REPRODUCE_HELP)
    reproduce.set_defaults(func=_reproduce)

    figures_cmd = commands.add_parser(
        "figures", help="draw reconstructions (MultiMNIST: segmentation), pose perturbations, routing and the "
                        "learning curve (PNG)")
    figures_cmd.add_argument("checkpoint", type=checkpoint_file,
                             help="a last.pt or best.pt of a CapsNet, or its run folder (its best.pt)")
    figures_cmd.add_argument("--out", help="folder for the PNG files (default: figures/ beside the checkpoint)")
    figures_cmd.add_argument("--data-dir", help="folder with the dataset (default: the one used in training)")
    figures_cmd.add_argument("--device", default=TrainConfig.device, choices=DEVICES, help=_config_help("device"))
    figures_cmd.add_argument("--index", type=int, default=0,
                             help="test image for the perturbation and routing figures (default: 0)")
    figures_cmd.add_argument("--capsule", type=int, metavar="CLASS",
                             help="perturb the capsule of this class index in Fig. 4 (default: the longest)")
    figures_cmd.add_argument("--examples", type=int, default=8,
                             help="right and wrong examples in Fig. 3 (or 5), each (default: 8)")
    figures_cmd.add_argument("--limit-test", type=int, default=None,
                             help="look only at the first N test images (0: all)")
    figures_cmd.set_defaults(func=_figures)

    for command in (evaluate_cmd, figures_cmd):
        command.add_argument("--plugins", metavar="MODULES", help="Python modules to import first, comma-separated: "
                             "those that registered the checkpoint's model (its run's --plugins)")

    curves = commands.add_parser("curves", help="plot the test error after every epoch of run folders (PNG)")
    curves.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders (with metrics.jsonl)")
    curves.add_argument("--out", type=Path, default=Path("learning_curves.png"),
                        help="the PNG file to write (default: learning_curves.png)")
    curves.add_argument("--labels", nargs="+", metavar="LABEL", help="one name per run (default: the folder names)")
    curves.add_argument("--target", type=float, metavar="PERCENT", help="draw a target error, in percent, e.g. 0.4")
    curves.set_defaults(func=_curves)

    download = commands.add_parser(
        "download", help="fetch a dataset ahead of training (checksums verified; affnist: recorded at the first download)")
    download.add_argument("dataset", choices=(*DATASETS, "affnist"), help="affnist: the real affNIST test set")
    download.add_argument("--data-dir", help="where to put it (default: $CAPSNET_DATA, else $XDG_CACHE_HOME/capsnet "
                                             "or ~/.cache/capsnet)")
    download.set_defaults(func=_download)

    for command in commands.choices.values():
        command.add_argument("--traceback", action="store_true",
                             help="on an error, show Python's traceback instead of one line (for a bug report)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``capsnet`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # a reader gone away shows here, not at exit
    except BrokenPipeError:  # the reader of the output went away (`capsnet ... | head`)
        if args.traceback:
            raise
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        except (OSError, ValueError):  # not a file descriptor (a test's capture)
            pass
        print("capsnet: stopped: the program reading its output has closed it", file=sys.stderr)
        return 1
    except _USER_ERRORS as exc:
        if args.traceback:
            raise
        print(f"capsnet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C: nothing was saved
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0
