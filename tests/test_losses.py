import re

import pytest
import torch

import capsnet
from capsnet import CapsuleLoss, margin_loss, mask_capsules, reconstruction_loss
from capsnet.models import CapsNetOutput

LENGTHS = torch.tensor([[0.95, 0.30, 0.05], [0.50, 0.10, 0.80]], dtype=torch.float64)


def test_margin_loss_hand_computed_with_class_indices():
    """Example 0, target 0: present |v|=0.95 >= 0.9 -> 0; absent 0.30 -> 0.5 * 0.2^2 = 0.02; 0.05 -> 0.
    Example 1, target 2: present 0.80 -> 0.1^2 = 0.01; absent 0.50 -> 0.5 * 0.4^2 = 0.08; 0.10 -> 0.
    Batch mean: (0.02 + 0.09) / 2 = 0.055."""
    loss = margin_loss(LENGTHS, torch.tensor([0, 2]))
    assert loss.item() == pytest.approx(0.055, abs=1e-12)


def test_margin_loss_hand_computed_with_multi_hot_targets():
    """Example 0, classes {0, 1}: 0 + (0.9 - 0.3)^2 = 0.36, absent 0.05 -> 0.
    Example 1, classes {0, 2}: (0.4)^2 + (0.1)^2 = 0.17, absent 0.10 -> 0.  Mean: 0.265."""
    targets = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert margin_loss(LENGTHS, targets).item() == pytest.approx(0.265, abs=1e-12)
    assert margin_loss(LENGTHS, targets.bool()).item() == pytest.approx(0.265, abs=1e-12)


def test_margin_loss_one_hot_equals_indices_and_options():
    indices = torch.tensor([0, 2])
    one_hot = torch.nn.functional.one_hot(indices, 3)
    assert margin_loss(LENGTHS, one_hot) == margin_loss(LENGTHS, indices)
    assert margin_loss(LENGTHS, indices, halve=True).item() == pytest.approx(0.0275, abs=1e-12)
    # lambda_ = 1, m- = 0.2: example 0 -> 0.1^2 = 0.01, example 1 -> 0.01 + 0.3^2 = 0.10; mean 0.055.
    assert margin_loss(LENGTHS, indices, m_neg=0.2, lambda_=1.0).item() == pytest.approx(0.055, abs=1e-12)


def test_margin_loss_gradcheck_float64():
    lengths = (torch.rand(4, 5, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    targets = torch.tensor([0, 3, 4, 1])
    assert torch.autograd.gradcheck(lambda x: margin_loss(x, targets), (lengths,))


def test_margin_loss_reads_n_class_indices_per_example_as_multi_hot():
    # The (b, n) labels that CapsNet and hits take for n objects per image (MultiMNIST) give the same loss.
    multi_hot = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert margin_loss(LENGTHS, torch.tensor([[1, 0], [0, 2]])) == margin_loss(LENGTHS, multi_hot)
    assert margin_loss(LENGTHS, torch.tensor([[2], [0]])) == margin_loss(LENGTHS, torch.tensor([2, 0]))


def test_a_one_hot_matrix_of_the_wrong_width_is_refused_not_read_as_classes_0_and_1():
    # F.one_hot(labels) without num_classes is as wide as the batch's largest label: here 3 columns for 4 capsules.
    # Read as 3 class indices per example it would say "classes 0 and 1 present" for every example.
    lengths, labels = torch.rand(2, 4), torch.tensor([2, 1])
    one_hot = torch.nn.functional.one_hot(labels)
    repeated = (r"^targets of shape \(b, n\) = \(2, 3\) hold n class indices per example, which must differ, but "
                r"example 0 has \[0, 0, 1\] ")
    with pytest.raises(ValueError, match=repeated + r"\(a one-hot or multi-hot matrix needs one column per class, 4\)$"):
        margin_loss(lengths, one_hot)
    assert margin_loss(lengths, torch.nn.functional.one_hot(labels, 4)) == margin_loss(lengths, labels)
    with pytest.raises(ValueError, match=repeated + r"\(for a one-hot matrix pass its .argmax\(1\), for a multi-hot "):
        capsnet.functional.hits(lengths, one_hot)  # which takes no multi-hot matrix, of any width


def test_the_model_decodes_one_capsule_twice_when_asked():
    model = capsnet.create_model("capsnet-tiny", num_classes=4).eval()
    images, labels = torch.rand(2, 1, 28, 28), torch.tensor([2, 1])
    poses = model(images).poses
    both = model.reconstruct(poses, torch.stack([labels, labels], 1))  # the label's and a right prediction's
    torch.testing.assert_close(both[:, 0], both[:, 1])
    torch.testing.assert_close(both[:, 0], model.reconstruct(poses, labels))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_margin_loss_and_the_model_take_labels_of_any_integer_type(dtype):
    indices, pairs = torch.tensor([0, 2]), torch.tensor([[1, 0], [0, 2]])
    assert margin_loss(LENGTHS, indices.to(dtype)) == margin_loss(LENGTHS, indices)
    assert margin_loss(LENGTHS, pairs.to(dtype)) == margin_loss(LENGTHS, pairs)
    model = capsnet.create_model("capsnet-tiny")
    images = torch.rand(2, 1, 28, 28)
    for targets in (indices, pairs):
        assert torch.equal(model(images, targets.to(dtype)).reconstructions, model(images, targets).reconstructions)
    output = model(images, indices)
    assert torch.equal(CapsuleLoss()(output, images, indices.to(dtype)), CapsuleLoss()(output, images, indices))


def test_margin_loss_rejects_bad_targets_and_lengths():
    with pytest.raises(ValueError, match=r"class indices of shape \(b,\) = \(2,\) or \(b, n\), or multi-hot .* "
                       r"got \(3,\)"):
        margin_loss(LENGTHS, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"got \(2, 2\) \(torch.float32\)"):  # floats are multi-hot: (b, k) only
        margin_loss(LENGTHS, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"expected capsule lengths of shape \(b, k\), got \(3,\)"):
        margin_loss(LENGTHS[0], torch.tensor([0]))
    with pytest.raises(TypeError):  # m_pos and m_neg are easy to swap: keywords only
        margin_loss(LENGTHS, torch.tensor([0, 2]), 0.9, 0.1)


def test_reconstruction_loss_sum_per_example_mean_over_batch():
    images = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    recon = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    # Example 0: 0.25 + 0.25 = 0.5; example 1: 1.0; mean 0.75.
    assert reconstruction_loss(recon, images).item() == pytest.approx(0.75)
    recon.requires_grad_()
    assert torch.autograd.gradcheck(lambda r: reconstruction_loss(r, images.flatten(1) + 0.3), (recon,))
    mismatched = [
        (recon, torch.zeros(2, 1, 3, 3)),  # 9 pixels against 4
        (recon.view(2, 1, 4), torch.zeros(2, 4)),  # one object's reconstruction of an image without objects
        (recon.view(2, 2, 2), torch.zeros(2, 4, 1, 1)),  # two objects of two pixels against two channels of two
        (recon.view(8), torch.zeros(8)),
    ]
    for reconstructions, images in mismatched:
        with pytest.raises(ValueError, match=rf"^reconstructions of shape {re.escape(str(tuple(reconstructions.shape)))} "
                                             rf"do not match images of shape {re.escape(str(tuple(images.shape)))}: "
                                             rf"expected reconstructions \(b, C \* H \* W\) for images"):
            reconstruction_loss(reconstructions, images)
    for images in (torch.zeros(2, 4), torch.zeros(2, 1, 2, 2), torch.zeros(2, 4, 1, 1)):  # every layout of 4 pixels
        assert reconstruction_loss(recon, images).item() == pytest.approx(0.75)
    two_objects = torch.zeros(2, 2, 1, 1, 2)  # (b, n, C, H, W)
    assert reconstruction_loss(recon.view(2, 2, 2), two_objects).item() == pytest.approx(0.75)


def test_capsule_loss_combines_terms_with_paper_weight():
    images = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    recon = torch.rand(2, 4, dtype=torch.float64)
    output = CapsNetOutput(LENGTHS, torch.zeros(2, 3, 4), recon, torch.zeros(2, 5, 3))
    targets = torch.tensor([0, 2])
    loss_fn = CapsuleLoss()
    assert loss_fn.reconstruction_weight == 0.0005
    expected = margin_loss(LENGTHS, targets) + 0.0005 * reconstruction_loss(recon, images)
    torch.testing.assert_close(loss_fn(output, images, targets), expected)
    halved = CapsuleLoss(halve_margin=True)(output, images, targets)
    torch.testing.assert_close(halved, 0.5 * margin_loss(LENGTHS, targets) + 0.0005 * reconstruction_loss(recon, images))
    terms = loss_fn.terms(output._replace(reconstructions=None), images, targets)
    assert terms.reconstruction.item() == 0.0
    torch.testing.assert_close(terms.margin, margin_loss(LENGTHS, targets))
    torch.testing.assert_close(terms.total, terms.margin)
    torch.testing.assert_close(loss_fn.terms(output, images, targets).total, expected)


def test_capsule_loss_backpropagates_through_the_model():
    model = capsnet.CapsNet(conv_channels=16, primary_types=4)
    images, labels = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    CapsuleLoss()(model(images, labels), images, labels).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"


def test_capsule_loss_takes_the_labels_the_model_takes_for_two_digits_per_image():
    model = capsnet.CapsNet(conv_channels=16, primary_types=4, image_size=(36, 36))
    images, labels = torch.rand(3, 1, 36, 36), torch.tensor([[1, 2], [3, 0], [9, 4]])
    originals = torch.rand(3, 2, 1, 36, 36)  # each digit alone, reconstructed from its own capsule
    output = model(images, labels)
    terms = CapsuleLoss().terms(output, originals, labels)
    present = torch.zeros(3, 10).scatter_(1, labels, 1.0)
    torch.testing.assert_close(terms.margin, margin_loss(output.lengths, present))
    torch.testing.assert_close(terms.reconstruction, reconstruction_loss(output.reconstructions, originals))


def test_capsule_loss_repr_names_every_setting():
    assert repr(CapsuleLoss(m_neg=0.2)) == \
        "CapsuleLoss(reconstruction_weight=0.0005, m_pos=0.9, m_neg=0.2, lambda_=0.5, halve_margin=False)"


def test_class_indices_outside_the_capsules_are_named():
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 5\), got values from 0 to 5"):
        margin_loss(torch.rand(2, 5), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 5\), got values from 0 to 9"):
        margin_loss(torch.rand(2, 5), torch.tensor([[0, 1], [9, 2]]))  # two objects each
    with pytest.raises(ValueError, match=r"targets of shape \(b, k\) = \(2, 5\) are read as multi-hot, 0 or 1, got values "
                                         r"from 0 to 4; pass k class indices per example as multi-hot"):
        margin_loss(torch.rand(2, 5), torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]]))  # five objects each
    one_hot = torch.nn.functional.one_hot(torch.tensor([1, 2]), 5)  # int64, read as multi-hot
    lengths = torch.rand(2, 5)
    assert margin_loss(lengths, one_hot) == margin_loss(lengths, torch.tensor([1, 2]))


def test_the_index_checks_stay_out_of_vmap_and_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    lengths, labels = torch.rand(3, 5), torch.tensor([0, 1, 4])
    per_example = torch.func.vmap(lambda l, t: margin_loss(l[None], t[None]))(lengths, labels)
    torch.testing.assert_close(per_example.mean(), margin_loss(lengths, labels))
    with FakeTensorMode():
        assert margin_loss(torch.rand(3, 5), torch.tensor([0, 1, 4])).shape == ()


def test_the_loss_and_hits_export_with_any_batch_size():
    class Scored(torch.nn.Module):
        def forward(self, lengths, targets):
            return margin_loss(lengths, targets), capsnet.hits(lengths, targets)

    lengths, labels = torch.rand(3, 5), torch.tensor([0, 1, 4])
    batch = torch.export.Dim("batch", min=2)
    exported = torch.export.export(Scored(), (lengths, labels), dynamic_shapes=({0: batch}, {0: batch})).module()
    lengths, labels = torch.rand(6, 5), torch.tensor([0, 1, 4, 4, 2, 3])
    loss, right = exported(lengths, labels)
    torch.testing.assert_close(loss, margin_loss(lengths, labels))
    assert torch.equal(right, capsnet.hits(lengths, labels))


def test_per_example_gradients_take_class_index_targets():
    """torch.func.vmap(grad(...)), the per-example gradients of DP-SGD and influence functions."""
    lengths, labels = torch.rand(3, 5, dtype=torch.float64), torch.tensor([0, 1, 4])
    per_example = torch.func.vmap(torch.func.grad(lambda l, t: margin_loss(l[None], t[None])))(lengths, labels)
    one_by_one = [torch.func.grad(lambda l: margin_loss(l[None], t[None]))(l) for l, t in zip(lengths, labels)]
    torch.testing.assert_close(per_example, torch.stack(one_by_one))
    poses = torch.rand(3, 5, 4, dtype=torch.float64)
    kept = torch.func.vmap(torch.func.grad(lambda p, t: mask_capsules(p[None], t[None]).sum()))(poses, labels)
    torch.testing.assert_close(kept, torch.eye(5, dtype=torch.float64)[labels].unsqueeze(-1).expand(3, 5, 4))
    with pytest.raises(RuntimeError, match="out of bounds"):  # a class that does not exist: an error, not a blank row
        torch.func.vmap(torch.func.grad(lambda l, t: margin_loss(l[None], t[None])))(lengths, torch.tensor([0, 1, 5]))


@pytest.mark.parametrize("setting", [{"m_pos": 0.99}, {"m_neg": 0.2}, {"lambda_": 1.0}])
def test_capsule_loss_applies_its_margin_settings(setting):
    lengths = torch.tensor([[0.95, 0.30, 0.05], [0.50, 0.10, 0.80]], dtype=torch.float64)
    output = CapsNetOutput(lengths, torch.zeros(2, 3, 4), None, torch.zeros(2, 5, 3))
    targets, images = torch.tensor([0, 2]), torch.zeros(2, 1, 2, 2)
    loss = CapsuleLoss(**setting)(output, images, targets)
    torch.testing.assert_close(loss, margin_loss(lengths, targets, **setting))
    assert loss != margin_loss(lengths, targets)
