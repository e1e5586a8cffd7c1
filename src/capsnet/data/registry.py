"""Datasets by name, for the Trainer and the ``capsnet`` command: the built-in MNIST family and datasets of one's
own, registered with :func:`register_dataset`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_choice, check_run_name, values_outside
from .._registration import importing_module
from .datasets import DATASETS, get_dataset_class, resolve_data_root

__all__ = ["Split", "Loader", "register_dataset", "list_datasets", "load_split", "registering_module"]

Loader = Callable[[Path, bool], tuple[Tensor, Tensor, Sequence[str]]]  # load(root, train) -> (images, labels, classes)
_LOADERS: dict[str, Loader] = {}
_MODULES: dict[str, str] = {}  # the module whose import registered each name
_BUILT_IN = (*DATASETS, "multimnist")  # multimnist: pairs drawn from MNIST by the Trainer


class Split(NamedTuple):
    """One split of a dataset, whole, as the Trainer holds it."""

    images: Tensor  # uint8 (n, C, H, W), pixel values 0..255
    labels: Tensor  # int64 (n,), indices into classes
    classes: list[str]


def register_dataset(name: str, load: Loader) -> None:
    """Make ``load`` trainable by ``name``: ``capsnet.train(dataset=name, ...)``, or ``capsnet train --plugins
    MODULE --dataset NAME`` with the call in ``MODULE``.

    ``load(root, train)`` gets the data root (the run's ``--data-dir``, else ``$CAPSNET_DATA``, else
    ``~/.cache/capsnet``, as a ``Path`` that need not exist) and whether the training split is wanted, and returns
    ``(images, labels, classes)``: uint8 images ``(n, C, H, W)`` of any channels and size (at least 17 x 17 for
    CapsNet's two 9x9 convolutions), integer labels ``(n,)`` and the class names, the same for both splits. It
    must return the same data at every call and in every process: a resumed run, ``capsnet evaluate`` and each
    process of a multi-GPU run call it again. The Trainer holds each split whole in memory, shifts the training
    images by up to ``--max-shift`` pixels (2 by default) and builds the model for their channels, size and
    classes. Unlike a model name, a built-in dataset's name cannot be taken: runs and checkpoints name their
    dataset, and MNIST must stay MNIST.

    Example::

        def tiny_rgb(root, train):
            generator = torch.Generator().manual_seed(0 if train else 1)  # the same images at every call
            images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8, generator=generator)
            return images, torch.randint(0, 10, (100,), generator=generator), [str(k) for k in range(10)]

        capsnet.register_dataset("tiny-rgb", tiny_rgb)
        capsnet.train(dataset="tiny-rgb", model="capsnet-tiny", epochs=1)
    """
    check_run_name(name, "dataset")
    if name in _BUILT_IN:
        raise ValueError(f"{name!r} is one of capsnet's own datasets; register yours under another name")
    if not callable(load):
        raise TypeError(f"register_dataset takes a function load(root, train), got {type(load).__name__}")
    if name in _LOADERS:
        warnings.warn(f"dataset {name!r} is registered twice; the later definition wins", stacklevel=2)
    _LOADERS[name] = load
    _MODULES[name] = importing_module()


def list_datasets() -> list[str]:
    """The names ``--dataset`` takes, capsnet's own and those registered by :func:`register_dataset`, sorted."""
    return sorted((*_BUILT_IN, *_LOADERS))


def registering_module(name: str) -> str | None:
    """The ``__name__`` of the module that registered the dataset ``name`` (``"__main__"`` for a script), or
    ``None`` for one of capsnet's own."""
    check_choice(name, "dataset", list_datasets())
    return _MODULES.get(name) if name in _LOADERS else None


def load_split(name: str, root: str | Path | None, *, train: bool, progress: bool = False) -> Split:
    """The training or test split of the file dataset ``name`` (``mnist``, ``fashion-mnist`` or a registered one),
    read from ``root``; a registered one's is checked, so that a mistake is named here rather than deep in
    training."""
    check_choice(name, "dataset", (*DATASETS, *_LOADERS))
    if name in DATASETS:
        files = get_dataset_class(name)(root, train=train, progress=progress)
        return Split(files.images, files.labels, list(files.classes))
    what = f"dataset {name!r} ({'training' if train else 'test'} split)"
    loaded = _LOADERS[name](resolve_data_root(root), train)
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 3:
        raise ValueError(f"{what}: load(root, train) must return (images, labels, classes), got "
                         f"{type(loaded).__name__}{f' of {len(loaded)}' if isinstance(loaded, (tuple, list)) else ''}")
    return _checked(*loaded, what)


def _checked(images: Tensor, labels: Tensor, classes: Sequence[str], what: str) -> Split:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what}: images must be a uint8 tensor (n, C, H, W) of pixel values 0..255, got {got}")
    if not isinstance(labels, Tensor) or labels.shape != images.shape[:1] or labels.is_floating_point() \
            or labels.dtype == torch.bool:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{what}: labels must be an integer tensor (n,) for n = {len(images)} images, got {got}")
    if not len(images):
        raise ValueError(f"{what} has no images")
    try:  # as str: numpy's strings or integers would make the run's checkpoints unreadable (weights_only)
        names = [] if isinstance(classes, (str, bytes)) else [str(name) for name in classes]
    except TypeError:
        names = []
    if not names:
        raise ValueError(f"{what}: classes must be a list of class names, got {classes!r}")
    if outside := values_outside(labels, 0, len(names) - 1):
        raise ValueError(f"{what}: labels must be indices into its {len(names)} classes, got values from {outside[0]} "
                         f"to {outside[1]}")
    return Split(images, labels.long(), names)
