"""The docs' examples run as written, and every capsnet command they print is one the CLI accepts."""

import re
import shlex
from pathlib import Path

import pytest

from capsnet.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.MULTILINE | re.DOTALL)


CONCEPTS = python_blocks(DOCS / "concepts.md")
README = python_blocks(ROOT / "README.md")
assert CONCEPTS and README, "a python example to run is gone from docs/concepts.md or README.md: was its fence renamed?"


@pytest.mark.parametrize("block", CONCEPTS, ids=lambda block: block.splitlines()[-1][:40])
def test_concepts_examples_run(block):
    exec(compile(block, str(DOCS / "concepts.md"), "exec"), {})


@pytest.mark.parametrize("block", README, ids=lambda block: block.splitlines()[-1][:40])
def test_readme_examples_run(block):
    namespace: dict = {}
    for earlier in README[: README.index(block)]:  # later blocks go on from the earlier ones' imports and names
        exec(compile(earlier, str(ROOT / "README.md"), "exec"), namespace)
    exec(compile(block, str(ROOT / "README.md"), "exec"), namespace)


def _mentions_not_commands(text: str) -> bool:
    """Prose that names a command without giving one: `capsnet evaluate`, `capsnet reproduce EXPERIMENT`, `...`."""
    words = text.split()
    return (len(words) < 3 or "..." in text or " / " in text or words[2].isupper()  # a placeholder argument
            or not re.fullmatch(r"-.*|[a-z]+", words[1]))  # `capsnet 0.1.0 (torch ...)` is output


def _commands_in(code: str) -> list[list[str]]:
    """The arguments after `capsnet` of each capsnet command in a piece of shell code."""
    found = []
    for piece in re.split(r"&&|\|\||[|;&>]", code.split(" #")[0]):
        # `capsnet`, `python -m capsnet` or `torchrun ... -m capsnet`, after environment settings
        command = re.search(r"(?:^|\s|-m )capsnet (\S.*)", piece)
        if command and not _mentions_not_commands("capsnet " + command.group(1)):
            found.append(shlex.split(command.group(1)))
    return found


def capsnet_commands(path: Path) -> list[tuple[int, list[str]]]:
    """(line, arguments after `capsnet`) of each capsnet command in the page's code: shell blocks, inline code."""
    text = path.read_text()
    found = []
    fence = re.compile(r"^ *```(\w*)\n(.*?)^ *```", flags=re.MULTILINE | re.DOTALL)
    for block in fence.finditer(text):
        if block.group(1) in ("bash", "sh", ""):
            first_line = text[: block.start(2)].count("\n") + 1
            for number, line in enumerate(block.group(2).splitlines(), first_line):
                found += [(number, args) for args in _commands_in(line)]
    prose = fence.sub(lambda block: "\n" * block.group(0).count("\n"), text)  # line numbers kept
    for span in re.finditer(r"`([^`]+)`", prose):  # inline code may wrap onto the next line
        number = prose[: span.start()].count("\n") + 1
        found += [(number, args) for args in _commands_in(" ".join(span.group(1).split()))]
    return found


COMMANDS = [(path, line, args) for path in PAGES for line, args in capsnet_commands(path)]
assert len(COMMANDS) > 80, f"only {len(COMMANDS)} capsnet commands found in the docs: did their code fences change?"


@pytest.mark.parametrize("path, line, args", COMMANDS,
                         ids=[f"{path.relative_to(ROOT)}:{line}" for path, line, _ in COMMANDS])
def test_documented_commands_parse(path, line, args, capsys):
    try:
        build_parser().parse_args(args)
    except SystemExit as exit_:
        if exit_.code == 0:  # --help
            return
        pytest.fail(f"{path.relative_to(ROOT)}:{line}: `capsnet {shlex.join(args)}` is refused by the CLI:\n"
                    f"{capsys.readouterr().err}")
