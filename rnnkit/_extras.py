"""The optional parts of rnnkit and the packages they need.

`pip install rnnkit` brings what the layers, engines, Trainer and run folders need (torch, numpy,
safetensors, ninja to build the operator library, tqdm). The rest comes in extras named by what
they give: a missing one is an ImportError whose one line names the `pip install` that brings it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

EXTRAS = {
    "data": ("the bundled data sets and the readers of your files",
             ("pandas", "sklearn", "statsmodels", "faker", "sacrebleu", "mlxtend", "chatterbot_corpus", "yaml",
              "vega_datasets", "arch")),
    "plots": ("the plots of a run and of the diagnostics", ("matplotlib",)),
    "cli": ("the rnnkit command", ("click",)),
    "tensorboard": ("TensorBoard event files", ("tensorboard",)),
    "onnx": ("ONNX export", ("onnx", "onnxscript", "onnxruntime")),
}
"""extra -> (what it gives, the top-level modules of the packages it installs)."""

_EXTRA_OF = {module: extra for extra, (_, modules) in EXTRAS.items() for module in modules}


def missing_extra(error: BaseException) -> str | None:
    """The line to say for an ImportError of a module that one of rnnkit's extras brings, or None."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    module = error.name.split(".")[0]
    extra = _EXTRA_OF.get(module)
    if extra is None:
        return None
    # the command and the data sets want the plots too: the command's extra brings all three
    install = "rnnkit[cli]" if extra in ("data", "plots", "cli") else f"rnnkit[{extra}]"
    return (f"{module!r} is not installed: rnnkit's light install leaves out {EXTRAS[extra][0]}; "
            f"pip install \"{install}\" (or \"rnnkit[all]\" for everything)")


def needs_extras(function: Callable[P, R]) -> Callable[P, R]:
    """function, whose ImportError of a module an extra brings says which pip install brings it."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except ModuleNotFoundError as error:
            said = missing_extra(error)
            if said is None:
                raise
            raise ImportError(said, name=(error.name or "").split(".")[0]) from None

    return wrapper
