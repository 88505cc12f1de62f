"""The module shell shared by RNNCell, LSTMCell and GRUCell: parameters, checks, unbatched input.

The equations live in each family's step function; this class only owns the parameters and
turns torch.nn.*Cell's calling convention into one call of that step function.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rnnkit import _checks
from rnnkit._qconfig import TorchQConfig
from rnnkit._autocast import compute_dtype
from rnnkit.cells._base import INITS, CellSpec, CellWeights, State, init_cell_weights, parameter_shapes, weights_as


class RecurrentCell(nn.Module):
    """Base of the cell modules; the concrete classes are RNNCell, LSTMCell and GRUCell."""

    qconfig = TorchQConfig()  # torch.ao.quantization's: see rnnkit._qconfig

    def __init__(
        self,
        spec: CellSpec,
        input_size: int,
        hidden_size: int,
        bias: bool,
        *,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        layer_norm: bool,
        init: str,
        forget_bias: float | None = None,
        chrono_max: float | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.spec = spec
        self.input_size = _checks.check_int(owner, "input_size", input_size, minimum=1)
        self.hidden_size = _checks.check_int(owner, "hidden_size", hidden_size, minimum=0)  # 0: as torch.nn
        self.bias = bool(bias)  # torch.nn's cells take any truthy value
        self.layer_norm = _checks.check_bool(owner, "layer_norm", layer_norm)
        self.init = _checks.check_choice(owner, "init", init, INITS)
        self.forget_bias = check_forget_bias(owner, forget_bias, bias)
        self.chrono_max = check_chrono(owner, self.init, chrono_max, spec.gates, self.bias)
        shapes = parameter_shapes(
            gates=spec.gates,
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            bias=self.bias,
            layer_norm=self.layer_norm,
            lstm=spec.mode == "LSTM",
        )
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()

    def weights(self) -> CellWeights:
        """This cell's parameters as the CellWeights the step function takes."""
        return CellWeights(**{name: p for name, p in self.named_parameters(recurse=False)})

    def reset_parameters(self) -> None:
        init_cell_weights(
            self.weights(),
            hidden_size=self.hidden_size,
            gates=self.spec.gates,
            init=self.init,
            forget_bias=self.forget_bias,
            chrono_max=self.chrono_max,
        )

    def to_torch(self) -> nn.Module:
        """The equivalent torch.nn cell with the same weights (see rnnkit.to_torch)."""
        from rnnkit._convert import to_torch

        return to_torch(self)

    def _run(self, input: Tensor, hx: Sequence[Tensor] | None) -> State:
        """Check input (B, I) or (I,) and hx, run one step, return the state as hx was given.
        Under autocast, in the dtype torch.nn's cell of the kind computes in (rnnkit._autocast)."""
        amp = (compute_dtype(type(self).__name__, input.device.type)
               if isinstance(input, Tensor) and input.is_floating_point() else None)
        if amp is None:
            return self._step(input, hx, self.weights())
        with torch.autocast(input.device.type, enabled=False):
            weights = weights_as(self.weights(), amp)
            cast = hx if not isinstance(hx, (tuple, list)) else [
                h.to(amp) if isinstance(h, Tensor) and h.is_floating_point() else h for h in hx]
            return self._step(input.to(amp), cast, weights)

    def _step(self, input: Tensor, hx: Sequence[Tensor] | None, weights: CellWeights) -> State:
        owner = type(self).__name__
        # a float tensor first; whether its dtype is the weights' after the sizes, as torch.nn checks
        x = _checks.check_float_tensor(owner, "input", input, None)
        if x.dim() not in (1, 2):
            raise _checks.InputError(
                f"{owner}: Expected input to be 1D or 2D, got {x.dim()}D instead: (B, I), or (I,) unbatched, got "
                f"shape {_checks.shape_str(x.shape)}"
            )
        batched = x.dim() == 2
        if not batched:
            x = x.unsqueeze(0)  # (I,) -> (1, I)
        batch = x.shape[0]
        sizes = (self.hidden_size,) * self.spec.num_states
        names = ("h", "c")[: self.spec.num_states]
        if hx is None:
            _checks.check_features(owner, x, self.input_size, cell=True)
            _checks.check_float_tensor(owner, "input", x, weights.weight_ih.dtype)
            state = tuple(x.new_zeros(batch, size) for size in sizes)
        else:  # in torch's order: the dimensions, the input's features, then the state's sizes
            if self.spec.num_states == 2 and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
                raise TypeError(f"{owner}: expected hx to be a pair (h, c), got {type(hx).__name__}")
            parts = []
            for index, (name, size, h) in enumerate(zip(names, sizes, hx)):
                h = _checks.check_float_tensor(owner, name, h, None)
                if h.dim() not in (1, 2):  # torch.nn's words from here on
                    which = f"hx[{index}]" if self.spec.num_states == 2 else "hidden"
                    raise _checks.InputError(f"{owner}: Expected {which} to be 1D or 2D, got {h.dim()}D instead "
                                             f"({name} of shape {_checks.shape_str(h.shape)})")
                if h.dim() != input.dim():
                    raise _checks.InputError(f"{owner}: expected {name} to be {input.dim()}-D as the input is, got "
                                             f"shape {_checks.shape_str(h.shape)}")
                parts.append(h if batched else h.unsqueeze(0))  # (B, H)
            _checks.check_features(owner, x, self.input_size, cell=True)
            for index, (name, size, h) in enumerate(zip(names, sizes, parts)):
                if h.shape[0] != batch:
                    raise _checks.InputError(f"{owner}: Input batch size {batch} doesn't match hidden{index} batch size "
                                             f"{h.shape[0]} ({name} of shape {_checks.shape_str(h.shape)})")
                if h.shape[1] != size:
                    raise _checks.InputError(f"{owner}: hidden{index} has inconsistent hidden_size: got {h.shape[1]}, "
                                             f"expected {size} ({name} of shape {_checks.shape_str(h.shape)})")
            _checks.check_float_tensor(owner, "input", x, weights.weight_ih.dtype)
            for name, h in zip(names, parts):
                _checks.check_float_tensor(owner, name, h, x.dtype)
            state = tuple(parts)
        out = self.spec.step(x, state, weights, None)
        return out if batched else tuple(s.squeeze(0) for s in out)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.layer_norm:
            s += ", layer_norm=True"
        if self.init != "default":
            s += f", init={self.init!r}"
        if self.chrono_max is not None:
            s += f", chrono_max={self.chrono_max}"
        if self.forget_bias is not None:
            s += f", forget_bias={self.forget_bias}"
        return s


def check_chrono(owner: str, init: str, chrono_max: object, gates: int, bias: bool) -> float | None:
    """chrono_max goes with init='chrono' (and it with chrono_max): a number above 2, for a cell
    with gates (LSTM, GRU) and biases."""
    if init != "chrono":
        if chrono_max is not None:
            raise ValueError(f"{owner}: chrono_max={chrono_max!r} is for init='chrono', got init={init!r}")
        return None
    if gates == 1:
        raise ValueError(f"{owner}: init='chrono' sets the gates' biases, and a vanilla RNN has no gates: "
                         "use an LSTM or a GRU")
    if not bias:
        raise ValueError(f"{owner}: init='chrono' sets the gates' biases: it needs bias=True, got bias=False")
    if isinstance(chrono_max, bool) or not isinstance(chrono_max, (int, float)) or not chrono_max > 2:
        raise ValueError(f"{owner}: init='chrono' needs chrono_max, the longest dependency in steps (a number "
                         f"above 2, e.g. the sequence length), got {chrono_max!r}")
    return float(chrono_max)


def check_forget_bias(owner: str, forget_bias: object, bias: bool) -> float | None:
    """forget_bias is LSTM-only, a number, and needs bias=True."""
    if forget_bias is None:
        return None
    if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)):
        raise TypeError(f"{owner}: forget_bias must be a float or None, got {forget_bias!r}")
    if not bias:
        raise ValueError(f"{owner}: forget_bias={forget_bias} needs bias=True, got bias=False")
    return float(forget_bias)
