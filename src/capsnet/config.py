"""Training configuration: the one place that holds the paper's recipe as defaults.

The command line (``capsnet train --help``) and the Python API (``capsnet.train(...)``) are both
built from :class:`TrainConfig`, so a default changes here and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
import importlib
import inspect
import math
import numbers
import operator
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ._checks import check_choice
from .data import DATASETS, list_datasets
from .data.synthetic import MULTIMNIST_SHIFT
from .data.transforms import MAX_SHIFT
from .data.testsets import EXTRA_TEST_SETS, check_extra_test
from .layers import WEIGHT_INIT_STD
from .losses import RECONSTRUCTION_WEIGHT
from .models import CapsNet, is_capsule_model, list_models
from .models.registry import registered_default

__all__ = [
    "TrainConfig", "DEVICES", "PRECISIONS", "EXTRA_TEST_SETS", "check_positive_flag", "flag_name", "import_plugins",
    "model_default", "MODEL_OWN_SETTINGS",
    "reaches_error",
]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "32", "bf16", "16-mixed")
LR_DECAY_STEPS = 2000  # the official code's decay period
# Section 6: MultiMNIST decays "10x" slower, "because the training dataset is larger" (60M pairs).
MULTIMNIST_LR_DECAY_STEPS = 10 * LR_DECAY_STEPS


def dataset_defaults(dataset: str) -> dict[str, int]:
    """The settings whose defaults depend on the dataset: the learning-rate decay period and the shift."""
    multi = dataset == "multimnist"
    return {"lr_decay_steps": MULTIMNIST_LR_DECAY_STEPS if multi else LR_DECAY_STEPS,
            "max_shift": MULTIMNIST_SHIFT if multi else MAX_SHIFT}


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):  # "false" and 0 would pass bool(), and "false" is true
        raise TypeError
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, bool):  # True is an int to Python, but not a count
        raise TypeError
    return operator.index(value)  # Python, NumPy and torch integers; no floats: 1.5 epochs would be 2


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # NumPy floats are Real; strings are not
        raise TypeError
    return float(value)


def _as_str(value: Any) -> str:
    if not isinstance(value, str):  # os.fspath would take a Path as a model's name
        raise TypeError
    return value


def _as_path(value: Any) -> str:
    return _as_str(os.fspath(value))  # stored as a string, for config.json; not bytes


# Per annotation of a setting: the conversion that accepts a value (else TypeError) and how errors call it.
_SETTING_TYPES: dict[str, tuple[Callable[[Any], Any], str]] = {
    "bool": (_as_bool, "true or false"), "int": (_as_int, "an integer"), "float": (_as_float, "a number"),
    "str": (_as_str, "a string"), "Path": (_as_path, "a path (a string or pathlib.Path)"),
}
# Settings that 0 unsets (None): no limit, no canvas, no periodic save, no time limit, no early stopping.
_ZERO_UNSETS = ("limit_train", "limit_test", "canvas", "save_every", "time_limit", "stop_at_error")
# Capsule options that every CapsNet is built with: unset (None), the model config's own value, else CapsNet's.
MODEL_OWN_SETTINGS = ("routing_iterations", "reconstruction")
# Settings whose default depends on others: TrainConfig.replace() derives them anew when those change.
_DERIVED_FROM = {"lr_decay_steps": {"dataset"}, "max_shift": {"dataset"}, "output_dir": {"model", "dataset"}}


def flag_name(setting: str) -> str:
    """The command-line flag of a TrainConfig setting: ``max_shift`` -> ``--max-shift``."""
    return "--" + setting.replace("_", "-")


def check_positive_flag(flag: str, value: int | None) -> None:
    """Raise a ``ValueError`` naming ``flag`` unless ``value`` is ``None`` (unset) or a positive number."""
    if value is not None and value <= 0:
        raise ValueError(f"{flag} must be a positive integer, got {value}")


def model_default(model: str, name: str) -> Any:
    """``routing_iterations`` or ``reconstruction`` of the model ``model`` built without them: the value it was
    registered with, else its builder's default, else :class:`~capsnet.CapsNet`'s (the paper's; also for a model
    not registered in this process)."""
    fallback = inspect.signature(CapsNet).parameters[name].default
    return registered_default(model, name, fallback) if model in list_models() else fallback


def reaches_error(error: float, target_percent: float | None) -> bool:
    """Whether a test ``error`` (a fraction) is at or below ``target_percent`` (``--stop-at-error``; None: never)."""
    # 1e-9: 35 errors in 10,000 are 0.35000000000000003 percent in floating point
    return target_percent is not None and error * 100 <= target_percent + 1e-9


def import_plugins(modules: str | None) -> None:
    """Import the comma-separated Python ``modules`` (``--plugins``), so that the models and routings they register
    can be named. A module whose .py file is in the current folder counts (after the installed ones)."""
    if not isinstance(modules, str | None):
        raise TypeError(f"plugins must be a string of comma-separated module names, got {type(modules).__name__}")
    names = [name for name in (module.strip() for module in (modules or "").split(",")) if name]
    if names and os.getcwd() not in sys.path:  # the capsnet script's sys.path starts at its own folder, not here
        sys.path.append(os.getcwd())
    importlib.invalidate_caches()  # a module written since the last import in this process is found too
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if name == exc.name or name.startswith(f"{exc.name}."):
                hint = f"name the module ({name.removesuffix('.py')}), not its file" if name.endswith(".py") else (
                    "give an installed module or one whose .py file is in the current folder (--resume and --config "
                    "import a run's --plugins again: run them in the folder it was trained in, or put the module's "
                    "folder on PYTHONPATH)")
                raise ValueError(f"--plugins: no module named {name!r} here ({os.getcwd()}): {hint}") from None
            raise ValueError(f"--plugins: importing {name!r} failed: {exc}") from exc
        except Exception as exc:  # the plugin's own error: say whose, and keep it as the cause for --traceback
            raise ValueError(f"--plugins: importing {name!r} failed: {type(exc).__name__}: {exc}") from exc


def _absolute(path: str | Path) -> str:
    return os.path.abspath(os.path.expanduser(path))  # without resolving links, unlike Path.resolve


def _option(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults: the paper's MNIST recipe (its section 4; docs/training.md)."""

    dataset: str = _option(
        "mnist", "dataset to train on: mnist, fashion-mnist, multimnist (pairs of MNIST digits on 36x36, paper "
                 "section 6), or one of your own that --plugins registers (capsnet.register_dataset)",
        metavar="NAME"
    )
    data_dir: Path | str | None = _option(
        None, "folder with the dataset files (default: $CAPSNET_DATA, else $XDG_CACHE_HOME/capsnet or ~/.cache/capsnet)"
    )
    model: str = _option("capsnet-mnist", "registered model name (an unknown one lists them all); baseline-cnn is the paper's CNN")
    plugins: str | None = _option(
        None, "Python modules to import first, comma-separated: the models they register with capsnet.register_model "
              "(their own routings, layers, ...) can then be named by --model; recorded, so that --resume and "
              "--config import them again (as does every TrainConfig made with them); evaluate and figures take "
              "--plugins too", metavar="MODULES"
    )
    init_from: Path | str | None = _option(
        None, "start from the weights of this checkpoint (another run's last.pt or best.pt, or its folder: its "
              "best.pt; a model with the same layers): fine-tuning or a warm start; the optimizer, learning-rate "
              "schedule and epochs start afresh", metavar="CHECKPOINT"
    )
    epochs: int = _option(10, "training epochs (the official code's 300k steps are ~640 epochs)")
    time_limit: float | None = _option(
        None, "stop after the first epoch that ends past this many minutes of training and testing (start-up not "
              "counted; it may overrun by an epoch); continue with capsnet train --resume, or by rerunning capsnet "
              "reproduce; 0: none", metavar="MINUTES"
    )
    save_every: float | None = _option(
        None, "also save last.pt every this many minutes within an epoch, so that a run killed without warning "
              "(SIGKILL, a power cut) resumes from there; without it, last.pt is saved at epoch ends and on Ctrl-C, "
              "SIGTERM or SIGHUP; 0: off", metavar="MINUTES"
    )
    stop_at_error: float | None = _option(
        None, "early stopping: stop at the first epoch end whose test error is at or below this many percent; 0: "
              "off (the paper's affine-robustness models stopped at 99.22-99.23 percent accuracy, so capsnet "
              "reproduce affnist uses 0.78)", metavar="PERCENT"
    )
    batch_size: int = _option(128, "training batch size (paper: 128)")
    eval_batch_size: int = _option(500, "batch size for evaluation (no effect on results)")
    lr: float = _option(1e-3, "Adam learning rate (paper: 1e-3)")
    lr_decay: float = _option(0.96, "learning-rate decay factor per --lr-decay-steps steps (official code: 0.96)")
    lr_decay_steps: int | None = _option(
        None, f"steps per decay of the learning rate by the factor --lr-decay, applied smoothly after each "
              f"step (default: {LR_DECAY_STEPS}; {MULTIMNIST_LR_DECAY_STEPS} on multimnist, as the paper's section 6)"
    )
    lr_warmup_steps: int = _option(
        0, "raise the learning rate linearly over the first N steps (0: none, as the paper)", metavar="N"
    )
    routing_iterations: int | None = _option(
        None, "dynamic routing iterations (default: the model's; the paper's 3 for the built-in CapsNets)"
    )
    detach_intermediate: bool | None = _option(
        None, "stop gradients through u_hat in all but the last routing iteration (default: the model's, True)"
    )
    digit_bias: bool | None = _option(None, "learned digit-capsule biases starting at 0.1, as the official code "
                                            "(default: the model's, off)")
    weight_std: float | None = _option(
        None, f"std of the normal initialization of the digit capsules' W[i, j] (default: the model's, "
              f"{WEIGHT_INIT_STD})"
    )
    reconstruction: bool | None = _option(
        None, "train the reconstruction decoder (default: the model's; yes for the built-in CapsNets, as the paper)"
    )
    reconstruction_weight: float = _option(RECONSTRUCTION_WEIGHT, "weight of the reconstruction loss (paper: 0.0005)")
    halve_margin: bool = _option(False, "multiply the margin loss by 0.5, as the official code does")
    max_shift: int | None = _option(
        None, f"random shift augmentation in pixels, zero padded (default: {MAX_SHIFT}, as the paper; multimnist: "
              f"{MULTIMNIST_SHIFT} for each digit, the paper's section 6)"
    )
    canvas: int | None = _option(
        None, "centre the images on a black CANVAS x CANVAS background, train and test (affine robustness: 40, "
              "with --max-shift 6; 0: none)"
    )
    extra_test: str | None = _option(
        None, "also report the error on this 40x40 test set after every epoch (needs --canvas 40): affnist-synthetic "
              "(drawn from MNIST's test digits) or affnist (the real set; needs scipy); capsnet reproduce affnist "
              "uses affnist-synthetic; none: no extra test set",
        choices=(*EXTRA_TEST_SETS, "none"),
    )
    seed: int = _option(0, "random seed: model init, data order and augmentation")
    device: str = _option("auto", "auto (cuda if available), cpu or cuda", choices=DEVICES)
    precision: str = _option(
        "auto", "autocast precision; auto: 32 (fastest at batch 128 on CPU and on an H200); bf16 pays on GPUs from "
                "batch 512", choices=PRECISIONS
    )
    compile: bool | None = _option(
        None, "torch.compile the model and its losses (default: on a single CUDA GPU, with CUDA graphs; off on "
              "CPU and under DDP); falls back to eager with a warning where unsupported"
    )
    channels_last: bool | None = _option(None, "channels-last memory format for the convolutions (default: on CUDA only)")
    output_dir: Path | str | None = _option(
        None, "run folder for config.json, metrics.jsonl, last.pt, best.pt (default: runs/MODEL-DATASET-TIMESTAMP, "
              "with -2, -3, ... for runs started in the same second)"
    )
    limit_train: int | None = _option(None, "use only the first N training images (quick runs; 0: all)", metavar="N")
    limit_test: int | None = _option(None, "evaluate on only the first N test images (0: all)", metavar="N")
    resume: bool = _option(False, "continue the run in --output-dir from its last.pt")
    progress: bool = _option(True, "show progress bars", cli_default="when stderr is a terminal, so that logs stay clean")
    retain_memory: bool = _option(
        True, "CPU: keep freed memory for reuse, ~1.1-1.5x faster steps (process-wide: capsnet.runtime.retain_freed_memory)"
    )

    def __post_init__(self) -> None:
        self._normalize_types()
        # 0 (none for --extra-test) unsets a value, e.g. one that --config read from a quick run's config.json.
        for name in _ZERO_UNSETS:
            if getattr(self, name) == 0:
                setattr(self, name, None)  # what the run does, so config.json says it
        if self.extra_test == "none":
            self.extra_test = None
        self._derived = {name for name in _DERIVED_FROM if getattr(self, name) is None}
        self._check_choices()
        # Recorded absolute, so that --resume, --config, evaluate and figures find them from any folder; "" clears
        # a recorded --init-from.
        self.data_dir = _absolute(self.data_dir) if self.data_dir else None
        self.init_from = _absolute(self.init_from) if self.init_from else None
        if self.dataset == "multimnist":
            self._check_multimnist()
        for name, value in dataset_defaults(self.dataset).items():  # what the run does, so config.json says it
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.output_dir is None:
            if self.resume:
                raise ValueError("--resume needs the --output-dir of the run to continue")
            self.output_dir = f"runs/{self.model}-{self.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        self._check_ranges()

    def _normalize_types(self) -> None:
        """Refuse a value of the wrong type (from a JSON file or Python): ``"false"`` is true, ``1.5`` epochs are 2.
        NumPy and torch scalars become Python numbers and paths strings, so that ``config.json`` can hold them."""
        for setting in fields(self):
            value = getattr(self, setting.name)
            kind, optional = setting.type.partition(" | ")[0], setting.type.endswith(" | None")
            if value is None and optional:
                continue
            try:
                setattr(self, setting.name, _SETTING_TYPES[kind][0](value))
            except TypeError:
                raise ValueError(f"{flag_name(setting.name)} (the setting {setting.name!r}) must be "
                                 f"{_SETTING_TYPES[kind][1]}{' or null' if optional else ''}, got {value!r}") from None

    def _check_choices(self) -> None:
        check_choice(self.device, "--device", DEVICES)
        check_choice(self.precision, "--precision", PRECISIONS)
        import_plugins(self.plugins)  # they may register the dataset and the model
        if self.dataset not in list_datasets():
            raise ValueError(f"unknown value {self.dataset!r} for --dataset; valid values are "
                             f"{', '.join(map(repr, list_datasets()))} (a dataset of your own: "
                             "capsnet.register_dataset in a module passed as --plugins MODULE)")
        check_extra_test(self.extra_test, self.dataset, self.canvas)
        if self.model not in list_models():
            raise ValueError(f"unknown value {self.model!r} for --model; valid values are "
                             f"{', '.join(map(repr, list_models()))} (a model of your own: --plugins MODULE)")

    def _check_ranges(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "routing_iterations", "lr_decay_steps", "limit_train",
                     "limit_test", "canvas"):
            check_positive_flag(flag_name(name), getattr(self, name))
        if not math.isfinite(self.lr + self.lr_decay + self.reconstruction_weight):
            raise ValueError("--lr, --lr-decay and --reconstruction-weight must be finite numbers")
        if self.weight_std is not None and not self.weight_std > 0:
            raise ValueError(f"--weight-std must be a positive number, got {self.weight_std}")
        for name in ("time_limit", "save_every"):
            minutes = getattr(self, name)
            if minutes is not None and not minutes > 0:
                raise ValueError(f"{flag_name(name)} must be a positive number of minutes, got {minutes}")
        if self.stop_at_error is not None and not 0 < self.stop_at_error < 100:
            raise ValueError(f"--stop-at-error must be a test error in percent, from 0 (off) to below 100, got "
                             f"{self.stop_at_error}")
        if self.lr <= 0 or not 0 < self.lr_decay <= 1:
            raise ValueError(f"--lr must be > 0 and --lr-decay in (0, 1], got {self.lr} and {self.lr_decay}")
        if self.canvas is not None and self.canvas < 28 and self.dataset in DATASETS:  # others: checked on loading
            raise ValueError(f"--canvas must hold the 28x28 images, got {self.canvas}")
        for name in ("max_shift", "reconstruction_weight", "lr_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{flag_name(name)} must not be negative, got {getattr(self, name)}")

    def _check_multimnist(self) -> None:
        if self.canvas is not None or not is_capsule_model(self.model):
            raise ValueError("--dataset multimnist places its digits on a 36x36 canvas itself (no --canvas) and needs a "
                             "CapsNet model")
        if self.max_shift not in (None, MULTIMNIST_SHIFT):
            raise ValueError(f"--dataset multimnist shifts each digit by up to {MULTIMNIST_SHIFT} px (paper); "
                             f"--max-shift {self.max_shift} does not apply")

    def model_kwargs(self, num_classes: int, in_channels: int, image_size: tuple[int, int]) -> dict[str, Any]:
        """The overrides passed to ``create_model(self.model, ...)``: what a checkpoint must match."""
        shape = {"num_classes": num_classes, "in_channels": in_channels, "image_size": list(image_size)}
        if not is_capsule_model(self.model):
            return shape  # a plain classifier: the capsule options do not apply
        options = {"detach_intermediate": self.detach_intermediate, "digit_bias": self.digit_bias,
                   "weight_std": self.weight_std}
        return {
            **shape,
            **{name: self.model_setting(name) for name in MODEL_OWN_SETTINGS},  # resolved, as checkpoints have always recorded them
            **{key: value for key, value in options.items() if value is not None},  # None: the model config's own
        }

    def model_setting(self, name: str) -> Any:
        """The setting ``name``; for ``routing_iterations`` and ``reconstruction`` left unset, the value the model
        is built with (see :func:`model_default`)."""
        value = getattr(self, name)
        return model_default(self.model, name) if value is None and name in MODEL_OWN_SETTINGS else value

    def to_dict(self) -> dict[str, Any]:
        """Every setting by field name, as ``config.json`` stores them."""
        return asdict(self)

    @property
    def derived(self) -> frozenset[str]:
        """The settings this config derived from others, not given: the decay period and shift from ``dataset``,
        the run folder from ``model`` and ``dataset``. A run's ``config.json`` records them, so that ``--config``
        derives them anew for another dataset."""
        return frozenset(self._derived)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``. A setting this config derived from others (the decay period and shift of
        MultiMNIST from ``dataset``, the run folder's name from ``model`` and ``dataset``) is derived anew when
        one of those changes; settings given explicitly are kept. Unlike ``dataclasses.replace``, which keeps
        every derived value, and unlike a config read back with :meth:`from_dict`, whose values all count as
        given."""
        stale = {name for name in self._derived if _DERIVED_FROM[name] & changes.keys()}
        kept = {key: value for key, value in self.to_dict().items() if key not in stale}
        copy = type(self)(**{**kept, **changes})
        copy._derived |= self._derived - changes.keys()  # still derived, though kept: e.g. a default run folder
        return copy

    @classmethod
    def setting_names(cls) -> frozenset[str]:
        """The names of all settings (the fields; each is also a ``capsnet train`` flag)."""
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any], derived: Iterable[str] = ()) -> TrainConfig:
        """A config of the known settings in ``values``; other keys are ignored (a run saved by another version).
        The names in ``derived`` (a run's recorded :attr:`derived`) count as derived, though their values are kept."""
        known = cls.setting_names()
        config = cls(**{key: value for key, value in values.items() if key in known})
        config._derived |= set(derived) & _DERIVED_FROM.keys()
        return config
