"""rnnkit.quantize: a trained model's recurrent and linear layers in int8, for inference on a CPU."""

from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import nn

from rnnkit.quantized import _modules
from rnnkit.quantized._ops import needs_library


def _int8_form(module: nn.Module) -> type[nn.Module] | None:
    """The int8 class of a module quantize replaces, else None."""
    from rnnkit.layers import GRU, LSTM, RNN

    for float_types, int8 in (((RNN, nn.RNN), _modules.RNN), ((LSTM, nn.LSTM), _modules.LSTM),
                              ((GRU, nn.GRU), _modules.GRU)):
        if type(module) in float_types:
            return int8
    return None


def _no_int8_form(module: nn.Module) -> bool:
    """A recurrent module quantize has no int8 form for (refused unless skipped)."""
    from rnnkit.cells._module import RecurrentCell
    from rnnkit.layers._min import MinCell, MinRecurrentLayer

    return isinstance(module, (MinRecurrentLayer, MinCell, RecurrentCell, nn.RNNCellBase, nn.RNNBase)) and _int8_form(module) is None


def quantize(model: nn.Module, dtype: str = "int8", *, linear: bool = True, skip: Iterable[str] = (),
             inplace: bool = False) -> nn.Module:
    """The model with its recurrent layers (rnnkit's and torch.nn's RNN, LSTM, GRU) and, with
    linear=True, its torch.nn.Linear layers replaced by int8 forms (rnnkit.quantized), for
    inference on a CPU: weights int8 per output row, activations quantized per row on the fly,
    gate math in float32. Inputs and outputs stay float32, of the same shapes.

    dtype: 'int8' (the only one so far). skip: qualified names of modules to leave in float
    (as named_modules gives them). inplace: replace in model itself; else in a deep copy.
    Raises ValueError naming the module for a recurrent module with no int8 form (MinGRU,
    MinLSTM, cells, layer_norm=True) unless it is skipped; a tool that cannot handle a layer
    says so rather than leave it in float32 unnoticed.
    """
    if dtype != "int8":
        raise ValueError(f"rnnkit.quantize: dtype must be 'int8', got {dtype!r}")
    needs_library("rnnkit.quantize")
    skipped = set(skip)
    unknown = skipped - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"rnnkit.quantize: skip names no module of the model: {sorted(unknown)}")
    if not inplace:
        model = copy.deepcopy(model)

    def convert(module: nn.Module, name: str) -> nn.Module:
        if name in skipped:
            return module
        int8 = _int8_form(module)
        if int8 is not None:
            if getattr(module, "layer_norm", False):
                raise ValueError(f"rnnkit.quantize: {name or 'the model'} ({type(module).__name__}) has "
                                 "layer_norm=True, which has no int8 kernel; pass skip=[its name] to keep it in float")
            return int8.from_float(module)  # type: ignore[attr-defined, no-any-return]
        if linear and type(module) is nn.Linear:
            return _modules.Linear.from_float(module)
        if _no_int8_form(module):
            raise ValueError(f"rnnkit.quantize: {name or 'the model'} ({type(module).__name__}) has no int8 form; "
                             "pass skip=[its name] to keep it in float")
        for child_name, child in list(module.named_children()):
            setattr(module, child_name, convert(child, f"{name}.{child_name}" if name else child_name))
        return module

    return convert(model, "")
