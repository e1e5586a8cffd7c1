import math

import pytest
import torch

from capsnet import CapsuleDecoder, capsule_lengths, mask_capsules, squash
from reference import squash_reference


@pytest.mark.parametrize("norm", [0.1, 0.5, 1.0, 2.0, 10.0])
def test_squash_maps_length_n_to_n2_over_1_plus_n2(norm):
    direction = torch.tensor([1.0, -2.0, 2.0, 0.0], dtype=torch.float64) / 3.0
    v = squash(norm * direction)
    assert v.norm().item() == pytest.approx(norm**2 / (1 + norm**2), rel=1e-12)
    torch.testing.assert_close(v / v.norm(), direction)


def test_squash_hand_computed_values():
    # |(3, 4)| = 5 -> length 25/26, direction (0.6, 0.8); a norm-1 capsule squashes to length exactly 0.5.
    torch.testing.assert_close(squash(torch.tensor([3.0, 4.0])), torch.tensor([0.6, 0.8]) * 25 / 26)
    torch.testing.assert_close(squash(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 0.5]))


def test_squash_matches_the_formula_as_printed():
    s = torch.randn(7, 16, dtype=torch.float64)
    expected = torch.stack([squash_reference(row) for row in s])
    torch.testing.assert_close(squash(s), expected)


def test_squash_acts_along_dim():
    s = torch.randn(3, 8, 5)
    torch.testing.assert_close(squash(s, dim=1), squash(s.transpose(1, 2)).transpose(1, 2))


@pytest.mark.parametrize("dtype, max_log10", [(torch.float32, 1), (torch.float64, 6)])
def test_squash_norm_stays_below_one(dtype, max_log10):
    # 1 - |v| = 1 / (1 + |s|^2) is representable up to |s| ~ 10^(digits / 2) in each dtype.
    s = torch.randn(1000, 16, dtype=dtype) * torch.logspace(-3, max_log10, 1000, dtype=dtype).unsqueeze(1)
    lengths = squash(s).norm(dim=-1)
    assert (lengths < 1).all() and (lengths > 0).all()


def test_squash_of_a_long_float32_vector_is_its_unit_direction():
    # (1 + n^2) * n overflows float32 from n ~ 7e12; n^2 itself only from n ~ 1.8e19.
    direction = torch.tensor([0.6, -0.8])
    for norm in (1e6, 1e13, 1e18):
        torch.testing.assert_close(squash(norm * direction), direction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_squash_at_zero_has_finite_value_and_zero_gradient(dtype):
    s = torch.zeros(2, 16, dtype=dtype, requires_grad=True)
    with torch.autograd.detect_anomaly():
        v = squash(s)
        v.sum().backward()
    assert torch.equal(v, torch.zeros_like(v))
    assert torch.isfinite(s.grad).all()
    # Near 0, squash(s) ~ |s| s, so the true derivative at 0 is 0.
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_squash_gradcheck_float64():
    s = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(squash, (s,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("magnitude", [1e-4, 1.0, 1e4])
def test_squash_half_precision_is_finite_and_accurate(dtype, magnitude):
    s = (torch.randn(64, 16) * magnitude).to(dtype).requires_grad_()
    v = squash(s)
    assert v.dtype == dtype
    assert torch.isfinite(v).all()
    v.float().sum().backward()
    assert torch.isfinite(s.grad).all()
    expected = squash(s.detach().float())
    torch.testing.assert_close(v.float(), expected, atol=1e-2, rtol=1e-2)


def test_capsule_lengths():
    poses = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])
    torch.testing.assert_close(capsule_lengths(poses), torch.tensor([[5.0, 0.0]]))
    assert capsule_lengths(poses.bfloat16()).dtype == torch.float32


def test_mask_capsules_keeps_target_or_longest():
    poses = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    poses[1, 0] = 100.0  # the longest capsule of example 1 is capsule 0
    masked = mask_capsules(poses, torch.tensor([1, 2])).view(2, 3, 2)
    assert torch.equal(masked[0, 1], poses[0, 1]) and masked[0, [0, 2]].abs().sum() == 0
    assert torch.equal(masked[1, 2], poses[1, 2]) and masked[1, :2].abs().sum() == 0
    longest = mask_capsules(poses).view(2, 3, 2)
    assert torch.equal(longest[0, 2], poses[0, 2]) and torch.equal(longest[1, 0], poses[1, 0])
    assert longest[1, 1:].abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_mask_capsules_takes_targets_of_any_integer_type(dtype):
    # one_hot takes only int64: labels read from numpy or a uint8 file must not crash there.
    poses = torch.rand(2, 3, 4)
    labels = torch.tensor([2, 0])
    assert torch.equal(mask_capsules(poses, labels.to(dtype)), mask_capsules(poses, labels))


def test_mask_capsules_rejects_wrong_target_shape():
    with pytest.raises(ValueError, match=r"expected targets of shape \(b,\) = \(2,\), got \(2, 3\)"):
        mask_capsules(torch.rand(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))


def test_squash_is_exactly_half_at_norm_one_in_float32():
    v = squash(torch.tensor([[0.6, 0.8]]))
    assert math.isclose(v.norm().item(), 0.5, rel_tol=1e-6)


def test_squash_refuses_integers_instead_of_rounding_them_to_zero():
    with pytest.raises(TypeError, match="squash takes a floating point tensor, got torch.int64"):
        squash(torch.tensor([[3, 4]]))


def test_targets_outside_the_capsules_are_named():
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 5\), got values from 0 to 7"):
        mask_capsules(torch.rand(2, 5, 3), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 5\), got values from -1 to 2"):
        mask_capsules(torch.rand(2, 5, 3), torch.tensor([2, -1]))


def test_hits_refuses_scores_and_targets_of_different_batches():
    from capsnet.functional import hits

    with pytest.raises(ValueError, match=r"expected scores \(b, k\) and targets \(b,\) or \(b, n\), got \(3, 4\) and \(2,\)"):
        hits(torch.rand(3, 4), torch.tensor([1, 2]))


def test_target_functions_refuse_float_and_bool_targets_instead_of_misreading_multi_hot():
    import capsnet
    from capsnet.functional import hits

    multi_hot = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])  # what margin_loss also takes
    message = r"targets must be integer class indices, got torch.float32; .* targets.nonzero\(\)\[:, 1\].view\(-1, n\)"
    with pytest.raises(TypeError, match=message):
        hits(torch.rand(2, 3), multi_hot)
    with pytest.raises(TypeError, match="targets must be integer class indices, got torch.bool"):
        hits(torch.rand(2, 3), multi_hot.bool())
    with pytest.raises(TypeError, match="targets must be integer class indices, got torch.float32"):
        mask_capsules(torch.rand(2, 3, 4), torch.tensor([1.0, 2.0]))  # would be truncated to indices otherwise
    with pytest.raises(TypeError, match="targets must be integer class indices, got torch.float32"):
        capsnet.create_model("capsnet-tiny")(torch.rand(2, 1, 28, 28), torch.eye(10)[:2])
    # The hint's own recipe gives the indices that hits takes.
    indices = multi_hot.nonzero()[:, 1].view(-1, 2)
    assert hits(torch.tensor([[0.1, 0.9, 0.8], [0.7, 0.9, 0.1]]), indices).tolist() == [True, False]


def test_hits_ignores_the_order_of_the_top_classes_and_of_the_labels():
    from capsnet.functional import hits

    scores = torch.tensor([[0.1, 0.8, 0.9], [0.9, 0.8, 0.1]])  # row 0: the higher score has the higher index
    for labels in ([[1, 2], [0, 1]], [[2, 1], [1, 0]]):
        assert hits(scores, torch.tensor(labels)).tolist() == [True, True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_squash_follows_the_formula_for_short_vectors(dtype):
    # Its epsilon guards only |s| = 0: short capsules keep length n^2 / (1 + n^2).
    direction = torch.tensor([0.6, -0.8], dtype=dtype)
    for norm in (1e-2, 1e-3, 1e-4, 1e-5):
        v = squash(norm * direction)
        assert v.norm().item() == pytest.approx(norm**2 / (1 + norm**2), rel=1e-5)
        torch.testing.assert_close(v / v.norm(), direction)


def test_mask_capsules_and_the_decoder_still_take_their_former_keyword_labels_with_a_warning():
    poses, targets = torch.rand(2, 3, 4), torch.tensor([2, 0])
    decoder = CapsuleDecoder(in_caps=3, in_dim=4, out_features=5)
    with pytest.warns(FutureWarning, match=r"^mask_capsules\(\): labels= is now called targets=") as record:
        assert torch.equal(mask_capsules(poses, labels=targets), mask_capsules(poses, targets=targets))
    with pytest.warns(FutureWarning, match=r"^CapsuleDecoder.forward\(\): labels= is now called targets=") as through:
        assert torch.equal(decoder(poses, labels=targets), decoder(poses, targets))  # through nn.Module.__call__
    assert [warning.filename for warning in [*record, *through]] == [__file__, __file__]  # the caller's line
    with pytest.raises(TypeError, match=r"got both labels= and targets=; labels is the former name of targets"):
        mask_capsules(poses, labels=targets, targets=targets)
    with pytest.raises(TypeError, match=r"got both labels= and targets="):
        decoder(poses, targets, labels=targets)  # targets by position
