"""The documentation: every command shown in the docs and the README is one the command line
accepts, each translation carries its English page's code, outputs and figures, and every
tutorial shows the figures its code draws. (That every tutorial's Python examples print what the
page shows is tested on its notebook, in a Jupyter kernel: tests/test_notebooks.py.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from rnnkit.cli import main
from tools.readme_outputs import FIGURE, blocks, commands, fenced, translation

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_tutorial_is_translated() -> None:
    assert len(TUTORIALS) >= 8
    for page in TUTORIALS:
        assert translation(page) is not None, f"docs/zh/{page.name} is missing"


@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.stem)
def test_translation_has_the_same_code_and_outputs(page: Path) -> None:
    other = translation(page)
    assert other is not None
    assert fenced(other.read_text(encoding="utf-8")) == fenced(page.read_text(encoding="utf-8"))


def figures(page: Path) -> list[tuple[str, str]]:
    return FIGURE.findall(page.read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_shows_the_figures_its_code_makes(page: Path) -> None:
    """Every tutorial shows at least one figure; each is an image in docs/img that the page's
    code writes (a figure comment names the file, so tools/readme_outputs.py renews the image);
    its translation shows the same ones; no image of a page lacks its comment."""
    shown = figures(page)
    assert shown, f"{page.name} shows no figure"
    text = page.read_text(encoding="utf-8")
    assert len(re.findall(r"!\[[^\]\n]*\]\(", text)) == len(shown), f"{page.name} has an image without a figure comment"
    for _, image in shown:
        path = (page.parent / image).resolve()
        assert path.parent == ROOT / "docs" / "img" and path.read_bytes().startswith(b"\x89PNG"), image
    other = translation(page)
    assert other is not None and figures(other) == shown, f"{other} does not show the figures of {page.name}"


def test_every_image_in_docs_img_is_shown() -> None:
    shown = {(page.parent / image).resolve().name for page in TUTORIALS for _, image in figures(page)}
    assert {p.name for p in (ROOT / "docs" / "img").iterdir()} == shown


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every rnnkit command of a terminal block ("$ " lines) or a bash block."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        lines = text.split("\n")
        for first, last in blocks(text):
            found += [(page.name, c) for c in commands(lines[first:last])]
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            found += [(page.name, line) for line in block.split("\n")]
    picked = []
    for page, command in found:
        lexer = shlex.shlex(command.split("\n")[0], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True  # words as a shell splits them; "&&" and ";" apart; "#" starts a comment
        words, part = list(lexer), []
        for word in [*words, ";"]:
            if word not in ("&&", ";", "|", "||"):
                part.append(word)
                continue
            if part[:1] == ["rnnkit"] or part[:3] == ["python", "-m", "rnnkit"]:
                picked.append((page, shlex.join(part)))
            part = []
    return picked


COMMANDS = shown_commands()


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 40
    assert {"README.md", "memory.md", "n-to-1.md"} <= {page for page, _ in COMMANDS}


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_shown_command_is_accepted(page: str, command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The command line parses the command and converts every value (names, choices, numbers);
    nothing runs. The data files it names, which an earlier command of the page writes, are there
    (empty) in the folder it runs in."""
    ran: list[str] = []
    monkeypatch.setattr(click.Command, "invoke", lambda self, ctx: ran.append(ctx.command_path))
    words = shlex.split(command)
    monkeypatch.chdir(tmp_path)
    for word in words:
        if re.fullmatch(r"[\w.-][\w./-]*\.(csv|tsv|txt)", word):
            (tmp_path / word).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / word).touch()
    args = words[3:] if words[0] == "python" else words[1:]
    try:
        main.main(args, prog_name="rnnkit", standalone_mode=False)
    except click.ClickException as error:
        pytest.fail(f"{page}: `{command}`: {error.format_message()}")
    assert ran and ran[-1].startswith("rnnkit"), f"{page}: `{command}` reached no command"


def test_api_reference_shows_docstrings_as_written() -> None:
    """The API reference renders plain-text docstrings as Markdown: shapes' stars and tokens in
    angle brackets are escaped outside code, Sphinx roles become code spans."""
    from docs.griffe_runtime_docstrings import as_written

    text = "h_0 (K*D, B, H), or (T, B, *) ending in <eos>; see :class:`torch.nn.LSTM` and `a*b`\n\n    x = a * b"
    assert as_written(text) == ("h_0 (K\\*D, B, H), or (T, B, \\*) ending in &lt;eos>; see `torch.nn.LSTM` and `a*b`"
                                "\n\n    x = a * b")
