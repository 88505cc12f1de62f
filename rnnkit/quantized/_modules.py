"""int8 inference modules: rnnkit.quantized.RNN, LSTM, GRU and Linear, made from trained float
modules by rnnkit.quantize (or each class's from_float).

The scheme (as torch's dynamic quantization, with a scale per row of each activation):
weights int8 per output row (symmetric, w ~ scale[n] * q[n], scales float32), activations (each
row of x_t and h_{t-1}) quantized to int8 on the fly in the kernels, products summed exactly in
int32, the gate math in float32. Inference only: these modules hold no parameters, and a backward
pass through them raises saying so.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit import _checks
from rnnkit.cells import CellWeights
from rnnkit.layers._base import Lengths, read_input
from rnnkit.quantized._ops import CELL_ARGS, GATES, needs_library, pack, quantize_rows

State = Tensor | tuple[Tensor, Tensor]


def _check_qconfig(module: nn.Module) -> None:
    """A module torch's quantization hands over must ask for int8 weights (rnnkit's only form)."""
    qconfig = getattr(module, "qconfig", None)  # set by torch's quantization (rnnkit._qconfig), else absent
    if qconfig is not None:
        dtype = qconfig.weight().dtype
        if dtype != torch.qint8:
            raise ValueError(f"rnnkit.quantized.{type(module).__name__}: rnnkit's layers quantize to int8 (torch.qint8) "
                             f"only, got a qconfig for {dtype}")


def _refuse_float_weights(owner: str, names: Sequence[str], state_dict: dict[str, Any], prefix: str,
                          error_msgs: list[str], remedy: str) -> None:
    """A state_dict whose int8 weights (names) come as floats is refused, saying so: copy_ would
    cast a float model's weights to int8 silently."""
    for name in names:
        given = state_dict.get(prefix + name)
        if given is not None and given.dtype != torch.int8:
            error_msgs.append(f"{owner}: {prefix + name} is {given.dtype}, not int8: this is a state_dict of a float "
                              f"model; load it into the float model and {remedy}")


class _Packed(nn.Module):
    """Base of the int8 modules: int8 weights with their scales as buffers (in the state_dict),
    each also packed for the kernels into non-persistent buffers, repacked when a state_dict is
    loaded."""

    _quantized: list[tuple[str, int]]  # (name of an int8 weight, its gates)

    def _add_weight(self, name: str, q: Tensor, scale: Tensor, gates: int) -> None:
        self.register_buffer(name, q)
        self.register_buffer(name + "_scale", scale)
        self._quantized.append((name, gates))
        self._pack_one(name, gates)

    def _pack_one(self, name: str, gates: int) -> None:
        packed, sums = pack(getattr(self, name), gates)
        self.register_buffer(name + "_packed", packed, persistent=False)
        self.register_buffer(name + "_sums", sums, persistent=False)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        _refuse_float_weights(type(self).__name__, [name for name, _ in self._quantized], state_dict, prefix,
                              error_msgs, "call rnnkit.quantize(model)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for name, gates in self._quantized:
            self._pack_one(name, gates)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        out = super()._apply(fn, recurse)
        for name, _ in self._quantized:  # .to(dtype) casts only floats; an int8 weight must stay int8
            if getattr(self, name).dtype != torch.int8:
                raise TypeError(f"{type(self).__name__}: the int8 weight {name} cannot change dtype")
            if getattr(self, name).device.type != "cpu":
                raise RuntimeError(f"{type(self).__name__}: int8 inference runs on the CPU only, got "
                                   f"{getattr(self, name).device}")
        for name in [n for n, b in self._buffers.items() if b is not None and b.is_floating_point()]:
            if self._buffers[name].dtype != torch.float32:  # type: ignore[union-attr]
                raise TypeError(f"{type(self).__name__}: int8 modules compute in float32; cannot cast {name} to "
                                f"{self._buffers[name].dtype}")  # type: ignore[union-attr]
        return out


class Linear(_Packed):
    """int8 torch.nn.Linear: y (*, out_features) = x (*, in_features) @ W^T + b, W int8 per
    output row, x quantized per row on the fly. From a trained nn.Linear: Linear.from_float."""

    in_features: int
    out_features: int
    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self._quantized = []
        self.out_features, self.in_features = weight.shape
        q, scale = quantize_rows(weight)
        self._add_weight("weight", q, scale, 1)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())

    @classmethod
    def from_float(cls, module: nn.Linear) -> Linear:
        needs_library("rnnkit.quantized.Linear")
        return cls(module.weight, module.bias)

    def forward(self, input: Tensor) -> Tensor:
        owner = "quantized.Linear"
        _checks.check_float_tensor(owner, "input", input, torch.float32)
        return torch.ops.rnnkit.int8_linear(input, self.weight_packed, self.weight_sums, self.weight_scale,
                                            self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


class _Recurrent(_Packed):
    """int8 inference of a recurrent layer (rnnkit's or torch.nn's RNN, LSTM, GRU): stacked,
    bidirectional, batch_first, unbatched, an initial state, lengths= and PackedSequence, proj_size
    (LSTM), learn_initial_state; dropout, recurrent_dropout and zoneout act in training only, so
    they do nothing here. layer_norm has no int8 kernel: from_float refuses it."""

    mode: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    bidirectional: bool
    proj_size: int
    initial_h: Tensor  # buffers, where the float layer learned its initial state
    initial_c: Tensor

    def __init__(self, layer: Any) -> None:  # an rnnkit or torch.nn layer of this family
        super().__init__()
        owner = f"quantized.{type(self).__name__}"
        if getattr(layer, "layer_norm", False):
            raise ValueError(f"{owner}: a layer with layer_norm=True has no int8 kernel; leave it in float32 "
                             "(rnnkit.quantize(model, skip=[its name]))")
        self._quantized = []
        self.mode = layer.mode  # RNN_TANH, RNN_RELU, LSTM or GRU, in rnnkit's layers as in torch.nn's
        self.input_size, self.hidden_size, self.num_layers = layer.input_size, layer.hidden_size, layer.num_layers
        self.bias, self.batch_first, self.bidirectional = layer.bias, layer.batch_first, layer.bidirectional
        self.proj_size = getattr(layer, "proj_size", 0)
        gates = GATES[self.mode]
        self._cells: list[list[str | None]] = []  # per layer and direction: int8_stack's weights by name
        for k in range(self.num_layers):
            for suffix in [f"_l{k}"] + ([f"_l{k}_reverse"] if self.bidirectional else []):
                names: list[str | None] = []
                for kind, g in (("ih", gates), ("hh", gates)):
                    self._add_weight(f"weight_{kind}{suffix}", *quantize_rows(getattr(layer, f"weight_{kind}{suffix}")),
                                     g)
                    names += [f"weight_{kind}{suffix}_packed", f"weight_{kind}{suffix}_sums",
                              f"weight_{kind}{suffix}_scale"]
                for kind in ("ih", "hh"):
                    name = f"bias_{kind}{suffix}"
                    if self.bias:
                        self.register_buffer(name, getattr(layer, name).detach().to(torch.float32).clone())
                    names.append(name if self.bias else None)
                if self.proj_size > 0:
                    self._add_weight(f"weight_hr{suffix}", *quantize_rows(getattr(layer, f"weight_hr{suffix}")), 1)
                    names += [f"weight_hr{suffix}_packed", f"weight_hr{suffix}_sums", f"weight_hr{suffix}_scale"]
                else:
                    names += [None, None, None]
                assert len(names) == CELL_ARGS
                self._cells.append(names)
        for name in ("initial_h", "initial_c"):  # learn_initial_state: (K*D, R) and (K*D, H)
            if getattr(layer, name, None) is not None:
                self.register_buffer(name, getattr(layer, name).detach().to(torch.float32).clone())

    @classmethod
    def from_float(cls, layer: nn.Module) -> _Recurrent:
        """The int8 form of a trained rnnkit or torch.nn layer of this family (also as torch's
        quantize_dynamic calls it, with the layer's qconfig set: its weights must be qint8)."""
        needs_library(f"rnnkit.quantized.{cls.__name__}")
        _check_qconfig(layer)
        return cls(layer)

    @property
    def out_size(self) -> int:
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def forward(self, input: Tensor | PackedSequence, hx: State | None = None, *,
                lengths: Lengths | None = None) -> tuple[Tensor | PackedSequence, State]:
        """As the float layer's: input (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a
        PackedSequence; hx h_0 (K*D, B, R) (LSTM: a pair with c_0 (K*D, B, H)); lengths (B,).
        Returns output (T, B, D*R) in the input's form and h_n (K*D, B, R) (LSTM: (h_n, c_n))."""
        owner = f"quantized.{type(self).__name__}"
        given = read_input(owner, input, lengths, torch.float32, self.batch_first, self.input_size)
        x = given.x  # (T, B, I)
        h0, c0 = self._initial_state(owner, hx, x.shape[1], given.batched)
        buffers = self._buffers  # (a dict lookup: nn.Module.__getattr__ per name costs more than the kernel)
        weights = [None if name is None else buffers[name] for names in self._cells for name in names]
        out, h_n, c_n = torch.ops.rnnkit.int8_stack(x, given.run_lengths, h0, c0, weights, self.mode,
                                                    self.num_layers, 2 if self.bidirectional else 1)
        state: tuple[Tensor, ...] = (h_n, c_n) if self.mode == "LSTM" else (h_n,)
        state = given.state(state)
        return given.output(out, self.batch_first), (state if self.mode == "LSTM" else state[0])  # type: ignore[return-value]

    def _initial_state(self, owner: str, hx: State | None, batch: int,
                       batched: bool) -> tuple[Tensor | None, Tensor | None]:
        """h_0 (K*D, B, R) and c_0 (K*D, B, H) as the kernel reads them; None for zeros."""
        cells = self.num_layers * (2 if self.bidirectional else 1)
        lstm = self.mode == "LSTM"
        if hx is None:
            if hasattr(self, "initial_h"):
                h0 = self.initial_h.unsqueeze(1).expand(cells, batch, self.out_size).contiguous()
                c0 = self.initial_c.unsqueeze(1).expand(cells, batch, self.hidden_size).contiguous() if lstm else None
                return h0, c0
            return None, None
        if lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{owner}: expected hx to be a pair (h_0, c_0), got {type(hx).__name__}")
            parts: Sequence[Tensor] = hx
        else:
            if not isinstance(hx, Tensor):
                raise TypeError(f"{owner}: expected hx to be a Tensor h_0, got {type(hx).__name__}")
            parts = [hx]
        checked = []
        for name, size, h in zip(("h_0", "c_0"), (self.out_size, self.hidden_size), parts):
            h = _checks.check_float_tensor(owner, name, h, torch.float32)
            expected = (cells, batch, size) if batched else (cells, size)
            if tuple(h.shape) != expected:
                raise _checks.InputError(f"{owner}: Expected hidden size {expected}, got {list(h.shape)} ({name})")
            checked.append((h if batched else h.unsqueeze(1)).to(torch.float32).contiguous())
        return checked[0], (checked[1] if lstm else None)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name in ("batch_first", "bidirectional"):
            if getattr(self, name):
                s += f", {name}=True"
        if not self.bias:
            s += ", bias=False"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        return s + ", int8"


class RNN(_Recurrent):
    """int8 inference of rnnkit.RNN or torch.nn.RNN (tanh or relu)."""


class LSTM(_Recurrent):
    """int8 inference of rnnkit.LSTM or torch.nn.LSTM (with proj_size too)."""


class GRU(_Recurrent):
    """int8 inference of rnnkit.GRU or torch.nn.GRU."""


class WeightOnly(nn.Module):
    """int8 weight-only form of a recurrent layer (rnnkit's or torch.nn's RNN, LSTM, GRU): its
    weight matrices stored int8 per output row with float32 scales (about a quarter of float32's
    bytes, in memory and in the state_dict), dequantized to float32 at each call (w = scale[n] *
    q[n]), which then runs the float layer's engines on float activations. It saves memory, not
    time (a call costs the float layer's and the dequantization); rnnkit.quantized.LSTM etc.
    (activations in int8 too) are the fast form. Every option of the float layer works, layer_norm
    included (its gains stay float32). What torchao's Int8WeightOnlyConfig gives a recurrent layer
    (rnnkit.quantized.torchao).

    Call it as the float layer: input (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or
    a PackedSequence; hx and lengths= as the float layer's; it returns what the float layer does."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        from rnnkit._convert import from_torch
        from rnnkit.layers._base import RecurrentLayer

        float_layer = layer if isinstance(layer, RecurrentLayer) else from_torch(layer)
        assert isinstance(float_layer, RecurrentLayer)
        inner = copy.deepcopy(float_layer).float().eval()
        self._names: list[str] = []  # the int8 weights, as the float layer names them
        for name, p in list(inner.named_parameters(recurse=False)):
            if name.startswith("weight_") and p.dim() == 2:
                q, scale = quantize_rows(p)
                self.register_buffer(name, q)
                self.register_buffer(name + "_scale", scale)
                self._names.append(name)
                del inner._parameters[name]
        for p in inner.parameters():
            p.requires_grad_(False)
        self.layer = inner  # the float layer without its weight matrices (biases, gains: float32)

    @classmethod
    def from_float(cls, layer: nn.Module) -> WeightOnly:
        return cls(layer)

    def forward(self, input: Tensor | PackedSequence, hx: State | None = None, *,
                lengths: Lengths | None = None) -> tuple[Tensor | PackedSequence, State]:
        layer = self.layer
        buffers = self._buffers
        weights = {name: buffers[name].to(torch.float32) * buffers[name + "_scale"].unsqueeze(1)  # type: ignore[union-attr]
                   for name in self._names}
        cells = [CellWeights(*[None if name is None else weights[name] if name in weights else getattr(layer, name)  # type: ignore[arg-type]
                               for name in fields]) for fields in layer._cell_fields]
        out, state = layer._forward_with(cells, input, hx, lengths)
        return out, (state if layer.spec.num_states == 2 else state[0])  # type: ignore[return-value]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        _refuse_float_weights("WeightOnly", self._names, state_dict, prefix, error_msgs, "quantize it again")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return "int8 weights, float activations"
