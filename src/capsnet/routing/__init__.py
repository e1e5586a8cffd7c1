"""Routing algorithms behind one interface: ``Routing.forward(u_hat, bias=None) -> (v, c)``."""

from .base import Routing, RoutingOutput, create_routing, list_routings, register_routing
from .dynamic import ROUTING_ITERATIONS, DynamicRouting, dynamic_routing

__all__ = [
    "Routing",
    "RoutingOutput",
    "DynamicRouting",
    "dynamic_routing",
    "ROUTING_ITERATIONS",
    "create_routing",
    "list_routings",
    "register_routing",
]
