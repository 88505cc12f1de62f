"""The recurrent layer: stacking, directions, layouts, lengths and packing, state handling.

One implementation serves RNN, LSTM and GRU (the cell family is a CellSpec); the step itself
is the cell's, and the time loop is run by an engine (rnnkit.engines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import logging
import numbers
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit import _checks
from rnnkit._qconfig import TorchQConfig
from rnnkit._autocast import _enabled as _autocast_enabled, cell_state_dtype, compute_dtype
from rnnkit.cells import CellSpec, CellWeights, State
from rnnkit.cells._base import INITS, init_cell_weights, parameter_shapes, weights_as
from rnnkit.cells._module import check_chrono, check_forget_bias
from rnnkit.engines import (ENGINE_NAMES, ENGINES, Engine, LayerConfig, Noise, Probe, _library, for_tools,
                            reverse_padded, select_engine)
from rnnkit.engines import log as _engine_log
from rnnkit.engines._fused_op import DTYPES as FUSED_DTYPES, run_stack, under_transform, unwatched
from rnnkit.layers import _bf16, _packing

Lengths = Sequence[int] | Tensor
NO_NOISE = Noise()
"""No recurrent dropout or zoneout this call (at eval, or with neither set)."""
FUSED_STACK = True
"""Whether a layer on the fused engine trains as one operator for all its layers and directions
(run_stack: rnnkit::fused_stack, one kernel call a pass) where it can; False: one operator per
layer and direction (for paired benchmarks)."""


@dataclass
class LayerProbe:
    """What rnnkit.diagnostics saw of one layer and direction in one forward call.
    inputs: (T, B, I) as the direction read them (reversed in time for direction 1)."""

    layer: int
    direction: int
    inputs: Tensor
    lengths: Tensor | None
    probe: Probe


class RecurrentLayer(nn.Module):
    """Base of rnnkit.RNN, rnnkit.LSTM and rnnkit.GRU; see those classes for the arguments."""

    qconfig = TorchQConfig()  # torch.ao.quantization's: see rnnkit._qconfig

    _probes: list[LayerProbe] | None = None  # set by rnnkit.diagnostics while it looks

    def __init__(
        self,
        spec: CellSpec,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        batch_first: bool,
        dropout: float,
        bidirectional: bool,
        proj_size: int,
        *,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        layer_norm: bool,
        recurrent_dropout: float,
        zoneout: float,
        forget_bias: float | None,
        learn_initial_state: bool,
        init: str,
        engine: str,
        chrono_max: float | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.spec = spec
        self.mode = spec.mode
        (self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first, self.dropout,
         self.bidirectional) = torch_layer_options(owner, input_size, hidden_size, num_layers, bias, batch_first,
                                                   dropout, bidirectional)
        if isinstance(proj_size, numbers.Integral) and not isinstance(proj_size, bool) and proj_size < 0:
            raise ValueError(f"{owner}: proj_size should be a positive integer or zero to disable projections, got "
                             f"{proj_size}")
        self.proj_size = _checks.check_int(owner, "proj_size", proj_size, minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"{owner}: proj_size has to be smaller than hidden_size ({self.hidden_size}), got {self.proj_size}"
            )
        self.layer_norm = _checks.check_bool(owner, "layer_norm", layer_norm)
        self.recurrent_dropout = _checks.check_probability(
            owner, "recurrent_dropout", recurrent_dropout, allow_one=False
        )
        self.zoneout = _checks.check_probability(owner, "zoneout", zoneout, allow_one=True)
        self.forget_bias = check_forget_bias(owner, forget_bias, self.bias)
        self.learn_initial_state = _checks.check_bool(owner, "learn_initial_state", learn_initial_state)
        self.init = _checks.check_choice(owner, "init", init, INITS)
        self.chrono_max = check_chrono(owner, self.init, chrono_max, spec.gates, self.bias)
        self.engine = _checks.check_choice(owner, "engine", engine, ENGINE_NAMES)
        if self.engine in ("auto", "fused"):
            _library.load()  # build the operator library now, never inside a traced forward (torch.compile)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                f"{owner}: dropout={self.dropout} acts between stacked layers only, so it does "
                "nothing with num_layers=1",
                UserWarning,
                stacklevel=3,
            )

        # torch.nn.RNNBase's names of its weights, which third-party code reads (weight-drop
        # wrappers, pruning helpers): per (layer, direction) w_ih, w_hh[, b_ih, b_hh][, w_hr]
        self._all_weights: list[list[str]] = []
        self._flat_weights_names: list[str] = []
        self._cell_names: list[dict[str, str]] = []  # per (layer, direction): field -> parameter
        self._cell_fields: list[tuple[str | None, ...]] = []  # per (layer, direction): each
        # CellWeights field's parameter name, in the fields' order; None where the cell has none
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.out_size * self.num_directions
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = parameter_shapes(
                    gates=spec.gates,
                    input_size=layer_input,
                    hidden_size=self.hidden_size,
                    bias=self.bias,
                    proj_size=self.proj_size,
                    layer_norm=self.layer_norm,
                    lstm=spec.mode == "LSTM",
                )
                names = {}
                for field, shape in shapes.items():
                    self.register_parameter(
                        field + suffix, nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
                    )
                    names[field] = field + suffix
                self._cell_names.append(names)
                self._cell_fields.append(tuple(names.get(field) for field in CellWeights._fields))
                torch_names = [names[f] for f in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
                               if f in names]
                self._all_weights.append(torch_names)
                self._flat_weights_names.extend(torch_names)
        if self.learn_initial_state:
            cells = self.num_layers * self.num_directions
            self.initial_h = nn.Parameter(torch.zeros(cells, self.out_size, device=device, dtype=dtype))  # (K*D, R)
            if spec.num_states == 2:
                self.initial_c = nn.Parameter(
                    torch.zeros(cells, self.hidden_size, device=device, dtype=dtype)
                )  # (K*D, H)
        self.reset_parameters()

    # -- structure -----------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def out_size(self) -> int:
        """R, the size of h: proj_size if set, else hidden_size."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """Feature size of each state part: (R,) or (R, H) for LSTM."""
        return (self.out_size, self.hidden_size)[: self.spec.num_states]

    def cell_weights(self, layer: int, direction: int = 0) -> CellWeights:
        """The parameters of one layer and direction, as the CellWeights a step function takes."""
        return self._weights_of(self._cell_fields[layer * self.num_directions + direction])

    def _weights_of(self, fields: tuple[str | None, ...]) -> CellWeights:
        """One cell's CellWeights from its parameter names in the fields' order (_cell_fields)."""
        params = self._parameters  # a dict lookup, not nn.Module.__getattr__: this runs every call
        return CellWeights(*[None if name is None else params[name] if name in params else getattr(self, name)  # type: ignore[arg-type]
                             for name in fields])

    def _all_cell_weights(self) -> list[CellWeights]:
        """cell_weights of every layer and direction, indexed layer * D + direction."""
        return [self._weights_of(fields) for fields in self._cell_fields]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters per layer and direction, as torch.nn.RNNBase.all_weights."""
        return [[getattr(self, name) for name in names.values()] for names in self._cell_names]

    def reset_parameters(self) -> None:
        """Re-initialise; the default draws the same numbers as torch.nn under the same seed."""
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                init_cell_weights(
                    self.cell_weights(layer, direction),
                    hidden_size=self.hidden_size,
                    gates=self.spec.gates,
                    init=self.init,
                    forget_bias=self.forget_bias,
                    chrono_max=self.chrono_max,
                )
        with torch.no_grad():
            for name in ("initial_h", "initial_c"):
                if hasattr(self, name):
                    getattr(self, name).zero_()

    def flatten_parameters(self) -> None:
        """Does nothing; kept so code written for torch.nn's layers runs unchanged."""

    # -- torch.nn.RNNBase's interface, for code written against it ----------------------------
    @property
    def _flat_weights(self) -> list[Tensor | None]:
        """The weights named by _flat_weights_names, as they are now (parameters, or the tensors
        that pruning, weight_norm or a parametrization computes in their place)."""
        return [getattr(self, name, None) for name in self._flat_weights_names]

    def _init_flat_weights(self) -> None:
        """Nothing to do: _flat_weights is read from the weights' names at each access."""

    def _update_flat_weights(self) -> None:
        """Nothing to do: see _init_flat_weights."""

    def _weights_have_changed(self) -> bool:
        return False

    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        """torch.nn.RNNBase.check_input: input (T, B, I) ((N, I) packed data with batch_sizes)."""
        owner = type(self).__name__
        _checks.check_float_tensor(owner, "input", input, self.cell_weights(0).weight_ih.dtype)
        expected = 2 if batch_sizes is not None else 3
        if input.dim() != expected:
            raise _checks.InputError(f"{owner}: input must have {expected} dimensions, got {input.dim()}")
        _checks.check_features(owner, input, self.input_size, cell=False)

    def get_expected_hidden_size(self, input: Tensor, batch_sizes: Tensor | None) -> tuple[int, int, int]:
        """(K*D, B, R), the shape of h_0 for input (as torch.nn.RNNBase's)."""
        if batch_sizes is not None:
            batch = int(batch_sizes[0])
        else:
            batch = input.size(0) if self.batch_first else input.size(1)
        return (self.num_layers * self.num_directions, batch, self.out_size)

    def check_hidden_size(self, hx: Tensor, expected_hidden_size: tuple[int, ...],
                          msg: str = "Expected hidden size {}, got {}") -> None:
        if hx.size() != expected_hidden_size:
            raise _checks.InputError(f"{type(self).__name__}: " + msg.format(expected_hidden_size, list(hx.size())))

    def check_forward_args(self, input: Tensor, hidden: Tensor | tuple[Tensor, Tensor],
                           batch_sizes: Tensor | None) -> None:
        """torch.nn's check of input and h_0 (and c_0 for LSTM: (K*D, B, H))."""
        self.check_input(input, batch_sizes)
        expected = self.get_expected_hidden_size(input, batch_sizes)
        if isinstance(hidden, tuple):
            self.check_hidden_size(hidden[0], expected, "Expected hidden[0] size {}, got {}")
            self.check_hidden_size(hidden[1], (*expected[:2], self.hidden_size), "Expected hidden[1] size {}, got {}")
        else:
            self.check_hidden_size(hidden, expected)

    def permute_hidden(self, hx: Any, permutation: Tensor | None) -> Any:
        """hx (a state tensor (K*D, B, S), or a tuple of them) with its batch in permutation's order."""
        if permutation is None:
            return hx
        if isinstance(hx, tuple):
            return tuple(h.index_select(1, permutation) for h in hx)
        return hx.index_select(1, permutation)

    def __prepare_scriptable__(self) -> nn.Module:
        """torch.jit.script: refused with what to use instead."""
        raise RuntimeError(
            f"{type(self).__name__}: torch.jit.script cannot compile rnnkit's layers (TorchScript is in "
            "maintenance upstream); use torch.jit.trace, torch.compile or torch.export.export"
        )

    def _config(self) -> LayerConfig:
        return LayerConfig(
            spec=self.spec,
            hidden_size=self.hidden_size,
            layer_norm=self.layer_norm,
            recurrent_dropout=self.recurrent_dropout,
            zoneout=self.zoneout,
        )

    def engine_for(self, input: Tensor | PackedSequence) -> str:
        """The name of the engine that runs this layer on input (by its device, dtype and batch,
        and whether gradients are on: torch.no_grad() can change the choice)."""
        if isinstance(input, PackedSequence):
            data, batch = input.data, int(input.batch_sizes[0])
        else:
            data = input
            batch = 1 if input.dim() < 3 else input.shape[0 if self.batch_first else 1]
        x = data.new_empty((1, batch, data.shape[-1]))  # (T, B, I) as the engines see it
        grad = self._needs_grad(data)
        return select_engine(self.engine, self._config(), x, owner=type(self).__name__, grad=grad).name

    def _needs_grad(self, x: Tensor, cells: list[CellWeights] | None = None) -> bool:
        """Whether a call on x will be differentiated (grad mode on, and x or the weights need it);
        cells: the call's _all_cell_weights, when it has them."""
        weight_hh = (cells[0] if cells is not None else self.cell_weights(0)).weight_hh
        grad_mode = torch.is_grad_enabled() or torch.jit.is_tracing()  # traced: one graph, with or without
        return grad_mode and (x.requires_grad or weight_hh.requires_grad)

    def to_torch(self) -> nn.Module:
        """The equivalent torch.nn module with the same weights (see rnnkit.to_torch)."""
        from rnnkit._convert import to_torch

        return to_torch(self)

    # -- forward -------------------------------------------------------------------------------
    def _forward(
        self,
        input: Tensor | PackedSequence,
        hx: Tensor | Sequence[Tensor] | None,
        lengths: Lengths | None,
    ) -> tuple[Tensor | PackedSequence, State]:
        """Run the layer; returns the output as input was given and the final state parts,
        each (K*D, B, S), or (K*D, S) for an unbatched input."""
        if hx is None and lengths is None:
            trained = self._train_stack(input)
            if trained is not None:
                return trained
        owner = type(self).__name__
        if torch.jit.is_tracing() and torch.onnx.is_in_onnx_export():
            # the TorchScript-based exporter would record one run's numbers as constants
            raise RuntimeError(
                f"{owner}: torch.onnx.export(..., dynamo=False) cannot export rnnkit's layers; "
                "use torch.onnx.export(model, args, dynamo=True), which exports the recurrence "
                "as an ONNX Scan (or `rnnkit export RUN --format onnx`)"
            )
        cells = self._all_cell_weights()  # once per call: index layer * D + direction
        data = input.data if isinstance(input, PackedSequence) else input
        amp = (compute_dtype(owner, data.device.type, packed=isinstance(input, PackedSequence), proj=self.proj_size > 0)
               if isinstance(data, Tensor) and data.is_floating_point() else None)
        if amp is None:
            return self._forward_with(cells, input, hx, lengths)
        with torch.autocast(data.device.type, enabled=False):  # as torch.nn's under autocast: see rnnkit._autocast
            cast = [weights_as(w, amp) for w in cells]
            if isinstance(input, PackedSequence):
                input = PackedSequence(input.data.to(amp), input.batch_sizes, input.sorted_indices,
                                       input.unsorted_indices)
            else:
                input = input.to(amp)
            if isinstance(hx, Tensor):
                hx = hx.to(amp) if hx.is_floating_point() else hx
            elif isinstance(hx, (tuple, list)):
                hx = type(hx)(h.to(amp) if isinstance(h, Tensor) and h.is_floating_point() else h for h in hx)
            out, state = self._forward_with(cast, input, hx, lengths)
            c_dtype = cell_state_dtype(owner, data.device.type, proj=self.proj_size > 0)
            return out, state if c_dtype is None else (state[0], state[1].to(c_dtype))

    def _train_stack(self, input: Tensor | PackedSequence) -> tuple[Tensor, State] | None:
        """The general path's commonest call taken straight to its operator: a plain (T, B, I)
        tensor ((B, T, I) with batch_first) with no initial state or lengths, to be
        differentiated on the fused engine, with nothing watching (no tracing, torch.func,
        autocast, torch-function or dispatch mode, diagnostics or debug log) and nothing in the
        layer that the operator does not run (layer norm, recurrent dropout, zoneout, dropout
        between layers, a learned initial state). That call ends in run_stack with these
        arguments; here without its checks and choices, which cost a training step at small
        sizes more than the kernels do (benchmarks/small_lstm_bound.py). Returns out and the
        final state as _forward does, or None for any other call, which the general path runs
        (and refuses with its errors)."""
        if (torch.compiler.is_compiling() or torch.jit.is_tracing()  # (first: nothing below is traced)
                or not FUSED_STACK or type(input) is not Tensor or input.dtype not in FUSED_DTYPES
                or input.device.type != "cpu" or input.dim() != 3 or not torch.is_grad_enabled()
                or self._probes is not None or self.engine not in ("auto", "fused") or self.layer_norm
                or self.learn_initial_state
                or (self.training and (self.recurrent_dropout or self.zoneout or (self.dropout and self.num_layers > 1)))
                or torch.autograd.forward_ad._current_level >= 0 or _autocast_enabled("cpu")
                or _engine_log.isEnabledFor(logging.DEBUG)):
            return None
        x = input.transpose(0, 1) if self.batch_first else input  # (T, B, I)
        steps, batch, features = x.shape
        if steps == 0 or batch == 0 or features != self.input_size:
            return None
        names, present, first_hh = self._stack_arguments()
        params = self._parameters  # as _weights_of: a parameter, or what replaced it (pruning, parametrize)
        weights: list[Tensor] = [params[name] if name in params else getattr(self, name)  # type: ignore[misc]
                                 for name in names]  # (a name in _stack_arguments is never a None parameter)
        if (not (x.requires_grad or weights[first_hh].requires_grad)
                or weights[0].dtype != x.dtype  # (the general path's error; the operator checks the others)
                or not unwatched((x, *weights)) or _library.unavailable() is not None):
            return None
        out, h_n, c_n, *_ = torch.ops.rnnkit.fused_stack.default(x, None, weights, present, self.spec.mode,
                                                                 self.num_layers, self.num_directions)
        return (out.transpose(0, 1) if self.batch_first else out), ((h_n, c_n) if self.spec.num_states == 2 else (h_n,))

    def _stack_arguments(self) -> tuple[list[str], list[bool], int]:
        """The names of the weights rnnkit::fused_stack takes from this layer, its `present` list
        (run_stack's flat entries without initial states), and where the first cell's weight_hh
        is among the names; made once."""
        made = self.__dict__.get("_stack_made")
        if made is None:
            names: list[str] = []
            present: list[bool] = []
            for fields in self._cell_fields:
                named = dict(zip(CellWeights._fields, fields))
                cell = (None, None, *(named[f] for f in ("weight_ih", "bias_ih", "weight_hh", "bias_hh", "weight_hr")))
                names += [name for name in cell if name is not None]
                present += [name is not None for name in cell]
            first_hh = names.index(str(self._cell_fields[0][CellWeights._fields.index("weight_hh")]))
            made = self.__dict__["_stack_made"] = (names, present, first_hh)
        return made

    def _forward_with(
        self,
        cells: list[CellWeights],
        input: Tensor | PackedSequence,
        hx: Tensor | Sequence[Tensor] | None,
        lengths: Lengths | None,
    ) -> tuple[Tensor | PackedSequence, State]:
        """_forward with the cells' weights given (cast under autocast)."""
        owner = type(self).__name__
        given = read_input(owner, input, lengths, cells[0].weight_ih.dtype, self.batch_first, self.input_size)
        x, run_lengths = given.x, given.run_lengths
        state0 = self._initial_state(hx, x.shape[1], given.batched, x)
        config = self._config()
        engine = select_engine(self.engine, config, x, owner=owner, grad=self._needs_grad(x, cells))
        if self._probes is not None:  # rnnkit.diagnostics is looking: the reference loop, with probes
            engine = ENGINES["reference"]
        else:  # compile, export, ONNX, torch.func: what each can take
            engine = for_tools(engine, config, x, lengths=run_lengths is not None)
        out, state = self._run_stack(engine, x, state0, run_lengths, cells)
        return given.output(out, self.batch_first), given.state(state)

    def _run_stack(
        self, engine: Engine, x: Tensor, state0: list[State | None], lengths: Tensor | None, cells: list[CellWeights]
    ) -> tuple[Tensor, State]:
        """Run every layer and direction. x (T, B, I); cells: the weights of each, indexed
        layer * D + direction (_all_cell_weights); returns out (T, B, D*R) and the final state,
        each part (K*D, B, S) with the cells indexed likewise."""
        if x.dtype == torch.bfloat16:  # on AVX-512 BF16 (rnnkit.layers._bf16)
            if _bf16.usable(self, engine.name, x, state0, cells):
                return _bf16.run_stack(self, x, state0, lengths, cells)  # inference
            if _bf16.trainable(self, engine.name, x, state0, cells):
                return _bf16.train_stack(self, x, state0, lengths, cells)
        if (FUSED_STACK and engine.name == "fused" and self._probes is None and not self.layer_norm
                and not torch.jit.is_tracing() and not torch.compiler.is_exporting()
                # (torch.compile's own tracing runs inside functorch's interpreters, which under_transform
                # would take for a user's transform)
                and (torch.compiler.is_compiling() or not under_transform())
                and x.shape[1] > 0  # (before the size: a traced size is a tensor)
                and (not self.training or (self.recurrent_dropout == 0 and self.zoneout == 0
                                           and (self.dropout == 0 or self.num_layers == 1)))
                and torch.is_grad_enabled()):
            flat = [t for state, w in zip(state0, cells)
                    for t in ((None, None) if state is None else (state[0], state[1] if len(state) > 1 else None))
                    + (w.weight_ih, w.bias_ih, w.weight_hh, w.bias_hh, w.weight_hr)]
            if any(t is not None and t.requires_grad for t in (x, *flat)):
                # training: one operator for the whole stack, rnnkit::fused_stack (one kernel call a pass);
                # export, jit.trace and torch.func keep one operator per cell
                return run_stack(self.spec.mode, self.num_layers, self.num_directions, x, lengths, flat)
        finals: list[State] = []
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                reverse = direction == 1  # read each sequence from its last valid step back
                seen = reverse_padded(layer_input, lengths) if reverse else layer_input  # (T, B, I) in its order
                args = (self.spec, seen, state0[index], cells[index])
                noise = self._sample_noise(x.shape[0], x.shape[1], x)
                if self._probes is None:
                    out, final = engine.run(*args, lengths=lengths, noise=noise)
                else:
                    probe = Probe(x.new_zeros(x.shape[0], x.shape[1], self.out_size, requires_grad=True))
                    out, final = ENGINES["reference"].run(*args, lengths=lengths, noise=noise,  # type: ignore[call-arg]
                                                          probe=probe)
                    self._probes.append(LayerProbe(layer, direction, seen, lengths, probe))
                outs.append(reverse_padded(out, lengths) if reverse else out)  # (T, B, R)
                finals.append(final)
            layer_input = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (T, B, D*R)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        if len(finals) == 1:  # (1, B, S) without a copy
            return layer_input, tuple([part.unsqueeze(0) for part in finals[0]])
        return layer_input, tuple(torch.stack([f[part] for f in finals]) for part in range(self.spec.num_states))

    def _sample_noise(self, steps: int, batch: int, like: Tensor) -> Noise:
        """Masks of one layer and direction; none at eval (both regularisers are then the identity)."""
        if not self.training or (self.recurrent_dropout == 0 and self.zoneout == 0):
            return NO_NOISE
        h_mask = None
        if self.recurrent_dropout > 0:
            keep = 1.0 - self.recurrent_dropout
            h_mask = torch.bernoulli(like.new_full((batch, self.out_size), keep)) / keep  # (B, R)
        zone = None
        if self.zoneout > 0:
            zone = tuple(
                torch.bernoulli(like.new_full((steps, batch, size), self.zoneout)).bool()  # (T, B, S)
                for size in self.state_sizes
            )
        return Noise(h_mask=h_mask, keep=zone)

    def _initial_state(
        self, hx: Tensor | Sequence[Tensor] | None, batch: int, batched: bool, x: Tensor
    ) -> list[State | None]:
        """The initial state of each cell (layer * D + direction), parts (B, S); None for zeros
        (the engines make them, or the fused kernels start from zero without them)."""
        owner = type(self).__name__
        cells = self.num_layers * self.num_directions
        if hx is None:
            if self.learn_initial_state:
                learned = [self.initial_h] + ([self.initial_c] if self.spec.num_states == 2 else [])
                return [tuple(p[i].to(x.dtype).expand(batch, -1) for p in learned) for i in range(cells)]
            return [None] * cells
        names = ("h_0", "c_0")[: self.spec.num_states]
        if self.spec.num_states == 2:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{owner}: expected hx to be a pair (h_0, c_0), got {type(hx).__name__}")
            parts = list(hx)
        else:
            if not isinstance(hx, Tensor):
                raise TypeError(f"{owner}: expected hx to be a Tensor h_0, got {type(hx).__name__}")
            parts = [hx]
        checked = []
        for index, (name, size, h) in enumerate(zip(names, self.state_sizes, parts)):
            h = _checks.check_float_tensor(owner, name, h, x.dtype)
            if h.dim() != (3 if batched else 2):  # torch.nn's words
                kind, dims = ("batched 3-D", 3) if batched else ("unbatched 2-D", 2)
                also = (f"hx and cx should also be {dims}-D but got ({parts[0].dim()}-D, {parts[1].dim()}-D) tensors"
                        if len(parts) == 2 else f"hx should also be {dims}-D but got {h.dim()}-D tensor")
                raise _checks.InputError(f"{owner}: For {kind} input, {also}")
            expected = (cells, batch, size) if batched else (cells, size)
            if not torch.jit.is_tracing() and tuple(h.shape) != expected:
                which = f"hidden[{index}]" if len(parts) == 2 else "hidden"
                raise _checks.InputError(f"{owner}: Expected {which} size {expected}, got {list(h.shape)} ({name}: "
                                         f"(num_layers * num_directions, {'batch, ' if batched else ''}"
                                         f"{'proj_size or ' if index == 0 and self.proj_size else ''}hidden_size))")
            checked.append(h if batched else h.unsqueeze(1))  # (K*D, B, S)
        return [tuple(part[i] for part in checked) for i in range(cells)]

    def extra_repr(self) -> str:
        """torch.nn's repr (its options in its order), then rnnkit's options that are set."""
        s = f"{self.input_size}, {self.hidden_size}"
        torch_defaults: dict[str, object] = {"proj_size": 0, "num_layers": 1, "bias": True, "batch_first": False,
                                             "dropout": 0.0, "bidirectional": False}
        rnnkit_defaults: dict[str, object] = {"layer_norm": False, "recurrent_dropout": 0.0, "zoneout": 0.0,
                                              "forget_bias": None, "learn_initial_state": False, "init": "default",
                                              "chrono_max": None,
                                              "engine": "auto"}
        for name, default in torch_defaults.items():
            value = getattr(self, name)
            if value != default:
                s += f", {name}={value}"
        for name, default in rnnkit_defaults.items():
            value = getattr(self, name)
            if value != default:
                s += f", {name}={value!r}"
        return s


def torch_layer_options(owner: str, input_size: object, hidden_size: object, num_layers: object, bias: object,
                        batch_first: object, dropout: object,
                        bidirectional: object) -> tuple[int, int, int, bool, bool, float, bool]:
    """torch.nn.GRU's constructor arguments, checked in its order with its words."""
    return (_checks.check_int(owner, "input_size", input_size, minimum=1),
            _checks.check_int(owner, "hidden_size", hidden_size, minimum=1),
            _checks.check_int(owner, "num_layers", num_layers, minimum=1),
            _checks.check_bool(owner, "bias", bias),
            _checks.check_bool(owner, "batch_first", batch_first),
            _checks.check_probability(owner, "dropout", dropout, allow_one=True),
            _checks.check_bool(owner, "bidirectional", bidirectional))


@dataclass
class Given:
    """A layer's input read into the form engines run: x (T, B, I) time-major, zeros in any
    padding; run_lengths (B,) on x's device where some sequence is shorter than T, else None."""

    x: Tensor
    batched: bool
    packed: PackedSequence | None
    cpu_lengths: Tensor | None
    run_lengths: Tensor | None

    def output(self, out: Tensor, batch_first: bool) -> Tensor | PackedSequence:
        """out (T, B, R) in the form the input came: packed, unbatched (T, R), or batch-first."""
        if self.packed is not None:
            assert self.cpu_lengths is not None
            return repack(out, self.packed, self.cpu_lengths)
        if not self.batched:
            return out.squeeze(1)
        return out.transpose(0, 1) if batch_first else out

    def state(self, state: State) -> State:
        """The final state's parts (K*D, B, S) as the input came: (K*D, S) unbatched."""
        return state if self.batched else tuple(s.squeeze(1) for s in state)


def read_input(owner: str, input: Tensor | PackedSequence, lengths: Lengths | None, dtype: torch.dtype,
               batch_first: bool, input_size: int) -> Given:
    """Check and read a layer's input (see Given): a PackedSequence, or a tensor (T, B, I), (B, T, I)
    with batch_first, or (T, I) unbatched, with optional lengths (B,)."""
    packed = input if isinstance(input, PackedSequence) else None
    if packed is not None:
        if lengths is not None:
            raise _checks.InputError(
                f"{owner}: lengths= cannot be given with a PackedSequence, which carries its own"
            )
        _checks.check_float_tensor(owner, "input", packed.data, dtype)
        x, cpu_lengths = unpack(owner, packed)  # (T, B, I) in the batch's original order
        batched = True
    else:
        x = _checks.check_float_tensor(owner, "input", input, dtype)
        layout = "(B, T, I)" if batch_first else "(T, B, I)"
        if x.dim() not in (2, 3):
            raise _checks.InputError(
                f"{owner}: Expected input to be 2D or 3D, got {x.dim()}D{' tensor' if owner == 'RNN' else ''} "
                f"instead: {layout}, or (T, I) unbatched, got shape {_checks.shape_str(x.shape)}"
            )
        batched = x.dim() == 3
        if not batched:
            x = x.unsqueeze(1)  # (T, I) -> (T, 1, I)
        elif batch_first:
            x = x.transpose(0, 1)  # (B, T, I) -> (T, B, I)
        if not torch.jit.is_tracing() and x.shape[0] == 0:  # (traced, sizes are not ints)
            raise _checks.InputError(
                f"{owner}: Expected sequence length to be larger than 0 in RNN, got input of shape "
                f"{_checks.shape_str(x.shape)} (time-major)"
            )
        cpu_lengths = None
        if lengths is not None:
            if not batched:
                raise _checks.InputError(f"{owner}: lengths= needs a batched (3-D) input, got a 2-D one")
            cpu_lengths = check_lengths(owner, lengths, batch=x.shape[1], steps=x.shape[0])
    _checks.check_features(owner, x, input_size, cell=False)
    steps = x.shape[0]
    run_lengths = None
    if cpu_lengths is not None:
        if isinstance(lengths, Sequence):
            shortest: int | None = min(lengths) if len(lengths) else steps
        else:  # a tensor (given, or the packed batch's): its values are not known while traced
            shortest = int(cpu_lengths.min()) if unwatched([cpu_lengths]) and cpu_lengths.numel() else None
        if shortest is None or shortest < steps:
            run_lengths = cpu_lengths.to(x.device)
            if packed is None:  # whatever lies in the padding (NaN, inf) never reaches a gradient
                padding = torch.arange(steps, device=x.device).unsqueeze(1) >= run_lengths  # (T, B)
                x = x.masked_fill(padding.unsqueeze(2), 0.0)
    return Given(x, batched, packed, cpu_lengths, run_lengths)


def check_lengths(owner: str, lengths: Lengths, *, batch: int, steps: int) -> Tensor:
    """lengths as a CPU int64 tensor (B,), each in [1, T] (a tensor's values unchecked while
    torch.compile or torch.export traces the call)."""
    if isinstance(lengths, Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"{owner}: expected lengths of an integer dtype, got {lengths.dtype}")
        if lengths.dim() != 1:
            raise _checks.InputError(
                f"{owner}: expected lengths to be 1-D (B,), got shape {_checks.shape_str(lengths.shape)}"
            )
        values = lengths.detach().to("cpu", torch.int64)
    else:
        if not isinstance(lengths, Sequence) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in lengths
        ):
            raise TypeError(f"{owner}: expected lengths to be a list of ints or a 1-D tensor, got {lengths!r}")
        values = torch.tensor(list(lengths), dtype=torch.int64)
    if values.numel() != batch:
        raise _checks.InputError(f"{owner}: expected {batch} lengths (one per sequence), got {values.numel()}")
    if isinstance(lengths, Tensor):
        if torch.compiler.is_compiling():
            return values  # traced, the values are not known here; the fused kernels check them
        low, high = int(values.min()), int(values.max())
    else:
        low, high = (min(lengths), max(lengths)) if len(lengths) else (1, 1)  # (no default=: torch.compile)
    if low < 1:
        raise _checks.InputError(f"{owner}: expected every length >= 1, got {low}")
    if high > steps:
        raise _checks.InputError(f"{owner}: expected every length <= {steps} (the input's time steps), got {high}")
    return values


def unpack(owner: str, packed: PackedSequence) -> tuple[Tensor, Tensor]:
    """pad_packed_sequence(packed): x (T, B, *) zero-padded, in the batch's original order, and
    the lengths (B,) on CPU. Traced (torch.compile, torch.export), with tensor operations whose
    shapes come from the tensors' shapes, not from the values in batch_sizes."""
    if not torch.compiler.is_compiling():
        return pad_packed_sequence(packed)
    data, batch_sizes = packed.data, packed.batch_sizes  # (N, *), (T,)
    if batch_sizes.is_floating_point():  # made by torch's fake aten::_pack_padded_sequence
        raise RuntimeError(
            f"{owner}: this PackedSequence was packed by pack_padded_sequence inside torch.export, which "
            "traces torch's packing with the wrong sizes (its data get T rows, not sum(lengths)); "
            "export inside `with rnnkit.exportable_packing():`, or pass lengths= to the layer instead"
        )
    sizes = batch_sizes.to(device=data.device, dtype=torch.int64)
    padded = _packing.padded_size(batch_sizes)
    if padded is not None:  # packed in this trace by exportable_packing: back to the caller's (T, B)
        sizes = _packing.padded_sizes(sizes, padded[0])  # (T,), 0 past the longest
        batch = padded[1]
    elif packed.sorted_indices is not None:
        batch = packed.sorted_indices.shape[0]
    else:  # the first step holds every sequence; a size known only at run time
        batch = int(batch_sizes[0])
        torch._check(batch >= 1)
        torch._check(batch <= data.shape[0])
    starts = torch.cumsum(sizes, 0) - sizes  # (T,): where each step's rows begin in data
    slot = torch.arange(batch, device=data.device)  # (B,) in sorted order
    valid = slot < sizes.unsqueeze(1)  # (T, B)
    index = (starts.unsqueeze(1) + slot).clamp(max=data.shape[0] - 1)  # (T, B)
    x = data[index] * valid.view(*valid.shape, *([1] * (data.dim() - 1))).to(data.dtype)  # (T, B, *)
    lengths = valid.sum(0)  # (B,)
    if packed.unsorted_indices is not None:  # sorted -> original order
        x = x.index_select(1, packed.unsorted_indices)
        lengths = lengths.index_select(0, packed.unsorted_indices)
    return x, lengths.cpu()


def repack(out: Tensor, like: PackedSequence, lengths: Tensor) -> PackedSequence:
    """Pack out (T, B, R), in the batch's original order, exactly as the input like was packed."""
    if torch.compiler.is_compiling():  # traced: as unpack, shapes from the tensors' shapes
        if like.sorted_indices is not None:
            out = out.index_select(1, like.sorted_indices)  # original -> sorted (descending) order
        sizes = like.batch_sizes.to(device=out.device, dtype=torch.int64)
        if _packing.padded_size(like.batch_sizes) is not None:  # packed by exportable_packing
            valid = _packing.valid_steps(sizes, out.shape[0], out.shape[1])  # (T, B)
            data = out[valid]  # (N, R): the valid steps in packed order (no searchsorted: ONNX has none)
            torch._check(data.shape[0] == like.data.shape[0])
            return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
        ends = torch.cumsum(sizes, 0)  # (T,)
        row = torch.arange(like.data.shape[0], device=out.device)  # (N,): one per packed row
        step = torch.searchsorted(ends, row, right=True)  # (N,): its time step
        slot = row - (ends - sizes)[step]  # and its place in the (sorted) batch
        return PackedSequence(out[step, slot], like.batch_sizes, like.sorted_indices, like.unsorted_indices)
    if like.sorted_indices is not None:
        out = out.index_select(1, like.sorted_indices)  # original -> sorted (descending) order
        lengths = lengths.index_select(0, like.sorted_indices.cpu())
    data = pack_padded_sequence(out, lengths, enforce_sorted=True).data  # (sum(lengths), R)
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
