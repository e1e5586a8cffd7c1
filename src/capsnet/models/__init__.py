"""Model assembly and the registry of named configurations."""

from .capsnet import CapsNet, CapsNetOutput, capsnet_with_self_attention
from .cnn import BaselineCNN
from .registry import create_model, is_capsule_model, list_models, register_model

# The paper's MNIST network: CapsNet's defaults are its values, so the config is empty.
register_model("capsnet-mnist", CapsNet)
# The same network with the official TensorFlow code's choices (docs/concepts.md, "Official code vs paper"), and
# the std of its W init (its truncated normal, redrawn beyond 2 std, has an actual std of ~0.088 against our 0.1).
register_model("capsnet-mnist-official", CapsNet, digit_bias=True, detach_intermediate=False, weight_std=0.1)
# Same structure, narrow convolutions (1.9M parameters, most in the decoder): smoke tests, quick CPU runs.
register_model("capsnet-tiny", CapsNet, conv_channels=32, primary_types=8)
# Beyond the paper: its network with Efficient-CapsNet's self-attention routing (Mazzia et al. 2021) in DigitCaps.
register_model("capsnet-self-attention", capsnet_with_self_attention, capsule_model=True)
# Its narrow version, as capsnet-tiny: the pipeline of `capsnet reproduce routing --tiny`.
register_model("capsnet-self-attention-tiny", capsnet_with_self_attention, capsule_model=True, conv_channels=32,
               primary_types=8)
# The paper's baseline (Table 1): convolutions 256-256-128 5x5, FC 328-192, dropout; 35.4M parameters.
register_model("baseline-cnn", BaselineCNN)
# The CNN of the affine-robustness comparison (section 5.2, "with MaxPooling and DropOut" and "a similar number
# of parameters"): pooling after the second and third convolutions, the first hidden layer widened from 328 to
# 672 so that it has 11.2M parameters on 40x40 inputs, as many as the CapsNet without its decoder (13.5M with).
register_model("baseline-cnn-affnist-11m", BaselineCNN, pool_after=(1, 2), hidden=(672, 192))
# Its first version, the Table 1 widths with pooling (6.7M parameters at 40x40): the GPU runs of 2026-11-26.
register_model("baseline-cnn-affnist", BaselineCNN, pool_after=(1, 2))
# The same layout, narrow: for tests and quick CPU runs of the Table 1 pipeline.
register_model("baseline-cnn-tiny", BaselineCNN, channels=(16, 16, 8), hidden=(32, 32))

__all__ = ["CapsNet", "CapsNetOutput", "capsnet_with_self_attention", "BaselineCNN", "create_model", "is_capsule_model",
           "list_models", "register_model"]
