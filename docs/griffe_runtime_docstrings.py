"""A griffe extension for the API reference.

- A class whose docstring is built at import time (rnnkit.RNN, LSTM and GRU share their
  arguments' text through ``__doc__ = ... + _SHARED_DOC``) gets the docstring Python gives it,
  which static analysis cannot see.
- rnnkit's docstrings are plain text, and the reference renders them as Markdown: the stars of
  shapes ("(T, B, *)", "D*H") would turn into italics and tokens such as "<eos>" into HTML
  tags. Outside code (backtick spans and indented blocks) they are escaped to show as written,
  and Sphinx's roles (":class:`torch.nn.LSTM`") become code spans.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

try:
    import griffe
except ImportError:  # (the test suite, without the docs' dependencies, checks as_written alone)
    griffe = None

CODE_SPAN = re.compile(r"(``?[^`]+``?)")
ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):(?=`)")


def _escape_line(line: str) -> str:
    parts = CODE_SPAN.split(ROLE.sub("", line))  # odd indices: code spans, kept as they are
    return "".join(p if i % 2 else p.replace("*", r"\*").replace("<", "&lt;") for i, p in enumerate(parts))


def as_written(text: str) -> str:
    """text with Markdown's emphasis stars and HTML's angle brackets escaped outside code."""
    out, in_block, previous_blank = [], False, True
    for line in text.split("\n"):
        indented = line.startswith("    ") or line.startswith("\t")
        in_block = indented and (in_block or previous_blank)  # an indented block starts after a blank line
        out.append(line if in_block else _escape_line(line))
        previous_blank = not line.strip()
    return "\n".join(out)


class RuntimeDocstrings(griffe.Extension if griffe is not None else object):  # type: ignore[misc]
    def on_class_instance(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        if cls.docstring is not None or not cls.path.startswith("rnnkit."):
            return
        try:
            runtime = griffe.dynamic_import(cls.path)
        except ImportError:
            return
        text = inspect.getdoc(runtime)
        if text and runtime.__dict__.get("__doc__"):  # its own docstring, not a base class's
            cls.docstring = griffe.Docstring(text, parent=cls)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path != "rnnkit":
            return
        seen: set[int] = set()

        def visit(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = as_written(obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)  # type: ignore[arg-type]

        visit(pkg)
