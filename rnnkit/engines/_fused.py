"""The fused engine: forward and backward of one layer and direction as one autograd Function,
with backpropagation through time derived by hand (kernels/rnn_kernels_impl.h).

Outside the time loop, one matrix product each: the input projections of all steps before it,
and after it the gradients of the input, of W_ih and of W_hh, and of the biases.
Inside it (in C): the recurrent product h_{t-1} @ W_hh^T and the gate math.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.cells import CellSpec, CellWeights, State
from rnnkit.engines import _compiled
from rnnkit.engines._base import LayerConfig, Noise, reverse_padded

CELL_IDS = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}
SAVED = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 4}  # saved activations per unit
DTYPES = {torch.float32: "_f32", torch.float64: "_f64"}


def _ptr(t: Tensor | None) -> int | None:
    """The address of t's data. The caller must hold t until the kernel returns: pass named
    tensors, never a temporary made in the call's own arguments."""
    return None if t is None else t.data_ptr()


class FusedEngine:
    name = "fused"

    def unsupported(self, config: LayerConfig, x: Tensor) -> str | None:
        if x.device.type != "cpu":
            return f"it runs on CPU, and the input is on {x.device.type}"
        if x.dtype not in DTYPES:
            return f"it runs float32 and float64, and the input is {x.dtype}"
        if config.layer_norm:
            return "layer_norm=True is not in its kernels yet"
        if config.proj_size > 0:
            return "proj_size > 0 is not in its kernels yet"
        kernels = _compiled.load()
        return kernels if isinstance(kernels, str) else None

    def run(
        self,
        spec: CellSpec,
        x: Tensor,
        state: State,
        weights: CellWeights,
        *,
        lengths: Tensor | None,
        reverse: bool,
        noise: Noise,
    ) -> tuple[Tensor, State]:
        kernels = _compiled.load()
        assert not isinstance(kernels, str), kernels
        if reverse:
            x = reverse_padded(x, lengths)  # (T, B, I), each sequence reversed in its length
        keep = noise.keep or (None, None)
        c0 = state[1] if spec.mode == "LSTM" else None
        results = FusedLayer.apply(
            kernels, spec.mode, x, state[0], c0, weights.weight_ih, weights.weight_hh,
            weights.bias_ih, weights.bias_hh, lengths, noise.h_mask,
            keep[0], keep[1] if spec.mode == "LSTM" else None,
        )
        out, final = results[0], tuple(results[1:])
        if reverse:
            out = reverse_padded(out, lengths)
        return out, final


class FusedLayer(torch.autograd.Function):
    """out, h_T[, c_T] = layer(x, h_0[, c_0]) over a whole sequence, with a hand-written backward.

    Saved for the backward pass (T steps, B batch, H hidden, G gates, S saved per unit):
        x     (T, B, I)    the input, for dW_ih = dG_i^T x
        hs    (T+1, B, H)  h before and after every step: h_{t-1} enters dW_hh and the GRU's dz
        cs    (T+1, B, H)  LSTM cell states: c_{t-1} gives df
        acts  (T, B, S*H)  gate activations, so no sigmoid or tanh is recomputed
        cand  (T, B, H)    LSTM candidate c~_t: tanh(c~_t) gives do and dc
        and the weights, lengths and masks as given.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        kernels: _compiled.Kernels,
        mode: str,
        x: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        lengths: Tensor | None,
        h_mask: Tensor | None,
        keep_h: Tensor | None,
        keep_c: Tensor | None,
    ) -> tuple[Tensor, ...]:
        steps, batch, inputs = x.shape
        hidden = w_hh.shape[1]
        lstm = mode == "LSTM"
        x2 = x.reshape(steps * batch, inputs)  # (T*B, I)
        # input projections of every step: (T*B, I) @ (I, G*H) + b_ih
        xp = torch.addmm(b_ih, x2, w_ih.t()) if b_ih is not None else x2 @ w_ih.t()
        gates = w_ih.shape[0]
        hs = x.new_empty(steps + 1, batch, hidden)
        cs = x.new_empty(steps + 1, batch, hidden) if lstm else None
        h0_c = h0.contiguous()
        c0_c = None if c0 is None else c0.contiguous()
        out = x.new_empty(steps, batch, hidden)
        acts = x.new_empty(steps, batch, SAVED[mode] * hidden)
        cand = x.new_empty(steps, batch, hidden) if lstm else None
        w_hh_c = w_hh.contiguous()
        b_hh_c = None if b_hh is None else b_hh.contiguous()
        lengths_c = None if lengths is None else lengths.to(torch.int64).contiguous()
        h_mask_c = None if h_mask is None else h_mask.contiguous()
        keep_h_c = None if keep_h is None else keep_h.contiguous().view(torch.uint8)
        keep_c_c = None if keep_c is None else keep_c.contiguous().view(torch.uint8)
        status = getattr(kernels.lib, "rnn_forward" + DTYPES[x.dtype])(
            CELL_IDS[mode], kernels.blas[x.dtype], steps, batch, hidden,
            _ptr(xp), _ptr(w_hh_c), _ptr(b_hh_c), _ptr(lengths_c), _ptr(h_mask_c),
            _ptr(keep_h_c), _ptr(keep_c_c), _ptr(h0_c), _ptr(c0_c), _ptr(hs), _ptr(cs), _ptr(out),
            _ptr(acts), _ptr(cand),
        )
        if status != 0:
            raise MemoryError("rnnkit fused engine: no memory for the forward kernel's scratch")
        ctx.save_for_backward(x2, w_ih, w_hh_c, hs, cs, acts, cand, lengths_c, h_mask_c, keep_h_c, keep_c_c)
        ctx.kernels, ctx.mode, ctx.has_bias = kernels, mode, b_ih is not None
        ctx.shape = (steps, batch, inputs, hidden)
        if lstm:
            assert cs is not None
            return out, hs[steps].clone(), cs[steps].clone()
        return out, hs[steps].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None = None) -> tuple[Tensor | None, ...]:
        x2, w_ih, w_hh, hs, cs, acts, cand, lengths, h_mask, keep_h, keep_c = ctx.saved_tensors
        steps, batch, inputs, hidden = ctx.shape
        mode, kernels = ctx.mode, ctx.kernels
        gates = w_ih.shape[0]
        like = hs
        d_out = like.new_zeros(steps, batch, hidden) if d_out is None else d_out.contiguous()
        dh = like.new_zeros(batch, hidden) if d_hn is None else d_hn.clone().contiguous()
        dc = None
        if mode == "LSTM":
            dc = like.new_zeros(batch, hidden) if d_cn is None else d_cn.clone().contiguous()
        dgi = like.new_empty(steps, batch, gates)
        dgh = like.new_empty(steps, batch, gates) if mode == "GRU" else dgi
        status = getattr(kernels.lib, "rnn_backward" + DTYPES[like.dtype])(
            CELL_IDS[mode], kernels.blas[like.dtype], steps, batch, hidden,
            _ptr(w_hh), _ptr(lengths), _ptr(h_mask), _ptr(keep_h), _ptr(keep_c),
            _ptr(hs), _ptr(cs), _ptr(acts), _ptr(cand), _ptr(d_out), _ptr(dh), _ptr(dc),
            _ptr(dgi), _ptr(dgh if mode == "GRU" else None),
        )
        if status != 0:
            raise MemoryError("rnnkit fused engine: no memory for the backward kernel's scratch")
        dgi2 = dgi.view(steps * batch, gates)  # (T*B, G*H)
        dgh2 = dgh.view(steps * batch, gates)
        needs = ctx.needs_input_grad  # kernels, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, ...
        dx = (dgi2 @ w_ih).view(steps, batch, inputs) if needs[2] else None  # (T, B, I)
        dw_ih = dgi2.t() @ x2 if needs[5] else None  # (G*H, I)
        dw_hh = None
        if needs[6]:
            h_in = hs[:steps] if h_mask is None else hs[:steps] * h_mask  # (T, B, H) what met W_hh
            dw_hh = dgh2.t() @ h_in.reshape(steps * batch, hidden)  # (G*H, H)
        db_ih = db_hh = None
        if ctx.has_bias and (needs[7] or needs[8]):
            db_ih = dgi2.sum(0)  # (G*H,)
            db_hh = dgh2.sum(0) if mode == "GRU" else db_ih  # the same sum but for the GRU's n gate
        return (None, None, dx, dh if needs[3] else None, dc if needs[4] else None,
                dw_ih, dw_hh, db_ih, db_hh, None, None, None, None)
