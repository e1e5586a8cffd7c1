"""Shared fixtures: deterministic seeds and the location of the real datasets."""

import os
from pathlib import Path

import pytest
import torch

# The shared datasets live beside the repository: <repo>/../shared/data (read-only; never write there).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    """The folder holding mnist/ and fashion-mnist/; skips the test when it is absent."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_DATA} (the shared datasets folder beside the repository)")
    return SHARED_DATA


@pytest.fixture
def own_registry(monkeypatch):
    """Models registered by a test vanish after it."""
    import capsnet.models.registry

    monkeypatch.setattr(capsnet.models.registry, "_MODELS", dict(capsnet.models.registry._MODELS))


@pytest.fixture
def group_readable_umask():
    """umask 027, as in a folder shared with a group: new files are 0640."""
    previous = os.umask(0o027)
    yield
    os.umask(previous)
