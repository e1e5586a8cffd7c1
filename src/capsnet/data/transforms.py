"""Batch augmentation as pure tensor ops, so it runs on whatever device the batch lives on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from capsnet._checks import check_generator, check_int, check_shape

__all__ = ["random_shift", "shift_images", "MAX_SHIFT"]

MAX_SHIFT = 2  # "shifted by up to 2 pixels in each direction with zero padding" (paper, section 5)


def random_shift(images: torch.Tensor, max_shift: int = MAX_SHIFT, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift every image by its own random whole-pixel offset, filling the uncovered border with zeros.

    This is the paper's only augmentation (Sabour et al. 2017, section 5: training images shifted by up to
    2 pixels in each direction, zero padded). Apply it to training batches only; evaluation uses the images
    as they are.

    Each example gets an independent offset ``(dy, dx)``, each uniform in ``[-max_shift, max_shift]``; all channels
    of an example move together. The whole batch is done at once with one gather, no loop over examples.

    Args:
        images: the batch, any dtype, on any device.
        max_shift: largest shift in pixels along each axis (0 returns a copy).
        generator: random source for the offsets; its device may be the batch's or the CPU.

    Returns:
        A new tensor with the same shape, dtype and device as ``images``.

    Shape:
        - images: ``(b, c, h, w)``
        - output: ``(b, c, h, w)``

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> y = random_shift(x, max_shift=1, generator=torch.Generator().manual_seed(0))
        >>> y.shape, y.dtype
        (torch.Size([1, 1, 4, 4]), torch.float32)
    """
    check_shape(images, "images", "(b, c, h, w)", 4)
    m = check_int(max_shift, "max_shift", 0)
    if m == 0:
        return images.clone()
    device = images.device
    offsets = draw_on(torch.randint, generator, device, -m, m + 1, (2, images.shape[0]))
    return shift_images(images, offsets[0], offsets[1], m)


def draw_on(sample: Callable[..., torch.Tensor], generator: torch.Generator | None, device: torch.device,
            *args: Any) -> torch.Tensor:
    """``sample(*args)`` (``torch.rand``, ``torch.randint``, ...) drawn from ``generator`` on its own device, so
    a seed gives the same numbers wherever the batch lives, and delivered on ``device``."""
    check_generator(generator)
    source = generator.device if generator is not None else device
    return sample(*args, generator=generator, device=source).to(device)


def shift_images(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Move image ``k`` down by ``dy[k]`` and right by ``dx[k]`` whole pixels, filling with zeros.

    ``max_shift`` bounds ``|dy|`` and ``|dx|`` (it sizes the zero border, so no shift needs a host sync). The
    bound is checked for offsets on the CPU; on a GPU that check would stall the training step, so it is the
    caller's there (a larger shift would bring in pixels of the neighbouring row).

    Shape:
        ``images``: ``(b, c, h, w)``; ``dy``, ``dx``: ``(b,)`` integers -> ``(b, c, h, w)``.
    """
    b, c, h, w = images.shape
    m, device = max_shift, images.device
    if dy.device.type == "cpu" and len(dy):
        down, right = int(dy.abs().max()), int(dx.abs().max())
        if max(down, right) > m:
            raise ValueError(f"shifts must be within max_shift={m} pixels, got up to {down} down and {right} right")
    padded = F.pad(images, (m, m, m, m)).flatten(2)  # (b, c, (h + 2m) * (w + 2m))
    # Output pixel (y, x) comes from input (y - dy, x - dx), i.e. padded (y - dy + m, x - dx + m).
    rows = torch.arange(h, device=device) + m - dy[:, None]  # (b, h)
    cols = torch.arange(w, device=device) + m - dx[:, None]  # (b, w)
    source = rows[:, :, None] * (w + 2 * m) + cols[:, None, :]  # (b, h, w) flat index into padded
    # One gather over flat indices is several times faster on CPU than 4-tensor advanced indexing.
    source = source.view(b, 1, h * w).expand(b, c, h * w)  # (b, c, h * w)
    return padded.gather(2, source).view(b, c, h, w)
