"""The Python examples in the docs run as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.MULTILINE | re.DOTALL)


CONCEPTS = python_blocks(DOCS / "concepts.md")
assert CONCEPTS, "docs/concepts.md has no python example to run: was its fence renamed?"


@pytest.mark.parametrize("block", CONCEPTS, ids=lambda block: block.splitlines()[-1][:40])
def test_concepts_examples_run(block):
    exec(compile(block, str(DOCS / "concepts.md"), "exec"), {})
