"""Make each tutorial page's Jupyter notebook: docs/tutorials/NAME.ipynb from docs/tutorials/NAME.md,
docs/zh/NAME.ipynb from docs/zh/NAME.md, so that page and notebook never drift.

    python tools/notebooks.py            # write every notebook
    python tools/notebooks.py --check    # exit 1, naming them, if a notebook is not what its page makes

The page's prose becomes markdown cells; a ```python block a code cell, with what the page shows
it printing as the cell's output; a terminal block ("$ " lines) a %%bash cell with its commands
and the output the page shows; its figures are embedded in the notebook (attachments), and the
links to other tutorials point to their notebooks. tools/readme_outputs.py calls this after it
rewrites a tutorial, and tests/test_notebooks.py runs the notebooks' Python cells in a Jupyter
kernel and checks they print what the page shows.
"""

from __future__ import annotations

import argparse
import base64
import re
import sys
from pathlib import Path
from typing import Any

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_outputs import session  # noqa: E402  (the terminal blocks are read as the pages' runner reads them)

ROOT = Path(__file__).resolve().parents[1]
FENCE = "```"
DOWNLOAD = re.compile(r"^\[[^\]\n]*\]\([\w-]+\.ipynb\)[^\n]*$", re.M)
"""The page's line that offers its notebook for download: not part of the notebook."""
FIGURE = re.compile(r"^<!-- figure: \S+ -->\n!\[([^\]\n]*)\]\(([^)\s]+)\)", re.M)
LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")  # a link, not an image
SETUP = {
    "tutorials": "This notebook is the rnnkit tutorial page of the same name, cell for cell. It needs rnnkit with "
                 "the command line and the data sets: `pip install \"rnnkit[all]\"`. The `%%bash` cells run "
                 "rnnkit's commands in the notebook's folder; the outputs shown are those the page shows, "
                 "printed by the current code on a 2-core CPU.",
    "zh": "本 notebook 与同名的 rnnkit 教程页面逐格对应。需要安装带命令行和数据集的 rnnkit："
          "`pip install \"rnnkit[all]\"`。`%%bash` 单元在 notebook 所在的文件夹里运行 rnnkit 的命令；"
          "显示的输出与页面相同，由当前代码在 2 核 CPU 上打印。",
}


def pages() -> list[Path]:
    """Every tutorial page, English and Chinese, that has a notebook."""
    return sorted((ROOT / "docs" / "tutorials").glob("*.md")) + \
        sorted(p for p in (ROOT / "docs" / "zh").glob("*.md") if p.name != "index.md")


def _markdown(text: str, page: Path, attachments: dict[str, Any]) -> str:
    """Prose of the page as a notebook shows it: figures as attachments, links to sibling pages to
    their notebooks, other relative links as their text (the notebook travels alone)."""
    def figure(m: re.Match[str]) -> str:
        image = (page.parent / m[2]).resolve()
        attachments[image.name] = {"image/png": base64.b64encode(image.read_bytes()).decode("ascii")}
        return f"![{m[1]}](attachment:{image.name})"

    def link(m: re.Match[str]) -> str:
        target = m[2]
        if re.fullmatch(r"https?://\S+", target):
            return m[0]
        if (page.parent / target).is_file() and "/" not in target and target.endswith(".md"):
            return f"[{m[1]}]({target[:-3]}.ipynb)"
        return m[1]

    text = DOWNLOAD.sub("", text)
    text = FIGURE.sub(figure, text)
    text = LINK.sub(link, text)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _stream(text: str) -> list[Any]:
    return [nbformat.v4.new_output("stream", name="stdout", text=text)] if text else []


def notebook(page: Path) -> nbformat.NotebookNode:
    """The notebook of a tutorial page (see the module docstring)."""
    lines = page.read_text(encoding="utf-8").split("\n")
    cells: list[Any] = []
    prose: list[str] = []

    def flush() -> None:
        attachments: dict[str, Any] = {}
        text = _markdown("\n".join(prose), page, attachments)
        prose.clear()
        if text:
            cell = nbformat.v4.new_markdown_cell(text)
            if attachments:
                cell["attachments"] = attachments
            cells.append(cell)

    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith(FENCE):
            prose.append(line)
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(FENCE))
        body = lines[i + 1:end]
        language = line[len(FENCE):].strip()
        if language == "python":
            flush()
            printed = ""
            rest = end + 1
            while rest < len(lines) and not lines[rest].strip():
                rest += 1
            if rest < len(lines) and lines[rest] == "prints":  # "prints" and the output block
                start = next(j for j in range(rest + 1, len(lines)) if lines[j].startswith(FENCE))
                stop = next(j for j in range(start + 1, len(lines)) if lines[j].startswith(FENCE))
                printed = "".join(s + "\n" for s in lines[start + 1:stop])
                end = stop
            cells.append(nbformat.v4.new_code_cell("\n".join(body), outputs=_stream(printed), execution_count=None))
        elif not language and body and body[0].startswith("$ "):
            flush()
            commands, shown = session(body)
            cells.append(nbformat.v4.new_code_cell("%%bash\n" + "\n".join(commands),
                                                   outputs=_stream("".join(s + "\n" for s in shown)),
                                                   execution_count=None))
        else:
            prose.extend(lines[i:end + 1])
        i = end + 1
    flush()
    setup = nbformat.v4.new_markdown_cell(SETUP[page.parent.name])
    book = nbformat.v4.new_notebook(cells=[cells[0], setup, *cells[1:]] if cells else [setup])
    for n, cell in enumerate(book.cells):
        cell["id"] = f"{page.stem}-{n}"  # stable ids: the file changes only when the page does
    book.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "language_info": {"name": "python"}}
    return book


def target(page: Path) -> Path:
    return page.with_suffix(".ipynb")


def text_of(page: Path) -> str:
    return nbformat.writes(notebook(page)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Write nothing; exit 1 if a notebook is out of date.")
    args = parser.parse_args()
    stale = []
    for page in pages():
        text = text_of(page)
        path = target(page)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path.relative_to(ROOT)))
            continue
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        sys.exit(f"out of date (run python tools/notebooks.py): {', '.join(stale)}")


if __name__ == "__main__":
    main()
