"""Argument and input checks shared by cells and layers.

Every message names the module, the argument, what was expected and what came, e.g.
``LSTM: expected h_0 of shape (2, 3, 20), got (2, 3, 21)``.
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
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_bool(owner: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_probability(owner: str, name: str, value: object, *, allow_one: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # torch.nn: ValueError
        raise InputTypeError(f"{owner}: {name} must be a float, got {type(value).__name__} {value!r}")
    value = float(value)
    top_ok = value <= 1 if allow_one else value < 1
    if not (0 <= value and top_ok):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{owner}: {name} must be in {interval}, got {value}")
    return value


def check_choice(owner: str, name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{owner}: {name} must be one of {options}, got {value!r}")
    return value


def check_float_tensor(owner: str, name: str, value: object, dtype: torch.dtype) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}: expected {name} to be a Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise InputTypeError(
            f"{owner}: expected {name} to be a floating-point tensor ({dtype}), got {value.dtype}"
        )
    if value.dtype != dtype:
        raise InputTypeError(
            f"{owner}: expected {name} of dtype {dtype} (the dtype of the parameters), "
            f"got {value.dtype}"
        )
    return value


def check_shape(owner: str, name: str, value: Tensor, expected: Sequence[int]) -> None:
    if tuple(value.shape) != tuple(expected):
        raise InputError(
            f"{owner}: expected {name} of shape {shape_str(expected)}, "
            f"got {shape_str(value.shape)}"
        )


def check_features(owner: str, name: str, value: Tensor, size: int, arg: str) -> None:
    """The last dimension of value must be size (the constructor argument arg)."""
    if not torch.jit.is_tracing() and value.shape[-1] != size:  # (traced, sizes are not ints)
        raise InputError(
            f"{owner}: expected {name} with {size} features in its last dimension ({arg}={size}), "
            f"got shape {shape_str(value.shape)}"
        )
