"""Shared fixtures: deterministic seeds and the location of the real datasets."""

import os
from pathlib import Path

import pytest
import torch

# The shared datasets live beside the repository: <repo>/../shared/data (read-only; never write there). Elsewhere,
# $CAPSNET_DATA (the folder capsnet reads its data from) serves if it holds MNIST.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    """The folder holding mnist/ and fashion-mnist/; skips the test when there is none."""
    candidates = [SHARED_DATA, *([Path(os.environ["CAPSNET_DATA"])] if os.environ.get("CAPSNET_DATA") else [])]
    found = next((folder for folder in candidates if (folder / "mnist").is_dir()), None)
    if found is None:
        pytest.skip(f"real MNIST not found in {SHARED_DATA} (the shared datasets folder beside the repository) "
                    f"or $CAPSNET_DATA: `capsnet download mnist` and set CAPSNET_DATA to run this test")
    return found


@pytest.fixture
def own_registry(monkeypatch):
    """Models registered by a test vanish after it."""
    import capsnet.models.registry

    monkeypatch.setattr(capsnet.models.registry, "_MODELS", dict(capsnet.models.registry._MODELS))


@pytest.fixture
def own_datasets(monkeypatch):
    """Datasets registered by a test vanish after it."""
    import capsnet.data.registry

    monkeypatch.setattr(capsnet.data.registry, "_LOADERS", dict(capsnet.data.registry._LOADERS))
    monkeypatch.setattr(capsnet.data.registry, "_MODULES", dict(capsnet.data.registry._MODULES))


@pytest.fixture
def group_readable_umask():
    """umask 027, as in a folder shared with a group: new files are 0640."""
    previous = os.umask(0o027)
    yield
    os.umask(previous)
