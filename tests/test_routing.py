import pytest
import torch

import capsnet
from capsnet.routing import DynamicRouting, Routing, RoutingOutput, create_routing, dynamic_routing, list_routings
from reference import routing_reference


def random_u_hat(batch=2, in_caps=6, out_caps=4, dim=3, dtype=torch.float64, requires_grad=False):
    return (torch.randn(batch, in_caps, out_caps, dim, dtype=dtype) * 0.7).requires_grad_(requires_grad)


TOLERANCES = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-12}}


@pytest.mark.parametrize("dtype", TOLERANCES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("detach", [True, False])
def test_routing_matches_loop_reference_values_and_gradients(iterations, detach, with_bias, dtype):
    u_hat = random_u_hat(dtype=dtype, requires_grad=True)
    bias = torch.randn(4, 3, dtype=dtype, requires_grad=True) if with_bias else None
    weights = torch.randn(2, 4, 3, dtype=dtype)
    inputs = (u_hat, bias) if with_bias else (u_hat,)
    v, c = dynamic_routing(u_hat, iterations, detach_intermediate=detach, bias=bias)
    grads = torch.autograd.grad((v * weights).sum(), inputs)
    v_ref, c_ref = routing_reference(u_hat, iterations, detach_intermediate=detach, bias=bias)
    grads_ref = torch.autograd.grad((v_ref * weights).sum(), inputs)
    for value, expected in ((v, v_ref), (c, c_ref), *zip(grads, grads_ref)):
        torch.testing.assert_close(value, expected, **TOLERANCES[dtype])


def test_detach_changes_gradients_but_not_values():
    u_hat = random_u_hat(requires_grad=True)
    results = {}
    for detach in (True, False):
        v, c = dynamic_routing(u_hat, 3, detach_intermediate=detach)
        results[detach] = (v, torch.autograd.grad(v.square().sum(), u_hat)[0])
    torch.testing.assert_close(results[True][0], results[False][0])
    assert not torch.allclose(results[True][1], results[False][1])


def test_detached_coupling_is_a_constant_of_backprop():
    # With detach_intermediate, the last iteration is s = sum_i c u_hat with c treated as constant.
    u_hat = random_u_hat(requires_grad=True)
    v, c = dynamic_routing(u_hat, 3, detach_intermediate=True)
    assert not c.requires_grad
    g = torch.randn_like(v)
    (grad,) = torch.autograd.grad(v, u_hat, g)
    s = (c.unsqueeze(-1) * u_hat).sum(1).detach().requires_grad_()
    (grad_s,) = torch.autograd.grad(capsnet.squash(s), s, g)
    torch.testing.assert_close(grad, c.unsqueeze(-1) * grad_s.unsqueeze(1))


def test_routing_gradcheck_float64():
    u_hat = random_u_hat(batch=2, in_caps=5, out_caps=3, dim=2, requires_grad=True)
    bias = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, b: dynamic_routing(u, 3, detach_intermediate=False, bias=b).poses, (u_hat, bias))
    # detach_intermediate deliberately drops part of d v / d u_hat, so finite differences only agree
    # where nothing is detached: with one iteration, and for the bias (never detached).
    assert torch.autograd.gradcheck(lambda u, b: dynamic_routing(u, 1, bias=b).poses, (u_hat, bias))
    assert torch.autograd.gradcheck(lambda b: dynamic_routing(u_hat.detach(), 3, bias=b).poses, (bias,))


def test_large_agreements_give_finite_coupling_equal_to_the_reference():
    # Votes this long make routing logits above 88, where float32 exp() overflows unless each row's max is
    # taken out first.
    u_hat = random_u_hat(batch=2, in_caps=6, out_caps=4, dim=3, dtype=torch.float32) * 40
    v, c = dynamic_routing(u_hat, 3)
    v_ref, c_ref = routing_reference(u_hat.double(), 3)
    assert torch.isfinite(c).all() and torch.isfinite(v).all()
    torch.testing.assert_close(c, c_ref.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, v_ref.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("iterations", [1, 3])
def test_half_precision_votes_are_summed_in_float32(iterations, dtype):
    # 1152 votes of ~100 sum to ~1e5, past float16's largest value (65504), though s = sum_i c_ij u_hat stays below.
    u_hat = torch.full((2, 1152, 10, 16), 100.0) + torch.randn(2, 1152, 10, 16)
    v, c = dynamic_routing(u_hat.to(dtype), iterations)
    v_wide, _ = dynamic_routing(u_hat.to(dtype).float(), iterations)
    assert v.dtype == c.dtype == dtype and torch.isfinite(v).all() and torch.isfinite(c).all()
    torch.testing.assert_close(v.float(), v_wide, atol=1e-2, rtol=0)


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_coupling_rows_sum_to_one_over_higher_capsules(iterations):
    _, c = dynamic_routing(random_u_hat(batch=3, in_caps=20, out_caps=7), iterations)
    assert c.shape == (3, 20, 7)
    torch.testing.assert_close(c.sum(dim=-1), torch.ones(3, 20, dtype=torch.float64))
    assert (c > 0).all()


def test_one_iteration_gives_uniform_coupling():
    u_hat = random_u_hat(in_caps=9, out_caps=4)
    v, c = dynamic_routing(u_hat, iterations=1)
    torch.testing.assert_close(c, torch.full_like(c, 0.25))
    torch.testing.assert_close(v, capsnet.squash(u_hat.sum(dim=1) / 4))  # s = sum_i u_hat / j


def test_more_iterations_sharpen_the_coupling():
    u_hat = random_u_hat(in_caps=30, out_caps=5)
    _, c3 = dynamic_routing(u_hat, 3)
    _, c30 = dynamic_routing(u_hat, 30)
    assert c30.max(dim=-1).values.mean() > c3.max(dim=-1).values.mean() > 0.2


def test_output_invariant_to_permuting_input_capsules():
    u_hat = random_u_hat(in_caps=12)
    perm = torch.randperm(12)
    v, c = dynamic_routing(u_hat, 3)
    v_perm, c_perm = dynamic_routing(u_hat[:, perm], 3)
    torch.testing.assert_close(v_perm, v)
    torch.testing.assert_close(c_perm, c[:, perm])


def test_logits_are_per_example():
    # A batch of N must equal N batches of 1: routing logits are never shared across the batch.
    u_hat = random_u_hat(batch=4)
    v, c = dynamic_routing(u_hat, 3)
    for n in range(4):
        v_n, c_n = dynamic_routing(u_hat[n : n + 1], 3)
        torch.testing.assert_close(v_n, v[n : n + 1])
        torch.testing.assert_close(c_n, c[n : n + 1])


def test_any_memory_layout_gives_the_same_result():
    storage = random_u_hat(batch=3, in_caps=8).transpose(0, 1).contiguous()  # (i, b, j, d) in memory
    v_view, c_view = dynamic_routing(storage.transpose(0, 1), 3)
    v_cont, c_cont = dynamic_routing(storage.transpose(0, 1).contiguous(), 3)
    torch.testing.assert_close(v_view, v_cont)
    torch.testing.assert_close(c_view, c_cont)


def test_bias_is_added_to_s_in_every_iteration():
    u_hat = random_u_hat(in_caps=1, out_caps=2)
    bias = torch.randn(2, 3, dtype=torch.float64)
    v, _ = dynamic_routing(u_hat, 1, bias=bias)  # one input capsule, c = 1/2
    torch.testing.assert_close(v, capsnet.squash(u_hat[:, 0] / 2 + bias))
    v3, _ = dynamic_routing(u_hat, 3, bias=bias)
    assert not torch.allclose(v3, dynamic_routing(u_hat, 3).poses)


def test_module_equals_function_and_returns_named_pair():
    u_hat = random_u_hat()
    out = DynamicRouting(3, detach_intermediate=False)(u_hat)
    assert isinstance(out, RoutingOutput) and isinstance(out, tuple)
    v, c = dynamic_routing(u_hat, 3, detach_intermediate=False)
    torch.testing.assert_close(out.poses, v)
    torch.testing.assert_close(out.coupling, c)
    assert "iterations=3, detach_intermediate=False" in repr(DynamicRouting(3, False))


def test_registry():
    assert "dynamic" in list_routings()
    routing = create_routing("dynamic", iterations=2)
    assert isinstance(routing, DynamicRouting) and isinstance(routing, Routing) and routing.iterations == 2
    with pytest.raises(ValueError, match=r"unknown value 'em-typo' for routing; valid values are .*'dynamic'"):
        create_routing("em-typo")


def test_base_class_validates_input_for_every_algorithm():
    class Mean(Routing):
        def route(self, u_hat, bias):
            return RoutingOutput(capsnet.squash(u_hat.mean(1)), u_hat.new_full(u_hat.shape[:3], 1 / u_hat.shape[2]))

    v, c = Mean()(random_u_hat())
    assert v.shape == (2, 4, 3) and c.shape == (2, 6, 4)
    with pytest.raises(ValueError, match=r"expected u_hat of shape \(b, i, j, d_out\), got \(2, 6, 4\)"):
        Mean()(torch.rand(2, 6, 4))


@pytest.mark.parametrize("iterations", [0, -1, 1.5, True])
def test_bad_iterations_are_rejected(iterations):
    with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
        dynamic_routing(random_u_hat(), iterations)
    with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
        DynamicRouting(iterations)


def test_iterations_may_be_any_integer_type_and_errors_name_the_argument_given():
    routing = DynamicRouting(torch.tensor(2))
    assert routing.iterations == 2 and type(routing.iterations) is int
    for not_a_count in (torch.tensor(True), torch.tensor([3]), torch.tensor(3.0)):
        with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
            DynamicRouting(not_a_count)
    with pytest.raises(ValueError, match="routing_iterations must be an integer >= 1, got 0"):
        capsnet.CapsNet(routing_iterations=0)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"expected u_hat of shape \(b, i, j, d_out\), got \(1152, 10, 16\)"):
        dynamic_routing(torch.rand(1152, 10, 16))
    with pytest.raises(ValueError, match=r"expected bias of shape \(j, d_out\) = \(4, 3\), got \(3, 4\)"):
        dynamic_routing(random_u_hat(), bias=torch.rand(3, 4, dtype=torch.float64))


def test_what_a_routing_returns_is_checked_and_named_after_the_algorithm():
    class Transposed(Routing):
        def route(self, u_hat, bias):
            return RoutingOutput(u_hat.mean(1).transpose(1, 2), u_hat.new_ones(u_hat.shape[:3]))

    with pytest.raises(ValueError, match=r"expected Transposed.route's poses of shape \(b, j, d_out\) = \(2, 4, 3\), "
                                         r"got \(2, 3, 4\)"):
        Transposed()(random_u_hat())

    class Flat(Routing):
        def route(self, u_hat, bias):
            return RoutingOutput(u_hat.mean(1), u_hat.new_ones(u_hat.shape[:2]))

    with pytest.raises(ValueError, match=r"expected Flat.route's coupling of shape \(b, i, j\) = \(2, 6, 4\), got \(2, 6\)"):
        Flat()(random_u_hat())

    class PosesOnly(Routing):
        def route(self, u_hat, bias):
            return u_hat.mean(1)

    with pytest.raises(TypeError, match=r"PosesOnly.route must return RoutingOutput\(poses, coupling\), two tensors; "
                                        r"got Tensor"):
        PosesOnly()(random_u_hat())

    class Unfinished(Routing):
        pass

    with pytest.raises(NotImplementedError, match=r"Unfinished must implement route\(u_hat, bias\)"):
        Unfinished()(random_u_hat())


def test_only_routing_classes_can_be_registered_and_votes_must_be_real_numbers():
    with pytest.raises(TypeError, match=r"register_routing\('mean'\) decorates a subclass of capsnet.routing.Routing"):
        capsnet.register_routing("mean")(lambda u_hat, bias=None: u_hat.mean(1))
    assert "mean" not in list_routings()
    with pytest.raises(TypeError, match="u_hat must be a floating point tensor, got torch.int64"):
        dynamic_routing(torch.ones(2, 6, 4, 3, dtype=torch.long))


def test_float16_routing_sums_a_winner_take_all_capsule_past_65504():
    # Every vote for capsule 0 agrees, so c[i, 0] -> 1 and s_0 ~ 1152 * 100 per component: past float16's 65504
    # unless the sum over i is taken in float32.
    torch.manual_seed(0)
    u_hat = torch.randn(2, 1152, 10, 16) * 0.1
    u_hat[:, :, 0] += 100.0
    v, c = dynamic_routing(u_hat.half(), 3)
    v_wide, _ = dynamic_routing(u_hat.half().float(), 3)
    assert torch.isfinite(v).all() and torch.isfinite(c).all()
    assert c[:, :, 0].float().min() > 0.99
    torch.testing.assert_close(v.float(), v_wide, atol=1e-2, rtol=0)


def test_documented_default_stops_gradients_in_early_iterations():
    torch.manual_seed(0)
    u_hat = (torch.randn(2, 6, 4, 3, dtype=torch.float64) * 0.7).requires_grad_()

    def grad(routing):
        return torch.autograd.grad(routing(u_hat).poses.square().sum(), u_hat)[0]

    detached = grad(lambda u: dynamic_routing(u, 3, detach_intermediate=True))
    torch.testing.assert_close(grad(lambda u: dynamic_routing(u, 3)), detached)
    torch.testing.assert_close(grad(DynamicRouting()), detached)
    assert capsnet.RoutedCapsules(in_caps=6, in_dim=2, out_caps=4, out_dim=3).routing.detach_intermediate is True
