"""random_shift (the paper's augmentation) and TensorLoader (in-memory batching)."""

from __future__ import annotations

import pytest
import torch

from capsnet.data import TensorLoader, random_shift
from reference import recover_shifts


def _nonzero_images(b: int, c: int = 1, h: int = 28, w: int = 28, dtype=torch.float32) -> torch.Tensor:
    """Random images without zeros, so zero fill is visible and every shift gives a different result."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(1, 256, (b, c, h, w), generator=generator).to(dtype)


def test_every_example_is_its_input_shifted_by_at_most_two_pixels():
    x = _nonzero_images(256)
    y = random_shift(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    shifts = recover_shifts(x, y, max_shift=2)
    assert len(set(shifts)) >= 20  # independent per example: almost surely all 25 occur among 256
    assert {dx for dx, _ in shifts} == {dy for _, dy in shifts} == {-2, -1, 0, 1, 2}


def test_uncovered_border_is_zero():
    x = _nonzero_images(64)
    y = random_shift(x, generator=torch.Generator().manual_seed(3))
    for n, (dx, dy) in enumerate(recover_shifts(x, y, max_shift=2)):
        uncovered = 28 * 28 - (28 - abs(dx)) * (28 - abs(dy))
        assert int((y[n] == 0).sum()) == uncovered


def test_channels_move_together_and_dtype_is_kept():
    x = _nonzero_images(32, c=3, h=12, w=10, dtype=torch.uint8)
    y = random_shift(x, max_shift=1, generator=torch.Generator().manual_seed(0))
    assert y.dtype == torch.uint8 and y.shape == (32, 3, 12, 10)
    recover_shifts(x, y, max_shift=1)  # one shift for all three channels of each example


def test_seeded_generator_is_deterministic_and_input_untouched():
    x = _nonzero_images(16)
    copy = x.clone()
    a = random_shift(x, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global RNG must not matter when a generator is given
    b = random_shift(x, generator=torch.Generator().manual_seed(7))
    c = random_shift(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, copy)


def test_zero_shift_is_identity():
    x = _nonzero_images(4)
    y = random_shift(x, max_shift=0)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize(
    ("images", "max_shift", "match"),
    [
        (torch.zeros(2, 28, 28), 2, r"\(b, c, h, w\)"),
        (torch.zeros(2, 1, 28, 28), -1, "max_shift must be an integer >= 0, got -1"),
        (torch.zeros(2, 1, 28, 28), 1.5, "max_shift must be an integer >= 0, got 1.5"),
    ],
)
def test_invalid_arguments(images, max_shift, match):
    with pytest.raises(ValueError, match=match):
        random_shift(images, max_shift)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_with_cuda_or_cpu_generator():
    x = _nonzero_images(64).cuda()
    for generator in (torch.Generator(device="cuda").manual_seed(0), torch.Generator().manual_seed(0), None):
        y = random_shift(x, generator=generator)
        assert y.device == x.device and y.dtype == x.dtype
        recover_shifts(x.cpu(), y.cpu(), max_shift=2)


# ---------------------------------------------------------------- TensorLoader


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels all equal their example index (mod 256), so batches can be checked against labels."""
    labels = torch.arange(n)
    images = (labels % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28).contiguous()
    return images, labels


def _epoch(loader: TensorLoader) -> torch.Tensor:
    batches = list(loader)
    assert len(batches) == len(loader)
    for images, labels in batches:
        assert images.dtype == torch.uint8
        assert torch.equal(images[:, 0, 0, 0].long(), labels % 256)  # images and labels stay paired
    return torch.cat([labels for _, labels in batches])


def test_shuffled_epoch_covers_every_example_once_in_a_new_order():
    loader = TensorLoader(*_data(1000), batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
    first, second = _epoch(loader), _epoch(loader)
    assert torch.equal(first.sort().values, torch.arange(1000))
    assert torch.equal(second.sort().values, torch.arange(1000))
    assert not torch.equal(first, torch.arange(1000)) and not torch.equal(first, second)


def test_unshuffled_epoch_is_in_order():
    loader = TensorLoader(*_data(10), batch_size=4, shuffle=False)
    assert torch.equal(_epoch(loader), torch.arange(10))


@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last", "expected_len", "last_size"),
    [(10, 4, False, 3, 2), (10, 4, True, 2, 4), (8, 4, False, 2, 4), (8, 4, True, 2, 4), (3, 4, True, 0, None),
     (0, 4, False, 0, None)],
)
def test_len_with_and_without_drop_last(n, batch_size, drop_last, expected_len, last_size):
    loader = TensorLoader(*_data(n), batch_size=batch_size, shuffle=True, drop_last=drop_last)
    batches = list(loader)
    assert len(loader) == len(batches) == expected_len
    if last_size is not None:
        assert batches[-1][1].shape[0] == last_size


def test_seeded_generator_is_deterministic():
    orders = [
        _epoch(TensorLoader(*_data(100), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(5)))
        for _ in range(2)
    ]
    assert torch.equal(orders[0], orders[1])


def test_batches_are_moved_to_device():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images, labels = next(iter(TensorLoader(*_data(10), batch_size=4, shuffle=False, device=device)))
    assert images.device.type == labels.device.type == device
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64


@pytest.mark.parametrize(
    ("n_labels", "batch_size", "match"),
    [(9, 4, "same first dim"), (10, 0, "batch_size must be an integer >= 1, got 0"), (10, 2.0, "batch_size must be an integer >= 1, got 2.0")],
)
def test_invalid_arguments_loader(n_labels, batch_size, match):
    images, _ = _data(10)
    with pytest.raises(ValueError, match=match):
        TensorLoader(images, torch.arange(n_labels), batch_size=batch_size, shuffle=False)
