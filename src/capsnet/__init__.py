"""capsnet: capsule networks with routing-by-agreement (Sabour, Frosst & Hinton, NIPS 2017) in PyTorch."""

from . import data, routing
from .functional import capsule_lengths, hits, mask_capsules, squash
from .layers import CapsuleDecoder, PrimaryCapsules, RoutedCapsules
from .losses import CapsuleLoss, CapsuleOutputLike, LossTerms, margin_loss, reconstruction_loss
from .models import BaselineCNN, CapsNet, CapsNetOutput, create_model, is_capsule_model, list_models, register_model
from .routing import (
    DynamicRouting, Routing, RoutingOutput, SelfAttentionRouting, create_routing, dynamic_routing, list_routings,
    register_routing,
)
from .config import TrainConfig
from .data import list_datasets, register_dataset
from .training import Trainer, evaluate, load_model, train

__version__ = "0.1.0"

__all__ = [
    "squash",
    "capsule_lengths",
    "mask_capsules",
    "hits",
    "routing",
    "data",
    "Routing",
    "RoutingOutput",
    "DynamicRouting",
    "dynamic_routing",
    "SelfAttentionRouting",
    "create_routing",
    "list_routings",
    "register_routing",
    "PrimaryCapsules",
    "RoutedCapsules",
    "CapsuleDecoder",
    "CapsNet",
    "CapsNetOutput",
    "BaselineCNN",
    "is_capsule_model",
    "create_model",
    "list_models",
    "register_model",
    "register_dataset",
    "list_datasets",
    "margin_loss",
    "reconstruction_loss",
    "CapsuleLoss",
    "CapsuleOutputLike",
    "LossTerms",
    "TrainConfig",
    "Trainer",
    "train",
    "evaluate",
    "load_model",
]
