"""The fixed test sets every run is scored on: pinned, so that no refactor changes them unseen."""

import hashlib

import pytest
import torch

from capsnet.data.synthetic import overlay_pairs
from capsnet.data.testsets import load_test_set
from capsnet.data.transforms import shift_images


def test_the_multimnist_test_set_is_pinned(shared_data):
    test = load_test_set("multimnist", str(shared_data))
    assert test.images.shape == (10_000, 1, 36, 36) and test.images.dtype == torch.uint8
    assert hashlib.sha256(test.images.numpy().tobytes()).hexdigest() == \
        "512419c86dc612cdda92c419621da3c0eb509dc9fd4a3cf6ab60ea5f524717e5"
    assert test.labels[:8].tolist() == [[7, 0], [2, 7], [1, 5], [0, 1], [4, 1], [1, 0], [4, 3], [9, 5]]


def test_the_affnist_synthetic_set_is_pinned(shared_data):
    extra = load_test_set("mnist", str(shared_data), canvas=40, extra_test="affnist-synthetic").extra_images
    first = extra[:6, 0].float()  # (6, 40, 40)
    ink = first.flatten(1).sum(1)
    centre_y = (first * torch.arange(40.0).view(1, 40, 1)).flatten(1).sum(1) / ink
    centre_x = (first * torch.arange(40.0).view(1, 1, 40)).flatten(1).sum(1) / ink
    # Ink centres rather than bytes: bilinear warps may round a pixel differently on another CPU.
    torch.testing.assert_close(centre_y, torch.tensor([20.58, 11.81, 13.19, 14.07, 28.25, 17.81]), atol=0.05, rtol=0)
    torch.testing.assert_close(centre_x, torch.tensor([8.8, 17.86, 31.95, 9.93, 21.5, 18.39]), atol=0.05, rtol=0)


@pytest.mark.parametrize("settings", [{"dataset": "multimnist"},
                                      {"dataset": "mnist", "canvas": 40, "extra_test": "affnist-synthetic"}])
def test_limit_test_takes_the_first_images_of_the_same_set(shared_data, settings):
    whole = load_test_set(data_dir=str(shared_data), **settings)
    part = load_test_set(data_dir=str(shared_data), limit=40, **settings)
    for name in ("images", "labels", "extra_images", "extra_labels"):
        if getattr(whole, name) is not None:
            assert torch.equal(getattr(part, name), getattr(whole, name)[:40])


def test_pairs_need_every_class_and_shifts_their_bound():
    labels = torch.tensor([1, 2, 3, 1, 2, 3])  # no 0
    with pytest.raises(ValueError, match=r"classes \[0\] have no images"):
        overlay_pairs(torch.zeros(6, 1, 28, 28, dtype=torch.uint8), labels, torch.arange(6), num_classes=4)
    with pytest.raises(ValueError, match="shifts must be within max_shift=1 pixels, got up to 0 down and 3 right"):
        shift_images(torch.zeros(2, 1, 4, 4), torch.tensor([0, 0]), torch.tensor([3, 1]), 1)
