"""Datasets the paper builds from MNIST: MultiMNIST pairs and affNIST-like affine transforms.

Both are generated with batched tensor ops from a ``torch.Generator``, so the same seed gives the same
images on any run, and training pairs need not be stored.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_generator
from .transforms import draw_on, random_shift, shift_images

__all__ = [
    "MultiDigitBatch", "overlay_pairs", "place_on_canvas", "multimnist_test_set", "MULTIMNIST_CANVAS",
    "MULTIMNIST_SHIFT", "MULTIMNIST_TEST_SEED",
    "AFFNIST_SIZE", "AFFNIST_RANGES", "AffineRanges", "sample_affine_parameters", "random_affine", "affnist_synthetic",
    "AFFNIST_SYNTHETIC_SEED",
]


MULTIMNIST_CANVAS, MULTIMNIST_SHIFT = 36, 4  # paper, section 6
MULTIMNIST_TEST_SEED = 2017  # fixed, so that the MultiMNIST test set is the same everywhere


def place_on_canvas(images: Tensor, canvas: int, max_shift: int, *,
                    generator: torch.Generator | None = None) -> Tensor:
    """Centre ``images`` on a black ``canvas x canvas`` background, then shift each by up to ``max_shift`` px.

    With ``canvas = 28 + 2 * max_shift`` every digit stays inside the canvas (MultiMNIST: 36 and 4; the
    affine-robustness training set: 40 and 6).

    Shape:
        ``(b, C, h, w)`` -> ``(b, C, canvas, canvas)``, same dtype.
    """
    _, _, h, w = images.shape
    if canvas < max(h, w):
        raise ValueError(f"canvas {canvas} is smaller than the {h}x{w} images")
    top, left = (canvas - h) // 2, (canvas - w) // 2
    padded = F.pad(images, (left, canvas - w - left, top, canvas - h - top))
    return random_shift(padded, max_shift, generator=generator)


class MultiDigitBatch(NamedTuple):
    """Two overlaid digits per example: the input, each digit alone on the same canvas, their labels."""

    images: Tensor  # (b, C, H, W) float in [0, 1]: the two digits added and clipped
    digits: Tensor  # (b, 2, C, H, W) float in [0, 1]: the reconstruction target of each digit's capsule
    labels: Tensor  # (b, 2) int64, two different classes


def overlay_pairs(
    images: Tensor,
    labels: Tensor,
    first: Tensor,
    *,
    generator: torch.Generator | None = None,
    num_classes: int = 10,
    canvas: int = MULTIMNIST_CANVAS,
    max_shift: int = MULTIMNIST_SHIFT,
) -> MultiDigitBatch:
    """MultiMNIST (paper, section 6): each ``images[first]`` with a random partner of a different class.

    The partner comes from the same ``images`` (the same split): its class uniformly among the other
    ``num_classes - 1``, then an image uniformly within that class (drawn without any host-device sync, so
    it runs inside a GPU training step at full speed). Each digit is shifted by up to ``max_shift`` px in
    each direction on a black ``canvas`` square (with ``canvas = 28 + 2 * max_shift`` no digit is ever cut),
    and the pair is summed and clipped to [0, 1].

    Args:
        images: the split, uint8 ``(n, C, 28, 28)``.
        labels: its labels ``(n,)``, every class present (checked for labels on the CPU; on a GPU the check
            would stall the training step, so the trainer checks once when it loads the split).
        first: indices of the first digit of every pair ``(b,)``.
        generator: random source of partners and shifts, on the images' device or the CPU.

    Returns:
        :class:`MultiDigitBatch` with ``images`` ``(b, C, canvas, canvas)``, ``digits``
        ``(b, 2, C, canvas, canvas)`` and ``labels`` ``(b, 2)``.
    """
    by_class = labels.argsort(stable=True)  # the indices of class 0, then of class 1, ...
    counts = torch.zeros(num_classes, dtype=torch.long, device=labels.device).scatter_add_(0, labels, torch.ones_like(labels))
    if labels.device.type == "cpu" and not counts.all():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"each digit is paired with one of another class, but classes {missing} have no images")
    starts = counts.cumsum(0) - counts
    step = draw_on(torch.randint, generator, labels.device, 1, num_classes, first.shape)  # never 0: another class
    other = (labels[first] + step) % num_classes
    within = (draw_on(torch.rand, generator, labels.device, first.shape) * counts[other]).long()
    partner = by_class[starts[other] + within]
    both = torch.stack([images[first], images[partner]], dim=1)  # (b, 2, C, 28, 28)
    placed = place_on_canvas(both.flatten(0, 1), canvas, max_shift, generator=generator).float().div_(255)
    digits = placed.view(len(first), 2, *placed.shape[1:])
    return MultiDigitBatch(digits.sum(1).clamp_(max=1.0), digits, torch.stack([labels[first], labels[partner]], 1))


def multimnist_test_set(images: Tensor, labels: Tensor, *, seed: int = MULTIMNIST_TEST_SEED) -> tuple[Tensor, Tensor]:
    """The fixed MultiMNIST test set: every test digit once, with a partner drawn from ``seed``.

    Returns uint8 images ``(n, C, 36, 36)`` (the clipped sum is exact in uint8) and labels ``(n, 2)``.
    """
    batch = overlay_pairs(images, labels, torch.arange(len(labels), device=labels.device),
                          generator=torch.Generator().manual_seed(seed))  # on the CPU: the same set from any device
    return batch.images.mul(255).round_().to(torch.uint8), batch.labels


class AffineRanges(TypedDict):
    """The bounds of random affine maps: rotation within +-degrees, shear within +-shear, scale per axis."""

    rotation_degrees: float
    shear: float
    scale: tuple[float, float]


AFFNIST_SIZE = 40  # affNIST's images are 40x40
# affNIST (Tieleman 2013): every test digit under a random affine map within these ranges.
AFFNIST_RANGES: Final[AffineRanges] = {"rotation_degrees": 20.0, "shear": 0.2, "scale": (0.8, 1.2)}


def sample_affine_parameters(count: int, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Uniform draws within :data:`AFFNIST_RANGES`: rotation (degrees), shear, and a scale per axis, ``(count,)`` each."""
    check_generator(generator)

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    rotation, shear, (low, high) = AFFNIST_RANGES["rotation_degrees"], AFFNIST_RANGES["shear"], AFFNIST_RANGES["scale"]
    return {"rotation_degrees": uniform(-rotation, rotation), "shear": uniform(-shear, shear),
            "scale_x": uniform(low, high), "scale_y": uniform(low, high)}


def random_affine(images: Tensor, *, generator: torch.Generator | None = None, canvas: int = AFFNIST_SIZE) -> Tensor:
    """``affnist-synthetic``: MNIST digits under random affine maps drawn as affNIST describes.

    Each digit is centred on a ``canvas`` square, rotated, sheared and scaled about the centre (parameters
    from :func:`sample_affine_parameters`), then moved by a random whole-pixel translation drawn uniformly
    among those that keep all of its ink inside the canvas. Not the real affNIST test set (its images come
    from the same kind of maps but not these draws): label results with the set that was used.

    Shape:
        uint8 ``(n, C, 28, 28)`` -> float ``(n, C, canvas, canvas)`` in [0, 1].
    """
    count = images.shape[0]
    if count == 0:  # affine_grid refuses an empty batch
        return torch.zeros(0, images.shape[1], canvas, canvas, device=images.device)
    params = sample_affine_parameters(count, generator=generator)
    centred = place_on_canvas(images.float().div(255), canvas, 0)
    warped = _warp(centred, _affine_matrices(params).to(images.device))
    ink = warped.amax(1) > 0  # (n, canvas, canvas), any channel
    rows, cols = ink.any(2), ink.any(1)
    top, bottom = _first_true(rows), canvas - 1 - _first_true(rows.flip(1))
    left, right = _first_true(cols), canvas - 1 - _first_true(cols.flip(1))
    dy = _uniform_int(-top, canvas - 1 - bottom, generator).to(images.device)
    dx = _uniform_int(-left, canvas - 1 - right, generator).to(images.device)
    return shift_images(warped, dy, dx, canvas)  # nothing inked is lost: the shifts keep the ink inside


def _affine_matrices(params: dict[str, Tensor]) -> Tensor:
    """Output-to-input sampling matrices ``(n, 2, 3)`` for ``affine_grid``: the inverse of rotate . shear . scale."""
    angle = params["rotation_degrees"] * math.pi / 180
    cos, sin, zero, one = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
    rotate = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear = torch.stack([torch.stack([one, params["shear"]], -1), torch.stack([zero, one], -1)], -2)
    scale = torch.diag_embed(torch.stack([params["scale_x"], params["scale_y"]], -1))
    forward = rotate @ shear @ scale  # (n, 2, 2) in (x, y) coordinates about the centre
    return torch.cat([torch.linalg.inv(forward), torch.zeros(len(angle), 2, 1)], dim=2)


def _warp(images: Tensor, matrices: Tensor) -> Tensor:
    grid = F.affine_grid(matrices, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0, 1)


def _first_true(mask: Tensor) -> Tensor:
    return mask.int().argmax(1)  # (n,): index of the first True (rows without ink do not occur)


def _uniform_int(low: Tensor, high: Tensor, generator: torch.Generator | None) -> Tensor:
    """One integer uniform in ``[low, high]`` per element."""
    return low.cpu() + (torch.rand(len(low), generator=generator) * (high - low + 1).cpu()).floor().long()


AFFNIST_SYNTHETIC_SEED = 2013  # fixed, so that "affnist-synthetic" names one set of images everywhere


def affnist_synthetic(images: Tensor, *, canvas: int = AFFNIST_SIZE, seed: int = AFFNIST_SYNTHETIC_SEED) -> Tensor:
    """The ``affnist-synthetic`` test set: each of ``images`` (all MNIST test digits) under one
    :func:`random_affine` map drawn from ``seed``, stored as uint8 like the real affNIST.

    The draws depend on the number of images: build it from the whole test split, then take a part.

    Shape:
        uint8 ``(n, C, 28, 28)`` -> uint8 ``(n, C, canvas, canvas)``.
    """
    generator = torch.Generator().manual_seed(seed)
    return random_affine(images, generator=generator, canvas=canvas).mul_(255).round_().to(torch.uint8)
