"""The int8 operators' Python parts: weight quantization and the fake kernels that tracing
(torch.compile, torch.export) runs. Their CPU kernels are C++ and C (csrc/cpu/int8_kernel.cpp,
int8_kernels.h), in rnnkit's operator library:

    int8_pack(w (G*H, K) int8, G) -> packed (G*HB, K4, 16, 4) int8, sums (G*HB*16,) int32
    int8_linear(x (*, K) float32, packed, sums, scale (N,), bias (N,) or None) -> (*, N)
    int8_stack(x (T, B, I), lengths (B,) or None, h0 (K*D, B, R) or None, c0 (K*D, B, H) or None,
               weights, mode, K, D) -> out (T, B, D*R), h_n (K*D, B, R), c_n (K*D, B, H) or (0,)

HB = ceil(H / 16), K4 = ceil(K / 4); weights: 11 a layer and direction (see int8_kernel.cpp).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.engines import _library

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
CELL_ARGS = 11
"""Tensors of int8_stack's weights per layer and direction."""


def needs_library(what: str) -> None:
    """Raise RuntimeError saying why, where rnnkit's operator library cannot be had."""
    found = _library.load()
    if isinstance(found, str):
        raise RuntimeError(f"{what} needs rnnkit's operator library: {found}")


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """w (N, K) float as int8 per output row, symmetric: q (N, K) int8 and scale (N,) float32 with
    w ~ scale[:, None] * q, scale = max |w[n]| / 127 (0 for a row of zeros), q = round(w / scale)."""
    w = w.detach().to(torch.float32)
    amax = w.abs().amax(dim=1)  # (N,)
    scale = amax / 127
    q = torch.round(w / torch.where(amax > 0, scale, 1.0).unsqueeze(1)).clamp(-127, 127)
    return q.to(torch.int8), scale


def pack(q: Tensor, gates: int) -> tuple[Tensor, Tensor]:
    """q (G*H, K) int8 in the products' layout: packed (G*HB, K4, 16, 4) int8 and sums (G*HB*16,) int32."""
    return torch.ops.rnnkit.int8_pack(q, gates)


def _register() -> None:
    @torch.library.register_fake("rnnkit::int8_pack")
    def _pack_fake(w: Tensor, gates: int) -> tuple[Tensor, Tensor]:
        rows = (w.shape[0] // gates + 15) // 16 * gates
        return w.new_empty(rows, (w.shape[1] + 3) // 4, 16, 4), w.new_empty(rows * 16, dtype=torch.int32)

    @torch.library.register_fake("rnnkit::int8_linear")
    def _linear_fake(x: Tensor, packed: Tensor, sums: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
        return x.new_empty(*x.shape[:-1], scale.shape[0])

    @torch.library.register_fake("rnnkit::int8_stack")
    def _stack_fake(x: Tensor, lengths: Tensor | None, h0: Tensor | None, c0: Tensor | None,
                    weights: list[Tensor | None], mode: str, layers: int,
                    directions: int) -> tuple[Tensor, Tensor, Tensor]:
        hidden = weights[5].shape[0] // GATES[mode]  # type: ignore[union-attr]
        out_size = weights[10].shape[0] if weights[10] is not None else hidden
        T, B = x.shape[0], x.shape[1]
        c_n = x.new_empty(layers * directions, B, hidden) if mode == "LSTM" else x.new_empty(0)
        return x.new_empty(T, B, directions * out_size), x.new_empty(layers * directions, B, out_size), c_n

    @torch.library.register_fake("rnnkit::bf16_pack")
    def _bf16_pack_fake(w: Tensor, gates: int) -> Tensor:
        return w.new_empty((w.shape[0] // gates + 15) // 16 * gates, (w.shape[1] + 1) // 2, 16, 2)

    @torch.library.register_fake("rnnkit::bf16_stack")
    def _bf16_stack_fake(x: Tensor, lengths: Tensor | None, h0: Tensor | None, c0: Tensor | None,
                         weights: list[Tensor | None], mode: str, layers: int, directions: int, hidden: int,
                         proj: int) -> tuple[Tensor, Tensor, Tensor]:
        out_size = proj if proj > 0 else hidden
        T, B = x.shape[0], x.shape[1]
        c_n = x.new_empty(layers * directions, B, hidden) if mode == "LSTM" else x.new_empty(0)
        return x.new_empty(T, B, directions * out_size), x.new_empty(layers * directions, B, out_size), c_n



_library.on_load(_register)
