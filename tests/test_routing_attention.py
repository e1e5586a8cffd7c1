"""Self-attention routing (Efficient-CapsNet): values against a loop transcription, gradients, invariances."""

import math

import pytest
import torch

import capsnet
from capsnet import SelfAttentionRouting
from reference import self_attention_reference


def random_u_hat(batch=2, in_caps=6, out_caps=4, dim=3, requires_grad=False):
    return (torch.randn(batch, in_caps, out_caps, dim, dtype=torch.float64) * 0.7).requires_grad_(requires_grad)


def routing_with_prior(in_caps=6, out_caps=4):
    routing = SelfAttentionRouting(in_caps, out_caps).double()
    with torch.no_grad():
        routing.prior.copy_(torch.randn(in_caps, out_caps) * 0.1)
    return routing


@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_loop_reference_values_and_gradients(with_prior, with_bias):
    u_hat = random_u_hat(requires_grad=True)
    routing = routing_with_prior() if with_prior else SelfAttentionRouting()
    bias = torch.randn(4, 3, dtype=torch.float64, requires_grad=True) if with_bias else None
    inputs = (u_hat, *routing.parameters(), *([bias] if with_bias else []))
    weights = torch.randn(2, 4, 3, dtype=torch.float64)
    v, c = routing(u_hat, bias)
    v_ref, c_ref = self_attention_reference(u_hat, routing.prior, bias)
    grads = torch.autograd.grad((v * weights).sum(), inputs)
    grads_ref = torch.autograd.grad((v_ref * weights).sum(), inputs)
    for value, expected in ((v, v_ref), (c, c_ref), *zip(grads, grads_ref)):
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    u_hat = random_u_hat(batch=2, in_caps=5, out_caps=3, dim=2, requires_grad=True)
    routing = routing_with_prior(5, 3)
    bias = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, p, b: torch.func.functional_call(routing, {"prior": p}, (u, b)).poses,
                                    (u_hat, routing.prior.detach().clone().requires_grad_(), bias))


def test_known_value_of_one_lower_capsule_voting_for_two():
    # One lower capsule: its agreement with all the votes for j is |u_hat[j|0]|^2 / sqrt(d).
    u_hat = torch.tensor([[[[3.0, 4.0], [0.0, 1.0]]]], dtype=torch.float64)  # (b=1, i=1, j=2, d=2)
    v, c = SelfAttentionRouting()(u_hat)
    expected_c = torch.softmax(torch.tensor([25.0, 1.0], dtype=torch.float64) / math.sqrt(2), dim=0)
    torch.testing.assert_close(c[0, 0], expected_c)
    torch.testing.assert_close(v[0], capsnet.squash(expected_c[:, None] * u_hat[0, 0]))


def test_coupling_is_a_softmax_over_the_higher_capsules_per_example_and_input_capsule():
    u_hat = random_u_hat(batch=3, in_caps=20, out_caps=7)
    v, c = SelfAttentionRouting()(u_hat)
    torch.testing.assert_close(c.sum(dim=-1), torch.ones(3, 20, dtype=torch.float64))
    assert not torch.allclose(c.sum(dim=1), torch.ones(3, 7, dtype=torch.float64))
    for n in range(3):  # a batch of N is N batches of 1: nothing is shared across examples
        v_n, c_n = SelfAttentionRouting()(u_hat[n : n + 1])
        torch.testing.assert_close(v_n, v[n : n + 1])
        torch.testing.assert_close(c_n, c[n : n + 1])


def test_output_invariant_to_permuting_input_capsules_without_a_prior():
    u_hat = random_u_hat(in_caps=12)
    perm = torch.randperm(12)
    v, c = SelfAttentionRouting()(u_hat)
    v_perm, c_perm = SelfAttentionRouting()(u_hat[:, perm])
    torch.testing.assert_close(v_perm, v)
    torch.testing.assert_close(c_perm, c[:, perm])


def test_prior_starts_at_zero_learns_and_checks_its_shape():
    routing = SelfAttentionRouting(6, 4)
    assert isinstance(routing.prior, torch.nn.Parameter) and routing.prior.shape == (6, 4)
    assert not routing.prior.any() and repr(routing) == "SelfAttentionRouting(in_caps=6, out_caps=4)"
    u_hat = random_u_hat().float()
    torch.testing.assert_close(routing(u_hat).poses, SelfAttentionRouting()(u_hat).poses)  # a prior of 0 adds nothing
    learned = routing_with_prior().float()
    v, c = learned(u_hat)
    torch.testing.assert_close(c, SelfAttentionRouting()(u_hat).coupling)  # the coupling is the softmax alone
    assert not torch.allclose(v, SelfAttentionRouting()(u_hat).poses)
    routing(u_hat).poses.square().sum().backward()
    assert routing.prior.grad is not None and routing.prior.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"SelfAttentionRouting has a prior for \(6, 4\) \(in_caps, out_caps\), but "
                                         r"u_hat has \(6, 5\)"):
        routing(torch.randn(2, 6, 5, 3))
    with pytest.raises(ValueError, match="give both in_caps and out_caps for a learned prior, or neither"):
        SelfAttentionRouting(in_caps=1152)
    with pytest.raises(ValueError, match="out_caps must be an integer >= 1, got 0"):
        SelfAttentionRouting(1152, 0)


def test_registered_and_usable_in_the_paper_model():
    assert "self-attention" in capsnet.list_routings()
    assert isinstance(capsnet.create_routing("self-attention"), SelfAttentionRouting)
    model = capsnet.CapsNet(conv_channels=8, primary_types=2, routing=SelfAttentionRouting(2 * 6 * 6, 10))
    images, labels = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    out = model(images, labels)
    assert out.poses.shape == (3, 10, 16) and out.coupling.shape == (3, 72, 10)
    capsnet.CapsuleLoss()(out, images, labels).backward()
    assert model.digits.routing.prior.grad is not None and model.digits.weight.grad.abs().sum() > 0


def test_registered_model_sizes_its_prior_from_the_image():
    for size, primary in ((28, 1152), (40, 4608)):  # 32 types on 6x6 and 12x12 grids
        model = capsnet.create_model("capsnet-self-attention", image_size=size, routing_iterations=3, device="meta")
        assert repr(model.digits.routing) == f"SelfAttentionRouting(in_caps={primary}, out_caps=10)"
    assert capsnet.is_capsule_model("capsnet-self-attention")
    with pytest.warns(UserWarning, match=r"routing_iterations does not apply to self-attention routing \(one pass\)") \
            as caught:
        capsnet.create_model("capsnet-self-attention", routing_iterations=1, device="meta")
    assert [warning.filename for warning in caught] == [__file__]  # the caller's line, not the registry's
    with pytest.raises(TypeError, match="routes by self-attention; for another routing: CapsNet"):
        capsnet.create_model("capsnet-self-attention", routing=SelfAttentionRouting())
    model = capsnet.models.capsnet.capsnet_with_self_attention(conv_channels=8, primary_types=2, dtype=torch.float64)
    assert model.digits.routing.prior.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_votes_are_summed_in_float32(dtype):
    # Votes for one capsule that agree: their sum over 1152 lower capsules overflows float16 (max 65504).
    u_hat = torch.full((2, 1152, 10, 16), 3.0) + torch.randn(2, 1152, 10, 16) * 0.01
    for routing in (SelfAttentionRouting(), SelfAttentionRouting(1152, 10)):
        v, c = routing(u_hat.to(dtype))
        v_wide, c_wide = routing(u_hat.to(dtype).float())
        assert v.dtype == c.dtype == dtype and torch.isfinite(c).all() and torch.isfinite(v).all()
        torch.testing.assert_close(c.float(), c_wide, atol=1e-2, rtol=0)
        torch.testing.assert_close(v.float(), v_wide, atol=1e-2, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as --precision bf16 runs it
        v, c = SelfAttentionRouting()(u_hat[:, :, :, :8] * 0.1)
    assert torch.isfinite(v).all() and torch.isfinite(c).all()
