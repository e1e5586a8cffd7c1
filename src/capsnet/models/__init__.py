"""Model assembly and the registry of named configurations."""

from .capsnet import CapsNet, CapsNetOutput
from .registry import create_model, list_models, register_model

# The paper's MNIST network: CapsNet's defaults are its values, so the config is empty.
register_model("capsnet-mnist", CapsNet)
# The same network with the official TensorFlow code's choices (see SPEC "Where the official code differs").
register_model("capsnet-mnist-official", CapsNet, digit_bias=True, detach_intermediate=False)
# Same structure, narrow convolutions (1.9M parameters, most in the decoder): smoke tests, quick CPU runs.
register_model("capsnet-tiny", CapsNet, conv_channels=32, primary_types=8)

__all__ = ["CapsNet", "CapsNetOutput", "create_model", "list_models", "register_model"]
