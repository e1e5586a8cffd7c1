"""The Python examples in the docs run as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("block", python_blocks(DOCS / "concepts.md"), ids=lambda block: block.splitlines()[-1][:40])
def test_concepts_examples_run(block):
    exec(compile(block, str(DOCS / "concepts.md"), "exec"), {})
