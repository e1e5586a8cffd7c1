"""Capsule layers to compose into your own models."""

from .capsule import RoutedCapsules
from .decoder import CapsuleDecoder
from .primary import PrimaryCapsules

__all__ = ["PrimaryCapsules", "RoutedCapsules", "CapsuleDecoder"]
