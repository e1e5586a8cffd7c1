"""Capsule layers to compose into your own models."""

from .capsule import WEIGHT_INIT_STD, RoutedCapsules
from .decoder import CapsuleDecoder
from .primary import PrimaryCapsules

__all__ = ["PrimaryCapsules", "RoutedCapsules", "CapsuleDecoder", "WEIGHT_INIT_STD"]
