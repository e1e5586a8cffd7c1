"""The routing contract shared by every routing algorithm, and the registry that names them."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from torch import Tensor, nn

from .._checks import check_choice, check_shape
from .._export import saved_by_name

__all__ = ["Routing", "RoutingOutput", "register_routing", "create_routing", "list_routings"]


@saved_by_name
class RoutingOutput(NamedTuple):
    """What a routing algorithm returns; unpacks as ``v, c = routing(u_hat)``.

    Attributes:
        poses: higher-capsule vectors ``v``, shape ``(b, j, d_out)``.
        coupling: coupling coefficients ``c`` of the last iteration, shape ``(b, i, j)``.
    """

    poses: Tensor
    coupling: Tensor


class Routing(nn.Module):
    """Base class of routing algorithms: ``forward(u_hat, bias=None) -> (v, c)``.

    Subclasses implement :meth:`route`; the base class checks the shapes of what goes in and comes out, so
    every algorithm gives the same error messages and can be swapped into :class:`capsnet.RoutedCapsules`.

    Shape:
        ``u_hat``: ``(b, i, j, d_out)``, the predictions of every lower capsule ``i`` for every
        higher capsule ``j`` (any memory layout); ``bias``: ``(j, d_out)`` or ``None``.
        Returns ``poses`` ``(b, j, d_out)`` and ``coupling`` ``(b, i, j)``.
    """

    def forward(self, u_hat: Tensor, bias: Tensor | None = None) -> RoutingOutput:
        """Check ``u_hat`` ``(b, i, j, d_out)`` and ``bias`` ``(j, d_out)``, run :meth:`route`, check its result:
        ``poses`` ``(b, j, d_out)``, ``coupling`` ``(b, i, j)``."""
        _check_routing_input(u_hat, bias)
        result = self.route(u_hat, bias)
        # A layer passes the result on unchecked, so a wrong one would surface far from the algorithm at fault.
        name = type(self).__name__
        if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, Tensor) for t in result)):
            got = ", ".join(type(t).__name__ for t in result) if isinstance(result, tuple) else type(result).__name__
            raise TypeError(f"{name}.route must return RoutingOutput(poses, coupling), two tensors; got {got}")
        poses, coupling = result
        batch, in_caps, out_caps, out_dim = u_hat.shape
        check_shape(poses, f"{name}.route's poses", "(b, j, d_out)", 3, (batch, out_caps, out_dim))
        check_shape(coupling, f"{name}.route's coupling", "(b, i, j)", 3, (batch, in_caps, out_caps))
        return RoutingOutput(poses, coupling)

    def route(self, u_hat: Tensor, bias: Tensor | None) -> RoutingOutput:
        """The algorithm itself, on inputs :meth:`forward` has checked: ``u_hat`` ``(b, i, j, d_out)``,
        ``bias`` ``(j, d_out)`` or ``None``; returns ``poses`` ``(b, j, d_out)`` and ``coupling`` ``(b, i, j)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement route(u_hat, bias), the routing itself")


def _check_routing_input(u_hat: Tensor, bias: Tensor | None) -> None:
    """Raise unless ``u_hat`` is a floating point ``(b, i, j, d_out)`` and ``bias`` is ``None`` or ``(j, d_out)``."""
    check_shape(u_hat, "u_hat", "(b, i, j, d_out)", 4)
    if not u_hat.is_floating_point():
        raise TypeError(f"u_hat must be a floating point tensor, got {u_hat.dtype}")
    if bias is not None:
        check_shape(bias, "bias", "(j, d_out)", 2, u_hat.shape[2:])


_ROUTINGS: dict[str, type[Routing]] = {}
R = TypeVar("R", bound=type[Routing])


def register_routing(name: str) -> Callable[[R], R]:
    """Class decorator that makes a :class:`Routing` subclass available to :func:`create_routing`."""

    def register(cls: R) -> R:
        if not (isinstance(cls, type) and issubclass(cls, Routing)):
            raise TypeError(f"register_routing({name!r}) decorates a subclass of capsnet.routing.Routing, got {cls!r}")
        if name in _ROUTINGS:
            warnings.warn(f"routing {name!r} is registered twice; the later definition wins", stacklevel=2)
        _ROUTINGS[name] = cls
        return cls

    return register


def create_routing(name: str, **kwargs: Any) -> Routing:
    """Build a registered routing algorithm by name, e.g. ``create_routing("dynamic", iterations=3)``."""
    return _ROUTINGS[check_choice(name, "routing", _ROUTINGS)](**kwargs)


def list_routings() -> list[str]:
    """Names accepted by :func:`create_routing`, sorted."""
    return sorted(_ROUTINGS)
