"""Regenerate the command-line output blocks of README.md from the current code.

Every fenced block of README.md whose first line starts with "$ " is a terminal session: its
"$ " lines (a line ending in "<<'EOF'" takes the lines up to EOF with it) are run with bash, one
after another, in one working folder shared by all blocks (so that `rnnkit predict runs/digits`
finds the run trained by an earlier block), and the block is rewritten as the commands and what
they printed. The lines `rnnkit train` prints per epoch are shown as one "...".

    python tools/readme_outputs.py                    # every block (about 30 minutes on 2 cores)
    python tools/readme_outputs.py --only digits      # the blocks whose commands mention "digits"
    python tools/readme_outputs.py --only "--dataset digits" --only export   # export needs runs/digits
    python tools/readme_outputs.py --list             # the blocks, and whether --only picks them

A command that fails stops the script and README.md is left as it was. Run it from the
repository's root, one run at a time (the timings in the outputs are the machine's).
"""

from __future__ import annotations

import argparse
import re
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


def commands(content: list[str]) -> list[str]:
    """The commands of a block: its "$ " lines, each with its here-document."""
    found, i = [], 0
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
        i += 1
    return found


def run(command: str, folder: Path) -> str:
    """What command prints, with the per-epoch lines of `rnnkit train` folded into "..."."""
    done = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"`{command}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    out, shown = done.stdout.rstrip("\n").split("\n") if done.stdout.strip() else [], []
    for line in out:
        if EPOCH.match(line):
            if not shown or shown[-1] != "...":
                shown.append("...")
        else:
            shown.append(line)
    return "\n".join(shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--only", action="append", default=[],
                        help="Blocks whose commands contain this text (repeat it for more; a block that reads a run "
                             "needs the block that trains it: --only digits --only export).")
    parser.add_argument("--list", action="store_true", help="List the blocks and exit.")
    args = parser.parse_args()
    path = Path(args.readme)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    found = blocks(text)
    chosen = [b for b in found if not args.only or any(o in "\n".join(lines[b[0]:b[1]]) for o in args.only)]
    if args.list:
        for first, last in found:
            print(("* " if (first, last) in chosen else "  ") + lines[first])
        return
    folder = Path(tempfile.mkdtemp(prefix="rnnkit-readme-"))
    print(f"working folder: {folder}")
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
    path.write_text("\n".join(out), encoding="utf-8")
    print(f"rewrote {len(new)} block(s) of {path}")


if __name__ == "__main__":
    main()
