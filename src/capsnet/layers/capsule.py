"""Fully connected capsule layer: a transformation matrix per capsule pair, then routing."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int, check_positive, check_shape
from ..routing import DynamicRouting, Routing, RoutingOutput

__all__ = ["RoutedCapsules", "WEIGHT_INIT_STD"]

# One epoch of the MNIST CapsNet (H200, seeds 0-2, docs/results.md) ended at 1.13% test error with W[i, j] drawn
# with std 0.01, 1.10% with 0.03, 1.11% with 0.05, 1.33% with 0.1, and did not learn at all with 0.2 (90%):
# large predictions u_hat make every digit capsule long from the first steps.
WEIGHT_INIT_STD = 0.03
# The bias exists only in the official code, which starts every bias at 0.1 (its bias_variable).
BIAS_INIT = 0.1


class RoutedCapsules(nn.Module):
    """A layer of higher capsules fed by routing (the paper's DigitCaps).

    Each lower capsule ``i`` predicts each higher capsule ``j`` through its own matrix:
    ``u_hat[j|i] = W[i, j] @ u[i]`` (``W[i, j]`` is ``out_dim x in_dim``), then ``routing`` turns the
    predictions into the higher capsules ``v`` and coupling coefficients ``c``.

    Args:
        in_caps: number of lower capsules ``i`` (1152 in the paper).
        in_dim: their dimension ``d_in`` (8).
        out_caps: number of higher capsules ``j`` (10, one per class).
        out_dim: their dimension ``d_out`` (16).
        routing: any :class:`capsnet.routing.Routing`; default ``DynamicRouting(iterations=3)``.
        bias: add a learned ``(out_caps, out_dim)`` bias to ``s[j]`` in every routing iteration, as the
            official code does, starting at 0.1 as there. Off by default: the paper has none.
        weight_std: standard deviation (> 0) of the normal initialization of ``W``; the paper gives none.
        device, dtype: where and in which floating point type to create the parameters (as for ``nn.Linear``);
            a given ``routing`` with parameters is moved there too.

    Shape:
        ``u``: ``(b, in_caps, in_dim)`` -> ``poses`` ``(b, out_caps, out_dim)``, ``coupling`` ``(b, in_caps, out_caps)``.

    Example:
        >>> layer = RoutedCapsules(in_caps=1152, in_dim=8, out_caps=10, out_dim=16)
        >>> v, c = layer(torch.randn(2, 1152, 8))
        >>> v.shape, c.shape
        (torch.Size([2, 10, 16]), torch.Size([2, 1152, 10]))
    """

    def __init__(
        self,
        *,
        in_caps: int,
        in_dim: int,
        out_caps: int,
        out_dim: int,
        routing: Routing | None = None,
        bias: bool = False,
        weight_std: float = WEIGHT_INIT_STD,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(routing, Routing | None):  # a name or a function would fail only at the first forward
            raise TypeError(
                f"routing must be a capsnet.routing.Routing module, e.g. create_routing('dynamic', iterations=3), "
                f"got {routing!r} ({type(routing).__name__})"
            )
        sizes = {"in_caps": in_caps, "in_dim": in_dim, "out_caps": out_caps, "out_dim": out_dim}
        self.in_caps, self.in_dim, self.out_caps, self.out_dim = (check_int(v, k, 1) for k, v in sizes.items())
        self.weight_std = float(check_positive(weight_std, "weight_std"))  # W = 0 would leave squash without a gradient
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        shape = (self.in_caps, self.out_caps, self.out_dim, self.in_dim)  # the checked ints, whatever type was given
        self.weight = nn.Parameter(torch.empty(shape, **factory))  # W[i, j]
        self.bias = nn.Parameter(torch.empty((self.out_caps, self.out_dim), **factory)) if bias else None
        self.reset_parameters()
        if routing is not None and (device is not None or dtype is not None):
            routing.to(**factory)  # a routing with parameters of its own (a learned prior) goes where W goes
        self.routing = routing if routing is not None else DynamicRouting()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw ``W`` anew, normal with std ``weight_std``, and set the bias to 0.1: what a model built on the meta
        device (``to_empty``, then ``reset_parameters`` of every module) needs, as torch's own layers."""
        self.weight.copy_(torch.randn_like(self.weight) * self.weight_std)  # randn * std: the stream of earlier versions
        if self.bias is not None:
            self.bias.fill_(BIAS_INIT)

    def predictions(self, u: Tensor) -> Tensor:
        """The prediction vectors ``u_hat``: ``(b, in_caps, in_dim)`` -> ``(b, in_caps, out_caps, out_dim)``.

        Computed as one batched matrix product over the lower capsules, without copying ``W`` per
        example; the result is a view of ``(in_caps, b, out_caps, out_dim)`` storage.
        """
        check_shape(u, "u", "(b, in_caps, in_dim)", 3, (None, self.in_caps, self.in_dim))
        if u.dtype != self.weight.dtype and not torch.is_autocast_enabled(u.device.type):  # autocast casts both
            raise TypeError(f"u is {u.dtype} but the weights W of RoutedCapsules are {self.weight.dtype}: convert the "
                            f"input, or the layer with .to(dtype)")
        batch = u.shape[0]
        # reshape, not view: model.to(memory_format=torch.channels_last) also re-lays this 4-D weight out
        weight = self.weight.reshape(self.in_caps, self.out_caps * self.out_dim, self.in_dim)
        u_hat = torch.bmm(u.transpose(0, 1), weight.transpose(1, 2))  # (i, b, j * d_out)
        return u_hat.view(self.in_caps, batch, self.out_caps, self.out_dim).transpose(0, 1)  # (b, i, j, d_out)

    def forward(self, u: Tensor) -> RoutingOutput:
        """Route ``u`` ``(b, in_caps, in_dim)`` -> ``(poses (b, out_caps, out_dim), coupling (b, in_caps, out_caps))``."""
        return self.routing(self.predictions(u), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_caps={self.in_caps}, in_dim={self.in_dim}, out_caps={self.out_caps}, "
            f"out_dim={self.out_dim}, bias={self.bias is not None}"
        )
