"""The reconstruction decoder: masked capsule vectors in, pixels out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int, check_shape
from .._deprecation import renamed_keyword
from ..functional import mask_capsules

__all__ = ["CapsuleDecoder"]


class CapsuleDecoder(nn.Module):
    """Fully connected decoder that reconstructs the input from one capsule (paper, section 4.1, Fig. 2).

    All capsules but one are masked to zero: the capsule of ``targets`` when given (training), the
    longest one otherwise. The masked ``in_caps * in_dim`` vector goes through FC+ReLU layers of
    sizes ``hidden`` and a final FC+sigmoid to ``out_features`` pixel intensities in [0, 1] (FC alone with
    ``sigmoid=False``).

    Args:
        in_caps: number of capsules ``j`` it reads (one per class).
        in_dim: their dimension (the capsule layer's ``d_out``).
        out_features: pixels to reconstruct, ``C * H * W`` (784 for MNIST).
        hidden: sizes of the hidden layers; the paper's are (512, 1024).
        sigmoid: end in a sigmoid, for intensities in [0, 1] as in the paper; ``False`` for targets outside
            that range, e.g. images normalized by their mean and std.
        device, dtype: where and in which floating point type to create the parameters.

    Shape:
        ``poses``: ``(b, in_caps, in_dim)``, ``targets``: ``(b,)`` or ``None`` -> ``(b, out_features)``.

    Example:
        >>> decoder = CapsuleDecoder()
        >>> decoder(torch.rand(2, 10, 16)).shape
        torch.Size([2, 784])
    """

    def __init__(
        self,
        *,
        in_caps: int = 10,
        in_dim: int = 16,
        out_features: int = 784,
        hidden: Sequence[int] = (512, 1024),
        sigmoid: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        for name, size in [("in_caps", in_caps), ("in_dim", in_dim), ("out_features", out_features),
                           *(("hidden", h) for h in hidden)]:
            check_int(size, name, 1)
        self.in_caps, self.in_dim = int(in_caps), int(in_dim)
        sizes = [in_caps * in_dim, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):  # ReLU not in place, so that hooks see each layer's output
            layers += [nn.Linear(fan_in, fan_out, **factory), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], out_features, **factory))
        self.net = nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else []))

    @renamed_keyword("labels", "targets")
    def forward(self, poses: Tensor, targets: Tensor | None = None) -> Tensor:
        """Decode ``poses`` ``(b, in_caps, in_dim)`` from the ``targets`` ``(b,)`` capsule (else the longest) ->
        ``(b, out_features)``. ``targets`` was called ``labels``, which still works with a ``FutureWarning``."""
        check_shape(poses, "poses", "(b, in_caps, in_dim)", 3, (None, self.in_caps, self.in_dim))
        return self.net(mask_capsules(poses, targets))
