"""The `qconfig` attribute of rnnkit's recurrent modules, as torch.ao.quantization reads and sets it.

torch's quantize_dynamic (and its other eager-mode flows) give every module of a model a `qconfig`,
the one its spec names for the module's type, or None; a module whose qconfig is None stays in
float. Its default spec names torch.nn's LSTM and GRU, not rnnkit's, so without this an rnnkit
layer would stay in float32 while the user believes the model quantized. rnnkit's layers are in
torch's mapping of dynamic quantization (rnnkit.quantized registers them), so that
``quantize_dynamic(model, {rnnkit.LSTM, nn.Linear})`` quantizes them; where torch sets None, the
module warns that it stays in float, naming the calls that quantize it.
"""

from __future__ import annotations

import warnings
from typing import Any

_KEY = "_rnnkit_qconfig"


class TorchQConfig:
    """A data descriptor for `qconfig`: unset, reading it raises AttributeError (as for any
    module, so that torch's getattr(module, "qconfig", default) finds its default); set to None
    by torch's quantization, it warns."""

    def __get__(self, module: Any, owner: type | None = None) -> Any:
        if module is None:
            return self
        try:
            return module.__dict__[_KEY]
        except KeyError:
            raise AttributeError(f"{type(module).__name__} has no qconfig") from None

    def __set__(self, module: Any, value: Any) -> None:
        module.__dict__[_KEY] = value
        if value is None:
            from rnnkit.quantized._quantize import _int8_form

            name = type(module).__name__
            if _int8_form(module) is not None:
                hint = (f"name rnnkit.{name} in quantize_dynamic's spec (e.g. {{rnnkit.{name}, nn.Linear}}), "
                        "or call rnnkit.quantize(model)")
            else:
                hint = f"rnnkit has no int8 form of {name}"
            warnings.warn(f"torch.ao.quantization leaves rnnkit's {name} ({module.extra_repr()}) in float: its "
                          f"qconfig is None; {hint}", UserWarning, stacklevel=2)

    def __delete__(self, module: Any) -> None:
        module.__dict__.pop(_KEY, None)
