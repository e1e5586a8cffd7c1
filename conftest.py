"""Makes ``torch`` and the public capsnet names available to the doctests in src/."""

import pytest
import torch

import capsnet


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace.update({name: getattr(capsnet, name) for name in capsnet.__all__})
