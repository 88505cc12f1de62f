"""A griffe extension for the API reference: a class whose docstring is built at import time
(rnnkit.RNN, LSTM and GRU share their arguments' text through ``__doc__ = ... + _SHARED_DOC``)
gets the docstring Python gives it, which static analysis cannot see."""

from __future__ import annotations

import inspect
from typing import Any

import griffe


class RuntimeDocstrings(griffe.Extension):
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
