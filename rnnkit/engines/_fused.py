"""The fused engine: forward and backward of one layer and direction as one autograd Function,
with backpropagation through time derived by hand (kernels/rnn_kernels_impl.h).

In C, over weights packed once per call: the input projection x @ W_ih^T + b_ih (of all steps at
once before the loop when the batch runs as one slice; each slice its own at every step when the
batch runs in parallel slices); inside the time loop the recurrent product h_{t-1} @ W_hh^T, its
layer norm and the gate math; and after the backward loop, while their sums run over few rows,
the weight gradients. With layer_norm, the input side of the gates (LN(W_ih x) + b_ih) is
computed by torch before the loop and differentiated by autograd. A call that needs no gradient
keeps nothing for a backward pass."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells import CellSpec, CellWeights, State
from rnnkit.cells._base import LAYER_NORM_EPS
from rnnkit.engines import _compiled
from rnnkit.engines._base import LayerConfig, Noise

CELL_IDS = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}
SAVED = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 4}  # saved activations per unit
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
DTYPES = {torch.float32: "_f32", torch.float64: "_f64"}
PARALLEL_MIN_ROWS = 8
"""Each thread's slice of the batch has at least this many sequences."""
PARALLEL_MIN_WORK = 4_000_000
"""Multiply-adds of the recurrent products (T * B * G*H * H) below which one thread runs all."""
STEP_PARALLEL_MIN_WORK = 300_000
"""Multiply-adds of one step's recurrent product (B * G*H * R) from which a batch run as one
slice shares each step's products among threads (about 3 us of work: starting them costs ~1)."""
KERNEL_WEIGHT_GRADS_MAX_WORK = 50_000_000
"""Multiply-adds of the weight gradients (T * B * G*H * (R + I)) up to which the backward kernel
computes them (summing over few rows, its products beat the BLAS's); above, torch does."""


def _slice_count(kernels: _compiled.Kernels, steps: int, batch: int, gates: int, hidden: int) -> int:
    """How many slices of the batch the kernels run in parallel (one thread each).

    Sequences of a batch never meet, so each slice runs its whole time loop alone: no
    synchronisation per step. One slice for small work, or when the kernels lack OpenMP.
    """
    if not kernels.parallel or steps * batch * gates * hidden < PARALLEL_MIN_WORK:
        return 1
    return max(1, min(torch.get_num_threads(), batch // PARALLEL_MIN_ROWS))


def _product_threads(kernels: _compiled.Kernels, slices: int, batch: int, gates: int, size: int) -> int:
    """How many threads share each step's products: for a batch too small to slice, all of them
    once a step's work pays for starting them; else one (each slice has its thread)."""
    if slices > 1 or not kernels.parallel or batch * gates * size < STEP_PARALLEL_MIN_WORK:
        return 1
    return torch.get_num_threads()


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
        noise: Noise,
    ) -> tuple[Tensor, State]:
        kernels = _compiled.load()
        assert not isinstance(kernels, str), kernels
        w = weights
        w_ih: Tensor | None
        b_ih: Tensor | None
        if w.ln_weight_ih is None:  # the Function projects x itself: one autograd node fewer
            xp, w_ih, b_ih = x, w.weight_ih, w.bias_ih
        else:  # the input side of all steps' gates, layer-normalised: (T, B, I) -> (T, B, G*H)
            xp = F.layer_norm(F.linear(x, w.weight_ih), (w.weight_ih.shape[0],), w.ln_weight_ih,
                              w.bias_ih, LAYER_NORM_EPS)
            w_ih = b_ih = None
        keep = noise.keep or (None, None)
        lstm = spec.mode == "LSTM"
        args = (kernels, spec.mode, xp, w_ih, b_ih, state[0], state[1] if lstm else None, w.weight_hh,
                w.bias_hh, w.weight_hr, w.ln_weight_hh, w.ln_weight_c, w.ln_bias_c, lengths, noise.h_mask,
                keep[0], keep[1] if lstm else None)
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
            results = FusedLayer.apply(*args)
        else:  # nothing to differentiate: keep nothing for a backward pass
            results = _forward(*args, save=False).outputs
        return results[0], tuple(results[1:])


class _Forward(NamedTuple):
    outputs: tuple[Tensor, ...]  # out (T, B, R), h_T (B, R)[, c_T (B, H)]
    saved: tuple[Tensor | None, ...]  # what FusedLayer.backward unpacks (save=True only)
    slices: int
    threads: int  # see _product_threads


def _forward(
    kernels: _compiled.Kernels,
    mode: str,
    xp: Tensor,
    w_ih: Tensor | None,
    b_ih: Tensor | None,
    h0: Tensor,
    c0: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    ln_hh: Tensor | None,
    ln_cw: Tensor | None,
    ln_cb: Tensor | None,
    lengths: Tensor | None,
    h_mask: Tensor | None,
    keep_h: Tensor | None,
    keep_c: Tensor | None,
    *,
    save: bool,
) -> _Forward:
    """The forward kernel over xp: the gates' input side (T, B, G*H), or with w_ih the input x
    (T, B, I), projected here. save=False keeps nothing for a backward pass: the saved arrays
    then hold one step (and hs, cs two), which the kernel overwrites as it goes."""
    x_in = x = w_ih_c = b_ih_c = pre = None
    steps, batch = xp.shape[:2]
    gates = w_hh.shape[0]
    hidden = gates // GATES[mode]
    slices = _slice_count(kernels, steps, batch, gates, hidden)
    if w_ih is None:  # xp is the gates' input side (T, B, G*H), computed before the loop
        pre = xp.contiguous()
    else:  # xp is the input x (T, B, I), which the kernel projects: x W_ih^T + b_ih (T, B, G*H)
        x = xp.contiguous()
        x_in = x.view(-1, x.shape[-1])  # (T*B, I), contiguous: the backward kernel reads it
        w_ih_c = w_ih.contiguous()
        b_ih_c = None if b_ih is None else b_ih.contiguous()
    inputs = 0 if x is None else x.shape[2]
    # threads for the projection of all steps at once (one slice), which reads W_ih once
    pthreads = torch.get_num_threads() if kernels.parallel and steps * batch * gates * inputs >= STEP_PARALLEL_MIN_WORK else 1
    size = w_hh.shape[1]  # R: proj_size with a projection, else hidden
    threads = _product_threads(kernels, slices, batch, gates, size)
    lstm = mode == "LSTM"
    kept = steps if save else 1  # steps the saved arrays hold
    hs = xp.new_empty(kept + 1, batch, size)
    cs = xp.new_empty(kept + 1, batch, hidden) if lstm else None
    out = xp.new_empty(steps, batch, size)
    hr = xp.new_empty(kept, batch, hidden) if w_hr is not None else None
    w_hr_c = None if w_hr is None else w_hr.contiguous()
    acts = xp.new_empty(kept, batch, SAVED[mode] * hidden)
    cand = xp.new_empty(kept, batch, hidden) if lstm else None
    ghat = xp.new_empty(kept, batch, gates) if ln_hh is not None else None
    rstd_h = xp.new_empty(kept, batch) if ln_hh is not None else None
    chat = xp.new_empty(kept, batch, hidden) if ln_cw is not None else None
    rstd_c = xp.new_empty(kept, batch) if ln_cw is not None else None
    h0_c = h0.contiguous()
    c0_c = None if c0 is None else c0.contiguous()
    w_hh_c = w_hh.contiguous()
    lengths_c = None if lengths is None else lengths.to(torch.int64).contiguous()
    h_mask_c = None if h_mask is None else h_mask.contiguous()
    keep_h_c = None if keep_h is None else keep_h.contiguous().view(torch.uint8)
    keep_c_c = None if keep_c is None else keep_c.contiguous().view(torch.uint8)
    status = getattr(kernels.lib, "rnn_forward_slices" + DTYPES[xp.dtype])(
        slices, threads, pthreads, CELL_IDS[mode], int(save), steps, batch, hidden, size, inputs,
        _ptr(pre), _ptr(x), _ptr(w_ih_c), _ptr(b_ih_c), _ptr(w_hh_c), _ptr(b_hh), _ptr(w_hr_c),
        _ptr(ln_hh), _ptr(ln_cw), _ptr(ln_cb),
        _ptr(lengths_c), _ptr(h_mask_c), _ptr(keep_h_c), _ptr(keep_c_c), _ptr(h0_c), _ptr(c0_c),
        _ptr(hs), _ptr(cs), _ptr(out), _ptr(acts), _ptr(cand), _ptr(hr),
        _ptr(ghat), _ptr(rstd_h), _ptr(chat), _ptr(rstd_c),
    )
    if status != 0:
        raise MemoryError("rnnkit fused engine: no memory for the forward kernel's scratch")
    last = steps if save else steps % 2  # where h_T and c_T are
    if not save:  # hs and cs are scratch here: h_T and c_T can be views of them
        finals = (hs[last],) if cs is None else (hs[last], cs[last])
        return _Forward((out, *finals), (), slices, threads)
    finals = (hs[last].clone(),) if cs is None else (hs[last].clone(), cs[last].clone())
    saved = (w_hh_c, w_hr_c, ln_hh, ln_cw, hs, cs, acts, cand, hr, ghat, rstd_h, chat, rstd_c,
             lengths_c, h_mask_c, keep_h_c, keep_c_c, x_in, None if w_ih is None else w_ih.contiguous())
    return _Forward((out, *finals), saved, slices, threads)


class FusedLayer(torch.autograd.Function):
    """out, h_T[, c_T] = the time loop over xp (T, B, G*H), the input side of every step's gates,
    from h_0[, c_0]; the backward pass written by hand.

    Saved for the backward pass (T steps, B batch, H hidden, G gates, S saved per unit, R the
    size of h: proj_size P with an LSTM projection, else H):
        hs     (T+1, B, R)  h before and after every step: h_{t-1} enters dW_hh and the GRU's dz
        cs     (T+1, B, H)  LSTM cell states: c_{t-1} gives df
        acts   (T, B, S*H)  gate activations, so no sigmoid or tanh is recomputed
        cand   (T, B, H)    LSTM: tanh of the candidate c~_t (or of its layer norm), for do and dc
        ghat   (T, B, G*H), rstd_h (T, B): layer_norm, LN(W_hh h)'s normalised rows and 1/sigma
        chat   (T, B, H),   rstd_c (T, B): layer-normalised LSTM, LN(c~)'s likewise
        hr     (T, B, H)    projected LSTM: o * tanh(c~) before W_hr, for dW_hr
        and W_hh, W_hr, the layer-norm gains, the lengths and the masks as given.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any) -> tuple[Tensor, ...]:  # type: ignore[override]
        """args: _forward's (kernels, mode, xp, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh,
        ln_cw, ln_cb, lengths, h_mask, keep_h, keep_c), in that order."""
        run = _forward(*args, save=True)
        ctx.slices, ctx.threads = run.slices, run.threads
        ctx.save_for_backward(*run.saved)
        ctx.kernels, ctx.mode, ctx.has_bias, ctx.has_bias_ih = args[0], args[1], args[8] is not None, args[4] is not None
        ctx.weight_threads = torch.get_num_threads() if args[0].parallel else 1
        return run.outputs

    @staticmethod
    def backward(ctx: Any, d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None = None) -> tuple[Tensor | None, ...]:
        # Grad mode is on here only under create_graph=True. once_differentiable would not be
        # enough: it lets a double backward through silently, and incomplete, when the incoming
        # gradients do not require grad (y.sum()); so refuse every double backward instead.
        if torch.is_grad_enabled():
            raise RuntimeError(
                "rnnkit: engine='fused' has a hand-written backward pass, which is not itself "
                "differentiable (create_graph=True); use engine='reference' or 'native' for "
                "gradients of gradients"
            )
        (w_hh, w_hr, ln_hh, ln_cw, hs, cs, acts, cand, hr, ghat, rstd_h, chat, rstd_c,
         lengths, h_mask, keep_h, keep_c, x_in, w_ih) = ctx.saved_tensors
        mode, kernels = ctx.mode, ctx.kernels
        steps, batch, size = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        gates = w_hh.shape[0]
        hidden = gates // GATES[mode]
        d_out = hs.new_zeros(steps, batch, size) if d_out is None else d_out.contiguous()
        dh = hs.new_zeros(batch, size) if d_hn is None else d_hn.clone().contiguous()
        dc = None
        if mode == "LSTM":
            dc = hs.new_zeros(batch, hidden) if d_cn is None else d_cn.clone().contiguous()
        dgi = hs.new_empty(steps, batch, gates)
        dgh = hs.new_empty(steps, batch, gates) if mode == "GRU" else None
        dgh_raw = hs.new_empty(steps, batch, gates) if ln_hh is not None else None
        dproj = hs.new_empty(steps, batch, size) if w_hr is not None else None
        slices = ctx.slices
        dln_c = hs.new_zeros(slices, 2, hidden) if ln_cw is not None else None  # each slice's sums
        needs = ctx.needs_input_grad  # kernels, mode, xp, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh, ...
        rows = steps * batch
        inputs = 0 if x_in is None else x_in.shape[1]
        # The weight gradients in the kernel too, while it beats the BLAS at their shapes (few
        # rows to sum over); else by torch after it.
        in_kernel = rows * gates * (size + inputs) <= KERNEL_WEIGHT_GRADS_MAX_WORK
        dx = dw_ih = db_ih = dw_hh = db_hh = dw_hr = dln_hh = None
        if in_kernel:
            if needs[2] and x_in is not None:
                dx = hs.new_empty(steps, batch, inputs)
            dw_ih = hs.new_empty(gates, inputs) if x_in is not None and needs[3] else None
            db_ih = hs.new_empty(gates) if x_in is not None and needs[4] and ctx.has_bias_ih else None
            dw_hh = hs.new_empty(gates, size) if needs[7] else None
            db_hh = hs.new_empty(gates) if ctx.has_bias and needs[8] else None
            dw_hr = hs.new_empty(size, hidden) if dproj is not None and needs[9] else None
            dln_hh = hs.new_empty(gates) if ghat is not None and needs[10] else None
        status = getattr(kernels.lib, "rnn_backward_slices" + DTYPES[hs.dtype])(
            slices, ctx.threads, ctx.weight_threads if in_kernel else 0, CELL_IDS[mode], steps, batch,
            hidden, size, inputs,
            _ptr(w_hh), _ptr(w_hr), _ptr(ln_hh), _ptr(ln_cw), _ptr(lengths), _ptr(h_mask),
            _ptr(keep_h), _ptr(keep_c), _ptr(hs), _ptr(cs), _ptr(acts), _ptr(cand),
            _ptr(ghat), _ptr(rstd_h), _ptr(chat), _ptr(rstd_c), _ptr(d_out), _ptr(dh), _ptr(dc),
            _ptr(dgi), _ptr(dgh), _ptr(dgh_raw), _ptr(dproj), _ptr(dln_c),
            _ptr(x_in), _ptr(w_ih), _ptr(hr), _ptr(dx), _ptr(dw_ih), _ptr(db_ih), _ptr(dw_hh),
            _ptr(db_hh), _ptr(dw_hr), _ptr(dln_hh),
        )
        if status != 0:
            raise MemoryError("rnnkit fused engine: no memory for the backward kernel's scratch")
        dln_cw = dln_cb = None
        if dln_c is not None:
            dln_cw, dln_cb = dln_c.sum(0)  # (H,) each
        if x_in is None and needs[2]:  # the gates' input side came in: its gradient is dgi
            dx = dgi
        if not in_kernel:
            dg_post = (dgh if dgh is not None else dgi).view(rows, gates)  # recurrent side, after LN
            dg_rec = dgh_raw.view(rows, gates) if dgh_raw is not None else dg_post  # before LN
            dgi_flat = dgi.view(rows, gates)
            if x_in is not None:  # the input projection's, when the Function did it
                if needs[2]:
                    dx = (dgi_flat @ w_ih).view(steps, batch, -1)  # (T, B, I)
                if needs[3]:
                    dw_ih = dgi_flat.t() @ x_in  # (G*H, I)
                if needs[4] and ctx.has_bias_ih:
                    db_ih = dgi_flat.sum(0)
            if needs[7]:
                h_in = hs[:steps] if h_mask is None else hs[:steps] * h_mask  # (T, B, R): what met W_hh
                dw_hh = dg_rec.t() @ h_in.reshape(rows, size)  # (G*H, R)
            if ctx.has_bias and needs[8]:
                db_hh = dg_post.sum(0)
            if dproj is not None and needs[9]:  # (P, H) = dproj (T*B, P)^T @ hr (T*B, H)
                dw_hr = dproj.view(rows, size).t() @ hr.view(rows, hidden)
            if ghat is not None and needs[10]:
                dln_hh = (dg_post * ghat.view(rows, gates)).sum(0)
        return (None, None, dx, dw_ih, db_ih, dh if needs[5] else None, dc if needs[6] else None,
                dw_hh, db_hh, dw_hr, dln_hh, dln_cw if needs[11] else None, dln_cb if needs[12] else None,
                None, None, None, None)
