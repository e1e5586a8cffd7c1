"""Primary capsules: a convolution whose channels are grouped into capsule vectors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_image_size, check_int, check_shape
from ..functional import squash

__all__ = ["PrimaryCapsules"]


class PrimaryCapsules(nn.Module):
    """Convolutional capsules (paper, section 4): one convolution, channels grouped into ``types`` vectors.

    A single ``Conv2d`` with ``types * out_dim`` output channels computes every capsule type at once
    (eight narrow convolutions would do the same work several times slower). Channel ``t * out_dim + k``
    is component ``k`` of capsule type ``t``, as in the official code.

    Args:
        in_channels: channels of the input feature map (256 after Conv1 in the paper).
        types: capsule types (channels of capsules); 32 in the paper.
        out_dim: capsule dimension (the next layer's ``d_in``); 8 in the paper.
        kernel_size, stride: of the convolution, an int or a pair ``(height, width)``; 9 and 2 in the paper.
        device, dtype: where and in which floating point type to create the parameters.

    Shape:
        ``(b, in_channels, H, W)`` -> ``(b, types * h * w, out_dim)``, squashed, with
        ``h = (H - kernel_h) // stride_h + 1`` (likewise ``w``); capsules ordered by (type, row, column).

    Example:
        >>> layer = PrimaryCapsules(in_channels=256)
        >>> layer(torch.randn(2, 256, 20, 20)).shape
        torch.Size([2, 1152, 8])
    """

    def __init__(
        self,
        *,
        in_channels: int,
        types: int = 32,
        out_dim: int = 8,
        kernel_size: int | tuple[int, int] = 9,
        stride: int | tuple[int, int] = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        sizes = {"in_channels": in_channels, "types": types, "out_dim": out_dim}
        in_channels, self.types, self.out_dim = (check_int(v, k, 1) for k, v in sizes.items())
        kernel_size, stride = check_image_size(kernel_size, "kernel_size"), check_image_size(stride, "stride")
        self.conv = nn.Conv2d(in_channels, self.types * self.out_dim, kernel_size, stride, device=device, dtype=dtype)

    def output_grid(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size ``(h, w)`` of the capsule grid for an input feature map of ``height x width``."""
        (kernel_h, kernel_w), (stride_h, stride_w) = self.conv.kernel_size, self.conv.stride
        return (height - kernel_h) // stride_h + 1, (width - kernel_w) // stride_w + 1

    def forward(self, features: Tensor) -> Tensor:
        """``features`` ``(b, in_channels, H, W)`` -> squashed capsules ``(b, types * h * w, out_dim)``."""
        check_shape(features, "features", "(b, in_channels, H, W)", 4, (None, self.conv.in_channels, None, None))
        out = self.conv(features)  # (b, types * out_dim, h, w)
        batch, _, height, width = out.shape
        capsules = out.view(batch, self.types, self.out_dim, height, width)  # (b, types, out_dim, h, w)
        # (b, types * h * w, out_dim), sizes spelled out: -1 has nothing to infer from in an empty batch
        capsules = capsules.permute(0, 1, 3, 4, 2).reshape(batch, self.types * height * width, self.out_dim)
        return squash(capsules)

    def extra_repr(self) -> str:
        return f"types={self.types}, out_dim={self.out_dim}"
