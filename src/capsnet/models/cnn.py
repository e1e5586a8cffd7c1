"""The paper's baseline: a plain convolutional network trained with cross-entropy (section 5, Table 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_image_size, check_int, check_shape

__all__ = ["BaselineCNN"]


class BaselineCNN(nn.Module):
    """Three 5x5 convolutions and two hidden fully connected layers, dropout before the classifier.

    The paper's MNIST baseline: convolutions of 256, 256 and 128 channels (stride 1), fully connected layers
    of 328 and 192 units, dropout, 10-way softmax; 35.4M parameters. The paper gives no padding or pooling;
    "same" padding without pooling is the reading that gives its parameter count (35,445,522 on 28x28 inputs:
    the first fully connected layer alone has 32.9M).

    Args:
        num_classes: output classes.
        in_channels: input image channels.
        image_size: input height and width (an int for squares).
        channels: output channels of the convolutions.
        kernel_size: of every convolution (odd, so that "same" padding keeps the size).
        hidden: sizes of the hidden fully connected layers.
        dropout: drop probability before the classifier.
        pool_after: indices of the convolutions followed by 2x2 max pooling (the paper's MNIST baseline has
            none; its affine-robustness CNN "with MaxPooling" does not say where).
        device, dtype: where and in which floating point type to create the parameters.

    Shape:
        ``images``: ``(b, C, H, W)`` -> class logits ``(b, num_classes)``.

    Example:
        >>> model = BaselineCNN()
        >>> model(torch.rand(2, 1, 28, 28)).shape, sum(p.numel() for p in model.parameters())
        (torch.Size([2, 10]), 35445522)
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 28,
        channels: Sequence[int] = (256, 256, 128),
        kernel_size: int = 5,
        hidden: Sequence[int] = (328, 192),
        dropout: float = 0.5,
        pool_after: Sequence[int] = (),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must give at least one convolution's width, got none")
        sizes = [("num_classes", num_classes), ("in_channels", in_channels), ("kernel_size", kernel_size),
                 *(("channels", c) for c in channels), *(("hidden", h) for h in hidden)]
        for name, size in sizes:
            check_int(size, name, 1)  # here, so that errors name this constructor's arguments, not a layer's
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for same padding, got {kernel_size}")
        if not set(pool_after) <= set(range(len(channels))):
            raise ValueError(f"pool_after must name convolutions by their index, 0 to {len(channels) - 1}, got "
                             f"{tuple(pool_after)}")
        height, width = self.image_size = check_image_size(image_size)
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        convs: list[nn.Module] = []  # ReLUs not in place, so that hooks (Grad-CAM, say) see each layer's output
        for index, (before, after) in enumerate(zip((in_channels, *channels), channels)):
            convs += [nn.Conv2d(before, after, kernel_size, padding=kernel_size // 2, **factory), nn.ReLU()]
            if index in pool_after:
                convs.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
        self.features = nn.Sequential(*convs)
        widths = (channels[-1] * height * width, *hidden)
        dense: list[nn.Module] = [nn.Flatten()]
        for before, after in zip(widths, hidden):
            dense += [nn.Linear(before, after, **factory), nn.ReLU()]
        self.classifier = nn.Sequential(*dense, nn.Dropout(dropout), nn.Linear(widths[-1], num_classes, **factory))

    def forward(self, images: Tensor) -> Tensor:
        """``images`` ``(b, C, H, W)`` -> class logits ``(b, num_classes)``."""
        check_shape(images, "images", "(b, C, H, W)", 4, (None, self.in_channels, *self.image_size))
        return self.classifier(self.features(images))  # (b, num_classes)
