"""A dataset of one's own for the tests of ``capsnet.register_dataset``, importable by a plugin module too."""

import torch


def colour_squares(root, train):
    """3 x 24 x 24 noise with the channel of its class (red, green or blue) raised: 96 images, the same at every
    call, a different draw for each split."""
    generator = torch.Generator().manual_seed(0 if train else 1)
    labels = torch.randint(0, 3, (96,), generator=generator)
    images = torch.randint(0, 60, (96, 3, 24, 24), dtype=torch.uint8, generator=generator)
    images[torch.arange(96), labels] += 150
    return images, labels, ["red", "green", "blue"]
