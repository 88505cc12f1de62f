"""The minimal recurrent layers, MinGRU and MinLSTM (rnnkit.cells._min): stacked, bidirectional,
batch_first, unbatched, an initial state, lengths= and PackedSequence, with torch.nn.GRU's
interface. Their gates read the input alone, so each layer is one matrix product over all steps
(pre = W_ih x + b_ih, (T, B, G*H)) and a scan of h_t = a_t * h_{t-1} + b_t, run by an engine:

- ``reference``: the cell's step in a Python loop, differentiated by autograd (the oracle);
- ``scan``: every step at once in torch, in log space (``scan_log``: cumulative sums and
  logcumsumexp, as the paper's code), differentiated by autograd;
- ``fused``: the scan and its backward pass in one C++ operator of rnnkit's library
  (``rnnkit::min_scan``), threaded over the batch and the units, the gate math inside it;
- ``auto``: fused on CPU where the library is built, else scan.

Shapes: T steps, B batch, I input_size, H hidden_size, D directions, K num_layers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit import _checks
from rnnkit._qconfig import TorchQConfig
from rnnkit.cells._min import CANDIDATES, MIN_KINDS, coefficients, min_step, scan_log
from rnnkit.engines import Probe, _library, reverse_padded
from rnnkit.layers._base import LayerProbe, Lengths, read_input, torch_layer_options

MIN_ENGINES = ("auto", "reference", "scan", "fused")
LOW_PRECISION = (torch.float16, torch.bfloat16)
"""Under autocast a layer's input projection runs in these; its scan then runs in float32, as
torch.nn.GRU's recurrence does on CPU, so its output is float32."""


def run_reference(pre: Tensor, h0: Tensor | None, lengths: Tensor | None, kind: str, candidate: str,
                  probe: Probe | None = None) -> Tensor:
    """The step function in a loop: pre (T, B, G*H), h0 (B, H) or None -> h (T, B, H), zeros past
    each length. probe: rnnkit.diagnostics' view (engines.Probe: its delta[t] is added to h_t,
    and each h_t is kept in its states)."""
    steps, batch = pre.shape[:2]
    h = pre.new_zeros(batch, pre.shape[2] // MIN_KINDS[kind]) if h0 is None else h0
    out = []
    for t in range(steps):
        new = min_step(pre[t], h, kind, candidate)
        if probe is not None:  # + 0, for rnnkit.diagnostics: dL/dh_t lands on probe.delta[t]
            new = new + probe.delta[t]
        if lengths is not None:
            live = (t < lengths).unsqueeze(1)  # (B, 1)
            new = torch.where(live, new, h)
            out.append(new * live)
        else:
            out.append(new)
        h = new
        if probe is not None:
            probe.states.append((new,))
    return torch.stack(out)


def run_scan(pre: Tensor, h0: Tensor | None, lengths: Tensor | None, kind: str, candidate: str) -> Tensor:
    """Every step at once (scan_log): pre (T, B, G*H), h0 (B, H) or None -> h (T, B, H)."""
    log_a, b = coefficients(pre, kind, candidate)
    if lengths is None:
        return scan_log(log_a, b, h0)
    live = (torch.arange(b.shape[0], device=b.device).unsqueeze(1) < lengths).unsqueeze(2)  # (T, B, 1)
    return scan_log(log_a * live, b * live, h0) * live  # past each length a = 1, b = 0 (the state holds), out 0


def run_fused(pre: Tensor, h0: Tensor | None, lengths: Tensor | None, kind: str, candidate: str) -> Tensor:
    """rnnkit::min_scan: pre (T, B, G*H), h0 (B, H) or None -> h (T, B, H)."""
    from rnnkit.engines import _min_op

    return _min_op.min_scan(pre, h0, lengths, kind, candidate)


RUNNERS = {"reference": run_reference, "scan": run_scan, "fused": run_fused}


def min_engine(engine: str, x: Tensor) -> str:
    """The engine that runs: auto is fused on CPU in float32/float64 where rnnkit's library is
    built and no tool traces the call, else scan."""
    if engine != "auto":
        return engine
    from rnnkit.engines import _min_op

    usable = (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and _min_op.available()
              and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()
              and not torch._C._functorch.is_functorch_wrapped_tensor(x))
    return "fused" if usable else "scan"


class MinRecurrentLayer(nn.Module):
    """What MinGRU and MinLSTM share (see the module docstring)."""

    qconfig = TorchQConfig()  # torch.ao.quantization's: see rnnkit._qconfig

    kind: ClassVar[str]
    _probes: list[LayerProbe] | None = None  # set by rnnkit.diagnostics while it looks

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 candidate: str = "g", init: str = "default", chrono_max: float | None = None,
                 layer_norm: bool = False, engine: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        (self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first, self.dropout,
         self.bidirectional) = torch_layer_options(owner, input_size, hidden_size, num_layers, bias, batch_first,
                                                   dropout, bidirectional)
        self.candidate = _checks.check_choice(owner, "candidate", candidate, CANDIDATES)
        self.init = _checks.check_choice(owner, "init", init, ("default", "chrono"))
        if (self.init == "chrono") != (chrono_max is not None) or (chrono_max is not None and not chrono_max > 2):
            raise ValueError(f"{owner}: init='chrono' takes chrono_max > 2 (the longest dependency, in steps), and "
                             f"chrono_max only that init; got init={init!r}, chrono_max={chrono_max!r}")
        if self.init == "chrono" and not self.bias:
            raise ValueError(f"{owner}: init='chrono' sets the gates' biases: it needs bias=True")
        self.chrono_max = chrono_max
        self.layer_norm = _checks.check_bool(owner, "layer_norm", layer_norm)
        self.engine = _checks.check_choice(owner, "engine", engine, MIN_ENGINES)
        if self.engine in ("auto", "fused"):
            _library.load()  # build the operator library now, never inside a traced forward (torch.compile)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"{owner}: dropout={self.dropout} acts between stacked layers only, so it does nothing "
                          "with num_layers=1", UserWarning, stacklevel=3)
        if self.layer_norm and self.num_layers == 1:
            warnings.warn(f"{owner}: layer_norm=True normalises the input of each layer after the first, so it does "
                          "nothing with num_layers=1", UserWarning, stacklevel=3)
        gates = MIN_KINDS[self.kind]
        self._names: list[tuple[str, str | None]] = []  # per (layer, direction): weight, bias
        for layer in range(self.num_layers):
            width = self.input_size if layer == 0 else self.hidden_size * self.num_directions
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                self.register_parameter("weight_ih" + suffix, nn.Parameter(
                    torch.empty(gates * self.hidden_size, width, device=device, dtype=dtype)))
                if self.bias:
                    self.register_parameter("bias_ih" + suffix, nn.Parameter(
                        torch.empty(gates * self.hidden_size, device=device, dtype=dtype)))
                self._names.append(("weight_ih" + suffix, "bias_ih" + suffix if self.bias else None))
            if self.layer_norm and layer > 0:  # over the layer below's D*H features
                self.register_parameter(f"layer_norm_weight_l{layer}", nn.Parameter(
                    torch.empty(width, device=device, dtype=dtype)))
                self.register_parameter(f"layer_norm_bias_l{layer}", nn.Parameter(
                    torch.empty(width, device=device, dtype=dtype)))
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        """Every weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torch.nn.Linear's, the
        projections of the paper's code. init='chrono' (Tallec & Ollivier 2018, as for the LSTM and
        GRU) then sets the gates' biases so that each unit keeps its state for about U steps,
        U ~ U(1, chrono_max - 1): minGRU, z's bias -log(U) (z about 1/U); minLSTM, f's bias log(U)
        and i's -log(U) (f / (f + i) about 1 - 1/U). With torch.nn's initialisation the state
        halves at every step, and a gradient through T steps vanishes as 2^-T. layer_norm's weights
        start at 1 and its biases at 0, as torch.nn.LayerNorm's."""
        H = self.hidden_size
        if self.layer_norm:
            with torch.no_grad():
                for layer in range(1, self.num_layers):
                    getattr(self, f"layer_norm_weight_l{layer}").fill_(1.0)
                    getattr(self, f"layer_norm_bias_l{layer}").zero_()
        for weight, bias in self._names:
            w = getattr(self, weight)
            bound = 1.0 / math.sqrt(w.shape[1])
            with torch.no_grad():
                w.uniform_(-bound, bound)
                if bias is None:
                    continue
                b = getattr(self, bias)
                b.uniform_(-bound, bound)
                if self.init == "chrono":
                    assert self.chrono_max is not None
                    scale = torch.empty(H, device=b.device, dtype=b.dtype).uniform_(1.0, self.chrono_max - 1.0).log_()
                    b[:H] = scale if self.kind == "minlstm" else -scale  # minGRU: z; minLSTM: f
                    if self.kind == "minlstm":
                        b[H:2 * H] = -scale  # i

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults: dict[str, object] = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                                       "bidirectional": False, "candidate": "g", "init": "default",
                                       "chrono_max": None, "layer_norm": False, "engine": "auto"}
        for name, default in defaults.items():
            value = getattr(self, name)
            if value != default:
                s += f", {name}={value!r}" if isinstance(value, str) else f", {name}={value}"
        return s

    def _initial(self, hx: Tensor | None, batch: int, batched: bool, x: Tensor) -> list[Tensor | None]:
        """h_0 of each layer and direction (index layer * D + direction), (B, H); None: zeros."""
        owner = type(self).__name__
        cells = self.num_layers * self.num_directions
        if hx is None:
            return [None] * cells
        if not isinstance(hx, Tensor):
            raise TypeError(f"{owner}: expected hx to be a Tensor h_0, got {type(hx).__name__}")
        h = _checks.check_float_tensor(owner, "h_0", hx, x.dtype)
        if h.dim() != (3 if batched else 2):
            kind, dims = ("batched 3-D", 3) if batched else ("unbatched 2-D", 2)
            raise _checks.InputError(f"{owner}: For {kind} input, hx should also be {dims}-D but got {h.dim()}-D tensor")
        expected = (cells, batch, self.hidden_size) if batched else (cells, self.hidden_size)
        if tuple(h.shape) != expected:
            raise _checks.InputError(f"{owner}: Expected hidden size {expected}, got {list(h.shape)} (h_0: "
                                     f"(num_layers * num_directions, {'batch, ' if batched else ''}hidden_size))")
        h = h if batched else h.unsqueeze(1)
        return [h[i] for i in range(cells)]

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None, *,
                lengths: Lengths | None = None) -> tuple[Tensor | PackedSequence, Tensor]:
        """input (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence;
        hx: h_0 (K*D, B, H) or (K*D, H) unbatched, zeros if None; lengths: (B,) valid steps of a
        right-padded batch. Returns output (T, B, D*H) (as the input: batch-first, unbatched or
        packed; zeros past each length) and h_n (K*D, B, H): each direction's state after its
        last valid step. Under autocast the input projections run in its dtype and the scans in
        float32 (the output float32, as torch.nn.GRU's on CPU)."""
        owner = type(self).__name__
        weight = getattr(self, self._names[0][0])
        given = read_input(owner, input, lengths, weight.dtype, self.batch_first, self.input_size)
        x, lengths_ = given.x, given.run_lengths
        states = self._initial(hx, x.shape[1], given.batched, x)
        steps = x.shape[0]
        last = None if lengths_ is None else (lengths_ - 1).view(1, -1, 1)  # (1, B, 1): each last valid step
        finals = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = F.dropout(x, self.dropout, True)
            if layer > 0 and self.layer_norm:  # (T, B, D*H): each step's features normalised
                x = F.layer_norm(x, (x.shape[-1],), getattr(self, f"layer_norm_weight_l{layer}"),
                                 getattr(self, f"layer_norm_bias_l{layer}"))
            outs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                weight_name, bias_name = self._names[index]
                source = x if direction == 0 else reverse_padded(x, lengths_)
                pre = F.linear(source, getattr(self, weight_name), None if bias_name is None else getattr(self, bias_name))
                h0 = states[index]
                if pre.dtype in LOW_PRECISION:  # under autocast: the product in its dtype, the scan in float32
                    pre, h0 = pre.float(), None if h0 is None else h0.float()
                if self._probes is None:
                    h = RUNNERS[min_engine(self.engine, pre)](pre, h0, lengths_, self.kind, self.candidate)  # (T, B, H)
                else:  # rnnkit.diagnostics is looking: the reference loop (the same numbers), with a probe
                    probe = Probe(pre.new_zeros(steps, pre.shape[1], self.hidden_size, requires_grad=True))
                    h = run_reference(pre, h0, lengths_, self.kind, self.candidate, probe)
                    self._probes.append(LayerProbe(layer, direction, source, lengths_, probe))
                if last is None:
                    finals.append(h[steps - 1])
                else:
                    finals.append(h.gather(0, last.expand(1, -1, h.shape[2]))[0])
                outs.append(h if direction == 0 else reverse_padded(h, lengths_))
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return given.output(x, self.batch_first), given.state((torch.stack(finals),))[0]


class MinGRU(MinRecurrentLayer):
    """A multi-layer minGRU (Feng et al. 2024), with torch.nn.GRU's interface.

    Each layer computes, for all t at once,
    ``z_t = sigmoid(W_z x_t + b_z)``, ``h~_t = g(W_h x_t + b_h)``,
    ``h_t = (1 - z_t) * h_{t-1} + z_t * h~_t``; the derivation from the GRU is in
    rnnkit.cells._min. Parameters: weight_ih_l{k}[_reverse] (2H, I or D*H), rows z then h~,
    and bias_ih_l{k}[_reverse] (2H,); there is no weight_hh.

    Args: input_size, hidden_size, num_layers, bias, batch_first, dropout (between layers),
    bidirectional as torch.nn.GRU; candidate: 'g' (the paper's positive g, the log-space form)
    or 'linear' (h~ = W_h x + b_h, the plain form); init: 'default' or 'chrono' (with
    chrono_max, see reset_parameters); layer_norm: normalise the input of every layer after the
    first over its D*H features (layer_norm_weight_l{k}, layer_norm_bias_l{k}, (D*H,) each, as
    torch.nn.LayerNorm): pre-normalisation, as in the paper's stacked blocks (which also add
    residual connections);
    engine: 'auto', 'reference', 'scan' or 'fused' (module docstring of rnnkit.layers._min).

    Call ``layer(input, hx=None, *, lengths=None)``: see forward.
    """

    kind = "mingru"


class MinLSTM(MinRecurrentLayer):
    """A multi-layer minLSTM (Feng et al. 2024), with torch.nn.GRU's interface (one state, h).

    Each layer computes, for all t at once, ``f_t, i_t = sigmoid(W_f x_t + b_f),
    sigmoid(W_i x_t + b_i)``, ``h~_t = g(W_h x_t + b_h)`` and
    ``h_t = f_t / (f_t + i_t) * h_{t-1} + i_t / (f_t + i_t) * h~_t``. Parameters:
    weight_ih_l{k}[_reverse] (3H, I or D*H), rows f, i, h~, and bias_ih_l{k}[_reverse] (3H,).

    Args and call as :class:`MinGRU`.
    """

    kind = "minlstm"


class MinCell(nn.Module):
    """What MinGRUCell and MinLSTMCell share: one step, x (B, I) or (I,) and h (B, H) or (H,)."""

    qconfig = TorchQConfig()  # torch.ao.quantization's: see rnnkit._qconfig

    kind: ClassVar[str]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, candidate: str = "g",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = _checks.check_int(owner, "input_size", input_size, minimum=1)
        self.hidden_size = _checks.check_int(owner, "hidden_size", hidden_size, minimum=1)
        self.bias = _checks.check_bool(owner, "bias", bias)
        self.candidate = _checks.check_choice(owner, "candidate", candidate, CANDIDATES)
        gates = MIN_KINDS[self.kind]
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_size, input_size, device=device, dtype=dtype))
        self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.input_size)
        with torch.no_grad():
            self.weight_ih.uniform_(-bound, bound)
            if self.bias_ih is not None:
                self.bias_ih.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False") + (
            "" if self.candidate == "g" else f", candidate={self.candidate!r}")

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        """input (B, I) or (I,) unbatched; hx (B, H) or (H,), zeros if None. Returns h' (B, H) or (H,)."""
        owner = type(self).__name__
        x = _checks.check_float_tensor(owner, "input", input, self.weight_ih.dtype)
        if x.dim() not in (1, 2):
            raise _checks.InputError(f"{owner}: Expected input to be 1D or 2D, got {x.dim()}D instead")
        _checks.check_features(owner, x, self.input_size, cell=True)
        batched = x.dim() == 2
        x = x if batched else x.unsqueeze(0)
        if hx is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        else:
            h = _checks.check_float_tensor(owner, "hx", hx, x.dtype)
            h = h if batched else h.unsqueeze(0)
            if tuple(h.shape) != (x.shape[0], self.hidden_size):
                raise _checks.InputError(f"{owner}: Expected hidden size {(x.shape[0], self.hidden_size)}, got "
                                         f"{list(h.shape)}")
        out = min_step(F.linear(x, self.weight_ih, self.bias_ih), h, self.kind, self.candidate)
        return out if batched else out.squeeze(0)


class MinGRUCell(MinCell):
    """One minGRU step (rnnkit.cells._min.mingru_step) as a module: weight_ih (2H, I), rows z
    then h~, and bias_ih (2H,). ``cell(x, hx=None)``: x (B, I) or (I,); hx (B, H) or (H,), zeros
    if None; returns h' (B, H) or (H,)."""

    kind = "mingru"


class MinLSTMCell(MinCell):
    """One minLSTM step (rnnkit.cells._min.minlstm_step) as a module: weight_ih (3H, I), rows
    f, i, h~, and bias_ih (3H,). Called as :class:`MinGRUCell`."""

    kind = "minlstm"


__all__: Sequence[str] = ["MinCell", "MinGRU", "MinGRUCell", "MinLSTM", "MinLSTMCell", "MinRecurrentLayer"]
