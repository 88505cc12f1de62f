"""The tutorials as Jupyter notebooks: each is what tools/notebooks.py makes from its page today,
and its Python cells, run in a Jupyter kernel one after another, print what the page shows. The
%%bash cells are the page's commands: tests/test_docs.py checks that the command line accepts
them, tools/readme_outputs.py runs them when it regenerates the pages, and here one whole notebook
(1 -> N, with a training of a few seconds) runs with them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tools.notebooks import notebook, pages, target, text_of
from tools.readme_outputs import EPOCH

PAGES = pages()


def test_every_tutorial_has_its_notebook_linked() -> None:
    assert len(PAGES) >= 16  # eight tutorials, in English and Chinese
    for page in PAGES:
        assert f"]({target(page).name})" in page.read_text(encoding="utf-8"), f"{page.name} does not offer its notebook"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_notebook_is_what_its_page_makes(page: Path) -> None:
    path = target(page)
    assert path.is_file(), f"{path} is missing: run python tools/notebooks.py"
    assert path.read_text(encoding="utf-8") == text_of(page), f"{path} is out of date: run python tools/notebooks.py"
    nbformat.validate(nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))


def _outputs(cell: nbformat.NotebookNode) -> str:
    """What the cell printed on stdout (as the page shows it; warnings go to stderr)."""
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def python_cells(book: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in book.cells if c.cell_type == "code" and not c.source.startswith("%%bash")]


WITH_PYTHON = [p for p in PAGES if p.parent.name == "tutorials" and python_cells(notebook(p))]
WHOLE = "1-to-n"  # run with its %%bash cells by test_a_whole_notebook_runs_in_a_kernel


def test_most_tutorials_have_python_cells() -> None:
    assert len(WITH_PYTHON) >= 7


@pytest.fixture(scope="module")
def kernel() -> Iterator[Any]:
    """One Jupyter kernel for the pages' Python cells (each page starts from a reset namespace):
    a kernel's start costs more than most pages' code."""
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    yield client
    client.stop_channels()
    manager.shutdown_kernel(now=True)


def _run(client: Any, code: str) -> tuple[str, list[str]]:
    """Run code in the kernel: what it printed on stdout, and its errors (name: value)."""
    printed: list[str] = []
    errors: list[str] = []

    def hook(message: dict[str, Any]) -> None:
        kind, content = message["msg_type"], message["content"]
        if kind == "stream" and content["name"] == "stdout":
            printed.append(content["text"])
        elif kind == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")

    client.execute_interactive(code, output_hook=hook, timeout=300)
    return "".join(printed), errors


@pytest.mark.parametrize("page", [p for p in WITH_PYTHON if p.stem != WHOLE], ids=lambda p: p.stem)
def test_notebook_python_cells_print_what_the_page_shows(page: Path, tmp_path: Path, kernel: Any) -> None:
    _, errors = _run(kernel, f"%reset -f\nimport os\nos.chdir({str(tmp_path)!r})")
    assert not errors, errors
    for k, cell in enumerate(python_cells(notebook(page))):
        printed, errors = _run(kernel, cell.source)
        assert not errors, f"{page.name} cell {k}: {errors[0]}"
        expected = _outputs(cell)
        if expected:
            assert printed == expected, f"{page.name} cell {k} prints something else in a kernel"


def _as_shown(text: str) -> str:
    """Output as the pages show it: per-epoch lines folded into "...", seconds masked."""
    shown: list[str] = []
    for line in text.rstrip("\n").split("\n"):
        if EPOCH.match(line):
            if not shown or shown[-1] != "...":
                shown.append("...")
        else:
            shown.append(line)
    return re.sub(r"\d+\.\d s\b", "N s", "\n".join(shown))


@pytest.mark.end_to_end
def test_a_whole_notebook_runs_in_a_kernel(tmp_path: Path) -> None:
    """1 -> N, every cell: its %%bash cells train a caption run and caption three digits with it,
    printing what the page shows (the seconds aside)."""
    page = next(p for p in PAGES if p.parent.name == "tutorials" and p.stem == WHOLE)
    book = notebook(page)
    bash = [c for c in book.cells if c.cell_type == "code" and c.source.startswith("%%bash")]
    assert bash and any("rnnkit train caption" in c.source for c in bash)
    shown = [_outputs(c) for c in book.cells if c.cell_type == "code"]
    run = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.source) for c in book.cells
                                          if c.cell_type == "code"], metadata=book.metadata)
    NotebookClient(run, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    for k, (cell, expected) in enumerate(zip(run.cells, shown)):
        assert not [o for o in cell.outputs if o.output_type == "error"], f"cell {k} failed: {cell.outputs}"
        assert _as_shown(_outputs(cell)) == _as_shown(expected), f"cell {k} prints something else in a kernel"
    assert (tmp_path / "runs" / "caption" / "plots" / "examples.png").is_file()
