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

import ctypes
import functools
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells import CellSpec, CellWeights, State
from rnnkit.cells._base import LAYER_NORM_EPS
from rnnkit.engines import _compiled
from rnnkit.engines._base import LayerConfig, Noise

CELL_IDS = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
DTYPES = {torch.float32: "_f32", torch.float64: "_f64"}
PARALLEL_MIN_ROWS = 8
"""Each thread's slice of the batch has at least this many sequences."""
PARALLEL_MIN_WORK = 1_000_000
"""Multiply-adds of the recurrent products (T * B * G*H * H) below which one thread runs all (and
of the input projection and the weight gradients, below which one thread runs each). Lowered
from 4M, which dated from slices run by a pool of Python threads: with the kernels' own threads,
training between 1M and 4M ran 1.07-1.18x faster in paired runs in one process on the 2-core
AVX2 machine (LSTM (T, B, I, H) = (10, 5, 50, 100), (20, 2, 64, 128), (10, 16, 32, 64); GRU (6,
5, 100, 200), (10, 4, 64, 128), (30, 16, 16, 40); RNN (20, 8, 64, 128), (20, 32, 32, 64); RNN
(6, 5, 100, 200): 1.00 and 1.08). Lower, at 500k or 200k, smaller sizes gained nothing
(0.97-1.02)."""
STEP_PARALLEL_MIN_WORK = 100_000
"""Multiply-adds of one step's recurrent product (B * G*H * R) from which a batch run as one
slice shares each step's products among threads, when the whole loop has PARALLEL_MIN_WORK
(about 1 us of work a step, as much as a step's synchronisation costs; but each thread then
streams only its share of W_hh, which stays in its core's cache: at B = 1, H = 256 this made an
LSTM's forward 1.6x faster than at 300k on the 2-core machine). Over few steps, waking the
threads costs more than they save."""
SHARED_STEP_MIN_BYTES = 2**22
SHARED_STEP_MAX_ROWS = 16
"""The forward pass leaves a batch that it would run in slices whole, and shares each step's
product among the threads instead, when W_hh takes at least SHARED_STEP_MIN_BYTES and the slices
would have at most SHARED_STEP_MAX_ROWS rows each. Slices each stream all of W_hh at every step,
so large weights over few rows are bound by the cache's bandwidth; shared, each thread streams its
share. LSTM forward, T = 100, on the 2-core AVX2 machine (paired runs in one process, sliced /
shared time): 1.27 at B = 32, I = H = 1024; 1.04 at B = 32 and 1.035 at B = 16, I = H = 512; but
0.95 at B = 64, H = 512 (32 rows a slice) and 0.92 at B = 16 and 32, H = 256 (W_hh of 1 MB).
The backward pass keeps its slices: training at B = 32, I = H = 512 took the same time with both
passes shared, and was 1.04x faster with the forward pass alone shared."""
PROJECTION_CHUNK = 2**21
"""Numbers of the input projection x W_ih^T + b_ih the forward kernel holds at once, for a batch
run as one slice: it projects the steps in chunks of about this size (each one product over all
its rows, which reads W_ih once), then runs the time loop over the chunk; memory stays bounded
at any sequence length. A batch run in slices projects each slice's rows at every step."""
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


def _forward_slices(slices: int, batch: int, gates: int, size: int, itemsize: int) -> int:
    """The forward pass's slices: the backward's (slices), or one for large weights over slices of
    few rows (SHARED_STEP_MIN_BYTES); itemsize: the bytes of one number."""
    if slices > 1 and batch // slices <= SHARED_STEP_MAX_ROWS and gates * size * itemsize >= SHARED_STEP_MIN_BYTES:
        return 1
    return slices


def _product_threads(kernels: _compiled.Kernels, slices: int, steps: int, batch: int, gates: int, size: int) -> int:
    """How many threads share each step's products: for a batch too small to slice, all of them
    once the steps' work pays for it; else one (each slice has its thread)."""
    step = batch * gates * size
    if slices > 1 or not kernels.parallel or step < STEP_PARALLEL_MIN_WORK or steps * step < PARALLEL_MIN_WORK:
        return 1
    return torch.get_num_threads()


def _all_threads(kernels: _compiled.Kernels, work: int) -> int:
    """Threads for a product of work multiply-adds done once a call (the input projection, the
    weight gradients): all of them from PARALLEL_MIN_WORK, else one."""
    return torch.get_num_threads() if kernels.parallel and work >= PARALLEL_MIN_WORK else 1


def _ptrs(*tensors: Tensor | None) -> list[int | None]:
    """The address of each tensor's data (None for None), in one call for a kernel's many
    arguments. The caller must hold the tensors until the kernel returns: pass named tensors,
    never a temporary made in the call's own arguments."""
    return [None if t is None else t.data_ptr() for t in tensors]


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
        state: State | None,
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
        h0, c0 = (None, None) if state is None else (state[0], state[1] if lstm else None)  # None: zeros
        args = (kernels, spec.mode, xp, w_ih, b_ih, h0, c0, w.weight_hh,
                w.bias_hh, w.weight_hr, w.ln_weight_hh, w.ln_weight_c, w.ln_bias_c, lengths, noise.h_mask,
                keep[0], keep[1] if lstm else None)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xp, h0, c0, *weights)):
            results = FusedLayer.apply(*args)
        else:  # nothing to differentiate: keep nothing for a backward pass
            results = _forward(*args, save=False).outputs
        return results[0], tuple(results[1:])


# Where the kernels lay out their workspaces (rnn_kernels.c: W_* and D_* in rnnkit_forward_layout
# and rnnkit_backward_layout), for the arrays read here
W_HS, W_HR, W_GHAT, W_PARTS = 0, 4, 5, 9
D_GI, D_GH, D_GH_RAW, D_PROJ, D_PARTS = 0, 1, 2, 3, 5
WORKSPACE_BLOCK_MAX = 2**24
"""Bytes up to which a kernel's workspace is one allocation. Above, each array is its own: glibc
serves allocations of up to 32 MB from memory it reuses, but maps fresh pages (faulted in and
zeroed at every call) for larger ones."""


class _Workspace:
    """The arrays a kernel lays out (its layout function: rnnkit_forward_layout with W_PARTS
    arrays, or rnnkit_backward_layout with D_PARTS), in one tensor (`block`, whose address the
    kernel takes) or, when large, in one tensor each (`parts`, whose addresses it takes)."""

    __slots__ = ("offsets", "block", "parts", "pointers")

    def __init__(self, like: Tensor, layout: tuple[int, tuple[int, ...]]) -> None:
        """layout: the layout function's (total size, offsets), from the call's _Plan."""
        total, self.offsets = layout
        self.block: Tensor | None = None
        self.parts: list[Tensor | None] | None = None
        self.pointers: Any = None  # parts' addresses, as the kernel takes them
        if total * like.element_size() <= WORKSPACE_BLOCK_MAX:
            self.block = like.new_empty(total)
            return
        ends = sorted([o for o in self.offsets if o >= 0] + [total])
        self.parts = [None if o < 0 else like.new_empty(ends[ends.index(o) + 1] - o) for o in self.offsets]
        self.pointers = (ctypes.c_void_p * len(self.offsets))(*_ptrs(*self.parts))

    def view(self, index: int, shape: tuple[int, ...]) -> Tensor | None:
        """Array index of the layout, as shape; None when the layout has none."""
        if self.parts is not None:
            part = self.parts[index]
            return None if part is None else part[: math.prod(shape)].view(shape)
        assert self.block is not None
        offset = self.offsets[index]
        return None if offset < 0 else self.block[offset: offset + math.prod(shape)].view(shape)


def _layout(kernels: _compiled.Kernels, layout: str, args: tuple[int, ...], count: int) -> tuple[int, tuple[int, ...]]:
    """A layout function's total size and offsets (-1: array absent) for args."""
    offsets = (ctypes.c_long * count)()
    total = getattr(kernels.lib, layout)(*args, offsets)
    return total, tuple(offsets)


class _Plan(NamedTuple):
    """What the kernels' calls for one shape need beyond its tensors, worked out once per shape
    (_plan) rather than at every call: at small sizes the Python around the kernels costs more
    than the kernels."""

    forward: Any  # rnn_forward_slices and rnn_backward_slices for the dtype, as ctypes functions
    backward: Any
    slices: int  # the forward's: see _forward_slices
    threads: int  # the forward's: see _product_threads
    backward_slices: int  # see _slice_count
    backward_threads: int  # see _product_threads
    pthreads: int  # the input projection's threads
    chunk: int  # steps projected at once (PROJECTION_CHUNK)
    saved: tuple[int, tuple[int, ...]]  # the forward workspace's layout: all steps kept
    unsaved: tuple[int, tuple[int, ...]]  # and for a call that keeps nothing (one step)
    dlayout: tuple[int, tuple[int, ...]]  # the backward workspace's
    weight_threads: int  # threads of the weight gradients in the backward kernel; 0: by torch


@functools.lru_cache(maxsize=256)
def _plan(kernels: _compiled.Kernels, mode: str, dtype: torch.dtype, steps: int, batch: int, inputs: int,
          gates: int, size: int, flags: int, num_threads: int) -> _Plan:
    """The plan of a call: inputs is I when the kernel projects x, else 0; gates G*H; size R;
    flags the layer's _flags; num_threads torch.get_num_threads(), which the threads' counts
    follow (a key, so that a change of it makes a new plan)."""
    hidden = gates // GATES[mode]
    backward_slices = _slice_count(kernels, steps, batch, gates, hidden)
    slices = _forward_slices(backward_slices, batch, gates, size, dtype.itemsize)
    cell = CELL_IDS[mode]
    weight_work = steps * batch * gates * (size + inputs)
    return _Plan(
        forward=getattr(kernels.lib, "rnn_forward_slices" + DTYPES[dtype]),
        backward=getattr(kernels.lib, "rnn_backward_slices" + DTYPES[dtype]),
        slices=slices,
        threads=_product_threads(kernels, slices, steps, batch, gates, size),
        backward_slices=backward_slices,
        backward_threads=_product_threads(kernels, backward_slices, steps, batch, gates, size),
        # for the projection of all steps at once (one slice), which reads W_ih once
        pthreads=_all_threads(kernels, steps * batch * gates * inputs),
        chunk=min(steps, max(1, PROJECTION_CHUNK // (batch * gates))),
        saved=_layout(kernels, "rnnkit_forward_layout", (cell, 1, steps, batch, hidden, size, flags), W_PARTS),
        unsaved=_layout(kernels, "rnnkit_forward_layout", (cell, 0, steps, batch, hidden, size, flags), W_PARTS),
        dlayout=_layout(kernels, "rnnkit_backward_layout", (backward_slices, cell, steps, batch, hidden, size, flags),
                        D_PARTS),
        # The weight gradients in the kernel too, while it beats the BLAS at their shapes (few
        # rows to sum over); else by torch after it.
        weight_threads=_all_threads(kernels, weight_work) if weight_work <= KERNEL_WEIGHT_GRADS_MAX_WORK else 0,
    )


class _Forward(NamedTuple):
    outputs: tuple[Tensor, ...]  # out (T, B, R), h_T (B, R)[, c_T (B, H)]
    work: _Workspace  # the arrays the kernel keeps for the backward pass
    inputs: tuple[Tensor | None, ...]  # what the backward reads of the inputs: w_hh, w_hr, ln_hh,
    # ln_cw, x (T*B, I) and w_ih, all contiguous
    masks: tuple[Tensor | None, ...]  # lengths, h_mask, keep_h, keep_c as the kernels read them
    plan: _Plan


def _flags(w_hr: Tensor | None, ln_hh: Tensor | None, ln_cw: Tensor | None) -> int:
    """The kernels' HAS_PROJ | HAS_LN_H | HAS_LN_C: which optional arrays a layer has."""
    return (w_hr is not None) | (ln_hh is not None) << 1 | (ln_cw is not None) << 2


def _forward(
    kernels: _compiled.Kernels,
    mode: str,
    xp: Tensor,
    w_ih: Tensor | None,
    b_ih: Tensor | None,
    h0: Tensor | None,
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
    (T, B, I), projected in the kernel. save=False keeps nothing for a backward pass: the
    workspace then holds one step, which the kernel overwrites as it goes."""
    x = x_in = w_ih_c = b_ih_c = pre = None
    steps, batch = xp.shape[:2]
    gates, size = w_hh.shape  # G*H, R: proj_size with a projection, else hidden
    if w_ih is None:  # xp is the gates' input side (T, B, G*H), computed before the loop
        pre = xp.contiguous()
        inputs = 0
    else:  # xp is the input x (T, B, I), which the kernel projects: x W_ih^T + b_ih (T, B, G*H)
        x = xp.contiguous()
        inputs = x.shape[2]
        x_in = x.view(-1, inputs)  # (T*B, I), contiguous: the backward kernel reads it
        w_ih_c = w_ih.contiguous()
        b_ih_c = None if b_ih is None else b_ih.contiguous()
    plan = _plan(kernels, mode, xp.dtype, steps, batch, inputs, gates, size, _flags(w_hr, ln_hh, ln_cw),
                 torch.get_num_threads())
    work = _Workspace(xp, plan.saved if save else plan.unsaved)
    out = xp.new_empty(steps, batch, size)
    h_n = xp.new_empty(batch, size)
    c_n = xp.new_empty(batch, gates // 4) if mode == "LSTM" else None
    h0_c = None if h0 is None else h0.contiguous()
    c0_c = None if c0 is None else c0.contiguous()
    w_hh_c = w_hh.contiguous()
    w_hr_c = None if w_hr is None else w_hr.contiguous()
    masks = (None if lengths is None else lengths.to(torch.int64).contiguous(),
             None if h_mask is None else h_mask.contiguous(),
             None if keep_h is None else keep_h.contiguous().view(torch.uint8),
             None if keep_c is None else keep_c.contiguous().view(torch.uint8))
    status = plan.forward(
        plan.slices, plan.threads, plan.pthreads, plan.chunk, CELL_IDS[mode], save,
        steps, batch, gates // GATES[mode], size, inputs,
        *_ptrs(pre, x, w_ih_c, b_ih_c, w_hh_c, b_hh, w_hr_c, ln_hh, ln_cw, ln_cb, *masks, h0_c, c0_c, out, h_n,
               c_n, work.block), work.pointers,
    )
    if status != 0:
        raise MemoryError("rnnkit fused engine: no memory for the forward kernel's scratch")
    return _Forward((out, h_n) if c_n is None else (out, h_n, c_n), work,
                    (w_hh_c, w_hr_c, ln_hh, ln_cw, x_in, w_ih_c), masks, plan)


class FusedLayer(torch.autograd.Function):
    """out, h_T[, c_T] = the time loop over xp, from h_0[, c_0]; the backward pass written by hand.

    xp is the input x (T, B, I) with w_ih (and b_ih), which the kernel projects, or else the
    input side of every step's gates (T, B, G*H). Kept for the backward pass, in the workspace
    that the kernels lay out (rnnkit_forward_layout; T steps, B batch, H hidden, G gates, S saved
    per unit, R the size of h: proj_size P with an LSTM projection, else H):
        hs     (T+1, B, R)  h before and after every step: h_{t-1} enters dW_hh and the GRU's dz
        cs     (T+1, B, H)  LSTM cell states: c_{t-1} gives df
        acts   (T, B, S*H)  gate activations, so no sigmoid or tanh is recomputed
        cand   (T, B, H)    LSTM: tanh of the cell state (or of its layer norm), for do and dc
        hr     (T, B, H)    projected LSTM: o * tanh(c~) before W_hr, for dW_hr
        ghat   (T, B, G*H), rstd_h (T, B): layer_norm, LN(W_hh h)'s normalised rows and 1/sigma
        chat   (T, B, H),   rstd_c (T, B): layer-normalised LSTM, LN(c~)'s likewise
    and, saved as inputs, W_hh, W_hr, the layer-norm gains, x and W_ih; the lengths and masks.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any) -> tuple[Tensor, ...]:  # type: ignore[override]
        """args: _forward's (kernels, mode, xp, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh,
        ln_cw, ln_cb, lengths, h_mask, keep_h, keep_c), in that order."""
        run = _forward(*args, save=True)
        ctx.set_materialize_grads(False)  # unused outputs' gradients come as None, not zeros
        ctx.save_for_backward(*run.inputs)
        ctx.work, ctx.masks, ctx.plan, ctx.mode = run.work, run.masks, run.plan, args[1]
        ctx.has_bias_ih, ctx.has_bias = args[4] is not None, args[8] is not None
        ctx.shape = args[2].shape[:2]  # T, B
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
        w_hh, w_hr, ln_hh, ln_cw, x_in, w_ih = ctx.saved_tensors
        mode, plan, work = ctx.mode, ctx.plan, ctx.work
        like = w_hh
        steps, batch = ctx.shape
        gates, size = w_hh.shape  # G*H, R
        hidden = gates // GATES[mode]
        inputs = 0 if x_in is None else x_in.shape[1]
        needs = ctx.needs_input_grad  # kernels, mode, xp, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh, ...
        d_out = like.new_zeros(steps, batch, size) if d_out is None else d_out.contiguous()
        dh = like.new_zeros(batch, size) if d_hn is None else d_hn.clone(memory_format=torch.contiguous_format)
        dc = None
        if mode == "LSTM":
            dc = like.new_zeros(batch, hidden) if d_cn is None else d_cn.clone(memory_format=torch.contiguous_format)
        dwork = _Workspace(like, plan.dlayout)
        in_kernel = plan.weight_threads > 0  # the weight gradients in the kernel, else by torch after it
        dx = dw_ih = db_ih = dw_hh = db_hh = dw_hr = dln_hh = None
        if in_kernel:
            if needs[2] and x_in is not None:
                dx = like.new_empty(steps, batch, inputs)
            dw_ih = like.new_empty(gates, inputs) if x_in is not None and needs[3] else None
            db_ih = like.new_empty(gates) if x_in is not None and needs[4] and ctx.has_bias_ih else None
            dw_hh = like.new_empty(gates, size) if needs[7] else None
            db_hh = like.new_empty(gates) if ctx.has_bias and needs[8] else None
            dw_hr = like.new_empty(size, hidden) if w_hr is not None and needs[9] else None
            dln_hh = like.new_empty(gates) if ln_hh is not None and needs[10] else None
        dln_cw = like.new_empty(hidden) if ln_cw is not None and needs[11] else None
        dln_cb = like.new_empty(hidden) if ln_cw is not None and needs[12] else None
        status = plan.backward(
            plan.backward_slices, plan.backward_threads, plan.weight_threads, CELL_IDS[mode], steps, batch, hidden,
            size, inputs,
            *_ptrs(w_hh, w_hr, ln_hh, ln_cw, *ctx.masks, work.block), work.pointers,
            *_ptrs(d_out, dh, dc, dwork.block), dwork.pointers,
            *_ptrs(x_in, w_ih, dx, dw_ih, db_ih, dw_hh, db_hh, dw_hr, dln_hh, dln_cw, dln_cb),
        )
        if status != 0:
            raise MemoryError("rnnkit fused engine: no memory for the backward kernel's scratch")
        if x_in is None and needs[2]:  # the gates' input side came in: its gradient is dgi
            dx = dwork.view(D_GI, (steps, batch, gates))
        if not in_kernel:
            dx_in, dw_ih, db_ih, dw_hh, db_hh, dw_hr, dln_hh = _weight_grads_by_torch(ctx, work, dwork, needs)
            if x_in is not None:
                dx = dx_in
        return (None, None, dx, dw_ih, db_ih, dh if needs[5] else None, dc if needs[6] else None,
                dw_hh, db_hh, dw_hr, dln_hh, dln_cw, dln_cb, None, None, None, None)


def _weight_grads_by_torch(ctx: Any, work: _Workspace, dwork: _Workspace, needs: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
    """dx (when the Function projected x), dW_ih, db_ih, dW_hh, db_hh, dW_hr and dln_hh as torch
    products after the backward kernel, for sizes where they beat the kernel's own."""
    w_hh, w_hr, ln_hh, ln_cw, x_in, w_ih = ctx.saved_tensors
    h_mask = ctx.masks[1]
    steps, batch = ctx.shape
    gates, size = w_hh.shape
    hidden, rows = gates // GATES[ctx.mode], steps * batch
    dgi = dwork.view(D_GI, (rows, gates))
    assert dgi is not None
    dgh, dgh_raw = dwork.view(D_GH, (rows, gates)), dwork.view(D_GH_RAW, (rows, gates))
    dg_post = dgi if dgh is None else dgh  # the recurrent side's gradient after its layer norm (GRU: dgh)
    dg_rec = dg_post if dgh_raw is None else dgh_raw  # and before it
    dx = dw_ih = db_ih = dw_hh = db_hh = dw_hr = dln_hh = None
    if x_in is not None:  # the input projection's, when the Function did it
        if needs[2]:
            dx = (dgi @ w_ih).view(steps, batch, -1)  # (T, B, I)
        if needs[3]:
            dw_ih = dgi.t() @ x_in  # (G*H, I)
        if needs[4] and ctx.has_bias_ih:
            db_ih = dgi.sum(0)
    if needs[7]:
        hs = work.view(W_HS, (steps + 1, batch, size))
        assert hs is not None
        hs = hs[:steps]
        h_in = hs if h_mask is None else hs * h_mask  # (T, B, R): what met W_hh
        dw_hh = dg_rec.t() @ h_in.reshape(rows, size)  # (G*H, R)
    if ctx.has_bias and needs[8]:
        db_hh = dg_post.sum(0)
    if w_hr is not None and needs[9]:  # (P, H) = dproj (T*B, P)^T @ hr (T*B, H)
        dproj, hr = dwork.view(D_PROJ, (rows, size)), work.view(W_HR, (rows, hidden))
        assert dproj is not None and hr is not None
        dw_hr = dproj.t() @ hr
    if ln_hh is not None and needs[10]:
        ghat = work.view(W_GHAT, (rows, gates))
        assert ghat is not None
        dln_hh = (dg_post * ghat).sum(0)
    return dx, dw_ih, db_ih, dw_hh, db_hh, dw_hr, dln_hh
