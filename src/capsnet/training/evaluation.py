"""Test error and per-class accuracy of a model on a labelled test set (the trainer's test pass, and
``capsnet evaluate``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._checks import check_class_indices, check_int
from ..config import TrainConfig
from ..functional import hits
from .objectives import class_scores
from .precision import autocast, resolve_precision

__all__ = ["evaluate", "class_tallies", "error_report"]


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = TrainConfig.eval_batch_size,
    num_classes: int | None = None,
    precision: str = "32",
    transform: Callable[[Tensor], Tensor] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Test error and per-class accuracy of ``model`` (eval mode) on uint8 ``images``, in batches moved to the
    model's device (the test set may stay on the CPU).

    Returns ``{"error", "examples", "per_class_accuracy"}``; a class without test images has accuracy ``nan``.
    The prediction is the longest capsule of a CapsNet, or the largest logit of a model returning logits.
    ``num_classes`` defaults to the model's ``num_classes`` attribute (``CapsNet`` and ``BaselineCNN`` have one).

    ``precision`` is one of ``"32"``, ``"bf16"``, ``"16-mixed"`` (autocast while predicting) or ``"auto"`` (``"32"``).
    The model sees each batch as intensities in [0, 1] (``images / 255``), or as ``transform`` makes them from those
    for a model trained on other inputs, e.g. ``transform=lambda x: (x - 0.1307) / 0.3081`` (MNIST's mean and std).

    Shape:
        ``images``: ``(n, C, H, W)`` uint8; ``labels``: ``(n,)``, or ``(n, objects)`` (MultiMNIST).
    """
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
        if not isinstance(num_classes, int):
            raise ValueError(f"{type(model).__name__} has no num_classes attribute: pass num_classes=")
    _check_evaluation_set(images, labels, num_classes)
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be a function of a batch of images, got {type(transform).__name__}")
    tallies = class_tallies(model, images, labels, batch_size=check_int(batch_size, "batch_size", 1),
                            num_classes=num_classes, precision=resolve_precision(precision), transform=transform,
                            progress=progress)
    return error_report(tallies)


def _check_evaluation_set(images: Tensor, labels: Tensor, num_classes: int) -> None:
    """Refuse what :func:`evaluate` would miscount or fail on deep inside, naming the argument."""
    if images.dtype != torch.uint8:
        # Float images may already be in [0, 1]; dividing them by 255 again would give a wrong error silently.
        raise TypeError(f"evaluate takes uint8 images (0-255), got {images.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    if labels.dim() not in (1, 2) or len(labels) != len(images) or len(labels) == 0:
        raise ValueError(f"expected labels (n,) or (n, objects) for n = {len(images)} images, n > 0; "
                         f"got labels of shape {tuple(labels.shape)}")
    check_class_indices(labels, "labels", num_classes)


@torch.no_grad()
def class_tallies(
    model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int, num_classes: int, precision: str,
    progress: bool, transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``(2, num_classes + 1)`` counts on the model's device: row 0 right, row 1 all; columns: per class, then
    per example. With ``(n, objects)`` labels (MultiMNIST) an example counts under each of its classes."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), labels.device)
    labels = labels.to(device).long()  # index_add_ and bincount take int64 indices
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)  # float64 models too
    correct = torch.zeros(num_classes + 1, dtype=torch.long, device=device)
    counts = torch.bincount(labels.flatten(), minlength=num_classes)
    starts = range(0, len(labels), batch_size)
    for start in tqdm(starts, desc="evaluating", unit="batch", disable=not progress, leave=False, dynamic_ncols=True):
        batch_labels = labels[start : start + batch_size]
        batch = images[start : start + batch_size].to(device, dtype).div_(255)  # (b, C, H, W) in [0, 1]
        with autocast(precision, device):
            scores = class_scores(model(transform(batch) if transform is not None else batch))
        right = hits(scores, batch_labels)  # (b,)
        # index_add_ rather than bincount(labels[right]): a boolean mask would make the host wait for the GPU.
        right_per_label = right.view(-1, *[1] * (batch_labels.dim() - 1)).expand_as(batch_labels)
        correct.index_add_(0, batch_labels.flatten(), right_per_label.flatten().long())
        correct[num_classes] += right.sum()
    model.train(was_training)
    return torch.stack([correct, torch.cat([counts, counts.new_tensor([len(labels)])])])


def error_report(tallies: Tensor) -> dict[str, Any]:
    """``{"error", "examples", "per_class_accuracy"}`` from the counts of :func:`class_tallies`."""
    (*correct, right), (*counts, examples) = tallies.tolist()
    per_class = [c / n if n else math.nan for c, n in zip(correct, counts)]  # nan: no test image of that class
    return {"error": 1 - right / max(examples, 1), "examples": examples, "per_class_accuracy": per_class}
