"""Argument and input checks shared by cells and layers.

Every message names the module, the argument, what was expected and what came, and holds the
words torch.nn's recurrent modules use for the same error (torch's own tests and code in the wild
match them), e.g. ``LSTM: Expected hidden[0] size (2, 3, 20), got [2, 3, 21] (h_0: ...)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor


class InputError(ValueError, RuntimeError):
    """A layer's or cell's input, state or lengths of the wrong shape or value. torch.nn raises
    RuntimeError for most of these and ValueError for some; this is both, so that code written
    to catch either of torch's catches rnnkit's."""


class InputTypeError(TypeError, ValueError):
    """An input of the wrong dtype, or a probability that is not a number: torch.nn raises
    ValueError, rnnkit TypeError; this is both."""


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + (",)" if len(shape) == 1 else ")")


def check_int(owner: str, name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} should be of type int, got: {type(value).__name__} ({value!r})")
    if value < minimum:
        rule = "must be greater than zero" if minimum == 1 else f"must be >= {minimum}"
        raise ValueError(f"{owner}: {name} {rule}, got {value}")
    return int(value)


def check_bool(owner: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} should be of type bool, got: {type(value).__name__} ({value!r})")
    return value


def check_probability(owner: str, name: str, value: object, *, allow_one: bool) -> float:
    """A probability in [0, 1] ([0, 1) without allow_one); dropout's messages are torch.nn's."""
    interval = "[0, 1]" if allow_one else "[0, 1)"
    rule = (f"should be a number in range {interval} representing the probability of an element being zeroed"
            if name == "dropout" else f"should be a number in range {interval}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # torch.nn: ValueError
        raise InputTypeError(f"{owner}: {name} {rule}, got {type(value).__name__} {value!r}")
    value = float(value)
    top_ok = value <= 1 if allow_one else value < 1
    if not (0 <= value and top_ok):
        raise ValueError(f"{owner}: {name} {rule}, got {value}")
    return value


def check_choice(owner: str, name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{owner}: {name} must be one of {options}, got {value!r}")
    return value


def check_float_tensor(owner: str, name: str, value: object, dtype: torch.dtype | None) -> Tensor:
    """value as a floating-point Tensor of dtype (None: of any floating dtype)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}: expected {name} to be a Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise InputTypeError(
            f"{owner}: expected {name} to be a floating-point tensor{f' ({dtype})' if dtype else ''}, got {value.dtype}"
        )
    if dtype is None:
        return value
    if value.dtype != dtype and name == "input":
        raise InputTypeError(
            f"{owner}: RNN input dtype ({value.dtype}) does not match weight dtype ({dtype}). "
            f"Convert input: input.to({dtype}), or convert model: model.to({value.dtype})"
        )
    if value.dtype != dtype:
        raise InputTypeError(
            f"{owner}: Input and hidden tensors are not the same dtype: expected {name} of dtype {dtype} (the "
            f"input's), got {value.dtype}"
        )
    return value


def check_features(owner: str, value: Tensor, size: int, *, cell: bool) -> None:
    """The last dimension of the input value must be size (input_size), in the words of torch's
    cells or layers."""
    if not torch.jit.is_tracing() and value.shape[-1] != size:  # (traced, sizes are not ints)
        said = (f"input has inconsistent input_size: got {value.shape[-1]} expected {size}" if cell else
                f"input.size(-1) must be equal to input_size. Expected {size}, got {value.shape[-1]}")
        raise InputError(f"{owner}: {said} (input of shape {shape_str(value.shape)})")
