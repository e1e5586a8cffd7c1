"""Dynamic routing-by-agreement (Sabour, Frosst & Hinton 2017, Procedure 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int
from ..functional import _compute_dtype, squash
from .base import Routing, RoutingOutput, _check_routing_input, register_routing

__all__ = ["DynamicRouting", "dynamic_routing", "ROUTING_ITERATIONS"]

ROUTING_ITERATIONS = 3  # the paper's choice for MNIST (section 4)


def _weighted_sum(coupling: Tensor | None, votes: Tensor, bias: Tensor | None) -> Tensor:
    """``s[j] = sum_i c[i, j] * u_hat[j|i] (+ bias[j])`` for every example; ``coupling=None`` means uniform.

    Shape:
        ``coupling``: ``(i, b, j)``; ``votes``: ``(i, b, j, d_out)``; ``bias``: ``(j, d_out)`` -> ``(b, j, d_out)``,
        in at least float32: sums over ~1000 lower capsules overflow float16 and blur bfloat16.
    """
    wide = _compute_dtype(votes.dtype)
    if coupling is None:
        # Routing logits all 0 give c = 1/j exactly: skip the softmax and the multiply.
        s = votes.sum(dim=0, dtype=wide) / votes.shape[2]  # (b, j, d_out)
    else:
        s = (coupling.unsqueeze(-1) * votes).sum(dim=0, dtype=wide)  # (b, j, d_out)
    return s if bias is None else s + bias


def dynamic_routing(
    u_hat: Tensor,
    iterations: int = ROUTING_ITERATIONS,
    *,
    detach_intermediate: bool = True,
    bias: Tensor | None = None,
) -> RoutingOutput:
    """Route predictions ``u_hat`` to higher capsules by agreement (Procedure 1 of the paper).

    For every example separately the logits start at ``b[i, j] = 0``; each iteration computes
    ``c[i, :] = softmax_j(b[i, :])`` (over the higher capsules), ``s[j] = sum_i c[i, j] u_hat[j|i]``,
    ``v[j] = squash(s[j])`` and, except after the last, ``b[i, j] += u_hat[j|i] . v[j]``.

    Args:
        u_hat: predictions of each lower capsule ``i`` for each higher capsule ``j``; any memory layout.
        iterations: routing iterations ``r`` (the paper uses 3; 1 means uniform coupling).
        detach_intermediate: stop gradients through ``u_hat`` in every iteration but the last, so
            backpropagation treats the coupling coefficients as constants with respect to ``u_hat`` (a
            ``bias`` still gets gradients through every iteration). Default ``True``: what widely used
            ports do; the early iterations record no autograd graph (several times less memory) and
            training reaches the same accuracy. The official TensorFlow code lets gradients flow
            through every iteration: pass ``False`` for that.
        bias: optional ``(j, d_out)`` bias added to every ``s[j]`` in every iteration, as the official
            code does (the paper has none).

    Returns:
        ``RoutingOutput(poses, coupling)``: ``v`` and the coupling coefficients of the last iteration.

    Shape:
        ``u_hat``: ``(b, i, j, d_out)`` -> ``poses`` ``(b, j, d_out)``, ``coupling`` ``(b, i, j)``.

    Example:
        >>> v, c = dynamic_routing(torch.randn(2, 1152, 10, 16), iterations=3)
        >>> v.shape, c.shape
        (torch.Size([2, 10, 16]), torch.Size([2, 1152, 10]))
    """
    _check_routing_input(u_hat, bias)
    return _route(u_hat, check_int(iterations, "iterations", 1), detach_intermediate, bias)


def _route(u_hat: Tensor, iterations: int, detach_intermediate: bool, bias: Tensor | None) -> RoutingOutput:
    # Work in (i, b, j, d_out) order: RoutedCapsules stores u_hat that way, so the element-wise ops
    # below run over memory in order and the sums over i reduce the outermost axis.
    votes = u_hat.transpose(0, 1)  # (i, b, j, d_out)
    # Ops on a detached tensor record no autograd graph, so the early iterations cost no memory.
    frozen = votes.detach() if detach_intermediate else votes
    logits = coupling = None
    for iteration in range(iterations):
        last = iteration == iterations - 1
        if logits is not None:
            coupling = logits.softmax(dim=-1)  # (i, b, j): softmax over the higher capsules j
        v = squash(_weighted_sum(coupling, votes if last else frozen, bias)).to(votes.dtype)  # (b, j, d_out)
        if not last:
            agreement = (frozen * v).sum(dim=-1)  # (i, b, j)
            logits = agreement if logits is None else logits + agreement
    if coupling is None:
        coupling = votes.new_full(votes.shape[:3], 1.0 / votes.shape[2])
    return RoutingOutput(v, coupling.transpose(0, 1))  # (b, j, d_out), (b, i, j)


@register_routing("dynamic")
class DynamicRouting(Routing):
    """Module form of :func:`dynamic_routing`; see it for the arguments.

    Example:
        >>> routing = DynamicRouting(iterations=3)
        >>> v, c = routing(torch.randn(2, 32, 10, 16))
        >>> v.shape, c.shape
        (torch.Size([2, 10, 16]), torch.Size([2, 32, 10]))
    """

    def __init__(self, iterations: int = ROUTING_ITERATIONS, detach_intermediate: bool = True) -> None:
        super().__init__()
        self.iterations = check_int(iterations, "iterations", 1)
        self.detach_intermediate = detach_intermediate

    def route(self, u_hat: Tensor, bias: Tensor | None) -> RoutingOutput:
        return _route(u_hat, self.iterations, self.detach_intermediate, bias)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, detach_intermediate={self.detach_intermediate}"
