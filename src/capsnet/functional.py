"""Stateless capsule operations.

Axis glossary used in every shape comment and docstring of capsnet:

    b      batch
    i      lower (input) capsules, e.g. the 1152 primary capsules of the MNIST CapsNet
    j      higher (output) capsules, e.g. the 10 digit capsules
    d_in   dimension of a lower capsule (8 in the paper)
    d_out  dimension of a higher capsule (16 in the paper)
    d      capsule dimension where any (d_in or d_out) will do
    k      classes (class scores, multi-hot targets)
    r      routing iterations
    h, w   spatial grid of convolutional capsules

``targets`` are the classes a model, a decoder or a loss is given for each example (what to decode, what is
right); ``labels`` are a dataset's classes of its images (``MNIST(...).labels``, ``evaluate(model, images, labels)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_class_indices, check_integer_dtype, values_are_cheap_to_read
from ._deprecation import renamed_keyword

__all__ = ["squash", "capsule_lengths", "mask_capsules", "hits"]

# Below this squared norm the 1/|s| of squash is replaced by 1/sqrt(eps): the output there is |s|^2 * s / sqrt(eps),
# of length |s|^3 / sqrt(eps) <= 1e-12, so the change is invisible while value and gradient stay finite at s = 0.
_SQUASH_EPS = 1e-12


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Squared norms of half-precision inputs overflow (16 entries of 1e4 give 1.6e9 > fp16 max 65504)
    # or lose all precision (bf16), so norms are always taken in at least float32.
    return torch.promote_types(dtype, torch.float32)


def squash(s: Tensor, dim: int = -1) -> Tensor:
    """The capsule non-linearity ``v = |s|^2 / (1 + |s|^2) * s / |s|`` (Sabour et al., eq. 1).

    Keeps the direction of ``s`` and maps its length ``n`` to ``n^2 / (1 + n^2)`` in [0, 1).
    Value and gradient are finite at ``s = 0``; float16/bfloat16 inputs are computed in float32
    and returned in their own dtype, so neither overflows nor returns NaN. In float32 a length beyond ~1.8e19
    (its square beyond float32's range) gives NaN: no trained network comes near it.

    Args:
        s: capsule pre-activations.
        dim: the capsule dimension.

    Shape:
        ``s``: ``(..., d, ...)`` with the capsule dimension at ``dim``; the output has the same shape.

    Example:
        >>> v = squash(torch.tensor([[3.0, 4.0]]))  # length 5 -> 25 / 26
        >>> round(v.norm().item(), 6)
        0.961538
    """
    if not s.is_floating_point():  # an integer s would come back rounded to zeros
        raise TypeError(f"squash takes a floating point tensor, got {s.dtype}")
    s_wide = s.to(_compute_dtype(s.dtype))
    sq_norm = s_wide.square().sum(dim, keepdim=True)
    # n^2 / (1 + n^2) first: the product (1 + n^2) * n would overflow float32 from n ~ 7e12 and squash to zero
    scale = sq_norm / (1 + sq_norm) * sq_norm.clamp_min(_SQUASH_EPS).rsqrt()
    return (s_wide * scale).to(s.dtype)


def capsule_lengths(poses: Tensor) -> Tensor:
    """Euclidean length of each capsule vector: the probability that its entity is present.

    Args:
        poses: capsule vectors along the last dimension.

    Shape:
        ``poses``: ``(b, j, d)`` -> ``(b, j)``, in float32 or wider whatever the input dtype.
    """
    return torch.linalg.vector_norm(poses.to(_compute_dtype(poses.dtype)), dim=-1)


@renamed_keyword("labels", "targets")
def mask_capsules(poses: Tensor, targets: Tensor | None = None) -> Tensor:
    """Zero every capsule but one per example and flatten, as the decoder's input (paper, section 4.1).

    The kept capsule is ``targets[b]`` when targets are given (training) and the longest capsule otherwise.

    Args:
        poses: higher-capsule vectors.
        targets: class index per example, of any integer dtype, or ``None`` to keep the longest capsule
            (indices outside the capsules raise a ``ValueError`` in eager mode on the CPU). Formerly ``labels``,
            which still works with a ``FutureWarning``.

    Shape:
        ``poses``: ``(b, j, d)``; ``targets``: ``(b,)`` -> ``(b, j * d)``.

    Example:
        >>> poses = torch.tensor([[[0.1, 0.0], [0.0, 0.9]]])
        >>> mask_capsules(poses)
        tensor([[0.0000, 0.0000, 0.0000, 0.9000]])
        >>> mask_capsules(poses, torch.tensor([0]))
        tensor([[0.1000, 0.0000, 0.0000, 0.0000]])
    """
    if targets is None:
        targets = capsule_lengths(poses).argmax(dim=-1)
    elif targets.shape != poses.shape[:1]:
        raise ValueError(f"expected targets of shape (b,) = ({poses.shape[0]},), got {tuple(targets.shape)}")
    else:
        check_integer_dtype(targets, "targets")
        if values_are_cheap_to_read(targets):
            check_class_indices(targets, "targets", poses.shape[1])
    keep = _one_hot(targets, poses.shape[1]).to(poses.dtype)  # (b, j)
    return (poses * keep.unsqueeze(-1)).flatten(1)  # (b, j * d)


def _one_hot(indices: Tensor, classes: int) -> Tensor:
    """Bool ``(..., classes)``: True at each index. Unlike ``F.one_hot``, which reads the indices to check their
    range, it also runs under ``torch.func.vmap`` (per-example gradients); an index out of range still fails,
    in the scatter (on CUDA, its device-side assert), rather than giving a row without a class.
    """
    empty = torch.zeros(*indices.shape, classes, dtype=torch.bool, device=indices.device)
    return empty.scatter(-1, indices.unsqueeze(-1).long(), True)  # out of place: vmap refuses scatter_


def hits(scores: Tensor, targets: Tensor) -> Tensor:
    """Which examples are right: the top class is the target, or, for ``(b, n)`` targets of n objects per image
    (MultiMNIST), the n top classes are exactly the n targets.

    Args:
        scores: per-class scores whose argmax is the prediction (capsule lengths or logits).
        targets: class indices of any integer dtype, one or n different ones per example. Not multi-hot: a float
            or bool ``targets`` raises a ``TypeError`` that says how to get the indices of a multi-hot matrix, and
            indices out of range or repeated within an example a ``ValueError`` (in eager mode on the CPU).

    Shape:
        ``scores``: ``(b, k)``; ``targets``: ``(b,)`` or ``(b, n)`` -> ``(b,)`` bool.

    Example:
        >>> hits(torch.tensor([[0.1, 0.9, 0.3], [0.2, 0.1, 0.9]]), torch.tensor([1, 0]))
        tensor([ True, False])
        >>> hits(torch.tensor([[0.1, 0.9, 0.3], [0.2, 0.1, 0.9]]), torch.tensor([[2, 1], [0, 1]]))  # two objects each
        tensor([ True, False])
    """
    if scores.dim() != 2 or targets.dim() not in (1, 2) or targets.shape[0] != scores.shape[0]:
        raise ValueError(f"expected scores (b, k) and targets (b,) or (b, n), got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}")
    check_integer_dtype(targets, "targets")
    if values_are_cheap_to_read(targets):  # an index out of range would count as a miss, or fail in topk
        check_class_indices(targets, "targets", scores.shape[1])
    if targets.dim() == 1:
        return scores.argmax(-1) == targets
    top = scores.topk(targets.shape[1], dim=-1).indices.sort(-1).values
    return (top == targets.sort(-1).values).all(-1)
