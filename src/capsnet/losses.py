"""Margin loss, reconstruction loss and their weighted sum (paper, sections 3 and 4.1)."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_class_indices, values_are_cheap_to_read, values_outside
from .functional import _compute_dtype, _one_hot

__all__ = ["margin_loss", "reconstruction_loss", "CapsuleLoss", "CapsuleOutputLike", "LossTerms"]

M_POS = 0.9  # a present class must have |v_k| >= m+ (paper, eq. 4)
M_NEG = 0.1  # an absent class must have |v_k| <= m-
LAMBDA = 0.5  # down-weights absent classes so early learning does not shrink every capsule
RECONSTRUCTION_WEIGHT = 0.0005  # "so that it does not dominate the margin loss" (section 4.1)


def _multi_hot(targets: Tensor, lengths: Tensor) -> Tensor:
    """Targets in any of :func:`margin_loss`'s forms -> float multi-hot ``(b, k)``."""
    if lengths.dim() != 2:
        raise ValueError(f"expected capsule lengths of shape (b, k), got {tuple(lengths.shape)}")
    batch, classes = lengths.shape
    if targets.shape == (batch, classes):
        # (b, k) class indices (n = k objects) would be misread silently
        if not targets.is_floating_point() and values_are_cheap_to_read(targets) \
                and (outside := values_outside(targets, 0, 1)):
            raise ValueError(f"targets of shape (b, k) = ({batch}, {classes}) are read as multi-hot, 0 or 1, got "
                             f"values from {outside[0]} to {outside[1]}; pass k class indices per example as multi-hot")
        return targets.to(lengths.dtype)
    if targets.dim() in (1, 2) and targets.shape[0] == batch and not targets.is_floating_point() \
            and targets.dtype != torch.bool:
        indices = targets.unsqueeze(1) if targets.dim() == 1 else targets  # (b, n): the n classes of each example
        if values_are_cheap_to_read(indices):
            check_class_indices(indices, "targets", classes,
                                hint=f"a one-hot or multi-hot matrix needs one column per class, {classes}")
        return _one_hot(indices, classes).any(1).to(lengths.dtype)
    raise ValueError(
        f"expected targets as class indices of shape (b,) = ({batch},) or (b, n), or multi-hot of shape "
        f"(b, k) = ({batch}, {classes}), got {tuple(targets.shape)} ({targets.dtype})"
    )


def margin_loss(
    lengths: Tensor,
    targets: Tensor,
    *,
    m_pos: float = M_POS,
    m_neg: float = M_NEG,
    lambda_: float = LAMBDA,
    halve: bool = False,
) -> Tensor:
    """Margin loss ``sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2``, batch mean.

    Args:
        lengths: capsule lengths ``|v_k|``.
        targets: the class of each example, or the classes present when there are several (MultiMNIST):
            as ``n`` class indices per example or as a multi-hot matrix. A ``(b, k)`` tensor is read as
            multi-hot (integer ones must hold only 0 and 1). Indices outside the capsules and such (b, k)
            tensors raise a ``ValueError`` in eager mode on the CPU; reading the values elsewhere would cost a
            sync per step or break a compiled graph.
        m_pos, m_neg, lambda_: the paper's 0.9, 0.1 and 0.5.
        halve: multiply the loss by 0.5, as the official TensorFlow code does (which doubles the
            relative weight of the reconstruction term). Off by default: the paper's formula.

    Computed in float32 (or wider) whatever the dtype of ``lengths``, as :func:`reconstruction_loss`.

    Shape:
        ``lengths``: ``(b, k)``; ``targets``: ``(b,)`` or ``(b, n)`` integer, or ``(b, k)`` multi-hot -> scalar.

    Example:
        >>> margin_loss(torch.tensor([[0.95, 0.05], [0.5, 0.3]]), torch.tensor([0, 0]))
        tensor(0.0900)
    """
    lengths = lengths.to(_compute_dtype(lengths.dtype))  # a float16 sum over many classes loses digits
    present = _multi_hot(targets, lengths)
    per_class = present * F.relu(m_pos - lengths).square() + lambda_ * (1 - present) * F.relu(lengths - m_neg).square()
    loss = per_class.sum(dim=-1).mean()
    return 0.5 * loss if halve else loss


def reconstruction_loss(reconstructions: Tensor, images: Tensor) -> Tensor:
    """Sum of squared pixel errors per example (over all its reconstructions), mean over the batch (unweighted).

    Computed in float32 (or wider) whatever the dtype of ``reconstructions``: a bf16 sum of 784 squared
    errors would keep only about three significant digits.

    Shape:
        ``reconstructions``: ``(b, C * H * W)``; ``images``: ``(b, C, H, W)`` or ``(b, C * H * W)`` -> scalar.
        For several objects per image (MultiMNIST), ``(b, n, C * H * W)`` against ``(b, n, C, H, W)``.
    """
    leading = reconstructions.shape[:-1]  # (b,) or (b, n): what the images' shape must begin with
    if (reconstructions.dim() not in (2, 3) or images.shape[: len(leading)] != leading or images.dim() == len(leading)
            or images.shape[len(leading):].numel() != reconstructions.shape[-1]):
        raise ValueError(
            f"reconstructions of shape {tuple(reconstructions.shape)} do not match images of shape "
            f"{tuple(images.shape)}: expected reconstructions (b, C * H * W) for images (b, C, H, W), or (b, n, "
            f"C * H * W) for (b, n, C, H, W)"
        )
    wide = _compute_dtype(reconstructions.dtype)
    target = images.reshape(reconstructions.shape).to(wide)
    return (reconstructions.to(wide) - target).square().flatten(1).sum(dim=1).mean()


class CapsuleOutputLike(Protocol):
    """What :class:`CapsuleLoss` reads from a model's output: a :class:`~capsnet.CapsNetOutput`, or any output
    (a NamedTuple, a dataclass) with these two fields."""

    @property
    def lengths(self) -> Tensor:
        """``(b, num_classes)`` capsule lengths."""

    @property
    def reconstructions(self) -> Tensor | None:
        """``(b, C * H * W)`` (or ``(b, n, C * H * W)``) decoder outputs, ``None`` without a decoder."""


class LossTerms(NamedTuple):
    """What :meth:`CapsuleLoss.terms` returns: the weighted total and its two unweighted parts
    (``reconstruction`` is 0 without a decoder). All are scalars."""

    total: Tensor
    margin: Tensor
    reconstruction: Tensor


class CapsuleLoss(nn.Module):
    """Margin loss plus ``reconstruction_weight`` times the reconstruction loss (paper, section 4.1).

    Args:
        reconstruction_weight: 0.0005 in the paper.
        m_pos, m_neg, lambda_, halve_margin: passed to :func:`margin_loss` (``halve_margin`` is the
            official code's factor 0.5; off by default).

    Example:
        >>> from capsnet import CapsNet
        >>> model, loss_fn = CapsNet(), CapsuleLoss()
        >>> images, labels = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
        >>> loss = loss_fn(model(images, labels), images, labels)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        reconstruction_weight: float = RECONSTRUCTION_WEIGHT,
        *,
        m_pos: float = M_POS,
        m_neg: float = M_NEG,
        lambda_: float = LAMBDA,
        halve_margin: bool = False,
    ) -> None:
        super().__init__()
        self.reconstruction_weight = reconstruction_weight
        self.m_pos, self.m_neg, self.lambda_, self.halve_margin = m_pos, m_neg, lambda_, halve_margin

    def terms(self, output: CapsuleOutputLike, images: Tensor, targets: Tensor) -> LossTerms:
        """The total loss with its unweighted margin and reconstruction parts, e.g. to log them separately."""
        margin = margin_loss(output.lengths, targets, m_pos=self.m_pos, m_neg=self.m_neg, lambda_=self.lambda_,
                             halve=self.halve_margin)
        if output.reconstructions is None:
            return LossTerms(margin, margin, torch.zeros_like(margin))
        reconstruction = reconstruction_loss(output.reconstructions, images)
        return LossTerms(margin + self.reconstruction_weight * reconstruction, margin, reconstruction)

    def forward(self, output: CapsuleOutputLike, images: Tensor, targets: Tensor) -> Tensor:
        """Total loss.

        Shape:
            ``output.lengths``: ``(b, k)``; ``output.reconstructions``: ``(b, C * H * W)`` or ``None``;
            ``images``: ``(b, C, H, W)``; ``targets``: as :func:`margin_loss`'s -> scalar. For several objects per
            image (MultiMNIST): ``(b, n)`` targets, ``(b, n, C * H * W)`` reconstructions and ``(b, n, C, H, W)``
            images, each object's own (as :func:`reconstruction_loss`).
        """
        return self.terms(output, images, targets).total

    def extra_repr(self) -> str:
        return (f"reconstruction_weight={self.reconstruction_weight}, m_pos={self.m_pos}, m_neg={self.m_neg}, "
                f"lambda_={self.lambda_}, halve_margin={self.halve_margin}")
