"""The command line, end to end on tiny work."""

from __future__ import annotations

import re

from click.testing import CliRunner

import rnnkit
from rnnkit.cli import main


def test_demo_matches_torch_and_says_hello_world() -> None:
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    numbers = re.search(r"output (\S+)  final state (\S+)  gradients (\S+)", result.output)
    assert numbers is not None, result.output
    assert all(float(v) < 1e-12 for v in numbers.groups())
    assert 'prompt "he" -> "hello world"' in result.output


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and rnnkit.__version__ in result.output
