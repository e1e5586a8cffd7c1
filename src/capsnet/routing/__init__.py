"""Routing algorithms behind one interface: ``Routing.forward(u_hat, bias=None) -> (v, c)``.

Dynamic routing (Sabour et al. 2017, the paper's) and self-attention routing (Mazzia et al. 2021, Efficient-CapsNet).
"""

from .base import Routing, RoutingOutput, create_routing, list_routings, register_routing
from .attention import SelfAttentionRouting
from .dynamic import ROUTING_ITERATIONS, DynamicRouting, dynamic_routing

__all__ = [
    "Routing",
    "RoutingOutput",
    "DynamicRouting",
    "dynamic_routing",
    "SelfAttentionRouting",
    "ROUTING_ITERATIONS",
    "create_routing",
    "list_routings",
    "register_routing",
]
