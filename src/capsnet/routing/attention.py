"""Self-attention routing (Mazzia, Salvetti & Chiaberge 2021, "Efficient-CapsNet"): one pass, no iterations."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..functional import _compute_dtype, squash
from .base import Routing, RoutingOutput, register_routing

__all__ = ["SelfAttentionRouting"]


@register_routing("self-attention")
class SelfAttentionRouting(Routing):
    """Couple each lower capsule to the higher capsules by how well its vote agrees with all the others' votes.

    For every example and higher capsule ``j``, the votes ``u_hat[j|i]`` attend to each other: the agreement of
    ``i`` is the sum of its row of the self-attention matrix, ``a[i, j] = sum_k u_hat[j|i] . u_hat[j|k] / sqrt(d)``;
    then ``c[i, :] = softmax_j(a[i, :])`` (over the higher capsules, as in dynamic routing),
    ``s[j] = sum_i (c[i, j] + prior[i, j]) u_hat[j|i]`` and ``v[j] = squash(s[j])``. Unlike dynamic routing the
    coupling is computed once, from the votes alone, and gradients flow through it. Sums and softmax run in float32
    at least.

    As Efficient-CapsNet's code (``FCCaps``), with one difference: ``v`` uses the squash of Sabour et al.
    (:func:`capsnet.squash`), so that swapping it for dynamic routing changes the coupling only;
    Efficient-CapsNet squashes with ``(1 - exp(-|s|)) s / |s|``.

    Args:
        in_caps, out_caps: give both to learn a prior ``(in_caps, out_caps)``, starting at 0, added to the coupling
            coefficients as Efficient-CapsNet does; without them there is no prior, and the routing works for any
            number of capsules.
        device, dtype: where and in which floating point type to create the prior.

    Shape:
        ``u_hat``: ``(b, i, j, d_out)``; ``bias``: ``(j, d_out)`` or ``None``, added to ``s``. Returns ``poses``
        ``(b, j, d_out)`` and ``coupling`` ``(b, i, j)``: the softmax ``c`` (rows sum to 1), without the prior.

    Example:
        >>> routing = SelfAttentionRouting()
        >>> v, c = routing(torch.randn(2, 32, 10, 16))
        >>> v.shape, c.shape
        (torch.Size([2, 10, 16]), torch.Size([2, 32, 10]))
    """

    def __init__(self, in_caps: int | None = None, out_caps: int | None = None, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if (in_caps is None) != (out_caps is None):
            raise ValueError(f"give both in_caps and out_caps for a learned prior, or neither; got in_caps={in_caps}, "
                             f"out_caps={out_caps}")
        self.prior = None if in_caps is None else nn.Parameter(torch.zeros(
            check_int(in_caps, "in_caps", 1), check_int(out_caps, "out_caps", 1), device=device, dtype=dtype))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Set the learned prior back to 0 (for a model built on the meta device, as torch's own layers)."""
        if self.prior is not None:
            self.prior.zero_()

    def route(self, u_hat: Tensor, bias: Tensor | None) -> RoutingOutput:
        if self.prior is not None and self.prior.shape != u_hat.shape[1:3]:
            raise ValueError(f"SelfAttentionRouting has a prior for {tuple(self.prior.shape)} (in_caps, out_caps), "
                             f"but u_hat has {tuple(u_hat.shape[1:3])}")
        # (i, b, j, d_out) order, as RoutedCapsules stores u_hat: the sums over i reduce the outermost axis.
        votes = u_hat.transpose(0, 1)
        # At least float32: sums over ~1000 capsules overflow float16 and blur bfloat16.
        total = votes.sum(dim=0, dtype=_compute_dtype(votes.dtype))  # (b, j, d_out): sum_k u_hat[j|k]
        # u_hat[j|i] . sum_k u_hat[j|k] is row i of the votes' self-attention matrix for j, summed, without building
        # the (i, i) matrix; scaled by sqrt(d_out) as in scaled dot-product attention.
        agreement = (votes * total).sum(dim=-1) / math.sqrt(votes.shape[-1])  # (i, b, j)
        coupling = agreement.softmax(dim=-1)  # (i, b, j): softmax over the higher capsules j
        weights = coupling if self.prior is None else coupling + self.prior.unsqueeze(1)  # prior (i, j) -> (i, 1, j)
        s = (weights.unsqueeze(-1) * votes).sum(dim=0)  # (b, j, d_out)
        poses = squash(s if bias is None else s + bias).to(u_hat.dtype)
        return RoutingOutput(poses, coupling.to(u_hat.dtype).transpose(0, 1))

    def extra_repr(self) -> str:
        return "" if self.prior is None else f"in_caps={self.prior.shape[0]}, out_caps={self.prior.shape[1]}"
