"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 4


PRINTED = re.findall(r"```python\n((?:(?!```).)*?)```\n\nprints\n\n```\n(.*?)```", README.read_text(encoding="utf-8"),
                     flags=re.S)
"""Examples followed by "prints" and the output they print (each match within one block)."""


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {}
    prelude = "import torch, rnnkit\n" if "import torch" not in BLOCKS[index] else ""
    exec(compile(prelude + BLOCKS[index], f"README.md block {index}", "exec"), namespace)
    printed = [output for block, output in PRINTED if block == BLOCKS[index]]
    if printed:  # the output shown in the README is what the example prints today
        assert capsys.readouterr().out == printed[0]


def test_readme_shows_printed_output() -> None:
    assert len(PRINTED) >= 2, "the toolchain and int8 examples and their outputs"
    assert all(block in BLOCKS for block, _ in PRINTED)
