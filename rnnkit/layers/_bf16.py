"""bfloat16 on the CPU, where it has AVX-512 BF16: a layer whose computation is in bfloat16 (a
bfloat16 module, or torch.autocast's cast, rnnkit._autocast) runs on rnnkit's bfloat16 kernels.

- Inference (no gradient): every layer and direction in one operator, rnnkit::bf16_stack
  (csrc/cpu/int8_kernel.cpp, int8_kernels.h), but an LSTM that torch's oneDNN kernel takes, as
  fast or faster. The weights are packed for its products at each call.
- Training: rnnkit::fused_stack of bfloat16 tensors (csrc/cpu/bf16_train_kernel.cpp), whose
  hand-derived backward pass runs the recurrence in C and the sums over the sequence as bfloat16
  matrix products; an LSTM below TRAIN_LSTM_MIN_HIDDEN units keeps torch's oneDNN kernel, faster
  there (benchmarks/int8.txt).

Either way each row of x_t and h_{t-1} enters the products in bfloat16, the products sum in
float32, and the gate math and the state run in float32; outputs are bfloat16. Elsewhere (other
CPUs, torch.compile and torch.export, layer_norm, proj_size in training, recurrent dropout,
zoneout, dropout between layers in training, the diagnostics' probes) the layer runs as before:
torch's kernels or the reference engine (rnnkit.engines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rnnkit.cells import CellWeights, State
from rnnkit.engines import _library
from rnnkit.engines._fused_op import run_stack as fused_run_stack
from rnnkit.engines._fused_op import under_transform

if TYPE_CHECKING:
    from rnnkit.layers._base import RecurrentLayer

_NATIVE: bool | None = None
"""Whether the library's bfloat16 products are AVX-512 BF16's (found once)."""


def native() -> bool:
    """Whether rnnkit::bf16_stack runs on AVX-512 BF16 here (else the layer keeps its engines:
    the portable float32 loops would be slower than torch's bfloat16 kernels)."""
    global _NATIVE
    if _NATIVE is None:
        _NATIVE = _library.unavailable() is None and bool(torch.ops.rnnkit._policy("bf16_native"))
    return _NATIVE


TRAIN_LSTM_MIN_HIDDEN = 256
"""The hidden size from which an LSTM trains on rnnkit's bfloat16 kernels rather than oneDNN's
(at H = 128 oneDNN's was faster, at H = 256 and 512 rnnkit's: benchmarks/int8.txt)."""


def _eligible(layer: RecurrentLayer, x: Tensor, cells: list[CellWeights]) -> bool:
    """What both paths need: x (T, B, I) and every weight bfloat16 on the CPU, engine="auto", no
    layer norm or probes, a batch, no tracer or transform, and AVX-512 BF16."""
    if (x.dtype != torch.bfloat16 or x.device.type != "cpu" or layer.engine != "auto"
            or layer.layer_norm or layer._probes is not None or x.shape[1] == 0):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting() or under_transform():
        return False
    if layer.training and (layer.recurrent_dropout > 0 or layer.zoneout > 0
                           or (layer.dropout > 0 and layer.num_layers > 1)):
        return False
    if any(t.dtype != torch.bfloat16 for w in cells for t in (w.weight_ih, w.weight_hh)):
        return False
    return native()


def _differentiated(x: Tensor, state0: list[State | None], cells: list[CellWeights]) -> bool:
    """Whether autograd will differentiate this call (grad mode on, and an input needs it)."""
    tensors = [t for w in cells for t in w if t is not None]
    tensors += [t for s in state0 if s is not None for t in s]
    return torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tensors))


def usable(layer: RecurrentLayer, engine: str, x: Tensor, state0: list[State | None],
           cells: list[CellWeights]) -> bool:
    """Whether this call of layer (x (T, B, I), its initial states and weights, as _run_stack has
    them; engine: the one chosen for it) runs on rnnkit::bf16_stack (inference). Not an LSTM that
    torch's kernels take: oneDNN's bfloat16 LSTM is as fast or faster at most sizes
    (benchmarks/int8.txt); torch's bfloat16 GRU and RNN are slower than this operator at every
    size measured."""
    if layer.mode == "LSTM" and engine == "native":
        return False
    return _eligible(layer, x, cells) and not _differentiated(x, state0, cells)


def trainable(layer: RecurrentLayer, engine: str, x: Tensor, state0: list[State | None],
              cells: list[CellWeights]) -> bool:
    """Whether this call of layer trains on rnnkit's bfloat16 kernels (train_stack): a gradient
    is wanted, no projection, and not a small LSTM that oneDNN's kernel takes."""
    if layer.proj_size > 0 or (layer.mode == "LSTM" and engine == "native"
                               and layer.hidden_size < TRAIN_LSTM_MIN_HIDDEN):
        return False
    return _eligible(layer, x, cells) and _differentiated(x, state0, cells)


def train_stack(layer: RecurrentLayer, x: Tensor, state0: list[State | None], lengths: Tensor | None,
                cells: list[CellWeights]) -> tuple[Tensor, State]:
    """Every layer and direction by rnnkit::fused_stack in bfloat16, with its backward pass:
    out (T, B, D*H) and the final state, parts (K*D, B, H), bfloat16."""
    flat: list[Tensor | None] = []
    for state, w in zip(state0, cells):
        h0, c0 = (None, None) if state is None else (state[0], state[1] if len(state) > 1 else None)
        flat += [h0, c0, w.weight_ih, w.bias_ih, w.weight_hh, w.bias_hh, None]
    return fused_run_stack(layer.spec.mode, layer.num_layers, layer.num_directions, x, lengths, flat)


def run_stack(layer: RecurrentLayer, x: Tensor, state0: list[State | None], lengths: Tensor | None,
              cells: list[CellWeights]) -> tuple[Tensor, State]:
    """Every layer and direction: out (T, B, D*R) and the final state, parts (K*D, B, S), bfloat16."""
    gates = layer.spec.gates
    pack = torch.ops.rnnkit.bf16_pack
    weights: list[Tensor | None] = []
    for w in cells:
        weights += [pack(w.weight_ih, gates), pack(w.weight_hh, gates), w.bias_ih, w.bias_hh,
                    None if w.weight_hr is None else pack(w.weight_hr, 1)]
    h0 = c0 = None
    if state0[0] is not None:
        h0 = torch.stack([s[0] for s in state0 if s is not None])  # (K*D, B, R)
        if layer.spec.num_states == 2:
            c0 = torch.stack([s[1] for s in state0 if s is not None])  # (K*D, B, H)
    out, h_n, c_n = torch.ops.rnnkit.bf16_stack(x, lengths, h0, c0, weights, layer.mode, layer.num_layers,
                                                layer.num_directions, layer.hidden_size, layer.proj_size)
    return out, ((h_n, c_n) if layer.spec.num_states == 2 else (h_n,))
