"""Regenerate the output blocks of README.md and the docs pages from the current code.

Every fenced block of a page whose first line starts with "$ " is a terminal session: its
"$ " lines (a line ending in "<<'EOF'" takes the lines up to EOF with it) are run with bash, one
after another, in one working folder shared by all blocks (so that `rnnkit predict runs/digits`
finds the run trained by an earlier block), and the block is rewritten as the commands and what
they printed. The lines `rnnkit train` prints per epoch are shown as one "...". Every ```python
block followed by a line "prints" and a plain block gets that block rewritten as what the Python
block prints; a page's Python blocks run in order in one namespace, in the same working folder.

    python tools/readme_outputs.py                    # every block (about 30 minutes on 2 cores)
    python tools/readme_outputs.py --only digits      # the blocks whose commands mention "digits"
    python tools/readme_outputs.py --only "--dataset digits" --only export   # export needs runs/digits
    python tools/readme_outputs.py --list             # the blocks, and whether --only picks them
    python tools/readme_outputs.py --page docs/tutorials/memory.md   # a docs page instead (repeat it for more)

A tutorial's translation (docs/zh/NAME.md for docs/tutorials/NAME.md) holds the same code blocks
in the same order: rewriting the English page copies its blocks into the translation.

A figure of a page is an image line after a comment naming the file that the page's commands or
code write, in the working folder:

    <!-- figure: runs/mnist/plots/confusion_matrix.png -->
    ![The test confusion matrix](../img/n-to-1-mnist-confusion.png)

and rewriting the page copies that file over the image, so that the figures never drift from the
code. Its translation shows the same images. A tutorial's notebooks (tools/notebooks.py) are made
again from the page and its translation.

A command that fails stops the script and README.md is left as it was; one that ends in the
comment "# exit status N" must exit with N, and its stderr is shown with its stdout. Run it from the
repository's root, one run at a time (the timings in the outputs are the machine's).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FENCE = "```"
EPOCH = re.compile(r"^epoch +\d+ ")


def blocks(text: str) -> list[tuple[int, int]]:
    """(first, last) line indices of each terminal block's content (between its fences): a fence
    with no language whose first line starts with "$ "."""
    lines, found = text.split("\n"), []
    start, language = -1, ""
    for i, line in enumerate(lines):
        if not line.startswith(FENCE):
            continue
        if start < 0:
            start, language = i + 1, line[len(FENCE):].strip()
            continue
        if not language and start < i and lines[start].startswith("$ "):
            found.append((start, i))
        start = -1
    return found


def fenced(text: str) -> list[str]:
    """Every fenced block of a page, fences included, in order; a ```python block followed by
    "prints" and its output block counts as one."""
    lines, spans, start = text.split("\n"), [], -1
    for i, line in enumerate(lines):
        if line.startswith(FENCE):
            if start < 0:
                start = i
            else:
                spans.append((start, i))
                start = -1
    found, k = [], 0
    while k < len(spans):
        first, last = spans[k]
        if lines[first] == FENCE + "python" and k + 1 < len(spans) and \
                "\n".join(lines[last + 1:spans[k + 1][0]]).strip() == "prints":
            k += 1
            last = spans[k][1]
        found.append("\n".join(lines[first:last + 1]))
        k += 1
    return found


def translation(page: Path) -> Path | None:
    """docs/zh/NAME.md for docs/tutorials/NAME.md, if it exists: a translation holds the same
    blocks (code and outputs) in the same order."""
    other = page.parent.parent / "zh" / page.name
    return other if page.parent.name == "tutorials" and other.is_file() else None


def sync_translation(page: Path, other: Path) -> None:
    """Give the translation other the blocks of page, in order."""
    source, target = fenced(page.read_text(encoding="utf-8")), other.read_text(encoding="utf-8")
    old = fenced(target)
    if len(old) != len(source):
        sys.exit(f"{other} has {len(old)} code blocks where {page} has {len(source)}: bring them in line by hand")
    for before, after in zip(old, source):
        target = target.replace(before, after, 1)
    other.write_text(target, encoding="utf-8")
    print(f"copied the blocks of {page} to {other}")


def session(content: list[str]) -> tuple[list[str], list[str]]:
    """A terminal block's commands (its "$ " lines, each with its here-document) and the lines it
    shows them printing."""
    found, printed, i = [], [], 0
    while i < len(content):
        line = content[i]
        if line.startswith("$ "):
            command = [line[2:]]
            if line.rstrip().endswith("<<'EOF'"):
                while i + 1 < len(content):
                    i += 1
                    command.append(content[i])
                    if content[i] == "EOF":
                        break
            found.append("\n".join(command))
        else:
            printed.append(line)
        i += 1
    return found, printed


def commands(content: list[str]) -> list[str]:
    """The commands of a block: its "$ " lines, each with its here-document."""
    return session(content)[0]


PRINTS = re.compile(r"```python\n((?:(?!```).)*?)```\n\nprints\n\n```\n(.*?)```", re.S)  # (within one block)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)


def python_outputs(text: str, folder: Path) -> str:
    """text with the output block after each "prints" rewritten as what its Python block prints
    today (the page's Python blocks run in order in one namespace, in folder)."""
    namespace: dict[str, object] = {}
    printed: dict[str, str] = {}
    here = os.getcwd()
    os.chdir(folder)
    try:
        for i, code in enumerate(PYTHON.findall(text)):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"python block {i}", "exec"), namespace)
            printed.setdefault(code, out.getvalue())
    finally:
        os.chdir(here)
    return PRINTS.sub(lambda m: f"```python\n{m[1]}```\n\nprints\n\n```\n{printed[m[1]]}```", text)


EXIT_STATUS = re.compile(r"#\s*exit status (\d+)\s*$")
"""A command that ends in this comment must exit with that status; what it prints on stderr is
shown too, in order with its stdout (an error message, a signal's notice)."""


def run(command: str, folder: Path) -> str:
    """What command prints, with the per-epoch lines of `rnnkit train` folded into "..."."""
    expected = EXIT_STATUS.search(command)
    done = subprocess.run(["bash", "-c", command], cwd=folder, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if expected else subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})  # stdout and stderr in the order printed
    if done.returncode != (int(expected[1]) if expected else 0):
        sys.exit(f"`{command}` failed ({done.returncode}):\n{done.stdout}{done.stderr or ''}")
    out, shown = done.stdout.rstrip("\n").split("\n") if done.stdout.strip() else [], []
    for line in out:
        if EPOCH.match(line):
            if not shown or shown[-1] != "...":
                shown.append("...")
        else:
            shown.append(line)
    return "\n".join(shown)


FIGURE = re.compile(r"^<!-- figure: (\S+) -->\n!\[[^\]\n]*\]\(([^)\s]+)\)", re.M)
"""A figure: (the file the page's code writes, relative to the working folder; the image shown,
relative to the page)."""


def copy_figures(path: Path, text: str, folder: Path, complete: bool) -> None:
    """Copy each figure of the page from the working folder to its image; complete: every block
    ran, so every figure must be there."""
    for source, image in FIGURE.findall(text):
        made = folder / source
        if not made.is_file():
            if complete:
                sys.exit(f"{path}: the figure {source} was not written by the page's code")
            print(f"kept {image}: {source} was not written by the blocks that ran")
            continue
        shutil.copyfile(made, (path.parent / image).resolve())
        print(f"copied {source} to {image}")


def rewrite(path: Path, only: list[str], listing: bool, folder: Path) -> None:
    """Rewrite the terminal blocks of one page that only picks (all if empty), then its Python outputs."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    found = blocks(text)
    chosen = [b for b in found if not only or any(o in "\n".join(lines[b[0]:b[1]]) for o in only)]
    if listing:
        for first, last in found:
            print(("* " if (first, last) in chosen else "  ") + lines[first])
        return
    new: dict[int, list[str]] = {}
    for first, last in chosen:
        rendered = []
        for command in commands(lines[first:last]):
            print(f"$ {command.splitlines()[0]}", flush=True)
            output = run(command, folder)
            rendered.append("$ " + command)
            if output:
                rendered.append(output)
        new[first] = rendered
    out: list[str] = []
    i = 0
    spans = {first: last for first, last in found}
    while i < len(lines):
        if i in new:
            out.extend(new[i])
            i = spans[i]
            continue
        out.append(lines[i])
        i += 1
    text = "\n".join(out)
    if PRINTS.search(text) and not only:
        text = python_outputs(text, folder)
    copy_figures(path, text, folder, complete=not only)
    path.write_text(text, encoding="utf-8")
    print(f"rewrote {len(new)} terminal block(s) of {path}")
    other = translation(path)
    if other is not None:
        sync_translation(path, other)
        write_notebooks(path, other)


def write_notebooks(*pages: Path) -> None:
    """The tutorials' notebooks, made again from their pages (tools/notebooks.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import notebooks

    for page in pages:
        notebooks.target(page).write_text(notebooks.text_of(page), encoding="utf-8")
        print(f"wrote {notebooks.target(page)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page", action="append", default=[],
                        help="A markdown page to rewrite (repeat it for more; default README.md).")
    parser.add_argument("--only", action="append", default=[],
                        help="Blocks whose commands contain this text (repeat it for more; a block that reads a run "
                             "needs the block that trains it: --only digits --only export). Python outputs are "
                             "rewritten only without --only.")
    parser.add_argument("--list", action="store_true", help="List the blocks and exit.")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rnnkit-readme-"))
    if not args.list:
        print(f"working folder: {folder}")
    for page in args.page or ["README.md"]:
        rewrite(Path(page), args.only, args.list, folder)


if __name__ == "__main__":
    main()
