import importlib
import sys
import warnings
from typing import get_args

import pytest
import torch

import capsnet
from capsnet import CapsNet, CapsNetOutput, DynamicRouting, create_model, list_models
from capsnet.layers import WEIGHT_INIT_STD
from capsnet.models.registry import BaselineCNNName, CapsNetName, registering_module


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny(**kwargs) -> CapsNet:
    return CapsNet(conv_channels=16, primary_types=4, **kwargs)


def test_paper_parameter_counts_are_exact():
    model = create_model("capsnet-mnist")
    assert count(model) == 8_215_568
    assert count(model) - count(model.decoder) == 6_804_224
    assert count(CapsNet(reconstruction=False)) == 6_804_224
    assert model.digits.in_caps == 1152


def test_official_code_options_are_off_by_default_and_counted_when_on():
    model = CapsNet()
    assert model.digits.bias is None
    assert model.digits.routing.detach_intermediate is True and model.digits.routing.iterations == 3
    official = create_model("capsnet-mnist-official")
    assert count(official) == 8_215_568 + 10 * 16  # the digit-capsule biases
    assert official.digits.routing.detach_intermediate is False
    assert official.digits.weight.std().item() == pytest.approx(0.1, rel=0.01)  # the official init's std parameter


@pytest.mark.parametrize(
    "image_size, in_channels, in_caps",
    [(28, 1, 1152), (36, 1, 32 * 10 * 10), ((32, 40), 3, 32 * 8 * 12)],
)
def test_output_shapes(image_size, in_channels, in_caps):
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    model = CapsNet(image_size=image_size, in_channels=in_channels, num_classes=7)
    out = model(torch.rand(2, in_channels, height, width))
    assert isinstance(out, CapsNetOutput)
    assert out.lengths.shape == (2, 7)
    assert out.poses.shape == (2, 7, 16)
    assert out.reconstructions.shape == (2, in_channels * height * width)
    assert out.coupling.shape == (2, in_caps, 7)
    assert torch.isfinite(out.lengths).all() and (out.lengths < 1).all()
    torch.testing.assert_close(out.lengths, out.poses.norm(dim=-1))
    torch.testing.assert_close(out.coupling.sum(-1), torch.ones(2, in_caps))


def test_without_decoder_reconstructions_are_none():
    assert tiny(reconstruction=False)(torch.rand(1, 1, 28, 28)).reconstructions is None


@pytest.mark.parametrize("train", [True, False])
def test_masking_uses_targets_when_given_and_longest_otherwise_in_both_modes(train):
    model = tiny().train(train)
    with torch.no_grad():
        model.digits.weight.mul_(10)  # poses long enough that decoding another capsule visibly changes the output
    images = torch.rand(4, 1, 28, 28)
    out = model(images)
    predicted = out.lengths.argmax(-1)
    others = (predicted + 1) % 10
    torch.testing.assert_close(out.reconstructions, model.decoder(out.poses, predicted))
    with_targets = model(images, others)
    torch.testing.assert_close(with_targets.reconstructions, model.decoder(out.poses, others))
    assert not torch.allclose(with_targets.reconstructions, out.reconstructions)
    torch.testing.assert_close(with_targets.lengths, out.lengths)  # targets only steer the decoder


def test_every_parameter_gets_a_gradient_and_state_dict_round_trips():
    model = tiny(digit_bias=True)
    images, labels = torch.rand(2, 1, 28, 28), torch.tensor([0, 9])
    capsnet.CapsuleLoss()(model(images, labels), images, labels).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    clone = tiny(digit_bias=True)
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone(images).lengths, model(images).lengths)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_is_built_on_the_device_and_dtype_asked_for(name):
    model = create_model(name, device="meta", dtype=torch.float64)  # meta: no memory, no initialization
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.float64)}


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_learns_through_every_parameter_and_reloads(name):
    torch.manual_seed(0)
    model = create_model(name)
    images, labels = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
    if capsnet.is_capsule_model(name):
        output = model(images, labels)
        assert output.lengths.shape == (2, 10) and output.poses.shape == (2, 10, 16)
        loss, scores = capsnet.CapsuleLoss()(output, images, labels), output.lengths
    else:
        scores = model(images)
        loss = torch.nn.functional.cross_entropy(scores, labels)
    assert scores.shape == (2, 10) and torch.isfinite(scores).all()
    loss.backward()
    stuck = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not stuck, f"parameters without a finite gradient: {stuck}"
    clone = create_model(name)
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    first, second = model(images), clone(images)
    torch.testing.assert_close(*(out.lengths if capsnet.is_capsule_model(name) else out for out in (first, second)))


def test_conv1_is_followed_by_a_relu():
    model = tiny()
    seen = []
    model.primary.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    out = model(torch.rand(2, 1, 28, 28))
    assert (seen[0] >= 0).all() and (seen[0] == 0).any()
    assert model.primary_grid == (6, 6) and out.primary.shape == (2, 4 * 6 * 6, 8)  # what routing was given
    assert tiny(image_size=(28, 40)).primary_grid == (6, 12)  # rows, then columns
    torch.testing.assert_close(out.primary, model.primary(seen[0]))


def test_float64_capsnet_trains_in_float64():
    model = tiny(dtype=torch.float64, digit_bias=True)
    images, labels = torch.rand(2, 1, 28, 28, dtype=torch.float64), torch.tensor([0, 9])
    out = model(images, labels)
    assert out.lengths.dtype == out.reconstructions.dtype == torch.float64
    capsnet.CapsuleLoss()(out, images, labels).backward()
    assert all(p.grad.dtype == torch.float64 for p in model.parameters())


def test_custom_routing_module_is_used():
    routing = capsnet.DynamicRouting(iterations=1)
    model = tiny(routing=routing)
    assert model.digits.routing is routing
    out = model(torch.rand(1, 1, 28, 28))
    torch.testing.assert_close(out.coupling, torch.full_like(out.coupling, 0.1))


def test_the_official_preset_starts_its_digit_bias_at_0_1_as_the_official_code():
    model = create_model("capsnet-mnist-official", device="meta")
    assert model.digits.bias.shape == (10, 16) and not model.digits.routing.detach_intermediate
    assert torch.equal(create_model("capsnet-tiny", digit_bias=True).digits.bias, torch.full((10, 16), 0.1))


def test_registry_and_overrides():
    assert {"capsnet-mnist", "capsnet-mnist-official"} <= set(list_models())
    model = create_model("capsnet-mnist", routing_iterations=1, reconstruction=False, num_classes=None)
    assert model.digits.routing.iterations == 1 and model.decoder is None and model.digits.out_caps == 10
    with pytest.raises(ValueError, match=r"unknown value 'capsnet-cifar' for model; valid values are"):
        create_model("capsnet-cifar")


def test_the_types_create_model_declares_for_the_built_in_names_are_what_it_builds():
    declared = {**dict.fromkeys(get_args(CapsNetName), CapsNet), **dict.fromkeys(get_args(BaselineCNNName),
                                                                                  capsnet.BaselineCNN)}
    assert set(declared) == {name for name in list_models() if registering_module(name) == "capsnet.models"}
    for name, cls in declared.items():
        assert type(create_model(name)) is cls, name


@pytest.mark.parametrize("name", ["capsnet-tiny", "capsnet-self-attention-tiny"])
def test_models_export_with_any_batch_size_save_and_compute_what_they_compute_eagerly(name, tmp_path):
    """torch.export, for serving: the routing loop unrolls, the data checks stay out, the output keeps its fields."""
    model = create_model(name, image_size=20, num_classes=4).eval()
    batch = torch.export.Dim("batch", min=2)
    images, targets = torch.rand(3, 1, 20, 20), torch.tensor([0, 3, 1])
    exported = torch.export.export(model, (images, targets), dynamic_shapes={"images": {0: batch}, "targets": {0: batch}})
    torch.export.save(exported, tmp_path / "model.pt2")  # names CapsNetOutput, which it cannot do by itself
    loaded = torch.export.load(tmp_path / "model.pt2").module()
    images, targets = torch.rand(5, 1, 20, 20), torch.tensor([2, 2, 0, 1, 3])
    got, expected = loaded(images, targets), model(images, targets)
    assert type(got) is CapsNetOutput
    for field in CapsNetOutput._fields:
        torch.testing.assert_close(getattr(got, field), getattr(expected, field))


@pytest.mark.parametrize("name", ["capsnet-tiny", "capsnet-self-attention-tiny", "baseline-cnn-tiny"])
def test_a_model_built_on_the_meta_device_is_initialized_by_reset_parameters_as_when_built_normally(name):
    options = {} if name.startswith("baseline") else {"digit_bias": True}
    torch.manual_seed(0)
    built = create_model(name, **options)
    model = create_model(name, **options, device="meta").to_empty(device="cpu")
    torch.manual_seed(0)
    for module in model.modules():  # in the order they were built: the same draws
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(model.state_dict().values(),
                                                                 built.state_dict().values()))


def test_digit_capsule_weights_are_the_seeds_normal_draws_times_their_std():
    """The draws of every seeded run so far (docs/results.md): changing the stream would change their numbers."""
    torch.manual_seed(0)
    expected = torch.randn(6, 3, 5, 4) * WEIGHT_INIT_STD  # W (in_caps, out_caps, out_dim, in_dim)
    torch.manual_seed(0)
    assert torch.equal(capsnet.RoutedCapsules(in_caps=6, in_dim=4, out_caps=3, out_dim=5).weight, expected)


def test_hooks_see_each_decoder_and_cnn_layers_own_output():
    """No ReLU in place: Captum and Grad-CAM hook a layer's output and its gradient."""
    for model, layer in ((create_model("capsnet-tiny"), "decoder.net.0"), (create_model("baseline-cnn-tiny"),
                                                                          "features.0")):
        seen, gradients = [], []
        hooked = model.get_submodule(layer)
        hooked.register_forward_hook(lambda module, inputs, output: seen.append(output.detach()))  # same storage
        hooked.register_full_backward_hook(lambda module, grad_in, grad_out: gradients.append(grad_out[0]))
        output = model(torch.rand(2, 1, 28, 28, requires_grad=True))
        (output.reconstructions if isinstance(output, CapsNetOutput) else output).sum().backward()
        assert float(seen[0].min()) < 0 and len(gradients) == 1, layer  # before its ReLU


def test_register_model_warns_on_redefinition(own_registry):
    capsnet.register_model("test-tiny", tiny)
    with pytest.warns(UserWarning, match="registered twice"):
        capsnet.register_model("test-tiny", tiny)
    assert isinstance(create_model("test-tiny"), CapsNet)


def test_register_model_refuses_names_unfit_for_a_run_folder_and_builders_that_cannot_build(own_registry):
    with pytest.raises(TypeError, match="^a model name is a string, got int$"):
        capsnet.register_model(3, tiny)
    for name in ("my/model", "my model", ""):  # "my/model" would nest the run folder runs/my/model-mnist-...
        with pytest.raises(ValueError, match=r"^a model name is letters, digits, '_', '.' and '-', got "):
            capsnet.register_model(name, tiny)
    with pytest.raises(TypeError, match="^register_model takes a builder, a class or function returning the model, "
                                        "got int$"):
        capsnet.register_model("test-number", 42)
    assert not {"my/model", "test-number"} & set(list_models())


def test_constructor_is_keyword_only_and_checks_inputs():
    with pytest.raises(TypeError):
        CapsNet(10)
    with pytest.raises(ValueError, match="primary_types must be an integer >= 1, got 0"):
        CapsNet(primary_types=0)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 2.5"):
        CapsNet(num_classes=2.5)
    with pytest.raises(ValueError, match=r"image_size must be at least 17 x 17 .* got 16 x 28"):
        CapsNet(image_size=(16, 28))
    with pytest.raises(ValueError, match=r"expected images of shape \(b, C, H, W\) = \(\*, 1, 28, 28\), got \(2, 28, 28\)"):
        tiny()(torch.rand(2, 28, 28))
    with pytest.raises(ValueError, match=r"expected images of shape .* got \(2, 3, 28, 28\)"):
        tiny()(torch.rand(2, 3, 28, 28))


def test_public_api_is_exported():
    promised = {  # names later issues and users rely on (issue "Core", deliverable 2)
        "squash", "dynamic_routing", "routing", "PrimaryCapsules", "RoutedCapsules", "CapsuleDecoder", "CapsNet",
        "CapsNetOutput", "create_model", "margin_loss", "reconstruction_loss", "CapsuleLoss", "DynamicRouting",
        "train", "Trainer", "TrainConfig", "create_routing", "list_routings", "register_routing", "list_models",
        "register_model", "load_model", "evaluate",
    }
    assert promised <= set(capsnet.__all__)
    for name in capsnet.__all__:
        assert getattr(capsnet, name) is not None
    assert capsnet.routing.DynamicRouting is capsnet.DynamicRouting


def test_baseline_cnn_has_the_papers_layout_and_parameter_count():
    model = create_model("baseline-cnn")
    assert count(model) == 35_445_522  # the paper: 35.4M
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(256, (5, 5), (1, 1)), (256, (5, 5), (1, 1)),
                                                                         (128, (5, 5), (1, 1))]
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(128 * 28 * 28, 328), (328, 192), (192, 10)]
    assert isinstance(model.classifier[-2], torch.nn.Dropout) and model.classifier[-2].p == 0.5


def test_baseline_cnn_returns_logits_and_uses_dropout_only_in_training():
    torch.manual_seed(0)
    model = create_model("baseline-cnn-tiny", image_size=40)
    images = torch.rand(3, 1, 40, 40)
    model.eval()
    assert model(images).shape == (3, 10)
    torch.testing.assert_close(model(images), model(images))
    model.train()
    assert not torch.equal(model(images), model(images))
    with pytest.raises(ValueError, match=r"expected images of shape \(b, C, H, W\) = \(\*, 1, 40, 40\), got \(3, 1, 28, 28\)"):
        model(torch.rand(3, 1, 28, 28))


def test_capsule_and_plain_models_are_told_apart():
    assert capsnet.is_capsule_model("capsnet-tiny") and not capsnet.is_capsule_model("baseline-cnn")
    with pytest.raises(ValueError, match="unknown value 'nope' for model"):
        capsnet.is_capsule_model("nope")


def test_affine_robustness_cnn_pools_and_matches_the_capsnet_without_its_decoder_in_size():
    model = create_model("baseline-cnn-affnist-11m", image_size=40)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.features) == 2
    assert model.classifier[1].in_features == 128 * 10 * 10
    assert count(model) == 11_198_058
    capsnet_40 = create_model("capsnet-mnist", image_size=40)
    assert abs(count(model) / (count(capsnet_40) - count(capsnet_40.decoder)) - 1) < 0.01  # 11,227,904
    assert count(create_model("baseline-cnn-affnist", image_size=40)) == 6_728_466  # its first version, 328 units
    assert model(torch.rand(2, 1, 40, 40)).shape == (2, 10)


def test_a_builder_function_is_a_capsule_model_when_registered_as_one(own_registry, tmp_path):
    def small(**kwargs):
        return CapsNet(conv_channels=8, primary_types=2, **kwargs)

    capsnet.register_model("test-small-function", small)
    capsnet.register_model("test-small-capsules", small, capsule_model=True)
    assert not capsnet.is_capsule_model("test-small-function") and capsnet.is_capsule_model("test-small-capsules")
    from capsnet.training.objectives import CrossEntropyObjective

    images = torch.rand(2, 1, 28, 28)
    with pytest.raises(TypeError, match="must return logits .* got CapsNetOutput; .* capsule_model=True"):
        CrossEntropyObjective()(create_model("test-small-function"), images, torch.tensor([1, 2]), images)
    # Built as the Trainer builds it: with the capsule options besides the image shape.
    settings = capsnet.TrainConfig(model="test-small-capsules", output_dir=str(tmp_path)).model_kwargs(10, 1, (28, 28))
    assert {"routing_iterations", "reconstruction"} <= settings.keys()
    assert create_model("test-small-capsules", **settings).digits.routing.iterations == 3


def test_models_built_from_one_name_share_no_module_given_in_its_config(own_registry):
    class LearnedTemperature(capsnet.routing.Routing):
        def __init__(self):
            super().__init__()
            self.temperature = torch.nn.Parameter(torch.ones(()))

        def route(self, u_hat, bias):
            return capsnet.DynamicRouting().route(u_hat * self.temperature, bias)

    capsnet.register_model("test-learned-routing", tiny, routing=LearnedTemperature())
    first, second = create_model("test-learned-routing"), create_model("test-learned-routing")
    assert first.digits.routing.temperature is not second.digits.routing.temperature
    assert first(torch.rand(2, 1, 28, 28)).lengths.shape == (2, 10)


def test_baseline_cnn_refuses_to_pool_after_a_convolution_it_does_not_have():
    with pytest.raises(ValueError, match=r"pool_after must name convolutions by their index, 0 to 2, got \(1, 3\)"):
        capsnet.BaselineCNN(channels=(4, 4, 4), hidden=(8,), pool_after=(1, 3), device="meta")
    assert len(capsnet.BaselineCNN(channels=(4, 4, 4), hidden=(8,), pool_after=(2,), device="meta").features) == 7


def test_models_say_how_many_classes_they_tell_apart():
    assert create_model("capsnet-tiny", num_classes=5).num_classes == 5
    assert create_model("baseline-cnn-tiny", num_classes=7).num_classes == 7


def test_dynamic_routing_options_next_to_a_routing_of_ones_own_are_flagged():
    with pytest.warns(UserWarning, match="routing_iterations configures the built-in dynamic routing; it is ignored"):
        model = CapsNet(routing=DynamicRouting(2), routing_iterations=5, device="meta")
    assert model.digits.routing.iterations == 2
    with pytest.warns(UserWarning, match=r"^detach_intermediate configures the built-in dynamic routing; it is "
                                         r"ignored when routing= is given \(set it on that routing\)$"):
        CapsNet(routing=DynamicRouting(2), detach_intermediate=False, device="meta")
    with pytest.warns(UserWarning, match="^routing_iterations and detach_intermediate configure the built-in dynamic "
                                         "routing; they are ignored"):
        CapsNet(routing=DynamicRouting(2), routing_iterations=1, detach_intermediate=False, device="meta")
    with pytest.warns(UserWarning, match="^detach_intermediate configures"):  # the official config's gradient flow
        create_model("capsnet-mnist-official", routing=DynamicRouting(2), device="meta")
    with pytest.warns(UserWarning, match="^detach_intermediate does not apply to self-attention routing"):
        create_model("capsnet-self-attention-tiny", detach_intermediate=False, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CapsNet(routing=DynamicRouting(2), device="meta")  # the defaults alone say nothing
        CapsNet(routing=DynamicRouting(2), routing_iterations=3, detach_intermediate=True, device="meta")
        create_model("capsnet-self-attention-tiny", routing_iterations=3, detach_intermediate=True, device="meta")


def test_capsnet_asks_for_intensities_not_uint8_pixels():
    with pytest.raises(TypeError, match=r"images must be floating point intensities in \[0, 1\], got torch.uint8 "
                                        r"\(for uint8 pixels: images.float\(\) / 255\)"):
        create_model("capsnet-tiny")(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


def test_capsnet_names_targets_outside_its_classes_as_its_own_argument():
    model = create_model("capsnet-tiny")
    for targets in (torch.tensor([1, 2, 3]), torch.tensor(1), torch.zeros(2, 1, 1, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"^expected targets of shape \(b,\) or \(b, n\) for b = 2 images, got "):
            model(torch.rand(2, 1, 28, 28), targets)
    for targets in (torch.tensor([3, 10]), torch.tensor([[3, 10], [1, 2]])):  # one or two objects per image
        with pytest.raises(ValueError, match=r"^targets must be class indices in \[0, 10\), got values from \d to 10$"):
            model(torch.rand(2, 1, 28, 28), targets)


def test_reconstruction_loss_trains_the_target_capsule_and_only_it():
    # The decoder is the regularizer that makes the winning capsule carry the pose: its loss must reach DigitCaps.
    torch.manual_seed(0)
    model = CapsNet(conv_channels=16, primary_types=4)
    images, labels = torch.rand(3, 1, 28, 28), torch.tensor([1, 5, 9])
    out = model(images, labels)
    loss = capsnet.reconstruction_loss(out.reconstructions, images)
    grad_poses, grad_w = torch.autograd.grad(loss, (out.poses, model.digits.weight))
    norms = grad_poses.norm(dim=-1)  # (b, j)
    assert (norms[torch.arange(3), labels] > 0).all()
    norms[torch.arange(3), labels] = 0
    assert not norms.any()  # the masked capsules get nothing from the decoder
    assert grad_w.abs().sum() > 0


def test_a_model_registered_through_a_helper_names_the_module_whose_import_registered_it(tmp_path, monkeypatch,
                                                                                         own_registry):
    (tmp_path / "capsule_helpers.py").write_text(
        "import capsnet\n\ndef add(name):\n    capsnet.register_model(name, capsnet.CapsNet, conv_channels=8)\n")
    (tmp_path / "my_models.py").write_text("import capsule_helpers\n\ncapsule_helpers.add('helped-capsnet')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("capsule_helpers", "my_models"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    importlib.import_module("my_models")
    assert capsnet.models.registry.registering_module("helped-capsnet") == "my_models"  # what to import again
