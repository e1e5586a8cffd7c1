"""Mini-batches from in-memory tensors, without ``torch.utils.data.DataLoader``.

MNIST fits in memory as one uint8 tensor, so a batch is one indexing operation: no workers, no per-image
Python, no collation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from capsnet._checks import check_int

__all__ = ["TensorLoader"]


class TensorLoader:
    """Iterate over ``(images, labels)`` batches of two tensors that share their first dim.

    Batches keep the stored dtype (uint8 images); converting to float and augmenting are the caller's job.

    Args:
        images: all examples, first dim = number of examples.
        labels: one label per example.
        batch_size: examples per batch.
        shuffle: draw a new random order at the start of each epoch (one ``randperm``).
        drop_last: skip the final batch when it is smaller than ``batch_size``.
        generator: random source for the shuffle order (CPU or the tensors' device).
        device: where batches are moved; ``None`` leaves them where the tensors are.

    Shape:
        - images: ``(n, *)``, labels: ``(n, *)``
        - each batch: ``(batch_size, *)``, the last one possibly smaller unless ``drop_last``

    Example:
        >>> loader = TensorLoader(torch.zeros(10, 1, 28, 28), torch.arange(10), batch_size=4, shuffle=False)
        >>> len(loader), [tuple(y.tolist()) for _, y in loader]
        (3, [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)])
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if images.dim() == 0 or labels.dim() == 0 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images and labels need the same first dim, got shapes {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        if images.device != labels.device:
            raise ValueError(f"images and labels must be on one device, got {images.device} and {labels.device}")
        batch_size = check_int(batch_size, "batch_size", 1)
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.generator = generator
        self.device = None if device is None else torch.device(device)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = self.labels.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        for k in range(len(self)):
            start = k * self.batch_size
            index = slice(start, start + self.batch_size) if order is None else order[start : start + self.batch_size]
            yield self._to_device(self.images[index]), self._to_device(self.labels[index])

    def _order(self) -> torch.Tensor | None:
        """A fresh permutation on the tensors' device when shuffling, else ``None`` (plain slicing)."""
        if not self.shuffle:
            return None
        source = self.generator.device if self.generator is not None else self.images.device
        n = self.labels.shape[0]
        return torch.randperm(n, generator=self.generator, device=source).to(self.images.device)

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        return batch if self.device is None else batch.to(self.device)
