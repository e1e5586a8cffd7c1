"""What a training step minimizes for each kind of model: capsule losses for a CapsNet, cross-entropy otherwise."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from ..losses import CapsuleLoss

__all__ = ["Objective", "CapsuleObjective", "CrossEntropyObjective", "class_scores"]

Model = Callable[..., object]


def class_scores(output: object) -> Tensor:
    """Per-class scores ``(b, k)`` whose argmax is the prediction: a CapsNet's capsule lengths, or logits."""
    scores = output.lengths if hasattr(output, "lengths") else output
    if not isinstance(scores, Tensor):
        raise TypeError(f"the model returned a {type(output).__name__}; predictions are read from a (b, k) tensor of "
                        "scores or from an output's lengths attribute (a CapsNetOutput, or a NamedTuple with a "
                        "lengths field)")
    return scores


class Objective:
    """Runs a model on a batch and returns its named loss terms (``"loss"`` is the one minimized) and scores.

    ``targets`` are class indices ``(b,)``, or ``(b, n)`` for n objects per image; ``originals`` are what a
    decoder should reconstruct (the inputs, or each object alone: ``(b, n, C, H, W)``).
    """

    terms: tuple[str, ...] = ("loss",)

    def __call__(
        self, model: Model, inputs: Tensor, targets: Tensor, originals: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        raise NotImplementedError


class CapsuleObjective(Objective):
    """Margin loss plus weighted reconstruction loss; the decoder sees the true class's capsule (paper, 4.1)."""

    terms = ("loss", "margin", "reconstruction")

    def __init__(self, loss: CapsuleLoss) -> None:
        self.loss = loss

    def __call__(
        self, model: Model, inputs: Tensor, targets: Tensor, originals: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        output = model(inputs, targets)
        total, margin, reconstruction = self.loss.terms(output, originals, targets)
        return {"loss": total, "margin": margin, "reconstruction": reconstruction}, output.lengths


class CrossEntropyObjective(Objective):
    """Softmax cross-entropy on the logits (the paper's baseline CNN), computed in float32."""

    def __call__(
        self, model: Model, inputs: Tensor, targets: Tensor, originals: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        logits = model(inputs)
        if not isinstance(logits, Tensor):  # e.g. capsules from a builder registered without capsule_model=True
            raise TypeError(
                f"a model trained with cross-entropy must return logits (b, k), got {type(logits).__name__}; a "
                f"model that returns capsules is registered with register_model(..., capsule_model=True)"
            )
        return {"loss": F.cross_entropy(logits.float(), targets)}, logits
