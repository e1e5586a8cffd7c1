"""A tiny real training run: the model, losses and optimizer must fit 64 real MNIST digits."""

import pytest
import torch

import capsnet
from capsnet.data import MNIST


@pytest.mark.parametrize("routing", [capsnet.DynamicRouting, capsnet.SelfAttentionRouting])
def test_fits_64_mnist_images_to_full_training_accuracy(shared_data, routing):
    train = MNIST(shared_data, train=True, download=False)
    images, labels = train.images[:64].float() / 255, train.labels[:64]
    # The paper's structure, narrower convolutions.
    model = capsnet.CapsNet(conv_channels=32, primary_types=8, routing=routing())
    loss_fn = capsnet.CapsuleLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    accuracy, step = 0.0, 0
    for step in range(1, 81):
        model.train()
        loss = loss_fn(model(images, labels), images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(images).lengths.argmax(-1) == labels).float().mean().item()
        if accuracy == 1.0:
            break
    assert accuracy == 1.0, f"training accuracy {accuracy:.3f} after {step} Adam steps on 64 images"
    assert loss.item() < 0.2
