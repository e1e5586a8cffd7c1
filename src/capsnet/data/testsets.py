"""Test splits as a run evaluates them: MultiMNIST pairs, digits on a larger canvas, an extra affine test set."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from torch import Tensor

from .._checks import check_choice
from .affnist import load_affnist_test
from .registry import load_split
from .synthetic import AFFNIST_SIZE, affnist_synthetic, multimnist_test_set, place_on_canvas

__all__ = ["TestSet", "EXTRA_TEST_SETS", "base_dataset", "check_canvas_holds", "check_extra_test", "load_test_set"]

EXTRA_TEST_SETS = ("affnist-synthetic", "affnist")  # MNIST test digits under affine maps, 40x40


class TestSet(NamedTuple):
    """A test split as a run evaluates it (see :func:`load_test_set`)."""

    images: Tensor  # uint8 (n, C, H, W), as the model sees them
    labels: Tensor  # (n,), or (n, 2) for MultiMNIST
    classes: list[str]
    extra_images: Tensor | None  # the --extra-test set, or None
    extra_labels: Tensor | None  # its labels


def base_dataset(name: str) -> str:
    """The file dataset a training dataset is made from: MultiMNIST is built from MNIST."""
    return "mnist" if name == "multimnist" else name


def check_extra_test(name: str | None, dataset: str, canvas: int | None) -> None:
    """Raise ``ValueError`` unless the extra test set ``name`` (or ``None``) fits a run on ``dataset`` with
    ``canvas``: both sets hold MNIST digits on 40x40."""
    if name is None:
        return
    check_choice(name, "--extra-test", EXTRA_TEST_SETS)
    if canvas != AFFNIST_SIZE:
        raise ValueError(f"--extra-test {name} has {AFFNIST_SIZE}x{AFFNIST_SIZE} images: it needs --canvas {AFFNIST_SIZE}")
    if dataset != "mnist":
        raise ValueError(f"--extra-test {name} holds MNIST digits: it needs --dataset mnist")


def check_canvas_holds(canvas: int, images: Tensor, dataset: str) -> None:
    """Raise a ``ValueError`` naming ``--canvas`` unless ``canvas`` holds ``dataset``'s ``(n, C, H, W)`` images."""
    height, width = images.shape[-2:]
    if canvas < max(height, width):
        raise ValueError(f"--canvas {canvas} must hold the {height}x{width} images of {dataset}")


def load_test_set(dataset: str, data_dir: str | Path | None, *, canvas: int | None = None, limit: int | None = None,
                  extra_test: str | None = None, progress: bool = False) -> TestSet:
    """The test split as a run with these settings evaluates it: on its canvas, MultiMNIST pairs, extra set.

    ``extra_test``: ``"affnist-synthetic"`` (drawn from the MNIST test digits) or ``"affnist"`` (the real
    set, read from ``data_dir``); ``limit`` cuts it too.
    """
    check_extra_test(extra_test, dataset, canvas)
    test = load_split(base_dataset(dataset), data_dir, train=False, progress=progress)
    images, labels = test.images, test.labels
    # The fixed sets are drawn from the whole split, then cut: --limit-test takes a part of the same set.
    extra_images = extra_labels = None
    if extra_test == "affnist":
        extra_images, extra_labels = load_affnist_test(data_dir, progress=progress)
    elif extra_test is not None:
        extra_images, extra_labels = affnist_synthetic(images, canvas=canvas), labels  # from the 28x28 digits
    if dataset == "multimnist":
        images, labels = multimnist_test_set(images, labels)
    images, labels = images[:limit], labels[:limit]
    if canvas is not None:
        check_canvas_holds(canvas, images, dataset)
        images = place_on_canvas(images, canvas, 0)
    if extra_images is not None:
        extra_images, extra_labels = extra_images[:limit], extra_labels[:limit]
    return TestSet(images, labels, list(test.classes), extra_images, extra_labels)
