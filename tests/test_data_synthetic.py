"""MultiMNIST pairs and affNIST-like affine maps: deterministic, inside the canvas, in range."""

import pytest
import torch

from capsnet.data import MNIST, random_shift
from capsnet.data.synthetic import (
    AFFNIST_RANGES, _affine_matrices, _warp, multimnist_test_set, overlay_pairs, place_on_canvas, random_affine,
    sample_affine_parameters,
)


@pytest.fixture
def digits(shared_data):
    test = MNIST(shared_data, train=False, download=False)
    return test.images[:500], test.labels[:500]


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_place_on_canvas_keeps_every_pixel_and_stays_inside():
    images = torch.randint(1, 256, (50, 1, 28, 28), dtype=torch.uint8)  # ink up to the border
    placed = place_on_canvas(images, 36, 4, generator=seeded())
    assert placed.shape == (50, 1, 36, 36) and placed.dtype == torch.uint8
    assert torch.equal(placed.flatten(1).long().sum(1), images.flatten(1).long().sum(1))  # nothing cut off
    assert torch.equal(place_on_canvas(images, 36, 0)[:, :, 4:32, 4:32], images)  # no shift: centred
    with pytest.raises(ValueError, match="canvas 20 is smaller than the 28x28 images"):
        place_on_canvas(images, 20, 0)


def test_multimnist_pairs_have_two_classes_stay_in_the_canvas_and_are_clipped(digits):
    images, labels = digits
    first = torch.arange(200)
    batch = overlay_pairs(images, labels, first, generator=seeded())
    assert batch.images.shape == (200, 1, 36, 36) and batch.digits.shape == (200, 2, 1, 36, 36)
    assert (batch.labels[:, 0] != batch.labels[:, 1]).all()
    assert torch.equal(batch.labels[:, 0], labels[first])
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    torch.testing.assert_close(batch.images, (batch.digits[:, 0] + batch.digits[:, 1]).clamp(max=1))
    # Each digit keeps all of its ink: it was shifted inside the 36x36 canvas, not cut.
    ink = images.float().div(255).flatten(1).sum(1)
    torch.testing.assert_close(batch.digits[:, 0].flatten(1).sum(1), ink[first])


def test_multimnist_digits_shift_by_at_most_4_px_and_are_never_cut():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (300, 1, 28, 28), dtype=torch.uint8)  # ink up to the border
    labels = torch.arange(300) % 10
    batch = overlay_pairs(images, labels, torch.arange(300), generator=seeded())
    ink = images.float().div(255).flatten(1).sum(1)
    partner_ink = batch.digits[:, 1].flatten(1).sum(1)
    torch.testing.assert_close(batch.digits[:, 0].flatten(1).sum(1), ink)
    assert all(torch.isclose(partner_ink[k], ink[labels == batch.labels[k, 1]]).any() for k in range(300))
    # The 28x28 box of ink starts 0..8 px from the canvas edge: shifts of -4..4 around the centre, all used.
    rows = batch.digits[:, :, 0].flatten(0, 1).sum(-1) > 0  # (600, 36) rows with ink
    top = rows.int().argmax(1)
    assert top.min() == 0 and top.max() == 8 and len(top.unique()) == 9
    partners_per_class = torch.bincount(batch.labels[:, 1], minlength=10)
    assert (partners_per_class > 10).all()  # every other class gets chosen


def test_multimnist_is_deterministic_for_a_seed(digits):
    images, labels = digits
    a = overlay_pairs(images, labels, torch.arange(64), generator=seeded(3))
    b = overlay_pairs(images, labels, torch.arange(64), generator=seeded(3))
    c = overlay_pairs(images, labels, torch.arange(64), generator=seeded(4))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_multimnist_test_set_is_fixed_and_pairs_every_digit_with_one_of_another_class(digits):
    images, labels = digits
    test_images, test_labels = multimnist_test_set(images, labels)
    assert test_images.shape == (500, 1, 36, 36) and test_images.dtype == torch.uint8
    assert torch.equal(test_labels[:, 0], labels) and (test_labels[:, 0] != test_labels[:, 1]).all()
    again_images, again_labels = multimnist_test_set(images, labels)
    assert torch.equal(test_images, again_images) and torch.equal(test_labels, again_labels)
    assert not torch.equal(multimnist_test_set(images, labels, seed=1)[1], test_labels)


def test_affine_parameters_stay_inside_the_affnist_ranges():
    params = sample_affine_parameters(10_000, generator=seeded())
    assert params["rotation_degrees"].abs().max() <= 20 and params["rotation_degrees"].abs().max() > 19.9
    assert params["shear"].min() < -0.199 and params["shear"].max() > 0.199 and params["shear"].abs().max() <= 0.2
    assert params["rotation_degrees"].min() < -19.9  # both signs, not only the largest magnitude
    for axis in ("scale_x", "scale_y"):
        assert 0.8 <= params[axis].min() < 0.81 and 1.19 < params[axis].max() <= 1.2
    assert AFFNIST_RANGES == {"rotation_degrees": 20.0, "shear": 0.2, "scale": (0.8, 1.2)}


@pytest.mark.parametrize("rotation, shear, scale, inverse", [
    (90.0, 0.0, (1.0, 1.0), [[0.0, 1.0], [-1.0, 0.0]]),  # the inverse of a quarter turn
    (0.0, 0.2, (1.0, 1.0), [[1.0, -0.2], [0.0, 1.0]]),
    (0.0, 0.0, (0.8, 1.25), [[1.25, 0.0], [0.0, 0.8]]),
    # rotate @ shear @ scale = [[0, -1.2], [0.8, 0.24]] (determinant 0.96), inverted by hand:
    (90.0, 0.2, (0.8, 1.2), [[0.25, 1.25], [-0.8 / 0.96, 0.0]]),
])
def test_affine_sampling_matrices_invert_rotation_shear_and_scale_in_that_order(rotation, shear, scale, inverse):
    from capsnet.data.synthetic import _affine_matrices

    params = {"rotation_degrees": torch.tensor([rotation]), "shear": torch.tensor([shear]),
              "scale_x": torch.tensor([scale[0]]), "scale_y": torch.tensor([scale[1]])}
    expected = torch.tensor([[inverse[0] + [0.0], inverse[1] + [0.0]]])  # no translation: it comes after
    torch.testing.assert_close(_affine_matrices(params), expected, atol=1e-6, rtol=0)


def test_affnist_synthetic_digits_are_inside_the_canvas_and_reproducible(digits):
    images, _ = digits
    out = random_affine(images[:100], generator=seeded(), canvas=40)
    assert out.shape == (100, 1, 40, 40) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, random_affine(images[:100], generator=seeded(), canvas=40))
    empty = random_affine(images[:0], generator=seeded(), canvas=40)
    assert empty.shape == (0, 1, 40, 40)  # an empty batch, as random_shift
    # The ink of each digit is conserved up to the scale's area change (bilinear sampling blurs a little).
    params = sample_affine_parameters(100, generator=seeded())
    area = params["scale_x"] * params["scale_y"]
    ratio = out.flatten(1).sum(1) / (images[:100].float().div(255).flatten(1).sum(1) * area)
    assert ratio.min() > 0.9 and ratio.max() < 1.1
    # The translation after the warp moves all of the ink and cuts none of it off.
    warped = _warp(place_on_canvas(images[:100].float().div(255), 40, 0), _affine_matrices(params))
    torch.testing.assert_close(out.flatten(1).sum(1), warped.flatten(1).sum(1))
    assert not torch.equal(out, warped)
    # Translations differ between digits: the ink's centre moves around the canvas.
    rows = torch.arange(40.0).view(1, 40, 1)
    centre_y = (out[:, 0] * rows).flatten(1).sum(1) / out.flatten(1).sum(1)
    assert centre_y.std() > 2



def test_affnist_synthetic_is_a_fixed_uint8_set(digits):
    from capsnet.data.synthetic import affnist_synthetic

    images, _ = digits
    first = affnist_synthetic(images[:300])
    assert first.shape == (300, 1, 40, 40) and first.dtype == torch.uint8
    assert torch.equal(first, affnist_synthetic(images[:300]))
    assert not torch.equal(first, affnist_synthetic(images[:300], seed=1))


def test_the_generator_is_keyword_only_and_checked():
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    for positional in (lambda: random_affine(images, generator), lambda: place_on_canvas(images, 40, 6, generator),
                       lambda: random_shift(images, 2, generator), lambda: sample_affine_parameters(2, generator),
                       lambda: overlay_pairs(images, torch.arange(2), torch.arange(2), generator)):
        with pytest.raises(TypeError, match="positional argument"):  # a size in its place cannot be taken for it
            positional()
    message = r"^generator must be a torch.Generator or None, got int \(40\)$"
    with pytest.raises(TypeError, match=message):
        random_affine(images, generator=40)
    with pytest.raises(TypeError, match=message):
        place_on_canvas(images.float(), 40, 6, generator=40)
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator or None, got int \(2\)$"):
        random_shift(images, 2, generator=2)
    assert random_affine(images, generator=generator).shape == (2, 1, 40, 40)
