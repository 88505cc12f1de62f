"""bfloat16 inference on the CPU: a layer whose computation is in bfloat16 (a bfloat16 module, or
torch.autocast's cast, rnnkit._autocast) and needs no gradient runs every layer and direction in
one operator, rnnkit::bf16_stack (csrc/cpu/int8_kernel.cpp, int8_kernels.h), where the CPU has
AVX-512 BF16 (but an LSTM that torch's oneDNN kernel takes, as fast or faster): the weights are
packed for its products at each call, each row of x_t and h_{t-1}
enters the products in bfloat16 (x_t as given), the products sum in float32, and the gate math and
the state run in float32; outputs are bfloat16. Elsewhere (training, other CPUs, torch.compile and
torch.export, layer_norm, the diagnostics' probes) the layer runs as before: torch's kernels or the
reference engine (rnnkit.engines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rnnkit.cells import CellWeights, State
from rnnkit.engines import _library
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


def usable(layer: RecurrentLayer, engine: str, x: Tensor, state0: list[State | None],
           cells: list[CellWeights]) -> bool:
    """Whether this call of layer (x (T, B, I), its initial states and weights, as _run_stack has
    them; engine: the one chosen for it) runs on rnnkit::bf16_stack. Not an LSTM that torch's
    kernels take: oneDNN's bfloat16 LSTM is as fast or faster at most sizes (benchmarks/int8.txt);
    torch's bfloat16 GRU and RNN are slower than this operator at every size measured."""
    if layer.mode == "LSTM" and engine == "native":
        return False
    if (x.dtype != torch.bfloat16 or x.device.type != "cpu" or layer.engine != "auto"
            or layer.layer_norm or layer._probes is not None or x.shape[1] == 0):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting() or under_transform():
        return False
    if layer.training and (layer.recurrent_dropout > 0 or layer.zoneout > 0
                           or (layer.dropout > 0 and layer.num_layers > 1)):
        return False
    tensors = [t for w in cells for t in w if t is not None]
    tensors += [t for s in state0 if s is not None for t in s]
    if any(t.dtype != torch.bfloat16 for w in cells for t in (w.weight_ih, w.weight_hh)):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tensors)):
        return False
    return native()


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
