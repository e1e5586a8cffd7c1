import pytest
import torch

import capsnet
from capsnet import CapsuleDecoder, PrimaryCapsules, RoutedCapsules
from capsnet.layers import WEIGHT_INIT_STD


def test_primary_capsules_shape_and_channel_grouping():
    layer = PrimaryCapsules(in_channels=4, types=3, out_dim=5, kernel_size=3, stride=2).double()
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    caps = layer(x)
    assert layer.output_grid(9, 11) == (4, 5)
    assert caps.shape == (2, 3 * 4 * 5, 5)
    conv = layer.conv(x)  # (b, types * dim, h, w): channel t * dim + k is component k of type t
    t, row, col = 2, 1, 3
    index = t * 4 * 5 + row * 5 + col  # capsules ordered by (type, row, column)
    torch.testing.assert_close(caps[1, index], capsnet.squash(conv[1, t * 5 : (t + 1) * 5, row, col]))


def test_primary_capsules_take_a_kernel_and_stride_per_axis():
    layer = PrimaryCapsules(in_channels=4, types=3, out_dim=5, kernel_size=(3, 5), stride=(1, 2)).double()
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    assert layer.output_grid(9, 11) == (7, 4) and layer(x).shape == (2, 3 * 7 * 4, 5)
    conv = layer.conv(x)  # (2, 15, 7, 4)
    t, row, col = 1, 6, 2
    torch.testing.assert_close(layer(x)[0, t * 7 * 4 + row * 4 + col], capsnet.squash(conv[0, 5:10, row, col]))


def test_primary_capsules_paper_size():
    assert PrimaryCapsules(in_channels=256)(torch.randn(1, 256, 20, 20)).shape == (1, 1152, 8)


def test_routed_capsules_predictions_are_w_times_u():
    layer = RoutedCapsules(in_caps=5, in_dim=3, out_caps=4, out_dim=2).double()
    u = torch.randn(6, 5, 3, dtype=torch.float64)
    expected = torch.einsum("ijdk,bik->bijd", layer.weight, u)  # u_hat[j|i] = W[i, j] @ u[i]
    torch.testing.assert_close(layer.predictions(u), expected)
    assert layer.weight.shape == (5, 4, 2, 3)


def test_routed_capsules_forward_is_routing_of_predictions():
    routing = capsnet.DynamicRouting(iterations=2)
    layer = RoutedCapsules(in_caps=5, in_dim=3, out_caps=4, out_dim=2, routing=routing, bias=True).double()
    torch.nn.init.normal_(layer.bias)
    u = torch.randn(6, 5, 3, dtype=torch.float64)
    v, c = layer(u)
    v_ref, c_ref = capsnet.dynamic_routing(layer.predictions(u), 2, bias=layer.bias)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(c, c_ref)
    assert layer.routing is routing and sum(p.numel() for p in layer.parameters()) == 5 * 4 * 2 * 3 + 4 * 2
    assert torch.equal(RoutedCapsules(in_caps=5, in_dim=3, out_caps=4, out_dim=2, bias=True).bias,
                       torch.full((4, 2), 0.1))  # the official code's initial bias


def test_routed_capsules_default_routing_and_gradients():
    layer = RoutedCapsules(in_caps=1152, in_dim=8, out_caps=10, out_dim=16)
    assert isinstance(layer.routing, capsnet.DynamicRouting) and layer.routing.iterations == 3
    assert layer.bias is None
    u = torch.randn(2, 1152, 8, requires_grad=True)
    v, c = layer(u)
    assert v.shape == (2, 10, 16) and c.shape == (2, 1152, 10)
    v.square().sum().backward()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0


def test_a_model_moved_to_channels_last_computes_the_same_outputs():
    # model.to(memory_format=channels_last) re-lays out every 4-D parameter, W[i, j] of shape (i, j, d_out, d_in) too.
    model = capsnet.create_model("capsnet-tiny")
    images = torch.rand(3, 1, 28, 28)
    expected = model(images).lengths
    model.to(memory_format=torch.channels_last)
    assert not model.digits.weight.is_contiguous()
    torch.testing.assert_close(model(images.contiguous(memory_format=torch.channels_last)).lengths, expected)


def test_routed_capsules_rejects_wrong_input():
    layer = RoutedCapsules(in_caps=1152, in_dim=8, out_caps=10, out_dim=16)
    with pytest.raises(ValueError, match=r"expected u of shape \(b, in_caps, in_dim\) = \(\*, 1152, 8\), got \(2, 1152, 16\)"):
        layer(torch.randn(2, 1152, 16))
    with pytest.raises(TypeError, match="u is torch.float64 but the weights W of RoutedCapsules are torch.float32"):
        layer(torch.randn(2, 1152, 8, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 capsules from the layers before, cast with W
        assert layer(torch.randn(2, 1152, 8, dtype=torch.bfloat16)).poses.shape == (2, 10, 16)


def test_routed_capsules_constructor_is_keyword_only():
    with pytest.raises(TypeError):
        RoutedCapsules(1152, 8, 10, 16)


def test_decoder_architecture_and_shape():
    decoder = CapsuleDecoder()
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(160, 512), (512, 1024), (1024, 784)]
    nn = torch.nn
    assert [type(m) for m in decoder.net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear, nn.Sigmoid]
    out = decoder(torch.randn(3, 10, 16))
    assert out.shape == (3, 784) and (out > 0).all() and (out < 1).all()


def test_decoder_ignores_masked_capsules():
    decoder = CapsuleDecoder(in_caps=4, in_dim=3, out_features=20, hidden=(8,))
    poses = torch.randn(2, 4, 3)
    labels = torch.tensor([1, 3])
    changed = poses.clone()
    changed[0, 0] += 5.0  # not the target of example 0
    changed[1, 2] -= 5.0  # not the target of example 1
    torch.testing.assert_close(decoder(changed, labels), decoder(poses, labels))
    changed[0, 1] += 1.0  # the target of example 0
    assert not torch.allclose(decoder(changed, labels)[0], decoder(poses, labels)[0])


def test_routed_capsules_draw_their_matrices_with_the_given_std():
    torch.manual_seed(0)
    default = RoutedCapsules(in_caps=1152, in_dim=8, out_caps=10, out_dim=16)
    wide = RoutedCapsules(in_caps=1152, in_dim=8, out_caps=10, out_dim=16, weight_std=0.5)
    assert default.weight.mean().abs() < 1e-3
    assert default.weight.std().item() == pytest.approx(WEIGHT_INIT_STD, rel=0.01)
    assert wide.weight.std().item() == pytest.approx(0.5, rel=0.01)
    with pytest.raises(ValueError, match="weight_std must be positive and finite, got 0"):
        RoutedCapsules(in_caps=2, in_dim=8, out_caps=10, out_dim=16, weight_std=0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"weight_std must be positive and finite, got {bad}"):
            RoutedCapsules(in_caps=2, in_dim=8, out_caps=10, out_dim=16, weight_std=bad)


@pytest.mark.parametrize("layer, arguments, message", [
    (PrimaryCapsules, {"in_channels": 256, "types": 0}, "types must be an integer >= 1, got 0"),
    (PrimaryCapsules, {"in_channels": 256, "out_dim": 8.0}, "out_dim must be an integer >= 1, got 8.0"),
    (PrimaryCapsules, {"in_channels": 256, "stride": 0}, r"stride must be an integer >= 1 or a pair of them "
                                                         r"\(height, width\), got 0"),
    (PrimaryCapsules, {"in_channels": 256, "kernel_size": (9, 0)}, r"kernel_size must be .* got \(9, 0\)"),
    (CapsuleDecoder, {"in_dim": 0}, "in_dim must be an integer >= 1, got 0"),
    (CapsuleDecoder, {"hidden": (512, -1)}, "hidden must be an integer >= 1, got -1"),
    (capsnet.BaselineCNN, {"channels": ()}, "channels must give at least one convolution's width, got none"),
    (capsnet.BaselineCNN, {"hidden": (328, 0)}, "hidden must be an integer >= 1, got 0"),
    (capsnet.BaselineCNN, {"image_size": (28, 28, 1)}, r"image_size must be an integer >= 1 or a pair of them "
                                                       r"\(height, width\), got \(28, 28, 1\)"),
    (capsnet.CapsNet, {"image_size": "28"}, "image_size must be an integer >= 1 or a pair of them"),
])
def test_constructors_name_the_argument_that_is_wrong(layer, arguments, message):
    with pytest.raises(ValueError, match=message):
        layer(**arguments)


@pytest.mark.parametrize("routing", ["dynamic", capsnet.dynamic_routing])
def test_routing_must_be_a_module_not_a_name_or_a_function(routing):
    with pytest.raises(TypeError, match=r"routing must be a capsnet.routing.Routing module, e.g. create_routing\("):
        RoutedCapsules(in_caps=6, in_dim=2, out_caps=4, out_dim=3, routing=routing)
    with pytest.raises(TypeError, match="routing must be a capsnet.routing.Routing module"):
        capsnet.CapsNet(routing=routing, device="meta")


def test_primary_capsules_and_decoder_name_their_wrong_inputs():
    with pytest.raises(ValueError, match=r"expected features of shape \(b, in_channels, H, W\) = \(\*, 3, \*, \*\), got \(3, 32, 32\)"):
        PrimaryCapsules(in_channels=3)(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"expected features of shape .* got \(1, 4, 32, 32\)"):
        PrimaryCapsules(in_channels=3)(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"expected poses of shape \(b, in_caps, in_dim\) = \(\*, 5, 16\), got \(2, 10, 16\)"):
        CapsuleDecoder(in_caps=5)(torch.randn(2, 10, 16))
    assert "types=4, out_dim=6" in repr(PrimaryCapsules(in_channels=3, types=4, out_dim=6))


def test_an_empty_batch_goes_through_every_layer():
    model = capsnet.create_model("capsnet-tiny")
    output = model(torch.rand(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))
    assert output.primary.shape == (0, 288, 8) and output.lengths.shape == (0, 10)
    assert output.reconstructions.shape == (0, 784) and output.coupling.shape == (0, 288, 10)
    assert capsnet.margin_loss(output.lengths, torch.zeros(0, dtype=torch.long)).shape == ()  # the mean of nothing
    assert model(torch.rand(0, 1, 28, 28), torch.zeros(0, 2, dtype=torch.long)).reconstructions.shape == (0, 2, 784)


def test_a_given_routing_with_parameters_is_created_where_and_as_the_layer_is():
    layer = RoutedCapsules(in_caps=6, in_dim=4, out_caps=3, out_dim=5, routing=capsnet.SelfAttentionRouting(6, 3),
                           dtype=torch.float64, device="meta")
    assert layer.routing.prior.dtype == torch.float64 and layer.routing.prior.device.type == "meta"
    v, c = layer(torch.rand(2, 6, 4, dtype=torch.float64, device="meta"))
    assert v.shape == (2, 3, 5) and v.dtype == torch.float64


def test_decoder_without_sigmoid_reconstructs_values_outside_zero_one():
    torch.manual_seed(0)
    plain = CapsuleDecoder(in_caps=3, in_dim=4, out_features=6, hidden=(8,), sigmoid=False)
    assert [type(m).__name__ for m in plain.net] == ["Linear", "ReLU", "Linear"]
    with torch.no_grad():
        plain.net[-1].bias.fill_(-2.0)  # a normalized image's background, say
    assert plain(torch.zeros(2, 3, 4)).max() < 0
    squashed = CapsuleDecoder(in_caps=3, in_dim=4, out_features=6, hidden=(8,))
    assert type(squashed.net[-1]).__name__ == "Sigmoid"
