"""The paper's CapsNet: Conv1 -> PrimaryCaps -> DigitCaps (routing) -> decoder."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_image_size, check_int, check_shape
from .._export import saved_by_name
from ..functional import capsule_lengths
from ..layers import WEIGHT_INIT_STD, CapsuleDecoder, PrimaryCapsules, RoutedCapsules
from ..routing import ROUTING_ITERATIONS, DynamicRouting, Routing, SelfAttentionRouting

__all__ = ["CapsNet", "CapsNetOutput", "capsnet_with_self_attention"]


@saved_by_name
class CapsNetOutput(NamedTuple):
    """Everything one forward pass of :class:`CapsNet` computes.

    Attributes:
        lengths: ``(b, num_classes)`` capsule lengths, the class probabilities; ``argmax`` predicts.
        poses: ``(b, num_classes, out_dim)`` digit-capsule vectors ``v``.
        reconstructions: ``(b, C * H * W)`` decoder output in [0, 1] (``(b, n, C * H * W)`` for ``(b, n)``
            targets: one reconstruction per object), or ``None`` without a decoder.
        coupling: ``(b, in_caps, num_classes)`` coupling coefficients of the last routing iteration.
        primary: ``(b, in_caps, primary_dim)`` primary-capsule vectors ``u``, what routing sends on (ordered by
            capsule type, then grid row and column).
    """

    lengths: Tensor
    poses: Tensor
    reconstructions: Tensor | None
    coupling: Tensor
    primary: Tensor | None = None


class CapsNet(nn.Module):
    """Capsule network of Sabour, Frosst & Hinton (2017); the defaults are the paper's MNIST model.

    Conv1 (``conv_channels`` 9x9 kernels, stride 1, ReLU) -> :class:`~capsnet.PrimaryCapsules`
    (``primary_types`` x ``primary_dim``-D, 9x9, stride 2) -> :class:`~capsnet.RoutedCapsules` (one
    ``out_dim``-D capsule per class) -> optional :class:`~capsnet.CapsuleDecoder` (FC 512, 1024, C*H*W).
    With the defaults: 8,215,568 parameters, 6,804,224 without the decoder.

    Args:
        num_classes: output capsules, one per class.
        in_channels: image channels ``C``.
        image_size: ``H`` (square images) or ``(H, W)``; at least 17 pixels per side for the two 9x9 convolutions.
        conv_channels: Conv1 kernels (256 in the paper).
        primary_types: primary capsule types (32).
        primary_dim: primary capsule dimension (8).
        out_dim: digit capsule dimension (16).
        routing_iterations: dynamic routing iterations (3); ignored, with a warning, when ``routing`` is given.
        detach_intermediate: stop-gradient through ``u_hat`` in all but the last routing iteration
            (default ``True``; the official code: ``False``); ignored, with a warning, when ``routing`` is given. See
            :func:`capsnet.dynamic_routing`.
        digit_bias: learned bias on each digit capsule's ``s[j]``, as in the official code (off: the
            paper has none; adds ``num_classes * out_dim`` parameters).
        weight_std: standard deviation of the normal initialization of the DigitCaps matrices ``W[i, j]``.
        reconstruction: build the reconstruction decoder.
        routing: a :class:`~capsnet.routing.Routing` module to use instead of dynamic routing.
        device, dtype: where and in which floating point type to create the parameters, e.g.
            ``dtype=torch.float64`` for gradient checks.

    Shape:
        ``images``: ``(b, C, H, W)`` in [0, 1]; ``targets``: ``(b,)`` class indices, ``(b, n)`` (n objects) or ``None``.

    Example:
        >>> model = CapsNet()
        >>> out = model(torch.rand(2, 1, 28, 28))
        >>> out.lengths.shape, out.poses.shape, out.reconstructions.shape, out.coupling.shape
        (torch.Size([2, 10]), torch.Size([2, 10, 16]), torch.Size([2, 784]), torch.Size([2, 1152, 10]))
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 28,
        conv_channels: int = 256,
        primary_types: int = 32,
        primary_dim: int = 8,
        out_dim: int = 16,
        routing_iterations: int = ROUTING_ITERATIONS,
        detach_intermediate: bool = True,
        digit_bias: bool = False,
        weight_std: float = WEIGHT_INIT_STD,
        reconstruction: bool = True,
        routing: Routing | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        sizes = {"num_classes": num_classes, "in_channels": in_channels, "conv_channels": conv_channels,
                 "primary_types": primary_types, "primary_dim": primary_dim, "out_dim": out_dim}
        for name, size in sizes.items():
            check_int(size, name, 1)  # here, so that errors name this constructor's arguments, not a layer's
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.image_size = check_image_size(image_size)
        height, width = self.image_size
        if min(height, width) < 17:
            raise ValueError(f"image_size must be at least 17 x 17 for the two 9x9 convolutions, got {height} x {width}")
        dynamic_options = {"routing_iterations": routing_iterations != ROUTING_ITERATIONS,
                           "detach_intermediate": detach_intermediate is not True}
        if routing is not None and (ignored := [name for name, changed in dynamic_options.items() if changed]):
            one = len(ignored) == 1
            warnings.warn(f"{' and '.join(ignored)} configure{'s' if one else ''} the built-in dynamic routing; "
                          f"{'it is' if one else 'they are'} ignored when routing= is given (set "
                          f"{'it' if one else 'them'} on that routing)", stacklevel=2)
        self.conv1 = nn.Conv2d(in_channels, conv_channels, kernel_size=9, **factory)
        self.primary = PrimaryCapsules(in_channels=conv_channels, types=primary_types, out_dim=primary_dim, **factory)
        grid_h, grid_w = self.primary_grid = self.primary.output_grid(height - 8, width - 8)  # (h, w) of capsules
        self.digits = RoutedCapsules(
            in_caps=primary_types * grid_h * grid_w,
            in_dim=primary_dim,
            out_caps=num_classes,
            out_dim=out_dim,
            routing=routing if routing is not None else DynamicRouting(
                check_int(routing_iterations, "routing_iterations", 1), detach_intermediate
            ),
            bias=digit_bias,
            weight_std=weight_std,
            **factory,
        )
        out_features = in_channels * height * width
        self.decoder = (
            CapsuleDecoder(in_caps=num_classes, in_dim=out_dim, out_features=out_features, **factory)
            if reconstruction
            else None
        )

    def forward(self, images: Tensor, targets: Tensor | None = None) -> CapsNetOutput:
        """Classify ``images``; reconstruct from the ``targets`` capsule(s) if given, else the longest one.

        Shape:
            ``images``: ``(b, C, H, W)``; ``targets``: ``(b,)``, ``(b, n)`` (n objects; integer class indices,
            not multi-hot) or ``None`` ->
            :class:`CapsNetOutput` with
            ``lengths`` ``(b, j)``, ``poses`` ``(b, j, out_dim)``, ``reconstructions`` ``(b, C * H * W)``
            (``(b, n, C * H * W)`` for ``(b, n)`` targets), ``coupling`` ``(b, i, j)``, ``primary``
            ``(b, i, primary_dim)``.
        """
        check_shape(images, "images", "(b, C, H, W)", 4, (None, self.in_channels, *self.image_size))
        if not images.is_floating_point():  # the decoder's sigmoid reconstructs intensities in [0, 1]
            raise TypeError(f"images must be floating point intensities in [0, 1], got {images.dtype} (for uint8 "
                            f"pixels: images.float() / 255)")
        features = F.relu(self.conv1(images))  # (b, conv_channels, H - 8, W - 8)
        primary = self.primary(features)  # (b, i, primary_dim)
        poses, coupling = self.digits(primary)  # (b, j, out_dim), (b, i, j)
        return CapsNetOutput(capsule_lengths(poses), poses, self.reconstruct(poses, targets), coupling, primary)

    if TYPE_CHECKING:  # nn.Module.__call__ returns Any: give type checkers forward's signature (no runtime effect)
        def __call__(self, images: Tensor, targets: Tensor | None = None) -> CapsNetOutput: ...

    def reconstruct(self, poses: Tensor, targets: Tensor | None = None) -> Tensor | None:
        """Decode ``poses`` from the ``targets`` capsule(s), else the longest one; ``None`` without a decoder.

        Shape:
            ``poses``: ``(b, j, out_dim)``; ``targets``: ``(b,)``, ``(b, n)`` or ``None`` -> ``(b, C * H * W)``,
            or ``(b, n, C * H * W)`` for ``(b, n)`` targets.
        """
        if self.decoder is None:
            return None
        # CapsuleDecoder's mask_capsules checks the targets' dtype and values (a repeated class is fine here:
        # decoding the label's capsule and the prediction's, say); their shape is checked here, before (b, n)
        # targets are flattened. shape[0], not len(), which would fix the batch size of a torch.export.
        if targets is not None and (targets.dim() not in (1, 2) or targets.shape[0] != poses.shape[0]):
            raise ValueError(f"expected targets of shape (b,) or (b, n) for b = {poses.shape[0]} images, got "
                             f"{tuple(targets.shape)}")
        if targets is None or targets.dim() == 1:
            return self.decoder(poses, targets)  # (b, C * H * W)
        # Several objects per image (MultiMNIST): decode each from its own capsule, in one batched call.
        batch, objects = targets.shape
        copies = poses.unsqueeze(1).expand(batch, objects, *poses.shape[1:]).flatten(0, 1)  # (b * n, j, d)
        decoded = self.decoder(copies, targets.flatten())  # (b * n, C * H * W)
        return decoded.view(batch, objects, decoded.shape[-1])  # not -1, which an empty batch leaves undecided


def capsnet_with_self_attention(**kwargs: Any) -> CapsNet:
    """:class:`CapsNet` whose DigitCaps route by self-attention (:class:`~capsnet.SelfAttentionRouting`) with
    Efficient-CapsNet's learned prior; ``kwargs`` as for :class:`CapsNet`, but for ``routing`` and
    ``routing_iterations`` and ``detach_intermediate`` (one pass; values other than their defaults are ignored
    with a warning).

    Example:
        >>> capsnet_with_self_attention().digits.routing
        SelfAttentionRouting(in_caps=1152, out_caps=10)
    """
    if "routing" in kwargs:
        raise TypeError("capsnet_with_self_attention routes by self-attention; for another routing: CapsNet(routing=...)")
    if kwargs.pop("routing_iterations", ROUTING_ITERATIONS) != ROUTING_ITERATIONS:
        warnings.warn("routing_iterations does not apply to self-attention routing (one pass); it is ignored",
                      stacklevel=2)
    if kwargs.pop("detach_intermediate", True) is not True:
        warnings.warn("detach_intermediate does not apply to self-attention routing (one pass, no intermediate "
                      "iterations); it is ignored", stacklevel=2)
    model = CapsNet(routing=SelfAttentionRouting(), **kwargs)
    digits = model.digits
    # The prior's size is the number of primary capsules, which CapsNet derives from the image size.
    digits.routing = SelfAttentionRouting(digits.in_caps, digits.out_caps, device=digits.weight.device,
                                          dtype=digits.weight.dtype)
    return model
